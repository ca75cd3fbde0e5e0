"""Tabular encoder: numeric features (standardised values + missing flags) and category embeddings -> an MLP."""

from __future__ import annotations

import torch
from torch import nn


class TabularEncoder(nn.Module):
    """Autoencoder-style bottleneck MLP: [numeric; embeddings] -> hidden -> out_dim.

    With no tabular columns at all it returns zeros (B, out_dim): the model is then text-only and every fusion
    variant still runs.
    """

    def __init__(self, n_numeric: int, cardinalities: list[int], embed_dim: int, hidden: int, out_dim: int, dropout: float) -> None:
        super().__init__()
        self.out_dim = out_dim
        self.embeddings = nn.ModuleList(nn.Embedding(n, embed_dim) for n in cardinalities)
        in_dim = n_numeric + embed_dim * len(cardinalities)
        self.mlp = (
            nn.Sequential(nn.Linear(in_dim, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, out_dim), nn.GELU())
            if in_dim
            else None
        )

    def forward(self, numeric: torch.Tensor, categorical: torch.Tensor) -> torch.Tensor:
        """(B, Nn) float, (B, Nc) long -> (B, out_dim)."""
        if self.mlp is None:
            return numeric.new_zeros(numeric.shape[0], self.out_dim)
        parts = [numeric] + [emb(categorical[:, i]) for i, emb in enumerate(self.embeddings)]
        return self.mlp(torch.cat(parts, dim=-1))
