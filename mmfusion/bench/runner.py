"""`mmfusion bench`: the original design against the optimized path, PyTorch against ONNX Runtime, in one process.

Everything is measured in the same run, on the same data and the same machine, from the same initial weights:
- training and inference samples/s of the reference path (`bench/reference.py`: every dialogue padded to
  max_chunks x chunk_len, every chunk encoded, eager attention, fp32, unmasked chunk mean) and of the optimized path
  (what `train` runs: real chunks packed, padding per batch, length-bucketed batches, SDPA, bf16 autocast where the
  CPU has AMX/AVX512-BF16, optionally torch.compile);
- eager PyTorch vs ONNX Runtime (fp32 and int8) latency at batch 1 and throughput at batch 64;
- the peak memory each phase adds (`PeakRSS`).
Only ratios taken in one run are comparable; absolute figures depend on the machine and its load. CPU only.
This module runs it (`run_bench`: the data, one model and its copies, the phases in order).
"""

from __future__ import annotations

import copy
import dataclasses
import datetime
import tempfile
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader

from mmfusion.bench.engines import measure_onnx
from mmfusion.bench.memory import MEMORY_METHOD
from mmfusion.bench.measure import BenchPath, measure_inference, measure_training, profile_step
from mmfusion.bench.reference import reference_collate, reference_model
from mmfusion.bench.report import format_report, goals, top_name
from mmfusion.config import Config
from mmfusion.data.datamodule import Split, SplitDataset, collate, prepare_data
from mmfusion.data.sampler import bucketed_loader
from mmfusion.encoders import load_text_backbone, load_tokenizer
from mmfusion.errors import ConfigError
from mmfusion.modeling.classifier import MultimodalClassifier, build_model
from mmfusion.training.hardware import apply_threads, cpu_name, describe, resolve_precision

__all__ = ["BenchSettings", "format_report", "run_bench"]


@dataclasses.dataclass
class BenchSettings:
    train_samples: int = 96  # training dialogues (one epoch per path unless `epochs`)
    eval_samples: int = 64  # validation dialogues scored by each path; the batch-64 set of the ONNX section
    latency_samples: int = 16  # batch-1 calls per engine
    epochs: int = 1
    onnx: bool = True
    compile: bool = False  # also measure the optimized path under torch.compile
    profile: bool = False  # torch.profiler table of one optimized training step
    text_layers: int | None = None  # also the optimized path training only the top K encoder layers (train_text_layers=K)


def _head(split: Split, n: int) -> Split:
    """The first n samples of a split."""
    cut = {f.name: getattr(split, f.name)[:n] for f in dataclasses.fields(split) if getattr(split, f.name) is not None}
    cut["frame"] = split.frame.iloc[:n]
    return dataclasses.replace(split, **cut)


def run_bench(cfg: Config, settings: BenchSettings, progress: Callable[[str], None] = lambda s: None) -> dict:
    """Build the data and one model, copy it into each path, measure; -> a JSON-able result."""
    if min(settings.train_samples, settings.eval_samples, settings.latency_samples, settings.epochs) < 1:
        raise ConfigError("bench: --train-samples, --eval-samples, --latency-samples and --epochs must be >= 1")
    if settings.text_layers is not None and settings.text_layers < 0:
        raise ConfigError(f"bench: --text-layers {settings.text_layers}; allowed: 0 (frozen) up to the encoder's layer count")
    apply_threads(cfg.trainer.threads)
    L.seed_everything(cfg.seed, verbose=False)
    tokenizer = load_tokenizer(cfg.model.text_encoder)
    pad_id = tokenizer.pad_token_id or 0
    data = prepare_data(cfg.data, cfg.seed, tokenizer)
    train_split = _head(data.splits["train"], settings.train_samples)
    eval_items = [SplitDataset(data.splits["val"])[i] for i in range(min(settings.eval_samples, len(data.splits["val"].ids)))]
    train_ds = SplitDataset(train_split)
    warm_items = [train_ds[i] for i in range(min(cfg.trainer.batch_size, len(train_ds)))]  # one full batch
    backbone = load_text_backbone(cfg.model.text_encoder)
    own_dropout = (backbone.config.hidden_dropout_prob, backbone.config.attention_probs_dropout_prob)  # the reference's
    model = build_model(cfg.model.model_copy(update={"train_text_layers": "all"}), backbone, data.preprocessor.n_numeric_features,
                        data.preprocessor.cardinalities, len(data.preprocessor.classes), len(data.preprocessor.texts))
    bf16 = resolve_precision(cfg.trainer.precision, "cpu") == "bf16-mixed"
    bs, c, t = cfg.trainer.batch_size, cfg.data.max_chunks, cfg.data.chunk_len
    ref_collate = partial(reference_collate, max_chunks=c, chunk_len=t, pad_id=pad_id)
    opt_collate = partial(collate, pad_id=pad_id)

    def plain_loader(fn: Callable) -> DataLoader:
        return DataLoader(train_ds, batch_size=bs, shuffle=True, generator=torch.Generator().manual_seed(cfg.seed), collate_fn=fn)

    def optimized(m: MultimodalClassifier, name: str) -> BenchPath:
        loader = bucketed_loader(train_ds, bs, cfg.seed, opt_collate) if cfg.data.bucket_by_length else plain_loader(opt_collate)
        return BenchPath(name, m, opt_collate, loader, True, bf16)

    # the original design also ran torch's default AdamW (on CPU: a for-loop over the parameter tensors)
    paths = [BenchPath("reference", reference_model(model, dropout=own_dropout), ref_collate, plain_loader(ref_collate), False, False, "for-loop")]
    paths.append(optimized(model, "optimized"))  # the original object goes last: nothing copies it after training
    if settings.compile or cfg.trainer.compile:
        paths.insert(1, optimized(_copy_compiled(model), "optimized+compile"))
    if settings.text_layers is not None:
        paths.insert(1, optimized(_copy_partial(model, cfg, settings.text_layers, data), top_name(settings.text_layers)))
    res: dict[str, Any] = {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "machine": describe(), "cpu": cpu_name(), "torch_threads": torch.get_num_threads(), "bf16": bf16,
        "text_encoder": cfg.model.text_encoder, "fusion": cfg.model.fusion, "batch_size": bs, "eval_batch_size": cfg.trainer.eval_batch_size,
        "max_chunks": c, "chunk_len": t, "bucket_by_length": cfg.data.bucket_by_length, "settings": dataclasses.asdict(settings),
        "data": cfg.data.path or cfg.data.source, "text_columns": list(data.preprocessor.texts),
        "optimized_options": {k: getattr(cfg.model, k) for k in ("text_dropout", "text_attention_dropout", "fast_dropout", "pack_groups")}
        | {"adamw_impl": cfg.optim.adamw_impl, "own_dropout": own_dropout},
        "train_samples": len(train_ds), "eval_samples": len(eval_items), "memory_method": MEMORY_METHOD, "paths": {},
    }
    for p in paths:
        progress(f"{p.name}: training {len(train_ds)} dialogues x {settings.epochs} epoch(s) ...")
        L.seed_everything(cfg.seed, verbose=False)  # the same dropout draws for every path
        r = measure_training(p, p.collate(warm_items), cfg, settings.epochs)
        progress(f"{p.name}: {r['train_samples_per_s']:.2f} samples/s; inference on {len(eval_items)} ...")
        r |= measure_inference(p, eval_items, cfg.trainer.eval_batch_size)
        progress(f"{p.name}: {r['infer_samples_per_s']:.2f} samples/s")
        res["paths"][p.name] = r
        if p.name != "optimized":
            p.model = None  # free the copy before the next path's memory is measured
    ref, opt = res["paths"]["reference"], res["paths"]["optimized"]
    res["speedup"] = {"train": opt["train_samples_per_s"] / ref["train_samples_per_s"], "infer": opt["infer_samples_per_s"] / ref["infer_samples_per_s"],
                      "train_cpu": opt["train_samples_per_cpu_s"] / ref["train_samples_per_cpu_s"]}
    if settings.text_layers is not None:
        top = res["paths"][top_name(settings.text_layers)]
        res["speedup"] |= {"train_top": top["train_samples_per_s"] / ref["train_samples_per_s"], "train_top_cpu": top["train_samples_per_cpu_s"] / ref["train_samples_per_cpu_s"]}
    n = len(eval_items)
    p_acc = (ref["val_accuracy"] + opt["val_accuracy"]) / 2
    res["val_accuracy_noise"] = 2 * (2 * p_acc * (1 - p_acc) / n) ** 0.5  # 2 s.e. of a difference of two accuracies on n
    if settings.profile:
        progress("profiling one optimized training step ...")
        res["profile"] = profile_step(paths[-1], opt_collate([train_ds[i] for i in range(min(bs, len(train_ds)))]))
    if settings.onnx:
        progress("ONNX: export, int8 quantization, latency and throughput ...")
        with tempfile.TemporaryDirectory() as tmp:
            res["onnx"] = measure_onnx(paths[-1].model, eval_items, pad_id, settings.latency_samples, settings.profile, bf16, Path(tmp))
    res["goals"] = goals(res)
    return res


def _copy_partial(model: MultimodalClassifier, cfg: Config, k: int, data) -> MultimodalClassifier:
    """The optimized model with only its top `k` encoder layers training, from the same initial weights. It runs from
    tokens: the frozen lower layers are recomputed each step (no layer cache, which `train` builds once and reads
    every epoch after), so its figure is what `train` pays in its first epoch, an upper bound for the later ones."""
    backbone = copy.deepcopy(model.text_encoder.backbone)
    partial_model = build_model(cfg.model.model_copy(update={"train_text_layers": k}), backbone, data.preprocessor.n_numeric_features,
                                data.preprocessor.cardinalities, len(data.preprocessor.classes), len(data.preprocessor.texts))
    partial_model.load_state_dict(model.state_dict())
    return partial_model.train()


def _copy_compiled(model: MultimodalClassifier) -> MultimodalClassifier:
    m = copy.deepcopy(model)
    m.text_encoder.backbone.compile(dynamic=True)  # as `trainer.compile=true` does in training
    return m
