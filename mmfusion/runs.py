"""Reading back what a run recorded: its resolved config (safe YAML, never pickle)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import mlflow
import yaml

from mmfusion.config import Config, build_config, flatten, resolved_dict
from mmfusion.errors import ConfigError, UserError
from mmfusion.tracking import DEFAULT_URI


def config_of_run(run_id: str, tracking_uri: str | None = None, client: mlflow.MlflowClient | None = None) -> Config:
    """The resolved config a run logged (`config.yaml`), read through `client` (or one for the usual URI: the
    environment's, else the given one, else the default) without touching MLflow's process-wide state."""
    client = client or mlflow.MlflowClient(os.environ.get("MLFLOW_TRACKING_URI") or tracking_uri or DEFAULT_URI)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            raw = yaml.safe_load(Path(client.download_artifacts(run_id, "config.yaml", tmp)).read_text()) or {}
        if not isinstance(raw, dict):
            raise ValueError(f"a mapping was expected, got {type(raw).__name__}")
    except Exception as err:  # MlflowException, OSError, YAMLError, ... : the run or its artifact is not there or broken
        raise UserError(f"run {run_id!r}: cannot read its config.yaml at {client.tracking_uri} ({type(err).__name__}: {str(err).splitlines()[0]})") from None
    return build_config(raw, f"config.yaml of run {run_id}")


def ensure_same_config(logged: Config, given: Config) -> Config:
    """A checkpoint only continues the job that made it: any difference but tracking/progress display is an error."""
    ignore = ("tracking.", "trainer.enable_progress_bar")
    a, b = flatten(resolved_dict(logged)), flatten(resolved_dict(given))
    diffs = [f"{k} ({a.get(k)!r} in the checkpoint's run, {b.get(k)!r} given)" for k in sorted(set(a) | set(b)) if not k.startswith(ignore) and a.get(k) != b.get(k)]
    if diffs:
        raise ConfigError("the checkpoint comes from another config: " + "; ".join(diffs))
    return logged
