"""The `concat` fusion variant (see its class docstring for the formula); registered with its options and presets."""

from __future__ import annotations

from torch import nn

from mmfusion.fusion.base import Fusion, FusionOutput, register_fusion, two_way


@register_fusion("concat")
class ConcatFusion(Fusion):
    """fused = GELU(W_t h_text + W_a h_tab + b): a projection of the concatenation (the baseline).

    Its modality weight is each modality's share of the pre-activation: w_text = |W_t h_text| / (|W_t h_text| + |W_a h_tab|).
    """

    def __init__(self, text_dim, tab_dim, cfg):
        super().__init__(text_dim, tab_dim, cfg)
        self.text_part = nn.Linear(text_dim, cfg.fusion_dim)
        self.tab_part = nn.Linear(tab_dim, cfg.fusion_dim, bias=False)
        self.out = nn.Sequential(nn.GELU(), nn.Dropout(cfg.dropout))

    def forward(self, h_text, h_tab, chunks, chunk_mask):
        a_text = self.text_part(h_text)  # (B, F), includes the bias
        a_tab = self.tab_part(h_tab)  # (B, F)
        n_text = (a_text - self.text_part.bias).norm(dim=-1)
        n_tab = a_tab.norm(dim=-1)
        w_text = n_text / (n_text + n_tab).clamp_min(1e-6)
        return FusionOutput(self.out(a_text + a_tab), two_way(w_text), h_text.new_zeros(()))
