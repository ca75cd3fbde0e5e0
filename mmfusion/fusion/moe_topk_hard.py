"""The `moe_topk_hard` fusion variant (see its class docstring for the formula); registered with its options and presets."""

from __future__ import annotations

from pydantic import Field
from torch import nn

from mmfusion.fusion.base import bar_absent_text, register_fusion, route
from mmfusion.fusion.moe_topk import Experts, ExpertsOptions


class HardOptions(ExpertsOptions):
    gumbel_temperature: float = Field(1.0, gt=0.0)


@register_fusion("moe_topk_hard", options=HardOptions, presets={f"moe_topk-{r}-hard": {"router": r} for r in ("linear", "mlp")})
class HardTopKMoEFusion(Experts):
    """`moe_topk`'s N experts with hard top-1 routing: straight-through Gumbel while training, argmax at evaluation.

    Each sample is carried by one expert alone; the reported gates (expert_weights, and w_text = the text experts'
    share) are the router's softmax belief. Same balance loss as `moe_topk`. A sample without text never reaches a
    text expert. (Before the variants owned their options this was `moe_topk` with `model.routing: hard`.)
    """

    options: HardOptions

    def __init__(self, text_dim, tab_dim, cfg):
        super().__init__(text_dim, tab_dim, cfg)
        self.temperature = self.options.gumbel_temperature
        # Draw (and drop) the initial weights of moe_topk's noise net, which hard routing never used: the head and
        # pooling are initialised after the fusion, so runs logged as `moe_topk` + `routing: hard` reproduce exactly.
        nn.Linear(2 * cfg.fusion_dim, self.n_experts)

    def gates(self, x, chunk_mask):
        logits = bar_absent_text(self.router(x), chunk_mask, text_experts=self.n_experts // 2)
        mix, reported = route(logits, "hard", self.temperature, self.training)
        return mix, reported, reported
