"""Single-modality ablations: every comparison needs to know what each modality achieves alone."""

from __future__ import annotations

from mmfusion.fusion.base import Fusion, FusionOutput, projection, register_fusion, two_way


@register_fusion("text_only")
class TextOnly(Fusion):
    """fused = GELU(W h_text); the table is ignored (w_text = 1)."""

    reads = ("text",)

    def __init__(self, text_dim, tab_dim, cfg):
        super().__init__(text_dim, tab_dim, cfg)
        self.proj = projection(text_dim, cfg.fusion_dim, cfg.dropout)

    def forward(self, h_text, h_tab, chunks, chunk_mask):
        return FusionOutput(self.proj(h_text), two_way(h_text.new_ones(h_text.shape[0])), h_text.new_zeros(()))


@register_fusion("tab_only")
class TabOnly(Fusion):
    """fused = GELU(W h_tab); the text is ignored (w_text = 0)."""

    reads = ("tab",)

    def __init__(self, text_dim, tab_dim, cfg):
        super().__init__(text_dim, tab_dim, cfg)
        self.proj = projection(tab_dim, cfg.fusion_dim, cfg.dropout)

    def forward(self, h_text, h_tab, chunks, chunk_mask):
        return FusionOutput(self.proj(h_tab), two_way(h_tab.new_zeros(h_tab.shape[0])), h_tab.new_zeros(()))
