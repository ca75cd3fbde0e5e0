"""One trial = one nested `train` run, and what ends a study from inside its loop (failures in a row, a signal)."""

from __future__ import annotations

import gc
import json
import logging
import signal
import threading
from typing import Any

import mlflow
import optuna
from mlflow import MlflowClient
from mlflow.entities import Param
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID
from optuna.trial import FrozenTrial, TrialState
from optuna_integration import PyTorchLightningPruningCallback

from mmfusion import signals
from mmfusion.jobs import launch
from mmfusion.config import Config
from mmfusion.errors import Interrupted, UserError
from mmfusion.tracking.contract import tracking_uri
from mmfusion.jobs.train import train
from mmfusion.jobs.tune.space import sample_params, trial_config
from mmfusion.jobs.tune.storage import FINISHED, max_resource, trial_run, trial_spec
from mmfusion.tracking.contract import Tag

log = logging.getLogger(__name__)


class StudyFull(Exception):
    """A trial that another worker's concurrent trial made unnecessary (it ends FAIL, and no run is logged)."""


class TrialsFailing(UserError):
    """`study.max_failed_trials` trials of this worker failed in a row: the cause is most likely the same for all."""


def raise_if_stopped() -> None:
    """A signal whose `Interrupted` was swallowed (raised inside a finalizer during garbage collection, where Python
    only prints "Exception ignored") is still remembered: raise it here."""
    signum = signals.received()
    if signum is not None:
        raise Interrupted(signum)


def ignore_further_signals() -> None:
    """While a stop is being recorded (runs KILLED, trial FAIL), a second Ctrl-C must not cut that short (as
    Lightning does); `signals.stop_on_signals` puts the previous handlers back when the study ends."""
    if threading.current_thread() is threading.main_thread():
        for s in (signal.SIGINT, signal.SIGTERM):
            signal.signal(s, signal.SIG_IGN)


class Objective:
    """Pruned trials end KILLED, failed ones FAILED with the reason, stopped ones (SIGINT/SIGTERM) KILLED.

    `current` is the number of this worker's latest trial; `failed_in_a_row` / `last_failure` count its failures;
    `kept` is this worker's best complete lean trial so far (number, its config, its `TrainResult` with the fitted
    module): the study logs its plots and model at the end without training it again."""

    def __init__(self, cfg: Config, parent_id: str, storage_url: str) -> None:
        self.cfg, self.parent_id, self.storage_url = cfg, parent_id, storage_url
        self.client = MlflowClient(tracking_uri(cfg))
        self.current: int | None = None
        self.failed_in_a_row, self.last_failure = 0, ""
        self.kept: tuple[int, Config, Any] | None = None

    def __call__(self, trial: optuna.Trial) -> float:
        self.current = trial.number
        raise_if_stopped()
        sc = self.cfg.study
        if sc.n_trials is not None:  # two workers asked at once: the one with the higher number is not needed
            ahead = [t for t in trial.study.get_trials(deepcopy=False, states=(*FINISHED, TrialState.RUNNING)) if t.state in FINISHED or t.number < trial.number]
            if len(ahead) >= sc.n_trials:
                trial.study.stop()
                raise StudyFull(f"not run: the study already has {sc.n_trials} finished or running trials")
        params: dict[str, Any] = {}
        tags = {Tag.STUDY: sc.study_name, Tag.TRIAL_NUMBER: str(trial.number)}
        try:
            params = sample_params(trial, sc.search_space)
            tags[Tag.TRIAL_PARAMS] = json.dumps(params)
            cfg = trial_config(self.cfg, params, trial.number)
            result = self._train(trial, cfg, tags)
            if sc.metric not in result.metrics:
                raise ValueError(f"the trial logged no {sc.metric} (logged: {', '.join(sorted(result.metrics))})")
        except optuna.TrialPruned as pruned:
            self.failed_in_a_row = 0
            self._end_run(trial, "KILLED", str(pruned), params, tags)
            raise
        except BaseException as err:  # Lightning turns Ctrl-C into SystemExit: decide from the signal, not the type
            stopped = signals.interrupted_error(err)
            if stopped is not None:
                ignore_further_signals()
                self._end_run(trial, "KILLED", str(stopped), params, tags, stopped=True)  # the tag tracking.mlflow_run sets too
                raise stopped from None  # Optuna marks the trial FAIL and re-raises it (not in `catch`)
            reason = f"{type(err).__name__}: {err}"
            self.failed_in_a_row, self.last_failure = self.failed_in_a_row + 1, reason
            self._end_run(trial, "FAILED", reason, params, tags)
            if not isinstance(err, Exception):  # Optuna records only Exceptions: anything else would stay RUNNING
                raise RuntimeError(reason) from err
            raise
        self.failed_in_a_row = 0
        trial.set_user_attr("mlflow_run_id", result.run_id)
        value = result.metrics[sc.metric]
        self._keep(trial.number, cfg, result, value)
        return value

    def _keep(self, number: int, cfg: Config, result, value: float) -> None:
        """Hold the fitted model of this worker's best lean trial (one at a time), drop the others'."""
        if not self.cfg.study.lean_trials or result.module is None:
            return
        best = None if self.kept is None else self.kept[2].metrics[self.cfg.study.metric]
        if best is None or (value > best if self.cfg.study.direction == "maximize" else value < best):  # ties: Optuna's best is the first
            self.kept = (number, cfg, result)

    def _train(self, trial: optuna.Trial, cfg: Config, tags: dict[str, str]):
        sc = self.cfg.study
        pruning = PyTorchLightningPruningCallback(trial, monitor=sc.metric) if sc.pruner.name != "none" else None
        if not launch.needs_supervisor(cfg):
            result = train(cfg, callbacks=[pruning] if pruning else [], parent_run_id=self.parent_id, extra_tags=tags,
                           lean=sc.lean_trials and not cfg.tracking.register_as)  # a trial that registers its model logs one
        else:  # the worker processes build their own pruning callback from the trial's spec in their job file
            spec = trial_spec(self.storage_url, sc, trial.number, max_resource(self.cfg)) if pruning else None
            result = train(cfg, parent_run_id=self.parent_id, extra_tags=tags, trial=spec)
        if pruning:
            pruning.check_pruned()  # multi-process: rank 0's decision, read back from the storage (no-op otherwise)
        return result

    def _end_run(self, trial: optuna.Trial, status: str, reason: str, params: dict[str, Any], tags: dict[str, str], stopped: bool = False) -> None:
        try:
            self._set_run_status(trial, status, reason, params, tags, stopped)
        except mlflow.exceptions.MlflowException as err:  # never hide the trial's own outcome behind a tracking error
            log.warning("trial %d: could not mark its MLflow run %s: %s", trial.number, status, err)

    def _set_run_status(self, trial: optuna.Trial, status: str, reason: str, params: dict[str, Any], tags: dict[str, str], stopped: bool) -> None:
        run = trial_run(self.client, self.parent_id, trial.number)
        if run is None and stopped:
            return  # stopped before its run started: the FAIL trial says it all
        if run is None:  # failed before `train` started its run (e.g. an invalid combination): log one to say why
            exp = self.client.get_run(self.parent_id).info.experiment_id
            run = self.client.create_run(exp, run_name=f"{self.cfg.study.study_name}-trial-{trial.number}", tags={**tags, MLFLOW_PARENT_RUN_ID: self.parent_id})
            self.client.log_batch(run.info.run_id, params=[Param(k, str(v)) for k, v in params.items()])
        run_id = run.info.run_id
        if stopped and run.info.status == "FINISHED":
            return  # the signal came after `train` had ended its run: a finished run is not changed
        trial.set_user_attr("mlflow_run_id", run_id)
        if status == "KILLED":
            if Tag.ERROR in run.data.tags:  # train ended it FAILED (a pruning callback or Lightning's sys.exit)
                self.client.delete_tag(run_id, Tag.ERROR)
            self.client.set_tag(run_id, Tag.STOPPED_BY if stopped else Tag.PRUNED, reason)
        else:
            self.client.set_tag(run_id, Tag.ERROR, reason[:5000])
        if run.info.status != status:
            self.client.set_terminated(run_id, status)


class AfterTrial:
    """First callback after each trial of this worker: what `gc_after_trial` did, then any swallowed signal. What
    survives the collection (the memo's data and embeddings, the loaded libraries) is frozen out of later ones: a full
    collection rescanned all of it after every trial (0.8 s a trial in a cached study, more than its training)."""

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        gc.collect()
        gc.freeze()
        raise_if_stopped()


class FailureLimit:
    """After `limit` failed trials in a row (of this worker, this invocation): stop with the last reason."""

    def __init__(self, objective: Objective, limit: int) -> None:
        self.objective, self.limit = objective, limit

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        if self.objective.failed_in_a_row >= self.limit:
            raise TrialsFailing(
                f"study {study.study_name!r} stopped: {self.objective.failed_in_a_row} trials failed in a row (study.max_failed_trials={self.limit}); "
                f"the last one (#{trial.number}) with {self.objective.last_failure}. Fix the cause and run the same command again to resume the study"
            )
