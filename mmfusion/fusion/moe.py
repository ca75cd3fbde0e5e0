"""The `moe` fusion variant (see its class docstring for the formula); registered with its options and presets."""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from mmfusion.fusion.base import Fusion, FusionOptions, FusionOutput, bar_absent_text, projection, register_fusion, route, router_net


class MoeOptions(FusionOptions):
    router: Literal["linear", "mlp"] = "linear"  # linear: the original design's router
    routing: Literal["soft", "hard"] = "soft"  # hard: straight-through Gumbel top-1 while training
    gumbel_temperature: float = Field(1.0, gt=0.0)  # hard routing only


@register_fusion("moe", options=MoeOptions, presets={f"moe-{r}-{k}": {"router": r, "routing": k} for r in ("linear", "mlp") for k in ("soft", "hard")})
class MoEFusion(Fusion):
    """Router over two modality experts: [w_text, w_tab] = route(R([e_text; e_tab])), fused = w_text e_text + w_tab e_tab.

    `router`: `linear` (the original design) or `mlp`; `routing`: `soft` mixing or `hard` straight-through Gumbel
    top-1 while training. A linear router cannot tell "this modality carries signal" when the signal's sign varies,
    so its weights carry little attribution; `mlp` + `hard` makes them meaningful (see README). A sample without
    text is never routed to the text expert.
    """

    options: MoeOptions

    def __init__(self, text_dim, tab_dim, cfg):
        super().__init__(text_dim, tab_dim, cfg)
        o = self.options
        self.text_expert = projection(text_dim, cfg.fusion_dim, cfg.dropout)
        self.tab_expert = projection(tab_dim, cfg.fusion_dim, cfg.dropout)
        self.router = router_net(o.router, 2 * cfg.fusion_dim, 2, cfg.fusion_dim)
        self.routing, self.temperature = o.routing, o.gumbel_temperature

    def forward(self, h_text, h_tab, chunks, chunk_mask):
        experts = torch.stack([self.text_expert(h_text), self.tab_expert(h_tab)], dim=1)  # (B, 2, F)
        logits = bar_absent_text(self.router(experts.flatten(1)), chunk_mask, text_experts=1)  # (B, 2)
        mix, weights = route(logits, self.routing, self.temperature, self.training)  # (B, 2) each
        fused = (mix.unsqueeze(-1) * experts).sum(dim=1)  # (B, F)
        return FusionOutput(fused, weights, h_text.new_zeros(()))
