"""The `gate` fusion variant (see its class docstring for the formula); registered with its options and presets."""

from __future__ import annotations

import torch
from torch import nn

from mmfusion.fusion.base import Fusion, FusionOutput, projection, register_fusion, two_way


@register_fusion("gate")
class GateFusion(Fusion):
    """Per-dimension gate: g = sigmoid(W [p_text; p_tab]), fused = g * p_text + (1 - g) * p_tab.

    p_* are the modalities projected to the fusion dimension; the modality weight is the mean gate, w_text = mean(g).
    """

    def __init__(self, text_dim, tab_dim, cfg):
        super().__init__(text_dim, tab_dim, cfg)
        self.text_proj = projection(text_dim, cfg.fusion_dim, cfg.dropout)
        self.tab_proj = projection(tab_dim, cfg.fusion_dim, cfg.dropout)
        self.gate = nn.Linear(2 * cfg.fusion_dim, cfg.fusion_dim)

    def _gate(self, h_text, h_tab):
        p_text, p_tab = self.text_proj(h_text), self.tab_proj(h_tab)  # (B, F) each
        return p_text, p_tab, torch.sigmoid(self.gate(torch.cat([p_text, p_tab], dim=-1)))  # g: (B, F)

    def forward(self, h_text, h_tab, chunks, chunk_mask):
        p_text, p_tab, g = self._gate(h_text, h_tab)
        fused = g * p_text + (1.0 - g) * p_tab
        return FusionOutput(fused, two_way(g.mean(dim=-1)), h_text.new_zeros(()))

    def diagnostics(self, h_text, h_tab, chunks, chunk_mask):
        return {"gate": self._gate(h_text, h_tab)[2]}  # (B, F): per fused dimension, the weight on the text
