"""Several text columns pooled apart: each column's chunks make one vector, the column vectors are kept side by side.

Pooling every chunk of a row together (`model.column_pooling=joint`) makes h_text a weighted mean of, say, a title's
and a review's embeddings: a mean of two sentence vectors, which blurs what each said. With `separate` each column's
chunks are pooled on their own (by the same chunk pooling, restricted to that column), the K column vectors are
concatenated and projected back to the encoder's width H, so the fusion variants see the same h_text shape:

    h_text = W [v_1; ...; v_K] + b = sum_k W_k v_k + b        W_k (H, H): column k's block

W starts as [I/K, ..., I/K] (the mean of the column vectors), b at 0. On the clothing table without `Rating` the
linear baseline with the two column embeddings averaged instead of concatenated loses 0.6 accuracy / 1.6 macro-F1
points (results/real/quickstart_sweep/).
"""

from __future__ import annotations

import torch
from torch import nn


def column_masks(chunk_mask: torch.Tensor, chunk_column: torch.Tensor, n_columns: int) -> torch.Tensor:
    """(B, C) chunk mask, (B, C) column index -> (B, K, C): 1 where a real chunk belongs to column k."""
    columns = torch.arange(n_columns, device=chunk_column.device).view(1, n_columns, 1)  # (1, K, 1)
    return (chunk_column.unsqueeze(1) == columns).to(chunk_mask.dtype) * chunk_mask.unsqueeze(1)  # (B, K, C)


def mean_weights(masks: torch.Tensor) -> torch.Tensor:
    """(B, K, C) masks -> (B, K, C): each column's real chunks weigh the same (a row of zeros for an empty column)."""
    m = masks.float()
    return m / m.sum(-1, keepdim=True).clamp_min(1.0)


class ColumnProjection(nn.Module):
    """(B, K, H) column vectors -> (B, H) h_text: W [v_1; ...; v_K] + b, W initialised to the column mean."""

    def __init__(self, n_columns: int, hidden: int) -> None:
        super().__init__()
        self.n_columns, self.hidden = n_columns, hidden
        self.proj = nn.Linear(n_columns * hidden, hidden)
        with torch.no_grad():
            self.proj.weight.copy_(torch.eye(hidden).repeat(1, n_columns) / n_columns)  # (H, K*H)
            self.proj.bias.zero_()

    def forward(self, per_column: torch.Tensor) -> torch.Tensor:
        b = per_column.shape[0]
        return self.proj(per_column.reshape(b, self.n_columns * self.hidden))  # (B, K*H) -> (B, H)

    def terms(self, per_column: torch.Tensor) -> torch.Tensor:
        """(B, K, H) -> (B, K, H): W_k v_k, column k's additive part of h_text (the bias aside)."""
        blocks = self.proj.weight.view(self.hidden, self.n_columns, self.hidden)  # (H_out, K, H_in)
        return torch.einsum("bki,oki->bko", per_column.to(blocks.dtype), blocks)
