"""`mmfusion bench`: the original design against the optimized path, PyTorch against ONNX Runtime, in one process.

Everything is measured in the same run, on the same data and the same machine, from the same initial weights:
- training and inference samples/s of the reference path (`mmfusion/reference.py`: every dialogue padded to
  max_chunks x chunk_len, every chunk encoded, eager attention, fp32, unmasked chunk mean) and of the optimized path
  (what `train` runs: real chunks packed, padding per batch, length-bucketed batches, SDPA, bf16 autocast where the
  CPU has AMX/AVX512-BF16, optionally torch.compile);
- eager PyTorch vs ONNX Runtime (fp32 and int8) latency at batch 1 and throughput at batch 64;
- the peak memory each phase adds (`PeakRSS`).
Only ratios taken in one run are comparable; absolute figures depend on the machine and its load. CPU only.
"""

from __future__ import annotations

import ctypes
import dataclasses
import datetime
import gc
import statistics
import tempfile
import time
from collections.abc import Callable
from contextlib import nullcontext
from functools import partial
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from mmfusion.config import Config
from mmfusion.data.datamodule import Split, SplitDataset, collate, prepare_data
from mmfusion.data.sampler import bucketed_loader
from mmfusion.encoders import load_text_backbone, load_tokenizer
from mmfusion.errors import ConfigError
from mmfusion.training.hardware import cpu_name, describe, resolve_precision
from mmfusion.modeling.module import MODEL_INPUTS
from mmfusion.modeling.metrics import classification_metrics
from mmfusion.modeling.classifier import MultimodalClassifier, build_model
from mmfusion.bench.reference import reference_collate, reference_model

MEMORY_METHOD = "peak RSS added by the phase: Linux VmHWM reset at its start (/proc/self/clear_refs), after gc + malloc_trim"


@dataclasses.dataclass
class BenchSettings:
    train_samples: int = 96  # training dialogues (one epoch per path unless `epochs`)
    eval_samples: int = 64  # validation dialogues scored by each path; the batch-64 set of the ONNX section
    latency_samples: int = 16  # batch-1 calls per engine
    epochs: int = 1
    onnx: bool = True
    compile: bool = False  # also measure the optimized path under torch.compile
    profile: bool = False  # torch.profiler table of one optimized training step


# ---- memory ------------------------------------------------------------------------------------------------------


def _status_kib(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


class PeakRSS:
    """Peak resident memory a block adds (MiB, `.mib`; None where the OS gives no resettable peak).

    Resident memory covers everything (PyTorch's allocations, oneDNN scratch, ONNX Runtime's arena), unlike
    tracemalloc or the torch profiler. Freed heap is returned to the OS first, so an earlier, larger phase does not
    leave reusable memory that would hide this phase's growth.
    """

    def __enter__(self) -> "PeakRSS":
        gc.collect()
        try:
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except (OSError, AttributeError):
            pass
        self.start = _status_kib("VmRSS")
        try:
            Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS (Linux >= 4.0)
            self.ok = self.start is not None
        except OSError:
            self.ok = False
        return self

    def __exit__(self, *exc) -> None:
        peak = _status_kib("VmHWM")
        self.mib = (peak - self.start) / 1024 if self.ok and peak is not None else None


# ---- the two paths ------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class BenchPath:
    name: str
    model: MultimodalClassifier
    collate: Callable[[list[dict]], dict]
    train_loader: DataLoader
    packed: bool  # encodes only real chunks, padded to the batch's longest (the optimized TextEncoder)
    bf16: bool


def _head(split: Split, n: int) -> Split:
    """The first n samples of a split."""
    cut = {f.name: getattr(split, f.name)[:n] for f in dataclasses.fields(split) if getattr(split, f.name) is not None}
    cut["frame"] = split.frame.iloc[:n]
    return dataclasses.replace(split, **cut)


def _inputs(batch: dict) -> dict:
    return {k: batch[k] for k in MODEL_INPUTS if k in batch}


def _autocast(bf16: bool):
    return torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else nullcontext()


def encoded_tokens(batch: dict, packed: bool) -> int:
    """Token positions the encoder runs on for this batch (real + padding)."""
    if not packed:
        return batch["input_ids"].numel()
    lengths = batch["attention_mask"].sum(-1)[batch["chunk_mask"].bool()]
    return int(lengths.numel() * lengths.max()) if lengths.numel() else 0


def _param_groups(model: MultimodalClassifier, cfg: Config) -> list[dict]:
    """The learning rates of `FusionClassifierModule`: the pretrained encoder slower than the rest."""
    enc = [p for n, p in model.named_parameters() if p.requires_grad and n.startswith("text_encoder.")]
    rest = [p for n, p in model.named_parameters() if p.requires_grad and not n.startswith("text_encoder.")]
    return [{"params": enc, "lr": cfg.optim.encoder_lr}, {"params": rest, "lr": cfg.optim.lr}]


def _loss(model: MultimodalClassifier, batch: dict, bf16: bool) -> torch.Tensor:
    with _autocast(bf16):
        out = model(**_inputs(batch))
    return F.cross_entropy(out.logits.float(), batch["label"]) + out.aux_loss


def measure_training(path: BenchPath, warm: dict, cfg: Config, epochs: int) -> dict:
    """One warm-up forward/backward on a full batch (no update: first-call costs stay out of the timing), then
    `epochs` timed epochs, loader included."""
    model = path.model.train()
    opt = torch.optim.AdamW(_param_groups(model, cfg), weight_decay=cfg.optim.weight_decay)
    clip = cfg.trainer.gradient_clip_val
    n = tokens = real = 0
    with PeakRSS() as mem:
        started = time.perf_counter()
        _loss(model, warm, path.bf16).backward()
        model.zero_grad(set_to_none=True)
        warmup = time.perf_counter() - started
        started = time.perf_counter()
        for _ in range(epochs):
            for batch in path.train_loader:
                _loss(model, batch, path.bf16).backward()
                if clip:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
                opt.step()
                opt.zero_grad(set_to_none=True)
                n += len(batch["label"])
                tokens += encoded_tokens(batch, path.packed)
                real += int(batch["attention_mask"].sum())
        seconds = time.perf_counter() - started
    del opt
    return {"train_samples_per_s": n / seconds, "train_seconds": seconds, "warmup_seconds": warmup, "train_peak_mib": mem.mib,
            "encoded_tokens_per_sample": tokens / n, "real_tokens_per_sample": real / n}


def measure_inference(path: BenchPath, items: list[dict], batch_size: int) -> dict:
    """Score `items` in dataset order at `batch_size` (what evaluation and `predict` do), twice: the second pass is
    timed (steady state: first calls on a shape pay one-time costs) -> samples/s + val metrics."""
    model = path.model.eval()
    batches = [path.collate(items[i : i + batch_size]) for i in range(0, len(items), batch_size)]
    with PeakRSS() as mem, torch.inference_mode(), _autocast(path.bf16):
        for b in batches:
            model(**_inputs(b))
        started = time.perf_counter()
        probs = [model(**_inputs(b)).logits.float().softmax(-1) for b in batches]
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


# ---- ONNX Runtime vs eager ---------------------------------------------------------------------------------------


def _timed(fn: Callable[[dict], Any], batch: dict) -> tuple[float, Any]:
    started = time.perf_counter()
    out = fn(batch)
    return time.perf_counter() - started, out


def fuse_onnx(src: Path, model: MultimodalClassifier, dst: Path) -> Path | None:
    """ONNX Runtime's transformer optimizer over the exported file: attention, skip + layer norm, embedding + layer
    norm and bias + GELU each become one fused kernel (the exporter writes them op by op). None where it fails."""
    import logging

    try:
        from onnxruntime.transformers import optimizer

        logging.getLogger("onnxruntime.transformers").setLevel(logging.ERROR)
        bert = model.text_encoder.backbone.config
        optimizer.optimize_model(str(src), model_type="bert", num_heads=bert.num_attention_heads, hidden_size=bert.hidden_size).save_model_to_file(str(dst))
        return dst
    except Exception as err:  # noqa: BLE001 - an encoder it does not know: those engines are left out, and said so
        logging.getLogger(__name__).warning("ONNX Runtime's transformer optimizer did not apply: %s", str(err)[:200])
        return None


def quantize_fused(src: Path, dst: Path) -> Path | None:
    """int8 dynamic quantization of a fused model (as `quantize_onnx`, but its shape inference cannot type the fused
    ops' outputs: ORT's documented `DefaultTensorType` option says they are float). None where it fails."""
    import logging

    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    try:
        quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8, extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
        return dst
    except Exception as err:  # noqa: BLE001 - that engine is left out
        logging.getLogger(__name__).warning("int8 quantization of the fused model failed: %s", str(err)[:200])
        return None


def measure_onnx(model: MultimodalClassifier, items: list[dict], pad_id: int, settings: BenchSettings, bf16: bool, tmp: Path) -> dict:
    """Eager PyTorch (the optimized path) vs ONNX Runtime: the exported model (fp32, int8) and the same file after ORT's
    transformer optimizer (fused, fp32 and int8). Batch-1 latency, batch-64 throughput, memory, accuracy on the
    batch-64 set and agreement with the fp32 export."""
    try:
        from mmfusion.export.onnx import export_onnx, quantize_onnx
        from mmfusion.serving.onnx_scorer import OnnxScorer
    except ImportError as err:
        return {"skipped": f"mmfusion.export is not available ({err}); ONNX figures not measured"}
    model = model.eval()
    started = time.perf_counter()
    files = {"onnx_fp32": export_onnx(model, collate(items[:8], pad_id), tmp / "model.onnx")}
    export_seconds = time.perf_counter() - started
    started = time.perf_counter()
    files["onnx_int8"] = quantize_onnx(files["onnx_fp32"], tmp / "model_int8.onnx")
    quantize_seconds = time.perf_counter() - started
    if (fused := fuse_onnx(files["onnx_fp32"], model, tmp / "model_fused.onnx")) is not None:
        files["fused_fp32"] = fused
        if (q := quantize_fused(fused, tmp / "model_fused_int8.onnx")) is not None:
            files["fused_int8"] = q
    threads = torch.get_num_threads()

    def eager(batch: dict) -> dict:
        with torch.inference_mode(), _autocast(bf16):
            return {"probs": model(**_inputs(batch)).logits.float().softmax(-1).numpy()}

    engines = {"eager": eager, **{name: OnnxScorer(path, threads) for name, path in files.items()}}
    singles = [collate([it], pad_id) for it in items[: settings.latency_samples]]
    batches = [collate(items[i : i + 64], pad_id) for i in range(0, len(items), 64)]  # the first is timed
    big, labels = batches[0], torch.cat([b["label"] for b in batches]).numpy()
    out: dict[str, Any] = {"batch": len(big["label"]), "accuracy_samples": len(labels), "latency_samples": len(singles), "threads": threads,
                           "export_seconds": export_seconds, "quantize_seconds": quantize_seconds,
                           "size_mb": {name: path.stat().st_size / 2**20 for name, path in files.items()}, "engines": {}}
    probs = {}
    for name, fn in engines.items():
        fn(singles[0])  # warm-up
        latencies = [_timed(fn, b)[0] * 1000 for b in singles]
        with PeakRSS() as mem:
            fn(big)  # warm-up at full size; the second call is timed
            seconds, res = _timed(fn, big)
        p = probs[name] = np.concatenate([res["probs"], *(fn(b)["probs"] for b in batches[1:])])  # accuracy on every eval sample
        out["engines"][name] = {"latency_ms_median": statistics.median(latencies), "latency_ms_p90": sorted(latencies)[int(0.9 * (len(latencies) - 1))],
                                "batch_samples_per_s": len(big["label"]) / seconds, "batch_peak_mib": mem.mib, "accuracy": float((p.argmax(1) == labels).mean()),
                                "max_abs_diff_vs_onnx_fp32": float(abs(p - probs["onnx_fp32"]).max()) if "onnx_fp32" in probs else 0.0,
                                "agreement_vs_onnx_fp32": float((p.argmax(1) == probs["onnx_fp32"].argmax(1)).mean()) if "onnx_fp32" in probs else 1.0}
    e = out["engines"]
    out["max_abs_diff_fp32_vs_eager"] = float(abs(probs["onnx_fp32"] - probs["eager"]).max())
    out["max_abs_diff_int8_vs_fp32"] = e["onnx_int8"]["max_abs_diff_vs_onnx_fp32"]
    out["int8_agreement"] = e["onnx_int8"]["agreement_vs_onnx_fp32"]
    for name in files:
        e[name]["latency_vs_eager"] = e[name]["latency_ms_median"] / e["eager"]["latency_ms_median"]
    out["latency_ratio_onnx_vs_eager"] = e["onnx_fp32"]["latency_vs_eager"]
    out["latency_ratio_int8_vs_eager"] = e["onnx_int8"]["latency_vs_eager"]
    out["int8_speedup_batch"] = e["onnx_int8"]["batch_samples_per_s"] / e["onnx_fp32"]["batch_samples_per_s"]
    out["int8_speedup_latency"] = e["onnx_fp32"]["latency_ms_median"] / e["onnx_int8"]["latency_ms_median"]
    out["int8_accuracy_delta_points"] = 100 * (e["onnx_int8"]["accuracy"] - e["onnx_fp32"]["accuracy"])
    if settings.profile:
        out["profile_onnx"] = {name: profile_onnx(files[name], singles, threads) for name in files if name.endswith("fp32")}
    return out


def profile_onnx(path: Path, batches: list[dict], threads: int, top: int = 10) -> list[dict]:
    """Where ONNX Runtime's time goes on these batches: node time summed by op type (its own profiler)."""
    import json

    import onnxruntime as ort

    from mmfusion.serving.onnx_scorer import OnnxScorer

    opts = ort.SessionOptions()
    opts.enable_profiling, opts.intra_op_num_threads, opts.inter_op_num_threads = True, threads, 1
    opts.profile_file_prefix = str(path.with_name("ort_profile"))
    scorer = OnnxScorer(path, threads)
    scorer.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])  # same feeds, profiled
    for b in batches:
        scorer(b)
    events = json.loads(Path(scorer.session.end_profiling()).read_text())
    by_op: dict[str, list[float]] = {}
    for ev in events:
        if ev.get("cat") == "Node" and ev.get("name", "").endswith("_kernel_time"):
            by_op.setdefault(ev["args"]["op_name"], []).append(ev["dur"])
    total = sum(sum(v) for v in by_op.values()) or 1.0
    rows = sorted(by_op.items(), key=lambda kv: sum(kv[1]), reverse=True)[:top]
    return [{"op": op, "ms_per_call": sum(d) / 1000 / len(batches), "share": sum(d) / total, "nodes": len(d) // len(batches)} for op, d in rows]


# ---- the run -------------------------------------------------------------------------------------------------------


def _goals(res: dict) -> list[dict]:
    goals = [("training throughput >= 4x the reference path", res["speedup"]["train"], lambda v: v >= 4.0, "{:.2f}x")]
    o = res.get("onnx", {})
    if "engines" in o:
        best = min((n for n in o["engines"] if n.endswith("fp32")), key=lambda n: o["engines"][n]["latency_vs_eager"])
        goals += [
            (f"ONNX Runtime fp32 batch-1 latency <= 0.5x eager PyTorch ({best})", o["engines"][best]["latency_vs_eager"], lambda v: v <= 0.5, "{:.2f}x"),
            ("int8 ONNX >= 2x faster than fp32 ONNX (batch 64)", o["int8_speedup_batch"], lambda v: v >= 2.0, "{:.2f}x"),
            ("int8 ONNX accuracy within 1 point of fp32 ONNX", o["int8_accuracy_delta_points"], lambda v: abs(v) <= 1.0, "{:+.1f} points"),
        ]
    return [{"goal": g, "value": v, "met": bool(ok(v)), "shown": fmt.format(v)} for g, v, ok, fmt in goals]


def run_bench(cfg: Config, settings: BenchSettings, progress: Callable[[str], None] = lambda s: None) -> dict:
    """Build the data and one model, copy it into each path, measure; -> a JSON-able result."""
    if min(settings.train_samples, settings.eval_samples, settings.latency_samples, settings.epochs) < 1:
        raise ConfigError("bench: --train-samples, --eval-samples, --latency-samples and --epochs must be >= 1")
    L.seed_everything(cfg.seed, verbose=False)
    tokenizer = load_tokenizer(cfg.model.text_encoder)
    pad_id = tokenizer.pad_token_id or 0
    data = prepare_data(cfg.data, cfg.seed, tokenizer)
    train_split = _head(data.splits["train"], settings.train_samples)
    eval_items = [SplitDataset(data.splits["val"])[i] for i in range(min(settings.eval_samples, len(data.splits["val"].ids)))]
    train_ds = SplitDataset(train_split)
    warm_items = [train_ds[i] for i in range(min(cfg.trainer.batch_size, len(train_ds)))]  # one full batch
    model = build_model(cfg.model.model_copy(update={"freeze_text_encoder": False}), load_text_backbone(cfg.model.text_encoder),
                        data.preprocessor.n_numeric_features, data.preprocessor.cardinalities, len(data.preprocessor.classes))
    bf16 = resolve_precision(cfg.trainer.precision, "cpu") == "bf16-mixed"
    bs, c, t = cfg.trainer.batch_size, cfg.data.max_chunks, cfg.data.chunk_len
    ref_collate = partial(reference_collate, max_chunks=c, chunk_len=t, pad_id=pad_id)
    opt_collate = partial(collate, pad_id=pad_id)

    def plain_loader(fn: Callable) -> DataLoader:
        return DataLoader(train_ds, batch_size=bs, shuffle=True, generator=torch.Generator().manual_seed(cfg.seed), collate_fn=fn)

    def optimized(m: MultimodalClassifier, name: str) -> BenchPath:
        loader = bucketed_loader(train_ds, bs, cfg.seed, opt_collate) if cfg.data.bucket_by_length else plain_loader(opt_collate)
        return BenchPath(name, m, opt_collate, loader, True, bf16)

    paths = [BenchPath("reference", reference_model(model), ref_collate, plain_loader(ref_collate), False, False)]
    paths.append(optimized(model, "optimized"))  # the original object goes last: nothing copies it after training
    if settings.compile or cfg.trainer.compile:
        paths.insert(1, optimized(_copy_compiled(model), "optimized+compile"))
    res: dict[str, Any] = {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "machine": describe(), "cpu": cpu_name(), "torch_threads": torch.get_num_threads(), "bf16": bf16,
        "text_encoder": cfg.model.text_encoder, "fusion": cfg.model.fusion, "batch_size": bs, "eval_batch_size": cfg.trainer.eval_batch_size,
        "max_chunks": c, "chunk_len": t, "bucket_by_length": cfg.data.bucket_by_length, "settings": dataclasses.asdict(settings),
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
    res["speedup"] = {"train": opt["train_samples_per_s"] / ref["train_samples_per_s"], "infer": opt["infer_samples_per_s"] / ref["infer_samples_per_s"]}
    n = len(eval_items)
    p_acc = (ref["val_accuracy"] + opt["val_accuracy"]) / 2
    res["val_accuracy_noise"] = 2 * (2 * p_acc * (1 - p_acc) / n) ** 0.5  # 2 s.e. of a difference of two accuracies on n
    if settings.profile:
        progress("profiling one optimized training step ...")
        res["profile"] = profile_step(paths[-1], opt_collate([train_ds[i] for i in range(min(bs, len(train_ds)))]))
    if settings.onnx:
        progress("ONNX: export, int8 quantization, latency and throughput ...")
        with tempfile.TemporaryDirectory() as tmp:
            res["onnx"] = measure_onnx(paths[-1].model, eval_items, pad_id, settings, bf16, Path(tmp))
    res["goals"] = _goals(res)
    return res


def _copy_compiled(model: MultimodalClassifier) -> MultimodalClassifier:
    import copy

    m = copy.deepcopy(model)
    m.text_encoder.backbone.compile(dynamic=True)  # as `trainer.compile=true` does in training
    return m


# ---- report --------------------------------------------------------------------------------------------------------


def _f(v: Any, fmt: str = "{:.2f}") -> str:
    return "n/a" if v is None else fmt.format(v)


def format_report(res: dict) -> str:
    names = list(res["paths"])
    rows = [
        ("train samples/s", "train_samples_per_s", "{:.2f}"),
        ("warm-up step s (compiles)", "warmup_seconds", "{:.1f}"),
        ("encoded tokens / dialogue", "encoded_tokens_per_sample", "{:.0f}"),
        ("train peak RSS added (MiB)", "train_peak_mib", "{:.0f}"),
        ("inference samples/s", "infer_samples_per_s", "{:.2f}"),
        ("inference peak RSS added (MiB)", "infer_peak_mib", "{:.0f}"),
        (f"val accuracy (n={res['eval_samples']})", "val_accuracy", "{:.3f}"),
        ("val AUROC", "val_auroc", "{:.3f}"),
    ]
    w = max(len(r[0]) for r in rows) + 2
    lines = [
        f"mmfusion bench  {res['date']}",
        f"{res['machine']}",
        f"encoder {res['text_encoder']} | fusion {res['fusion']} | {res['train_samples']} train / {res['eval_samples']} eval dialogues | "
        f"batch {res['batch_size']} (eval {res['eval_batch_size']}) | {res['max_chunks']} x {res['chunk_len']} | "
        f"real tokens / dialogue {res['paths']['optimized']['real_tokens_per_sample']:.0f}",
        "",
        "".ljust(w) + "".join(n.rjust(20) for n in names),
    ]
    for label, key, fmt in rows:
        lines.append(label.ljust(w) + "".join(_f(res["paths"][n].get(key), fmt).rjust(20) for n in names))
    s = res["speedup"]
    lines.append(f"optimized / reference: training {s['train']:.2f}x, inference {s['infer']:.2f}x "
                 f"(val accuracy difference within noise if below ~{res['val_accuracy_noise']:.3f})")
    o = res.get("onnx")
    if o and "engines" in o:
        e = o["engines"]
        lines += ["", f"inference engines (threads {o['threads']}; export {o['export_seconds']:.1f}s, int8 quantization {o['quantize_seconds']:.1f}s; fused: ORT transformer optimizer)",
                  "".ljust(w) + "".join(n.rjust(14) for n in e)]
        for label, key, fmt in (("batch-1 latency ms (median)", "latency_ms_median", "{:.1f}"), ("batch-1 latency ms (p90)", "latency_ms_p90", "{:.1f}"),
                                (f"batch-{o['batch']} samples/s", "batch_samples_per_s", "{:.2f}"), (f"batch-{o['batch']} peak RSS added (MiB)", "batch_peak_mib", "{:.0f}"),
                                (f"accuracy (n={o['accuracy_samples']})", "accuracy", "{:.3f}")):
            lines.append(label.ljust(w) + "".join(_f(v.get(key), fmt).rjust(14) for v in e.values()))
        lines.append(f"int8 vs fp32: agreement {o['int8_agreement']:.3f}, max |dp| {o['max_abs_diff_int8_vs_fp32']:.3g}; fp32 ONNX vs eager max |dp| {o['max_abs_diff_fp32_vs_eager']:.2g}")
        lines.append("batch-1 latency vs eager: " + ", ".join(f"{n} {v['latency_vs_eager']:.2f}x" for n, v in e.items() if n != "eager"))
        lines.append("agreement with onnx_fp32 (n=%d): " % o["accuracy_samples"] + ", ".join(f"{n} {v['agreement_vs_onnx_fp32']:.3f}" for n, v in e.items() if n != "onnx_fp32"))
        for name, rows in o.get("profile_onnx", {}).items():
            lines += ["", f"ONNX Runtime {name} at batch 1, node time by op type:"]
            lines += [f"  {p['share']:6.1%} {p['ms_per_call']:8.2f} ms/call  {p['nodes']:5d} nodes  {p['op']}" for p in rows]
    elif o:
        lines += ["", f"ONNX: {o['skipped']}"]
    if res.get("profile"):
        lines += ["", "one optimized training step, top ops by self CPU time:"]
        lines += [f"  {p['share']:6.1%} {p['self_cpu_ms']:9.1f} ms  {p['calls']:6d} calls  {p['op']}" for p in res["profile"]]
    lines += ["", "goals (printed, never asserted):"]
    lines += [f"  [{'x' if g['met'] else ' '}] {g['goal']}: {g['shown']}" for g in res["goals"]]
    lines.append(f"memory: {res['memory_method']}")
    return "\n".join(lines)
