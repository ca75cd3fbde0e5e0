"""The one interface every fusion variant implements, and the registry that holds them.

A variant is built as `Variant(text_dim, tab_dim, cfg)` and called as
`variant(h_text, h_tab, chunks, chunk_mask) -> FusionOutput`:

    h_text      (B, Dt)     masked mean of the chunk embeddings (zeros for a sample with no text)
    h_tab       (B, Da)     tabular embedding (zeros when the data has no tabular columns)
    chunks      (B, C, Dt)  per-chunk text embeddings (zeros at padding chunks)
    chunk_mask  (B, C)      1 for real chunks, 0 for padding

and returns the fused vector (B, F) with its per-sample modality weights (B, 2) = [w_text, w_tab], each row
summing to 1, so inspection, export and comparison treat every variant the same way.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from mmfusion.fusion.registry import Registry

if TYPE_CHECKING:
    from mmfusion.config import ModelConfig


class FusionOutput(NamedTuple):
    fused: torch.Tensor  # (B, F)
    modality_weights: torch.Tensor  # (B, 2): [w_text, w_tab]
    aux_loss: torch.Tensor  # () added to the training loss (load balancing); 0 for most variants
    expert_weights: torch.Tensor | None = None  # (B, E) for mixture-of-experts variants


class Fusion(nn.Module):
    """Base class: subclasses set `self.out_dim` and implement `forward`."""

    out_dim: int

    def __init__(self, text_dim: int, tab_dim: int, cfg: "ModelConfig") -> None:
        super().__init__()
        self.text_dim, self.tab_dim, self.out_dim = text_dim, tab_dim, cfg.fusion_dim

    def forward(
        self, h_text: torch.Tensor, h_tab: torch.Tensor, chunks: torch.Tensor, chunk_mask: torch.Tensor
    ) -> FusionOutput:
        raise NotImplementedError


FUSIONS: Registry[type[Fusion]] = Registry("fusion")
register_fusion = FUSIONS.register


def list_fusions(pattern: str = "*") -> list[str]:
    return FUSIONS.names(pattern)


def create_fusion(name: str, text_dim: int, tab_dim: int, cfg: "ModelConfig") -> Fusion:
    return FUSIONS.get(name)(text_dim, tab_dim, cfg)


# ---- building blocks shared by several variants ----------------------------------------------------------------


def projection(in_dim: int, out_dim: int, dropout: float) -> nn.Sequential:
    """Linear -> GELU -> Dropout: maps one modality into the fusion space."""
    return nn.Sequential(nn.Linear(in_dim, out_dim), nn.GELU(), nn.Dropout(dropout))


def router_net(kind: str, in_dim: int, n_out: int, hidden: int) -> nn.Module:
    """`linear` (the original design's router) or `mlp` (Linear -> GELU -> Linear), producing routing logits."""
    if kind == "linear":
        return nn.Linear(in_dim, n_out)
    return nn.Sequential(nn.Linear(in_dim, hidden), nn.GELU(), nn.Linear(hidden, n_out))


def two_way(w_text: torch.Tensor) -> torch.Tensor:
    """(B,) text weight -> (B, 2) [w_text, w_tab]."""
    return torch.stack([w_text, 1.0 - w_text], dim=-1)


def bar_absent_text(logits: torch.Tensor, chunk_mask: torch.Tensor, text_experts: int) -> torch.Tensor:
    """Router logits (B, E) whose first `text_experts` experts read the text: a sample without a single real chunk
    cannot be routed to them (its text expert would only see zeros), so its w_text is 0."""
    no_text = (chunk_mask.sum(dim=-1) == 0).unsqueeze(-1)  # (B, 1)
    is_text = torch.arange(logits.shape[-1], device=logits.device) < text_experts  # (E,)
    return logits.masked_fill(no_text & is_text, -1e4)


def route(logits: torch.Tensor, routing: str, temperature: float, training: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Turn router logits (B, E) into (mixing weights, reported weights), both (B, E).

    soft: both are softmax(logits).
    hard: mixing is top-1 one-hot (straight-through Gumbel while training, argmax at evaluation) so each expert
          must carry the sample alone; the reported weights are softmax(logits), the router's belief.
    """
    probs = logits.softmax(dim=-1)
    if routing == "soft":
        return probs, probs
    if training:
        return F.gumbel_softmax(logits, tau=temperature, hard=True, dim=-1), probs
    hard = F.one_hot(logits.argmax(dim=-1), logits.shape[-1]).to(probs.dtype)
    return hard, probs
