"""The `moe_topk` fusion variant (see its class docstring for the formula); registered with its options and presets."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field, field_validator
from torch import nn

from mmfusion.fusion.base import Fusion, FusionOptions, FusionOutput, bar_absent_text, projection, register_fusion, router_net, two_way


class ExpertsOptions(FusionOptions):
    """Shared by the N-expert variants: half the experts read the text, half the table."""

    router: Literal["linear", "mlp"] = "linear"
    n_experts: int = Field(4, ge=2)
    load_balance_weight: float = Field(0.01, ge=0.0)

    @field_validator("n_experts")
    @classmethod
    def _even(cls, n: int) -> int:
        if n % 2:
            raise ValueError("must be even (half the experts read text, half the table)")
        return n


class TopKOptions(ExpertsOptions):
    top_k: int = Field(2, ge=1)  # at most n_experts


class Experts(Fusion):
    """The N experts over both modalities and their balance loss; subclasses choose the gates."""

    options: ExpertsOptions

    def __init__(self, text_dim, tab_dim, cfg):
        super().__init__(text_dim, tab_dim, cfg)
        d, self.n_experts = cfg.fusion_dim, self.options.n_experts
        self.text_in, self.tab_in = projection(text_dim, d, cfg.dropout), projection(tab_dim, d, cfg.dropout)
        self.experts = nn.ModuleList(nn.Sequential(nn.Linear(d, d), nn.GELU()) for _ in range(self.n_experts))
        self.router = router_net(self.options.router, 2 * d, self.n_experts, d)
        self.balance_weight = self.options.load_balance_weight

    @classmethod
    def expert_modalities(cls, options: ExpertsOptions) -> list[str]:
        half = options.n_experts // 2
        return ["text"] * half + ["tab"] * half

    def gates(self, x: torch.Tensor, chunk_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Router input (B, 2F) -> (mixing gates, reported gates, router probabilities), each (B, N)."""
        raise NotImplementedError

    def forward(self, h_text, h_tab, chunks, chunk_mask):
        p_text, p_tab = self.text_in(h_text), self.tab_in(h_tab)  # (B, F) each
        half = self.n_experts // 2
        outs = torch.stack(
            [e(p_text) for e in self.experts[:half]] + [e(p_tab) for e in self.experts[half:]], dim=1
        )  # (B, N, F)
        mix, reported, probs = self.gates(torch.cat([p_text, p_tab], dim=-1), chunk_mask)
        fused = (mix.unsqueeze(-1) * outs).sum(dim=1)  # (B, F)
        top1_share = F.one_hot(probs.argmax(-1), self.n_experts).to(probs.dtype).mean(0)  # (N,)
        balance = self.n_experts * (top1_share * probs.mean(0)).sum()
        w_text = reported[:, :half].sum(dim=-1)
        return FusionOutput(fused, two_way(w_text), self.balance_weight * balance, reported)


@register_fusion("moe_topk", options=TopKOptions, presets={f"moe_topk-{r}-soft": {"router": r} for r in ("linear", "mlp")})
class TopKMoEFusion(Experts):
    """N experts over both modalities with noisy top-k routing (Shazeer et al. 2017) and a load-balancing loss.

    The first N/2 experts read the text, the rest the table. With gates G = top_k(softmax(R([p_text; p_tab]) + noise)),
    fused = sum_i G_i E_i(p_modality(i)) and w_text = sum of the text experts' gates. The auxiliary loss is the
    Switch-Transformer balance term N * sum_i f_i P_i (f: share of top-1 picks, P: mean router probability).
    A sample without text never reaches a text expert. (Hard top-1 routing is its own variant, `moe_topk_hard`.)
    """

    options: TopKOptions

    def __init__(self, text_dim, tab_dim, cfg):
        super().__init__(text_dim, tab_dim, cfg)
        self.top_k = min(self.options.top_k, self.n_experts)
        self.noise = nn.Linear(2 * cfg.fusion_dim, self.n_experts)

    def gates(self, x, chunk_mask):
        logits = bar_absent_text(self.router(x), chunk_mask, text_experts=self.n_experts // 2)
        if self.training:  # noise helps exploration and load balance
            logits = logits + torch.randn_like(logits) * F.softplus(self.noise(x))
        kth = logits.topk(self.top_k, dim=-1).values[:, -1:]  # (B, 1)
        gates = logits.masked_fill(logits < kth, float("-inf")).softmax(dim=-1)
        return gates, gates, logits.softmax(dim=-1)
