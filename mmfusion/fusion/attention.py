from __future__ import annotations

import torch
from torch import nn

from mmfusion.fusion.base import Fusion, FusionOutput, register_fusion, two_way


class Block(nn.Module):
    """Pre-norm transformer block that also returns its head-averaged attention map."""

    def __init__(self, dim: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(2 * dim, dim))

    def forward(self, x: torch.Tensor, pad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.norm1(x)
        a, attn = self.attn(h, h, h, key_padding_mask=pad, need_weights=True, average_attn_weights=True)
        x = x + a
        return x + self.mlp(self.norm2(x)), attn  # (B, L, D), (B, L, L)


@register_fusion("attention")
class AttentionFusion(Fusion):
    """A small transformer over [CLS, tab token, chunk tokens]; fused = the CLS output.

    The modality weight is the CLS token's attention mass in the last block, split between the text (chunk) tokens
    and the tabular token (renormalised without CLS itself). Padding chunks are masked out of the attention.
    """

    def __init__(self, text_dim, tab_dim, cfg):
        super().__init__(text_dim, tab_dim, cfg)
        d = cfg.fusion_dim
        self.cls = nn.Parameter(torch.zeros(1, 1, d))
        self.text_in, self.tab_in = nn.Linear(text_dim, d), nn.Linear(tab_dim, d)
        self.type_embed = nn.Parameter(torch.zeros(2, d))  # 0: text, 1: tab
        self.blocks = nn.ModuleList(Block(d, cfg.attention_heads, cfg.dropout) for _ in range(cfg.attention_layers))
        self.norm = nn.LayerNorm(d)
        nn.init.normal_(self.cls, std=0.02)
        nn.init.normal_(self.type_embed, std=0.02)

    def forward(self, h_text, h_tab, chunks, chunk_mask):
        b = chunks.shape[0]
        text_tokens = self.text_in(chunks) + self.type_embed[0]  # (B, C, D)
        tab_token = (self.tab_in(h_tab) + self.type_embed[1]).unsqueeze(1)  # (B, 1, D)
        x = torch.cat([self.cls.expand(b, -1, -1), tab_token, text_tokens], dim=1)  # (B, 2 + C, D)
        keep = torch.cat([chunk_mask.new_ones(b, 2), chunk_mask], dim=1) > 0  # (B, 2 + C)
        for block in self.blocks:
            x, attn = block(x, ~keep)
        mass = attn[:, 0, 1:]  # (B, 1 + C): CLS -> [tab, chunks]
        w_text = mass[:, 1:].sum(-1) / mass.sum(-1).clamp_min(1e-6)
        return FusionOutput(self.norm(x[:, 0]), two_way(w_text), h_text.new_zeros(()))
