"""One PyTorch path of the benchmark (reference or optimized) measured: training and inference samples/s, memory,
validation metrics, and a profile of one training step."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from contextlib import nullcontext

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from mmfusion.bench.memory import PeakRSS
from mmfusion.config import Config
from mmfusion.encoders.text import length_groups
from mmfusion.modeling.classifier import MultimodalClassifier
from mmfusion.modeling.metrics import classification_metrics
from mmfusion.modeling.module import MODEL_INPUTS, build_optimizer


@dataclasses.dataclass
class BenchPath:
    name: str
    model: MultimodalClassifier
    collate: Callable[[list[dict]], dict]
    train_loader: DataLoader
    packed: bool  # encodes only real chunks, padded to the batch's longest (the optimized TextEncoder)
    bf16: bool
    adamw_impl: str | None = None  # None: the config's (`optim.adamw_impl`); the reference: torch's CPU default


def model_inputs(batch: dict) -> dict:
    return {k: batch[k] for k in MODEL_INPUTS if k in batch}


def autocast(bf16: bool):
    return torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else nullcontext()


def encoded_tokens(batch: dict, packed: bool, groups: int = 1) -> int:
    """Token positions the encoder runs on for this batch (real + padding); packed: in `groups` length groups."""
    if not packed:
        return batch["input_ids"].numel()
    lengths = batch["attention_mask"].sum(-1)[batch["chunk_mask"].bool()]
    return sum(int(len(g) * lengths[g].max()) for g in length_groups(lengths, groups)) if lengths.numel() else 0


def _loss(model: MultimodalClassifier, batch: dict, bf16: bool) -> torch.Tensor:
    with autocast(bf16):
        out = model(**model_inputs(batch))
    return F.cross_entropy(out.logits.float(), batch["label"]) + out.aux_loss


def measure_training(path: BenchPath, warm: dict, cfg: Config, epochs: int) -> dict:
    """One warm-up forward/backward on a full batch (no update: first-call costs stay out of the timing), then
    `epochs` timed epochs, loader included, with the optimizer `train` builds (no schedule: it costs nothing)."""
    model = path.model.train()
    opt = build_optimizer(model, cfg.optim if path.adamw_impl is None else cfg.optim.model_copy(update={"adamw_impl": path.adamw_impl}))
    clip = cfg.trainer.gradient_clip_val
    n = tokens = real = 0
    with PeakRSS() as mem:
        started = time.perf_counter()
        _loss(model, warm, path.bf16).backward()
        model.zero_grad(set_to_none=True)
        warmup = time.perf_counter() - started
        started, cpu = time.perf_counter(), time.process_time()
        for _ in range(epochs):
            for batch in path.train_loader:
                _loss(model, batch, path.bf16).backward()
                if clip:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
                opt.step()
                opt.zero_grad(set_to_none=True)
                n += len(batch["label"])
                tokens += encoded_tokens(batch, path.packed, getattr(model.text_encoder, "pack_groups", 1))
                real += int(batch["attention_mask"].sum())
        seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
    del opt
    # samples per CPU second of this process: on a shared machine, load that drifts between the phases moves wall
    # time, much less CPU time (with trainer.threads=1 no thread spins on a preempted peer)
    return {"train_samples_per_s": n / seconds, "train_seconds": seconds, "train_samples_per_cpu_s": n / cpu, "warmup_seconds": warmup, "train_peak_mib": mem.mib,
            "encoded_tokens_per_sample": tokens / n, "real_tokens_per_sample": real / n}


def measure_inference(path: BenchPath, items: list[dict], batch_size: int) -> dict:
    """Score `items` in dataset order at `batch_size` (what evaluation and `predict` do), twice: the second pass is
    timed (steady state: first calls on a shape pay one-time costs) -> samples/s + val metrics."""
    model = path.model.eval()
    batches = [path.collate(items[i : i + batch_size]) for i in range(0, len(items), batch_size)]
    with PeakRSS() as mem, torch.inference_mode(), autocast(path.bf16):
        for b in batches:
            model(**model_inputs(b))
        started = time.perf_counter()
        probs = [model(**model_inputs(b)).logits.float().softmax(-1) for b in batches]
        seconds = time.perf_counter() - started
    labels = torch.cat([b["label"] for b in batches])
    metrics = classification_metrics(torch.cat(probs), labels)
    return {"infer_samples_per_s": len(items) / seconds, "infer_seconds": seconds, "infer_peak_mib": mem.mib,
            "val_accuracy": metrics["accuracy"], "val_auroc": metrics.get("auroc", float("nan")), "val_loss": metrics["loss"]}


def profile_step(path: BenchPath, batch: dict, top: int = 12) -> list[dict]:
    """Where one training step's time goes: the top ops by self CPU time (torch.profiler)."""
    from torch.profiler import ProfilerActivity, profile

    model = path.model.train()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        _loss(model, batch, path.bf16).backward()
    model.zero_grad(set_to_none=True)
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events) or 1.0
    return [{"op": e.key, "self_cpu_ms": e.self_cpu_time_total / 1000, "share": e.self_cpu_time_total / total, "calls": e.count} for e in events[:top]]
