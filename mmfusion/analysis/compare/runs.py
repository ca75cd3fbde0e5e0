"""Which runs a comparison reads: finding them in MLflow, one row per run, and their test predictions."""

from __future__ import annotations

import logging
from pathlib import Path

import mlflow
import pandas as pd

from mmfusion.errors import UserError
from mmfusion.tracking.artifacts import check_run_id
from mmfusion.tracking.contract import Tag, predictions_path
from mmfusion.tracking.lineage import recorded_digests

log = logging.getLogger(__name__)
LABEL_TAG, FUSION_TAG, FINGERPRINT_TAG = Tag.ZOO_LABEL, Tag.FUSION, Tag.DATA_FINGERPRINT
REPRODUCES_TAG, STUDY_TAG = Tag.REPRODUCES, Tag.STUDY


def find_runs(*, experiment: str | None = None, parent: str | None = None, study: str | None = None, run_ids: list[str] | None = None) -> pd.DataFrame:
    """MLflow's `search_runs` frame of the runs to compare (exactly one source), training runs only."""
    if sum(x is not None for x in (experiment, parent, study, run_ids)) != 1:
        raise UserError("give exactly one of: an experiment, a parent run, a study or a list of run ids")
    if experiment is not None:
        if mlflow.get_experiment_by_name(experiment) is None:
            names = [e.name for e in mlflow.search_experiments()]
            raise UserError(f"no MLflow experiment {experiment!r} at {mlflow.get_tracking_uri()}; experiments: {', '.join(names) or 'none'}")
        df = mlflow.search_runs(experiment_names=[experiment])
    elif parent is not None:
        df = _children(check_run_id(parent, "--parent"))
        if df.empty:
            raise UserError(f"run {parent!r} has no child runs at {mlflow.get_tracking_uri()}")
    elif study is not None:
        # the study name never enters a filter string: every run with the tag, then an exact match here
        df = _search(f"tags.`{STUDY_TAG}` LIKE '%'")
        df = df[df[f"tags.{STUDY_TAG}"] == study] if not df.empty else df
        parents = df[~_has(df, FUSION_TAG)]["run_id"].tolist() if not df.empty else []
        if parents:  # the study's parent run(s): compare their trials
            df = pd.concat([df[_has(df, FUSION_TAG)], *[_children(p) for p in parents]]).drop_duplicates("run_id")
        if df.empty:
            raise UserError(f"no runs tagged {STUDY_TAG}={study!r} at {mlflow.get_tracking_uri()}")
    else:
        ids = ", ".join(f"'{check_run_id(r, '--runs')}'" for r in run_ids)  # validated: no quote can reach the filter
        df = _search(f"attributes.run_id IN ({ids})")
        missing = sorted(set(run_ids) - set(df["run_id"] if not df.empty else []))
        if missing:
            raise UserError(f"no such run(s) at {mlflow.get_tracking_uri()}: {', '.join(missing)}")
    return df[_has(df, FUSION_TAG)].reset_index(drop=True) if not df.empty else df


def _search(filter_string: str) -> pd.DataFrame:
    """search_runs over every experiment; the filter is built from validated ids and constants only."""
    try:
        return mlflow.search_runs(search_all_experiments=True, filter_string=filter_string)
    except mlflow.exceptions.MlflowException as err:
        raise UserError(f"cannot search the runs at {mlflow.get_tracking_uri()} ({str(err).splitlines()[0][:300]})") from None


def _children(parent: str) -> pd.DataFrame:
    return _search(f"tags.mlflow.parentRunId = '{parent}'")


def _has(df: pd.DataFrame, tag: str) -> pd.Series:
    col = f"tags.{tag}"
    return df[col].notna() if col in df.columns else pd.Series(False, index=df.index)


def data_digest(run_id: str, fingerprint_tag: str | None) -> str | None:
    """What pairs two runs' data: the digests of the train/val/test inputs they logged (lineage); the fingerprint tag
    for runs logged before that."""
    digests = recorded_digests(mlflow.get_run(run_id))
    return "|".join(f"{split}:{digests[split][1]}" for split in sorted(digests)) if digests else fingerprint_tag


def runs_table(df: pd.DataFrame, *, group_by: str | None = None, include_reproductions: bool = False, latest_per_seed: bool = True, notes: list[str] | None = None) -> pd.DataFrame:
    """search_runs frame -> rows: label, seed, run_id, fingerprint, metrics. `latest_per_seed`: one run per (variant,
    seed), the latest (a rerun replaces a run); false keeps them all (a study's trials share a seed)."""
    notes = notes if notes is not None else []
    if df.empty:
        raise UserError("no finished training runs to compare")
    if not include_reproductions and f"tags.{REPRODUCES_TAG}" in df.columns:
        repro = df[f"tags.{REPRODUCES_TAG}"].notna()
        if repro.any():
            notes.append(f"{int(repro.sum())} reproduction run(s) left out (they repeat a run, they are not new seeds)")
        df = df[~repro]
    unfinished = df["status"] != "FINISHED"
    if unfinished.any():
        notes.append(f"{int(unfinished.sum())} run(s) not FINISHED left out")
        df = df[~unfinished]
    if df.empty:
        raise UserError("no finished training runs to compare")
    if group_by is not None:
        if group_by not in df.columns:
            raise UserError(f"--group-by {group_by!r} is not a column of these runs; e.g. params.model.fusion, tags.mmfusion.fusion")
        label = df[group_by].astype(str)
    else:
        label = df[f"tags.{LABEL_TAG}"].fillna(df[f"tags.{FUSION_TAG}"]) if f"tags.{LABEL_TAG}" in df.columns else df[f"tags.{FUSION_TAG}"]
    missing = pd.Series(None, index=df.index, dtype=object)
    out = pd.DataFrame({
        "label": label.astype(str).to_numpy(),
        "seed": pd.to_numeric(df.get("params.seed", missing), errors="coerce").to_numpy(),
        "run_id": df["run_id"].to_numpy(),
        "start_time": df["start_time"].to_numpy(),
        "fingerprint": [data_digest(run_id, tag) for run_id, tag in zip(df["run_id"], df.get(f"tags.{FINGERPRINT_TAG}", missing))],
    })
    for col in df.columns:
        if col.startswith("metrics."):
            out[col.removeprefix("metrics.")] = pd.to_numeric(df[col], errors="coerce").to_numpy()
    out = out.sort_values("start_time")
    dup = out.duplicated(["label", "seed"], keep="last") & out["seed"].notna() & latest_per_seed
    if dup.any():
        notes.append(f"{int(dup.sum())} older run(s) with the same variant and seed left out (the latest is kept)")
    return out[~dup].drop(columns="start_time").sort_values(["label", "seed"]).reset_index(drop=True)


def weights_frame(runs: pd.DataFrame, dst: Path) -> pd.DataFrame:
    """Every run's test predictions (w_text, true_modality) with its variant label."""
    frames = []
    for row in runs.itertuples():
        try:
            path = mlflow.artifacts.download_artifacts(run_id=row.run_id, artifact_path=predictions_path("test"), dst_path=str(dst / row.run_id))
        except Exception as err:  # an old or failed run without predictions: leave it out of the figure
            log.warning("run %s: no predictions/test.csv (%s)", row.run_id, str(err).splitlines()[0])
            continue
        cols = ["w_text", "true_modality"]
        df = pd.read_csv(path)
        frames.append(df[[c for c in cols if c in df.columns]].assign(label=row.label, seed=row.seed))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["w_text", "label", "seed"])
