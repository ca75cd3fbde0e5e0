"""Lightning callbacks of our own: per-rank memory accounting."""

from __future__ import annotations

import resource

import lightning as L
import torch


def _local_bytes(tensors) -> int:
    total = 0
    for t in tensors:
        if t is None:
            continue
        local = t.to_local() if hasattr(t, "to_local") else t  # a DTensor's shard on this rank
        total += local.numel() * local.element_size()
    return total


class MemoryReport(L.Callback):
    """At the end of training, logs per rank: parameters + gradients + optimizer state held locally, and peak RSS.

    With FSDP each rank holds its shard only; the per-rank figure over the 1-process figure is the sharding saving.
    """

    def __init__(self) -> None:
        self.report: dict[str, float] = {}
        self._peak = torch.zeros(3, dtype=torch.float64)  # params, grads, optimizer state (bytes) at their peak

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer) -> None:
        if trainer.global_step > 1:  # the peak is reached once the optimizer state exists; later steps repeat it
            return
        params = list(pl_module.parameters())
        state = [v for s in optimizer.state.values() for v in s.values() if torch.is_tensor(v) and v.ndim > 0]
        now = torch.tensor([_local_bytes(params), _local_bytes(p.grad for p in params), _local_bytes(state)], dtype=torch.float64)
        self._peak = torch.maximum(self._peak, now)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024.0
        local = torch.cat([self._peak, torch.tensor([rss], dtype=torch.float64)])
        gathered = pl_module.all_gather(local).reshape(-1, 4) if trainer.world_size > 1 else local.reshape(1, 4)
        mb = 1024.0**2
        for rank, (p, g, s, peak_rss) in enumerate(gathered.tolist()):
            self.report.update({f"rank{rank}_param_mb": p / mb, f"rank{rank}_grad_mb": g / mb, f"rank{rank}_optim_state_mb": s / mb,
                                f"rank{rank}_train_state_mb": (p + g + s) / mb, f"rank{rank}_peak_rss_mb": peak_rss / mb})
