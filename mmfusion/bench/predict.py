"""`mmfusion bench --predict`: scoring a large file the way `mmfusion predict` does, PyTorch beside ONNX Runtime.

No trained run is needed: the model is built from the config (the pretrained text encoder, a randomly initialised
tabular encoder, fusion and head; speed and memory do not depend on the weights' values), saved as a bundle (what
the PyTorch path loads) and exported as the packed ONNX pair (parity with PyTorch proven on the config's held-out
split, as in training). The rows are the config's table (synthetic by default) drawn with replacement up to `rows`,
written as a CSV. Each path then loads its files and streams the CSV through `serving.streaming.predict_file`
(pieces of `piece_rows`, length-sorted batches, appended to the output): rows/s and the peak resident memory that
loading + scoring adds (`PeakRSS`), one path after the other in one process, on the same file.
"""

from __future__ import annotations

import dataclasses
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from mmfusion.bench.memory import MEMORY_METHOD, PeakRSS
from mmfusion.config import Config
from mmfusion.errors import ConfigError


@dataclasses.dataclass
class PredictSettings:
    rows: int = 100_000
    batch_size: int = 64
    piece_rows: int = 4096
    int8: bool = False  # also the int8 ONNX encoder
    engines: tuple[str, ...] | None = None  # only these of ENGINES (None: pytorch, onnx_fp32, and onnx_int8 with `int8`)


ENGINES = ("pytorch", "onnx_fp32", "onnx_int8")


def _rows(cfg: Config, n: int, path: Path) -> int:
    """The config's table, drawn with replacement up to n rows (ids made unique), as a CSV -> its size in bytes."""
    from mmfusion.data.datamodule import load_frames

    frame, _, cols = load_frames(cfg.data, cfg.seed)
    rows = frame.sample(n=n, replace=True, random_state=cfg.seed).reset_index(drop=True)
    if cols["id"]:
        rows[cols["id"]] = [f"r{i}" for i in range(n)]
    rows.to_csv(path, index=False)
    return path.stat().st_size


def run_predict_bench(cfg: Config, settings: PredictSettings, progress: Callable[[str], None] = lambda s: None) -> dict:
    """Build, export, write the rows, then score them with each path; -> a JSON-able result."""
    import lightning as L

    from mmfusion.data.datamodule import prepare_data
    from mmfusion.encoders import load_text_backbone, load_tokenizer
    from mmfusion.export.files import export_files
    from mmfusion.modeling.classifier import build_model
    from mmfusion.serving.bundle import Predictor, save_bundle
    from mmfusion.serving.onnx_scorer import OnnxPredictor
    from mmfusion.serving.streaming import predict_file
    from mmfusion.training.hardware import cpu_name, describe

    if min(settings.rows, settings.batch_size, settings.piece_rows) < 1:
        raise ConfigError("bench --predict: --rows, --batch-size and --piece-rows must be >= 1")
    wanted = ENGINES[: 2 + settings.int8] if settings.engines is None else settings.engines
    unknown = sorted(set(wanted) - set(ENGINES))
    if unknown or not wanted:
        raise ConfigError(f"bench --predict --engines: {'unknown ' + ', '.join(unknown) if unknown else 'none given'}; allowed: {', '.join(ENGINES)}")
    L.seed_everything(cfg.seed, verbose=False)
    tokenizer = load_tokenizer(cfg.model.text_encoder)
    data = prepare_data(cfg.data, cfg.seed, tokenizer)
    pre = data.preprocessor
    model = build_model(cfg.model, load_text_backbone(cfg.model.text_encoder), pre.n_numeric_features, pre.cardinalities, len(pre.classes), len(pre.texts)).eval()
    threads = torch.get_num_threads()
    res: dict[str, Any] = {"machine": describe(), "cpu": cpu_name(), "threads": threads, "text_encoder": cfg.model.text_encoder, "fusion": cfg.model.fusion,
                           "settings": dataclasses.asdict(settings), "memory_method": MEMORY_METHOD, "model": "built from the config: pretrained encoder, random-init rest",
                           "paths": {}}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        progress("saving the bundle and exporting the packed ONNX pair (parity checked) ...")
        bundle = save_bundle(tmp / "bundle", cfg, model, pre, tokenizer)
        files = export_files(cfg, model, data, tokenizer, tmp / "onnx", quantize="onnx_int8" in wanted, tolerance=cfg.export.tolerance)
        res["onnx_max_abs_diff"] = files.report["max_abs_diff"]
        del model, data  # only what each path loads itself stays
        progress(f"writing {settings.rows} rows ...")
        res["input_mib"] = _rows(cfg, settings.rows, tmp / "rows.csv") / 2**20
        loaders: dict[str, Callable[[], Any]] = {
            "pytorch": lambda: Predictor(bundle),
            "onnx_fp32": lambda: OnnxPredictor(files.fp32.encoder, files.artifacts, threads=threads),
        }
        if files.int8 is not None:
            loaders["onnx_int8"] = lambda: OnnxPredictor(files.int8.encoder, files.artifacts, threads=threads, int8=True)
        for name, load in ((n, loaders[n]) for n in ENGINES if n in wanted):
            progress(f"{name}: scoring {settings.rows} rows ...")
            with PeakRSS() as mem:
                started = time.perf_counter()
                predictor = load()
                loaded = time.perf_counter()
                written = predict_file(predictor, tmp / "rows.csv", tmp / f"{name}.csv", batch_size=settings.batch_size, piece_rows=settings.piece_rows, engine=name)
                done = time.perf_counter()
            del predictor
            res["paths"][name] = {"rows": written, "load_seconds": loaded - started, "score_seconds": done - loaded, "rows_per_s": written / (done - loaded), "peak_mib": mem.mib}
            progress(f"{name}: {res['paths'][name]['rows_per_s']:.1f} rows/s")
    p = res["paths"]
    if {"pytorch", "onnx_fp32"} <= set(p):
        res["onnx_vs_pytorch_rows_per_s"] = p["onnx_fp32"]["rows_per_s"] / p["pytorch"]["rows_per_s"]
    return res


def format_predict_report(res: dict) -> str:
    s = res["settings"]
    lines = [f"mmfusion bench --predict: {s['rows']} rows streamed through `predict` ({s['piece_rows']} rows a piece, batches of {s['batch_size']}, {res['input_mib']:.0f} MiB CSV)",
             f"{res['machine']}", f"encoder {res['text_encoder']} | fusion {res['fusion']} | {res['model']} | threads {res['threads']} | "
             f"ONNX parity max |dp| {res['onnx_max_abs_diff']:.2g}", "",
             f"{'':24}{'rows/s':>10}{'score s':>10}{'load s':>9}{'peak RSS added MiB':>20}"]
    for name, r in res["paths"].items():
        peak = "n/a" if r["peak_mib"] is None else f"{r['peak_mib']:.0f}"
        lines.append(f"{name:24}{r['rows_per_s']:>10.1f}{r['score_seconds']:>10.1f}{r['load_seconds']:>9.1f}{peak:>20}")
    if "onnx_vs_pytorch_rows_per_s" in res:
        lines.append(f"ONNX Runtime fp32 / PyTorch rows/s: {res['onnx_vs_pytorch_rows_per_s']:.2f}x")
    lines.append(f"memory: {res['memory_method']}")
    return "\n".join(lines)
