"""The benchmark's result as text: the goals it is read against and the printed tables."""

from __future__ import annotations

from typing import Any


def top_name(k: int) -> str:
    """The name of the path that trains only the top `k` encoder layers (`bench --text-layers K`)."""
    return f"top-{k} layers"


def goals(res: dict) -> list[dict]:
    """The targets the benchmark reports against (printed, never asserted): met or not, and the value shown."""
    precision = "bf16 autocast" if res["bf16"] else "fp32"
    delta = res["paths"]["optimized"]["val_accuracy"] - res["paths"]["reference"]["val_accuracy"]
    goals = [
        (f"training throughput >= 6x the reference path ({precision}; per CPU second {res['speedup'].get('train_cpu', float('nan')):.2f}x)",
         res["speedup"]["train"], lambda v: v >= 6.0, "{:.2f}x"),
        # equal accuracy: not lower than the reference by more than the noise band of the run's n (the same-budget run)
        (f"at equal validation accuracy (optimized - reference >= -{res['val_accuracy_noise']:.3f}, 2 s.e. at n={res['eval_samples']})",
         delta, lambda v: v >= -res["val_accuracy_noise"], "{:+.3f}"),
    ]
    if res["settings"].get("text_layers") is not None:  # the optimized path training only the top K encoder layers
        top = top_name(res["settings"]["text_layers"])
        top_delta = res["paths"][top]["val_accuracy"] - res["paths"]["reference"]["val_accuracy"]
        goals += [
            (f"training throughput >= 6x the reference path, {top} trained ({precision}; per CPU second {res['speedup']['train_top_cpu']:.2f}x)",
             res["speedup"]["train_top"], lambda v: v >= 6.0, "{:.2f}x"),
            (f"at equal validation accuracy ({top} - reference >= -{res['val_accuracy_noise']:.3f})", top_delta, lambda v: v >= -res["val_accuracy_noise"], "{:+.3f}"),
        ]
    o = res.get("onnx", {})
    if "engines" in o:
        e, n = o["engines"], o["accuracy_samples"]
        packed = [name for name in ("onnx_fp32", "fused_fp32") if name in e]
        fast = max(packed, key=lambda name: e[name]["throughput_vs_eager"])
        quick = min(packed, key=lambda name: e[name]["latency_vs_eager"])
        goals += [
            (f"ONNX fp32 batch-{o['batch']} throughput >= 1.0x eager PyTorch ({fast})", e[fast]["throughput_vs_eager"], lambda v: v >= 1.0, "{:.2f}x"),
            (f"ONNX fp32 batch-1 latency <= 0.6x eager PyTorch ({quick})", e[quick]["latency_vs_eager"], lambda v: v <= 0.6, "{:.2f}x"),
            (f"int8 ONNX >= 1.8x fp32 ONNX throughput (batch {o['batch']})", o["int8_speedup_batch"], lambda v: v >= 1.8, "{:.2f}x"),
            (f"int8 ONNX accuracy within 1 point of fp32 ONNX on >= 1,000 samples (n={n})", o["int8_accuracy_delta_points"], lambda v, n=n: abs(v) <= 1.0 and n >= 1000, "{:+.1f} points"),
        ]
    return [{"goal": g, "value": v, "met": bool(ok(v)), "shown": fmt.format(v)} for g, v, ok, fmt in goals]


def _f(v: Any, fmt: str = "{:.2f}") -> str:
    return "n/a" if v is None else fmt.format(v)


def format_report(res: dict) -> str:
    names = list(res["paths"])
    rows = [
        ("train samples/s", "train_samples_per_s", "{:.2f}"),
        ("train samples / CPU s", "train_samples_per_cpu_s", "{:.3f}"),
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
        f"data {res.get('data', '?')} (text columns {', '.join(res.get('text_columns', []))}) | optimized: "
        + ", ".join(f"{k}={v}" for k, v in res.get("optimized_options", {}).items()),
        "",
        "".ljust(w) + "".join(n.rjust(20) for n in names),
    ]
    for label, key, fmt in rows:
        lines.append(label.ljust(w) + "".join(_f(res["paths"][n].get(key), fmt).rjust(20) for n in names))
    s = res["speedup"]
    lines.append(f"optimized / reference: training {s['train']:.2f}x ({s.get('train_cpu', float('nan')):.2f}x per CPU second), inference {s['infer']:.2f}x "
                 f"(val accuracy difference within noise if below ~{res['val_accuracy_noise']:.3f})")
    if "train_top" in s:
        lines.append(f"top-layers path / reference: training {s['train_top']:.2f}x ({s['train_top_cpu']:.2f}x per CPU second; its frozen lower layers "
                     "recomputed every step, as in train's first epoch: the layer cache serves the later ones)")
    o = res.get("onnx")
    if o and "engines" in o:
        e = o["engines"]
        lines += ["", f"inference engines (threads {o['threads']}; export {o['export_seconds']:.1f}s, int8 quantization {o['quantize_seconds']:.1f}s; onnx_*: packed chunk encoder + head; "
                  "fused: ORT transformer optimizer on the encoder; single_fp32: the one graph older runs exported)",
                  "".ljust(w) + "".join(n.rjust(14) for n in e)]
        for label, key, fmt in (("batch-1 latency ms (median)", "latency_ms_median", "{:.1f}"), ("batch-1 latency ms (p90)", "latency_ms_p90", "{:.1f}"),
                                (f"batch-{o['batch']} samples/s", "batch_samples_per_s", "{:.2f}"), (f"batch-{o['batch']} vs eager", "throughput_vs_eager", "{:.2f}x"),
                                (f"batch-{o['batch']} peak RSS added (MiB)", "batch_peak_mib", "{:.0f}"),
                                (f"accuracy (n={o['accuracy_samples']})", "accuracy", "{:.3f}")):
            lines.append(label.ljust(w) + "".join(_f(v.get(key), fmt).rjust(14) for v in e.values()))
        lines.append(f"int8 vs fp32: agreement {o['int8_agreement']:.3f}, max |dp| {o['max_abs_diff_int8_vs_fp32']:.3g}; fp32 ONNX vs eager max |dp| {o['max_abs_diff_fp32_vs_eager']:.2g}")
        lines.append("batch-1 latency vs eager: " + ", ".join(f"{n} {v['latency_vs_eager']:.2f}x" for n, v in e.items() if n != "eager"))
        lines.append("agreement with onnx_fp32 (n=%d): " % o["accuracy_samples"] + ", ".join(f"{n} {v['agreement_vs_onnx_fp32']:.3f}" for n, v in e.items() if "agreement_vs_onnx_fp32" in v and n != "onnx_fp32"))
        lines.append(f"batch-{o['batch']} samples/s over the {o['accuracy_samples']} accuracy samples in batches of {o['batch']} (single_fp32: its first batch only)")
        for name, rows in o.get("profile_onnx", {}).items():
            lines += ["", f"ONNX Runtime {name} chunk encoder at batch 1, node time by op type:"]
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
