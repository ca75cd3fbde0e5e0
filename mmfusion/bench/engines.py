"""Eager PyTorch against ONNX Runtime on the optimized model: the exported file (fp32, int8) and the same file after
ORT's transformer optimizer (fused, fp32, int8); latency, throughput, memory, accuracy, agreement and profiles."""

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
    from onnxruntime.quantization import QuantType, quantize_dynamic

    try:
        quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8, extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
        return dst
    except Exception as err:  # noqa: BLE001 - that engine is left out
        log.warning("int8 quantization of the fused model failed: %s", str(err)[:200])
        return None


def measure_onnx(model: MultimodalClassifier, items: list[dict], pad_id: int, latency_samples: int, profile: bool, bf16: bool, tmp: Path) -> dict:
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
        with torch.inference_mode(), autocast(bf16):
            return {"probs": model(**model_inputs(batch)).logits.float().softmax(-1).numpy()}

    engines = {"eager": eager, **{name: OnnxScorer(path, threads) for name, path in files.items()}}
    singles = [collate([it], pad_id) for it in items[:latency_samples]]
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
    if profile:
        out["profile_onnx"] = {name: profile_onnx(files[name], singles, threads) for name in files if name.endswith("fp32")}
    return out


def profile_onnx(path: Path, batches: list[dict], threads: int, top: int = 10) -> list[dict]:
    """Where ONNX Runtime's time goes on these batches: node time summed by op type (its own profiler)."""
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
