"""Reading back what a run recorded: its resolved config (safe YAML, never pickle), whether its owner is still alive
(stale RUNNING runs), and whether it can be resumed."""

from __future__ import annotations

import os
import socket
import tempfile
import time
from pathlib import Path

import mlflow
import yaml

from mmfusion.config import Config, build_config, flatten, resolved_dict
from mmfusion.config.legacy import fill_logged
from mmfusion.errors import ConfigError, UserError
from mmfusion.tracking.contract import Artifact, Tag, tracking_uri as resolve_uri


def config_of_run(run_id: str, tracking_uri: str | None = None, client: mlflow.MlflowClient | None = None) -> Config:
    """The resolved config a run logged (`config.yaml`), read through `client` (or one for the usual URI: the
    environment's, else the given one, else the default) without touching MLflow's process-wide state."""
    client = client or mlflow.MlflowClient(resolve_uri(flag=tracking_uri))
    try:
        with tempfile.TemporaryDirectory() as tmp:
            raw = yaml.safe_load(Path(client.download_artifacts(run_id, Artifact.CONFIG, tmp)).read_text()) or {}
        if not isinstance(raw, dict):
            raise ValueError(f"a mapping was expected, got {type(raw).__name__}")
    except Exception as err:  # MlflowException, OSError, YAMLError, ... : the run or its artifact is not there or broken
        raise UserError(f"run {run_id!r}: cannot read its config.yaml at {client.tracking_uri} ({type(err).__name__}: {str(err).splitlines()[0]})") from None
    return build_config(fill_logged(raw), f"config.yaml of run {run_id}")


def ensure_same_config(logged: Config, given: Config) -> Config:
    """A checkpoint only continues the job that made it: any difference but tracking/progress display is an error."""
    ignore = ("tracking.", "trainer.enable_progress_bar")
    a, b = flatten(resolved_dict(logged)), flatten(resolved_dict(given))
    diffs = [f"{k} ({a.get(k)!r} in the checkpoint's run, {b.get(k)!r} given)" for k in sorted(set(a) | set(b)) if not k.startswith(ignore) and a.get(k) != b.get(k)]
    if diffs:
        raise ConfigError("the checkpoint comes from another config: " + "; ".join(diffs))
    return logged


def owner_gone(run, older_than: float | None = None, now: float | None = None) -> str | None:
    """Why a RUNNING run has no live owner, or None: its recorded pid is dead on this host, or (runs of other hosts
    or without a pid, when `older_than` seconds is given) its last heartbeat, else its start, is older than that."""
    tags = run.data.tags
    if tags.get(Tag.HOST) == socket.gethostname() and tags.get(Tag.PID, "").isdigit():
        pid = int(tags[Tag.PID])
        return None if _alive(pid) else f"process {pid} on {tags[Tag.HOST]} is gone"  # on this host we know
    if older_than is not None:
        last = float(tags[Tag.HEARTBEAT]) if tags.get(Tag.HEARTBEAT, "").isdigit() else run.info.start_time / 1000.0
        age = (now or time.time()) - last
        if age > older_than:
            return f"no heartbeat for {age:.0f} s (host {tags.get(Tag.HOST, 'unknown')}, pid {tags.get(Tag.PID, 'unknown')})"
    return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    try:  # a zombie (exited, not yet reaped by its parent) is gone too
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def stale_runs(client: mlflow.MlflowClient, experiment: str | None = None, older_than: float | None = None) -> list[tuple[object, str]]:
    """RUNNING runs whose owner is gone, with the reason: of one experiment (by name) or of all."""
    if experiment is not None:
        exp = client.get_experiment_by_name(experiment)
        if exp is None:
            raise UserError(f"no MLflow experiment named {experiment!r} at {client.tracking_uri}")
        ids = [exp.experiment_id]
    else:
        ids = [e.experiment_id for e in client.search_experiments()]
    runs = client.search_runs(ids, filter_string="attributes.status = 'RUNNING'", max_results=5000) if ids else []
    return [(r, why) for r in runs if (why := owner_gone(r, older_than))]


def mark_killed(client: mlflow.MlflowClient, run, reason: str) -> None:
    client.set_tag(run.info.run_id, Tag.KILLED_REASON, f"marked stale: {reason}")
    client.set_terminated(run.info.run_id, "KILLED")


def check_resumable(run_id: str, tracking_uri: str) -> None:
    """Whether run `run_id` may be continued, checked before it is reopened (a failed check changes nothing): a
    KILLED or FAILED run, or a RUNNING one whose owner is gone, continues; a FINISHED one has nothing to resume.
    (Its checkpoint is the job's business: `mmfusion.jobs.train.resume_checkpoint`.)"""
    client = mlflow.MlflowClient(tracking_uri)
    try:
        run = client.get_run(run_id)
    except Exception as err:  # MlflowException: unknown id
        raise UserError(f"run {run_id!r} not found at {tracking_uri} ({type(err).__name__})") from None
    status = run.info.status
    if status == "FINISHED":
        raise UserError(f"run {run_id} is FINISHED: nothing to resume (start a new run to train again)")
    if status == "RUNNING" and (run.data.tags.get(Tag.PID) and owner_gone(run) is None):
        raise UserError(f"run {run_id} is still RUNNING (pid {run.data.tags[Tag.PID]} on {run.data.tags.get(Tag.HOST)}); stop it first, or if that process is gone: mmfusion runs --stale --mark-killed")
