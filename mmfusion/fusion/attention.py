"""The `attention` fusion variant (see its class docstring for the formula); registered with its options and presets."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from mmfusion.fusion.base import Fusion, FusionOptions, FusionOutput, register_fusion, two_way


class AttentionOptions(FusionOptions):
    layers: int = Field(1, ge=1)
    heads: int = Field(4, ge=1)

    def check(self, model) -> None:
        if model.fusion_dim % self.heads:
            raise ValueError(f"model.fusion_dim ({model.fusion_dim}) must be divisible by model.fusion_options.heads ({self.heads})")


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


@register_fusion("attention", options=AttentionOptions)
class AttentionFusion(Fusion):
    """A small transformer over [CLS, tab token, chunk tokens]; fused = the CLS output.

    The modality weight is the CLS token's attention mass in the last block, split between the text (chunk) tokens
    and the tabular token (renormalised without CLS itself). Padding chunks are masked out of the attention.
    """

    options: AttentionOptions

    def __init__(self, text_dim, tab_dim, cfg):
        super().__init__(text_dim, tab_dim, cfg)
        d = cfg.fusion_dim
        self.cls = nn.Parameter(torch.zeros(1, 1, d))
        self.text_in, self.tab_in = nn.Linear(text_dim, d), nn.Linear(tab_dim, d)
        self.type_embed = nn.Parameter(torch.zeros(2, d))  # 0: text, 1: tab
        self.blocks = nn.ModuleList(Block(d, self.options.heads, cfg.dropout) for _ in range(self.options.layers))
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

    def export_copy(self) -> "AttentionFusion":
        """nn.MultiheadAttention written with plain tensor ops (same weights, same result): the TorchScript tracer
        bakes the sequence length of nn.MultiheadAttention as a constant. Changes this module: call it on a copy."""
        for block in self.blocks:
            block.attn = PlainAttention(block.attn)
        return self


class PlainAttention(nn.Module):
    """Eval-mode nn.MultiheadAttention (batch_first, packed in-projection) in plain tensor ops."""

    def __init__(self, mha: nn.MultiheadAttention) -> None:
        super().__init__()
        self.heads, self.in_proj_weight, self.in_proj_bias, self.out_proj = mha.num_heads, mha.in_proj_weight, mha.in_proj_bias, mha.out_proj

    def forward(self, query, key, value, key_padding_mask=None, need_weights=True, average_attn_weights=True):
        b, _, d = query.shape
        h = self.heads
        wq, wk, wv = self.in_proj_weight.chunk(3)
        bq, bk, bv = self.in_proj_bias.chunk(3)
        q, k, v = (F.linear(x, w, bias).reshape(b, -1, h, d // h).transpose(1, 2) for x, w, bias in ((query, wq, bq), (key, wk, bk), (value, wv, bv)))  # (B, h, L, hd)
        scores = q @ k.transpose(-2, -1) / math.sqrt(d // h)  # (B, h, L, S)
        if key_padding_mask is not None:
            scores = scores.masked_fill(key_padding_mask[:, None, None, :].bool(), float("-inf"))
        attn = scores.softmax(-1)  # eval: no dropout
        out = self.out_proj((attn @ v).transpose(1, 2).reshape(b, -1, d))
        return out, (attn.mean(1) if average_attn_weights else attn) if need_weights else None
