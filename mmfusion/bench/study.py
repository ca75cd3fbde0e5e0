"""`mmfusion bench study`: the same Optuna study run twice in one process, side by side.

- uncached: what a trial cost before lean trials: no embedding cache (`data.cache_dir=null`: every trial encodes its
  texts with the frozen encoder) and full trials (`study.lean_trials=false`: train-split predictions, plots, and ONNX /
  model as the config asks);
- cached lean: an empty embedding cache (the first trial encodes and writes it, the others read it) and lean trials
  (data and embeddings reused in the process, no per-trial plots or packaging; the best trial's once at the end).

Both use the same seeded random sampler, no pruner, their own Optuna storage and MLflow store in a temporary folder,
so they run the same trials; the report prints both wall times (set-up and the end-of-study step included), the
process CPU times (steadier than wall time on a shared machine), the per-trial times and the ratios. The ratio is a measurement of this machine under its load, never asserted.
"""

from __future__ import annotations

import dataclasses
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mmfusion.config import Config, build_config
from mmfusion.data import memo
from mmfusion.training.hardware import describe

DEFAULT_SPACE = {  # used when the config has no study section: a few fusions and the learning rate
    "model.fusion": {"type": "categorical", "choices": ["concat", "gate", "attention", "moe-linear-soft"]},
    "optim.lr": {"type": "float", "low": 3.0e-4, "high": 3.0e-3, "log": True},
}


@dataclasses.dataclass
class StudyBenchSettings:
    trials: int = 20
    samples: int = 400  # synthetic dialogues (train + val + test)
    epochs: int = 1


def side_config(cfg: Config, s: StudyBenchSettings, root: Path, name: str, lean: bool) -> Config:
    """The study of one side: `cfg` with the bench's data size, epochs, sampler and stores."""
    raw = cfg.model_dump(mode="json", exclude={"zoo"})
    study = raw.get("study") or {"search_space": DEFAULT_SPACE}
    study.update(study_name=f"bench-{name}", storage=f"sqlite:///{root / name / 'optuna.db'}", n_trials=s.trials, timeout=None, lean_trials=lean,
                 sampler={"name": "random", "seed": 0}, pruner={"name": "none"}, max_failed_trials=s.trials)
    raw["study"] = study
    raw["data"]["synthetic"]["n_samples"] = s.samples
    raw["data"]["cache_dir"] = str(root / name / "cache") if lean else None
    raw["model"]["train_text_layers"] = 0  # frozen: the case the embedding cache serves
    raw["trainer"].update(max_epochs=s.epochs, checkpoints=False, enable_progress_bar=False)
    raw["tracking"].update(uri=f"sqlite:///{root / name / 'mlflow.db'}", experiment=f"bench-study-{name}")
    return build_config(raw, f"the bench's {name} study")


def _side(cfg: Config) -> dict[str, Any]:
    from mmfusion.jobs.tune import run_study

    (Path(cfg.tracking.uri.removeprefix("sqlite:///")).parent).mkdir(parents=True, exist_ok=True)
    memo.clear()  # each side starts cold: nothing prepared, nothing embedded
    started, cpu = time.perf_counter(), time.process_time()
    result = run_study(cfg)
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
    trials = result.study.trials
    durations = [t.duration.total_seconds() for t in trials if t.duration is not None]
    return {"seconds": seconds, "cpu_seconds": cpu, "trials": len(trials), "states": sorted({t.state.name for t in trials}),
            "first_trial_s": durations[0] if durations else None, "median_trial_s": statistics.median(durations) if durations else None,
            "values": [t.value for t in trials], "best": None if result.best is None else {"number": result.best.number, "value": result.best.value, "params": result.best.params}}


def run_study_bench(cfg: Config, s: StudyBenchSettings, progress: Callable[[str], None] = lambda _: None) -> dict[str, Any]:
    """Both sides, uncached first. -> the figures `format_study_report` prints."""
    out: dict[str, Any] = {"settings": dataclasses.asdict(s), "encoder": cfg.model.text_encoder, "machine": describe()}
    with tempfile.TemporaryDirectory(prefix="mmfusion-bench-study-") as tmp:
        for name, lean in (("uncached", False), ("cached_lean", True)):
            progress(f"{name}: a {s.trials}-trial study ({s.samples} dialogues, {s.epochs} epoch(s) per trial)")
            out[name] = _side(side_config(cfg, s, Path(tmp), name, lean))
            progress(f"{name}: {out[name]['seconds']:.1f} s")
    memo.clear()
    out["same_values"] = out["uncached"]["values"] == out["cached_lean"]["values"]
    out["ratio"] = out["uncached"]["seconds"] / max(out["cached_lean"]["seconds"], 1e-9)
    out["cpu_ratio"] = out["uncached"]["cpu_seconds"] / max(out["cached_lean"]["cpu_seconds"], 1e-9)  # steadier on a shared machine
    return out


def format_study_report(r: dict[str, Any]) -> str:
    s = r["settings"]
    lines = [f"study benchmark: {s['trials']} trials, {s['samples']} synthetic dialogues, {s['epochs']} epoch(s), frozen {r['encoder']}",
             r["machine"], "", f"{'side':<12} {'study s':>8} {'CPU s':>8} {'first trial s':>14} {'median trial s':>15}  best"]
    for name in ("uncached", "cached_lean"):
        x = r[name]
        best = "-" if x["best"] is None else f"#{x['best']['number']} {x['best']['value']:.4f}"
        lines.append(f"{name:<12} {x['seconds']:>8.1f} {x['cpu_seconds']:>8.1f} {x['first_trial_s'] or 0:>14.1f} {x['median_trial_s'] or 0:>15.1f}  {best}")
    lines += ["", f"cached lean {s['trials']}-trial study vs uncached: {r['ratio']:.1f}x faster (goal >= 10x; in CPU time {r['cpu_ratio']:.1f}x); "
                  f"trial values {'identical' if r['same_values'] else 'DIFFER'} on both sides"]
    return "\n".join(lines)
