"""Rebuild a run from what MLflow recorded and train it again, then say how close the two are.

Checked before training: the logged config (`config.yaml`, the fully resolved config, so the file the run started from
need not exist), the data (fingerprint recomputed; a change is an error unless allowed), the code version (git sha)
and the library versions (differences are warnings). The new run is tagged `mmfusion.reproduces=<original id>`.
"""

from __future__ import annotations

import json
import logging
import math
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd

from mmfusion.config import Config
from mmfusion.data.datamodule import prepare_data
from mmfusion.encoders import load_tokenizer
from mmfusion.tracking import predictions as P
from mmfusion.tracking.artifacts import get_run
from mmfusion.errors import DataError
from mmfusion.jobs.train import train
from mmfusion.tracking.runs import config_of_run
from mmfusion.tracking.session import git_sha, library_versions
from mmfusion.tracking.lineage import changed_splits, recorded_digests
from mmfusion.tracking.contract import Artifact, Tag, predictions_path, tracking_uri as resolve_uri

log = logging.getLogger(__name__)
UNCHECKED = ("train_seconds", "train_samples_per_second")  # wall-clock figures; per-rank memory (rank*_mb) likewise


@dataclass
class Reproduction:
    original_id: str
    run_id: str
    warnings: list[str]
    metrics: pd.DataFrame  # metric, original, reproduced, abs_diff, checked
    predictions: dict = field(default_factory=dict)  # rows, same_ids, same_preds, max_abs_diff

    @property
    def max_metric_diff(self) -> float:
        checked = self.metrics[self.metrics["checked"]]
        return float(checked["abs_diff"].max()) if len(checked) else math.nan

    def within(self, tolerance: float) -> bool:
        p = self.predictions
        return self.max_metric_diff <= tolerance and p.get("same_ids", False) and p.get("same_preds", False) and p.get("max_abs_diff", math.inf) <= tolerance


def _read(client: mlflow.MlflowClient, run_id: str, path: str, reader=Path.read_text):
    """One artifact of a run, from this client's store (local or a server), through `reader(path)`."""
    with tempfile.TemporaryDirectory() as tmp:
        return reader(Path(client.download_artifacts(run_id, path, tmp)))


def recorded_config(client: mlflow.MlflowClient, run_id: str) -> Config:
    return config_of_run(run_id, client=client)


def check_environment(client: mlflow.MlflowClient, run) -> list[str]:
    """Warnings for a different code version or different library versions than the run recorded."""
    warnings = []
    then, now = run.data.tags.get(Tag.GIT_SHA, "unknown"), git_sha()
    if then != now:
        warnings.append(f"code differs: the run was recorded at git {then}, this checkout is {now}")
    elif now.endswith("-dirty"):
        warnings.append(f"code at {now}: uncommitted changes then and now cannot be compared")
    try:
        recorded = json.loads(_read(client, run.info.run_id, Artifact.ENVIRONMENT))
    except Exception:
        return warnings + [f"the run recorded no {Artifact.ENVIRONMENT}: library versions not checked"]
    current = library_versions()
    diffs = [f"{k} {recorded.get(k, 'not recorded')} -> {current.get(k, 'not checked')}" for k in sorted(set(recorded) | set(current)) if recorded.get(k) != current.get(k)]
    if diffs:
        warnings.append("library versions differ (recorded -> now): " + "; ".join(diffs))
    return warnings


def check_data(cfg: Config, run, allow_change: bool) -> list[str]:
    """The run's logged inputs (per split: name and digest; runs from before lineage: the fingerprint tag) against the
    data as it is now. A difference is an error naming the split, the table and both digests, unless allowed."""
    data = prepare_data(cfg.data, cfg.seed, load_tokenizer(cfg.model.text_encoder))
    source = cfg.data.path if cfg.data.source == "table" else "synthetic data"
    if recorded_digests(run):
        changed = changed_splits(run, data)
        if not changed:
            return []
        msg = f"the data changed since run {run.info.run_id}: {source}: {'; '.join(changed)}"
    else:
        recorded, now = run.data.tags.get(Tag.DATA_FINGERPRINT), data.fingerprint
        if recorded == now:
            return []
        msg = f"the data changed since run {run.info.run_id}: {source} has fingerprint {now}, the run recorded {recorded}"
    if not allow_change:
        raise DataError(msg + " (pass --allow-data-change to train on the data as it is now)")
    return [msg]


def compare_metrics(original: dict[str, float], reproduced: dict[str, float]) -> pd.DataFrame:
    rows = [
        {"metric": k, "original": original[k], "reproduced": reproduced[k], "abs_diff": abs(reproduced[k] - original[k]), "checked": k not in UNCHECKED and not (k.startswith("rank") and k.endswith("_mb"))}
        for k in sorted(set(original) & set(reproduced))
    ]
    return pd.DataFrame(rows, columns=["metric", "original", "reproduced", "abs_diff", "checked"])


def compare_predictions(client: mlflow.MlflowClient, original_id: str, new_id: str) -> dict:
    """Test predictions of both runs, matched by id: same ids, same predicted classes, largest difference in values."""
    try:
        a = _read(client, original_id, predictions_path("test"), pd.read_csv)
    except Exception:
        return {"note": f"the original run has no {predictions_path('test')}"}
    b = _read(client, new_id, predictions_path("test"), pd.read_csv)
    a, b = a.sort_values(P.ID).reset_index(drop=True), b.sort_values(P.ID).reset_index(drop=True)
    same_ids = len(a) == len(b) and (a[P.ID].astype(str) == b[P.ID].astype(str)).all()
    out = {"rows": len(a), "same_ids": bool(same_ids)}
    if not same_ids:
        return out
    values = [c for c in a.columns if c in b.columns and c.startswith((P.PROB_PREFIX, P.W_TEXT, P.W_TAB, P.EXPERT_PREFIX))]
    out["same_preds"] = bool((a[P.PRED].astype(str) == b[P.PRED].astype(str)).all())
    out["max_abs_diff"] = float(np.nanmax(np.abs(a[values].to_numpy(float) - b[values].to_numpy(float)))) if values else 0.0
    return out


def reproduce(run_id: str, *, allow_data_change: bool = False, tracking_uri: str | None = None) -> Reproduction:
    """Train `run_id` again from its records. The original is read from, and the new run logged to, `tracking_uri`
    (default: `contract.tracking_uri()`: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db), whatever `tracking.uri` the
    run recorded."""
    uri = resolve_uri(flag=tracking_uri)
    client = mlflow.MlflowClient(uri)
    run = get_run(run_id, client)
    cfg = recorded_config(client, run_id)
    warnings = check_environment(client, run) + check_data(cfg, run, allow_data_change)
    for w in warnings:
        log.warning(w)
    result = train(cfg, extra_tags={Tag.REPRODUCES: run_id}, tracking_uri=uri)
    new = client.get_run(result.run_id)
    missing = sorted(set(run.data.metrics) - set(new.data.metrics))
    if run.info.status != "FINISHED":
        warnings.append(f"the original run ended {run.info.status}: its metrics may be partial")
    if missing:
        warnings.append(f"metrics the original logged and the reproduction did not: {', '.join(missing)}")
    rep = Reproduction(run_id, result.run_id, warnings, compare_metrics(run.data.metrics, new.data.metrics), compare_predictions(client, run_id, result.run_id))
    client.log_dict(result.run_id, {"original": run_id, "warnings": warnings, "max_metric_diff": rep.max_metric_diff, "predictions": rep.predictions, "metrics": rep.metrics.to_dict("records")}, Artifact.REPRODUCTION)
    client.set_tag(result.run_id, Tag.REPRODUCTION_MAX_DIFF, f"{rep.max_metric_diff:.3g}")
    return rep


def report(rep: Reproduction) -> str:
    lines = [f"reproduced run {rep.original_id} as {rep.run_id}"]
    lines += [f"warning: {w}" for w in rep.warnings]
    table = rep.metrics.assign(original=rep.metrics["original"].map("{:.6g}".format), reproduced=rep.metrics["reproduced"].map("{:.6g}".format), abs_diff=rep.metrics["abs_diff"].map("{:.3g}".format))
    lines.append(table.assign(checked=np.where(rep.metrics["checked"], "yes", "no (timing/memory)")).to_string(index=False))
    lines.append(f"largest metric difference: {rep.max_metric_diff:.3g}")
    p = rep.predictions
    if "note" in p:
        lines.append(p["note"])
    elif not p.get("same_ids"):
        lines.append(f"test predictions: different test ids ({p.get('rows')} rows originally)")
    else:
        lines.append(f"test predictions ({p['rows']} rows): same predicted classes: {p['same_preds']}; largest difference in probabilities/weights: {p['max_abs_diff']:.3g}")
    return "\n".join(lines)
