"""The network: shared text and tabular encoders -> a fusion variant -> a linear classification head."""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from mmfusion.config import ModelConfig
from mmfusion.encoders import AttentionChunkPool, TabularEncoder, TextEncoder, masked_chunk_mean
from mmfusion.encoders.columns import ColumnProjection, column_masks, mean_weights
from mmfusion.encoders.partial import cached_chunks, check_text_layers, encoder_layers, frozen_lower
from mmfusion.encoders.text import set_dropout
from mmfusion.fusion import Fusion, create_fusion


class ModelOutput(NamedTuple):
    logits: torch.Tensor  # (B, K)
    modality_weights: torch.Tensor  # (B, 2): [w_text, w_tab]
    aux_loss: torch.Tensor  # ()
    expert_weights: torch.Tensor | None  # (B, E) or None


class MultimodalClassifier(nn.Module):
    def __init__(self, text_encoder: TextEncoder, tab_encoder: TabularEncoder, fusion: Fusion, n_classes: int, chunk_pool: nn.Module | None = None,
                 n_text_columns: int = 1, text_lower: int | None = None, column_pooling: str = "joint") -> None:
        super().__init__()
        self.text_encoder, self.tab_encoder, self.fusion = text_encoder, tab_encoder, fusion
        # partial fine-tuning: the embeddings and the first `text_lower` encoder layers are frozen (eval mode, no
        # gradient) and training reads their output from the layer cache; None: the encoder is frozen or trains whole
        self.text_lower = text_lower
        self._frozen_text = frozen_lower(text_encoder.backbone, text_lower) if text_lower is not None else []
        self.chunk_pool = chunk_pool  # None: the masked mean of the chunk embeddings
        # several text columns: a learned vector per column added to each of its chunks, so pooling and fusion know
        # where a chunk came from; zero at the start, so training starts from the single-column model
        self.column_embedding = nn.Embedding(n_text_columns, text_encoder.hidden_size) if n_text_columns > 1 else None
        if self.column_embedding is not None:
            nn.init.zeros_(self.column_embedding.weight)
        # separate: each column's chunks pooled on their own, then projected together (encoders/columns.py)
        self.column_pool = ColumnProjection(n_text_columns, text_encoder.hidden_size) if n_text_columns > 1 and column_pooling == "separate" else None
        self.head = nn.Linear(fusion.out_dim, n_classes)

    def forward(
        self,
        input_ids: torch.Tensor,  # (B, C, T)
        attention_mask: torch.Tensor,  # (B, C, T)
        chunk_mask: torch.Tensor,  # (B, C)
        numeric: torch.Tensor,  # (B, Nn)
        categorical: torch.Tensor,  # (B, Nc)
        chunk_embeddings: torch.Tensor | None = None,  # (B, C, H): precomputed by a frozen encoder (cache)
        chunk_column: torch.Tensor | None = None,  # (B, C): each chunk's text column (several text columns only)
        text_hidden: torch.Tensor | None = None,  # (B, C, T, H): states entering layer `text_lower` (layer cache)
    ) -> ModelOutput:
        h_text, chunks, h_tab = self.encode(input_ids, attention_mask, chunk_mask, numeric, categorical, chunk_embeddings, chunk_column, text_hidden)
        return self.classify(h_text, h_tab, chunks, chunk_mask)

    def train(self, mode: bool = True) -> "MultimodalClassifier":
        super().train(mode)
        for part in self._frozen_text:
            part.eval()  # the frozen lower layers never apply dropout (as when their output was cached)
        return self

    def encode(self, input_ids, attention_mask, chunk_mask, numeric, categorical, chunk_embeddings=None, chunk_column=None, text_hidden=None):
        """-> h_text (B, H), chunks (B, C, H), h_tab (B, Dtab). Without cached inputs the text runs from tokens
        through the whole backbone (what export and serving do); the result is the same."""
        if chunk_embeddings is not None:
            chunks = chunk_embeddings
            h_text = masked_chunk_mean(chunks, chunk_mask)
        elif text_hidden is not None and self.text_lower is not None:
            chunks = cached_chunks(self.text_encoder.backbone, text_hidden, attention_mask, chunk_mask, self.text_lower)  # (B, C, H)
            h_text = masked_chunk_mean(chunks, chunk_mask)
        else:
            h_text, chunks = self.text_encoder(input_ids, attention_mask, chunk_mask)
        if self.column_embedding is not None:
            column = chunk_column if chunk_column is not None else torch.zeros_like(chunk_mask)
            chunks = chunks + self.column_embedding(column.long()).to(chunks.dtype) * chunk_mask.unsqueeze(-1).to(chunks.dtype)  # (B, C, H)
        if self.column_pool is not None:
            h_text = self.column_pool(self.pool_columns(chunks, chunk_mask, column))
        elif self.chunk_pool is not None:
            h_text = self.chunk_pool(chunks, chunk_mask)
        elif self.column_embedding is not None:
            h_text = masked_chunk_mean(chunks, chunk_mask)  # the column vectors changed the chunks
        return h_text, chunks, self.tab_encoder(numeric, categorical)

    def pool_columns(self, chunks: torch.Tensor, chunk_mask: torch.Tensor, chunk_column: torch.Tensor) -> torch.Tensor:
        """(B, C, H) chunks -> (B, K, H): each text column's chunks pooled on their own (zeros for an empty column)."""
        masks = column_masks(chunk_mask, chunk_column, self.column_pool.n_columns)  # (B, K, C)
        if self.chunk_pool is not None:
            return self.chunk_pool(chunks, masks)  # attention within each column
        return torch.bmm(mean_weights(masks).to(chunks.dtype), chunks)  # (B, K, C) @ (B, C, H) -> (B, K, H)

    def export_copy(self) -> "MultimodalClassifier":
        """An fp32 CPU eval copy that the ONNX exporters trace cleanly: padding chunks encoded and masked out (no
        data-dependent packing; same result), eager attention (finite masks: a fully padded chunk stays finite, no NaN
        from SDPA), and the fusion's own `export_copy`."""
        import copy

        m = copy.deepcopy(self).to("cpu", torch.float32).eval()
        m.text_encoder.pack_chunks = False
        backbone = m.text_encoder.backbone
        if hasattr(backbone, "set_attn_implementation"):
            try:
                backbone.set_attn_implementation("eager")
            except (ValueError, NotImplementedError):
                pass
        m.fusion = m.fusion.export_copy()
        return m

    def classify(self, h_text, h_tab, chunks, chunk_mask) -> ModelOutput:
        """Fusion + head on encoded inputs (lets faithfulness checks swap one modality without re-encoding)."""
        out = self.fusion(h_text, h_tab, chunks, chunk_mask)
        return ModelOutput(self.head(out.fused), out.modality_weights, out.aux_loss, out.expert_weights)


def blank_modalities(batch: dict[str, torch.Tensor], no_text: torch.Tensor, no_tab: torch.Tensor) -> dict[str, torch.Tensor]:
    """A copy of `batch` with the text of rows `no_text` (B,) bool removed (no chunks) and the table of rows `no_tab`
    replaced by the uninformative row (numeric values at their training mean, no missing flags, unknown categories).

    These are the inputs the faithfulness check (`metrics.modality_drops`) substitutes; `model.modality_dropout`
    trains on them so that the model reads them as "this modality says nothing" rather than as unseen inputs.
    """
    out = dict(batch)
    keep_text, keep_tab = (~no_text).to(batch["chunk_mask"].dtype), (~no_tab)
    out["chunk_mask"] = batch["chunk_mask"] * keep_text[:, None]
    if batch.get("chunk_embeddings") is not None:
        out["chunk_embeddings"] = batch["chunk_embeddings"] * keep_text[:, None, None].to(batch["chunk_embeddings"].dtype)
    out["numeric"] = batch["numeric"] * keep_tab[:, None].to(batch["numeric"].dtype)
    out["categorical"] = batch["categorical"] * keep_tab[:, None].to(batch["categorical"].dtype)
    return out


def build_model(cfg: ModelConfig, backbone: nn.Module, n_numeric: int, cardinalities: list[int], n_classes: int, n_text_columns: int = 1) -> MultimodalClassifier:
    set_dropout(backbone, cfg.text_dropout, cfg.text_attention_dropout, cfg.fast_dropout)
    layers = cfg.train_text_layers
    text = TextEncoder(backbone, frozen=layers == 0, pack_groups=cfg.pack_groups)
    text_lower = None
    if isinstance(layers, int) and layers > 0:
        n_layers = len(encoder_layers(backbone))
        check_text_layers(layers, n_layers, cfg.text_encoder)
        text_lower = n_layers - layers
    tab = TabularEncoder(n_numeric, cardinalities, cfg.category_embed_dim, cfg.tab_hidden, cfg.tab_dim, cfg.dropout)
    fusion = create_fusion(cfg.fusion, text.hidden_size, tab.out_dim, cfg)
    pool = AttentionChunkPool(text.hidden_size, cfg.fusion_dim) if cfg.chunk_pooling == "attention" else None
    model = MultimodalClassifier(text, tab, fusion, n_classes, pool, n_text_columns, text_lower, cfg.column_pooling).train()  # from_pretrained leaves the encoder in eval mode
    # a modality the variant never reads (the ablations) trains nothing: no parameter is left without a gradient
    unread = {"text": [text, pool, model.column_embedding, model.column_pool], "tab": [tab]}
    for modality in set(unread) - set(fusion.reads):
        for part in unread[modality]:
            if part is not None:
                part.requires_grad_(False)
    return model
