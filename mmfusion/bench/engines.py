"""Eager PyTorch against ONNX Runtime on the optimized model: the packed export (chunk encoder + head; fp32, int8) and
the same after ORT's transformer optimizer (fused fp32, int8), beside the single graph older runs exported; latency,
throughput, memory, accuracy, agreement and profiles."""

from __future__ import annotations

import json
import logging
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mmfusion.bench.memory import PeakRSS
from mmfusion.bench.measure import autocast, model_inputs
from mmfusion.data.datamodule import collate
from mmfusion.modeling.classifier import MultimodalClassifier

log = logging.getLogger(__name__)


def _timed(fn: Callable[[dict], Any], batch: dict) -> tuple[float, Any]:
    started = time.perf_counter()
    out = fn(batch)
    return time.perf_counter() - started, out


def fuse_onnx(src: Path, model: MultimodalClassifier, dst: Path) -> Path | None:
    """ONNX Runtime's transformer optimizer over the exported file: attention, skip + layer norm, embedding + layer
    norm and bias + GELU each become one fused kernel (the exporter writes them op by op). None where it fails."""
    try:
        from onnxruntime.transformers import optimizer

        logging.getLogger("onnxruntime.transformers").setLevel(logging.ERROR)
        bert = model.text_encoder.backbone.config
        optimizer.optimize_model(str(src), model_type="bert", num_heads=bert.num_attention_heads, hidden_size=bert.hidden_size).save_model_to_file(str(dst))
        return dst
    except Exception as err:  # noqa: BLE001 - an encoder it does not know: those engines are left out, and said so
        log.warning("ONNX Runtime's transformer optimizer did not apply: %s", str(err)[:200])
        return None


def quantize_fused(src: Path, dst: Path) -> Path | None:
    """int8 dynamic quantization of a fused model (as `quantize_onnx`, but its shape inference cannot type the fused
    ops' outputs: ORT's documented `DefaultTensorType` option says they are float). None where it fails."""
    import onnx

    from mmfusion.export.onnx import quantize_onnx

    try:
        return quantize_onnx(src, dst, extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
    except Exception as err:  # noqa: BLE001 - that engine is left out
        log.warning("int8 quantization of the fused model failed: %s", str(err)[:200])
        return None


def _encoder_feed(batch: dict) -> dict[str, np.ndarray]:
    """The real chunks of a collate() batch as the encoder graph's (N, T) inputs (for its profile)."""
    ids, att, cmask = (np.asarray(batch[k]) for k in ("input_ids", "attention_mask", "chunk_mask"))
    real = np.flatnonzero(cmask.reshape(-1))
    return {"input_ids": ids.reshape(-1, ids.shape[-1])[real], "attention_mask": att.reshape(-1, ids.shape[-1])[real]}


def _export(model: MultimodalClassifier, example: dict, tmp: Path) -> tuple[dict[str, tuple[Path, ...]], dict[str, float]]:
    """The graphs each engine scores with: the packed pair (what runs export; fp32, int8 encoder, and both after ORT's
    transformer optimizer) and the single whole-model graph that runs exported before (every padding chunk encoded)."""
    from mmfusion.export.onnx import export_onnx, quantize_onnx
    from mmfusion.export.packed import export_packed

    started = time.perf_counter()
    encoder, head = export_packed(model, example, tmp / "packed")
    seconds = {"export_seconds": time.perf_counter() - started}
    started = time.perf_counter()
    files: dict[str, tuple[Path, ...]] = {"onnx_fp32": (encoder, head), "onnx_int8": (quantize_onnx(encoder, tmp / "int8.onnx"), head)}
    seconds["quantize_seconds"] = time.perf_counter() - started
    if (fused := fuse_onnx(encoder, model, tmp / "fused.onnx")) is not None:
        files["fused_fp32"] = (fused, head)
        if (q := quantize_fused(fused, tmp / "fused_int8.onnx")) is not None:
            files["fused_int8"] = (q, head)
    files["single_fp32"] = (export_onnx(model, example, tmp / "single.onnx"),)
    return files, seconds


def measure_onnx(model: MultimodalClassifier, items: list[dict], pad_id: int, latency_samples: int, profile: bool, bf16: bool, tmp: Path,
                 accuracy_items: list[dict] | None = None) -> dict:
    """Eager PyTorch (the optimized path) vs ONNX Runtime: the packed export (fp32, int8 encoder) and the same after
    ORT's transformer optimizer (fused fp32, int8), beside the single graph older runs exported (single_fp32).
    Batch-1 latency (median over `latency_samples` calls); batch-64 throughput over every batch of 64 of the
    accuracy set (`accuracy_items`, default `items`) and its accuracy; peak memory of one batch of 64; agreement with
    the packed fp32 export. The single graph, much slower, is timed on the first batch of 64 only."""
    try:
        from mmfusion.serving.onnx_session import OnnxScorer, PackedScorer
    except ImportError as err:
        return {"skipped": f"mmfusion.serving is not available ({err}); ONNX figures not measured"}
    model = model.eval()
    files, seconds = _export(model, collate(items[:8], pad_id), tmp)
    threads = torch.get_num_threads()

    def eager(batch: dict) -> dict:
        with torch.inference_mode(), autocast(bf16):
            return {"probs": model(**model_inputs(batch)).logits.float().softmax(-1).numpy()}

    engines = {"eager": eager, **{name: PackedScorer(*paths, threads) if len(paths) == 2 else OnnxScorer(paths[0], threads) for name, paths in files.items()}}
    singles = [collate([it], pad_id) for it in items[:latency_samples]]
    scored = accuracy_items or items
    batches = [collate(scored[i : i + 64], pad_id) for i in range(0, len(scored), 64)]
    big, labels = collate(items[:64], pad_id), torch.cat([b["label"] for b in batches]).numpy()
    out: dict[str, Any] = {"batch": len(big["label"]), "accuracy_samples": len(labels), "latency_samples": len(singles), "threads": threads, **seconds,
                           "size_mb": {name: paths[0].stat().st_size / 2**20 for name, paths in files.items()}, "engines": {}}
    probs = {}
    for name, fn in engines.items():
        fn(singles[0])  # warm-up
        latencies = [_timed(fn, b)[0] * 1000 for b in singles]
        with PeakRSS() as mem:
            fn(big)  # warm-up at full size
        r = out["engines"][name] = {"latency_ms_median": statistics.median(latencies), "latency_ms_p90": sorted(latencies)[int(0.9 * (len(latencies) - 1))], "batch_peak_mib": mem.mib}
        if name == "single_fp32":
            r["batch_samples_per_s"] = len(big["label"]) / _timed(fn, big)[0]
            continue
        started = time.perf_counter()
        p = probs[name] = np.concatenate([fn(b)["probs"] for b in batches])
        r["batch_samples_per_s"] = len(labels) / (time.perf_counter() - started)
        r["accuracy"] = float((p.argmax(1) == labels).mean())
        r["max_abs_diff_vs_onnx_fp32"] = float(abs(p - probs["onnx_fp32"]).max()) if "onnx_fp32" in probs else 0.0
        r["agreement_vs_onnx_fp32"] = float((p.argmax(1) == probs["onnx_fp32"].argmax(1)).mean()) if "onnx_fp32" in probs else 1.0
    e = out["engines"]
    for name in files:
        e[name]["latency_vs_eager"] = e[name]["latency_ms_median"] / e["eager"]["latency_ms_median"]
        e[name]["throughput_vs_eager"] = e[name]["batch_samples_per_s"] / e["eager"]["batch_samples_per_s"]
    out["max_abs_diff_fp32_vs_eager"] = float(abs(probs["onnx_fp32"] - probs["eager"]).max())
    out["max_abs_diff_int8_vs_fp32"] = e["onnx_int8"]["max_abs_diff_vs_onnx_fp32"]
    out["int8_agreement"] = e["onnx_int8"]["agreement_vs_onnx_fp32"]
    out["latency_ratio_onnx_vs_eager"] = e["onnx_fp32"]["latency_vs_eager"]
    out["latency_ratio_int8_vs_eager"] = e["onnx_int8"]["latency_vs_eager"]
    out["throughput_ratio_onnx_vs_eager"] = e["onnx_fp32"]["throughput_vs_eager"]
    out["int8_speedup_batch"] = e["onnx_int8"]["batch_samples_per_s"] / e["onnx_fp32"]["batch_samples_per_s"]
    out["int8_speedup_latency"] = e["onnx_fp32"]["latency_ms_median"] / e["onnx_int8"]["latency_ms_median"]
    out["int8_accuracy_delta_points"] = 100 * (e["onnx_int8"]["accuracy"] - e["onnx_fp32"]["accuracy"])
    if profile:  # the chunk-encoder graph, where the time goes
        feeds = [_encoder_feed(b) for b in singles if b["chunk_mask"].sum()]
        out["profile_onnx"] = {name: profile_onnx(files[name][0], feeds, threads) for name in ("onnx_fp32", "fused_fp32") if name in files and feeds}
    return out


def profile_onnx(path: Path, batches: list[dict], threads: int, top: int = 10) -> list[dict]:
    """Where ONNX Runtime's time goes on these feeds of one graph: node time summed by op type (its own profiler)."""
    import onnxruntime as ort

    from mmfusion.serving.onnx_session import OnnxScorer

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
