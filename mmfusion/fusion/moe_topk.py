from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mmfusion.fusion.base import Fusion, FusionOutput, bar_absent_text, projection, register_fusion, route, router_net, two_way


@register_fusion("moe_topk")
class TopKMoEFusion(Fusion):
    """N experts over both modalities with noisy top-k routing (Shazeer et al. 2017) and a load-balancing loss.

    The first N/2 experts read the text, the rest the table. With gates G = top_k(softmax(R([p_text; p_tab]) + noise)),
    fused = sum_i G_i E_i(p_modality(i)) and w_text = sum of the text experts' gates. The auxiliary loss is the
    Switch-Transformer balance term N * sum_i f_i P_i (f: share of top-1 picks, P: mean router probability).
    `cfg.routing = hard` routes top-1 with straight-through Gumbel instead. A sample without text never reaches a
    text expert.
    """

    def __init__(self, text_dim, tab_dim, cfg):
        super().__init__(text_dim, tab_dim, cfg)
        if cfg.n_experts < 2 or cfg.n_experts % 2:
            raise ValueError(f"moe_topk needs an even model.n_experts >= 2, got {cfg.n_experts}")
        d, self.n_experts, self.top_k = cfg.fusion_dim, cfg.n_experts, min(cfg.top_k, cfg.n_experts)
        self.text_in, self.tab_in = projection(text_dim, d, cfg.dropout), projection(tab_dim, d, cfg.dropout)
        self.experts = nn.ModuleList(nn.Sequential(nn.Linear(d, d), nn.GELU()) for _ in range(self.n_experts))
        self.router = router_net(cfg.router, 2 * d, self.n_experts, d)
        self.noise = nn.Linear(2 * d, self.n_experts)
        self.routing, self.temperature, self.balance_weight = cfg.routing, cfg.gumbel_temperature, cfg.load_balance_weight

    def gates(self, x: torch.Tensor, chunk_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Router input (B, 2F) -> (mixing gates, reported gates, router probabilities), each (B, N)."""
        logits = bar_absent_text(self.router(x), chunk_mask, text_experts=self.n_experts // 2)
        if self.routing == "hard":
            mix, reported = route(logits, "hard", self.temperature, self.training)
            return mix, reported, reported
        if self.training:  # noise helps exploration and load balance
            logits = logits + torch.randn_like(logits) * F.softplus(self.noise(x))
        kth = logits.topk(self.top_k, dim=-1).values[:, -1:]  # (B, 1)
        gates = logits.masked_fill(logits < kth, float("-inf")).softmax(dim=-1)
        return gates, gates, logits.softmax(dim=-1)

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
