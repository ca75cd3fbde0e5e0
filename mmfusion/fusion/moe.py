from __future__ import annotations

import torch

from mmfusion.fusion.base import Fusion, FusionOutput, bar_absent_text, projection, register_fusion, route, router_net


@register_fusion("moe")
class MoEFusion(Fusion):
    """Router over two modality experts: [w_text, w_tab] = route(R([e_text; e_tab])), fused = w_text e_text + w_tab e_tab.

    `cfg.router`: `linear` (the original design) or `mlp`; `cfg.routing`: `soft` mixing or `hard` straight-through
    Gumbel top-1 while training. A linear router cannot tell "this modality carries signal" when the signal's sign
    varies, so its weights carry little attribution; `mlp` + `hard` makes them meaningful (see README). A sample
    without text is never routed to the text expert.
    """

    def __init__(self, text_dim, tab_dim, cfg):
        super().__init__(text_dim, tab_dim, cfg)
        self.text_expert = projection(text_dim, cfg.fusion_dim, cfg.dropout)
        self.tab_expert = projection(tab_dim, cfg.fusion_dim, cfg.dropout)
        self.router = router_net(cfg.router, 2 * cfg.fusion_dim, 2, cfg.fusion_dim)
        self.routing, self.temperature = cfg.routing, cfg.gumbel_temperature

    def forward(self, h_text, h_tab, chunks, chunk_mask):
        experts = torch.stack([self.text_expert(h_text), self.tab_expert(h_tab)], dim=1)  # (B, 2, F)
        logits = bar_absent_text(self.router(experts.flatten(1)), chunk_mask, text_experts=1)  # (B, 2)
        mix, weights = route(logits, self.routing, self.temperature, self.training)  # (B, 2) each
        fused = (mix.unsqueeze(-1) * experts).sum(dim=1)  # (B, F)
        return FusionOutput(fused, weights, h_text.new_zeros(()))
