"""The study loop: `run_study(cfg)` checks what it can, opens the study and its parent run, and runs trials until
`n_trials` are complete or pruned, `timeout` passes, `max_failed_trials` fail in a row, or a signal stops it."""

from __future__ import annotations

import gc
import logging
import sys
import time
from dataclasses import dataclass

import mlflow
import optuna
from mlflow import MlflowClient
from optuna.trial import FrozenTrial, TrialState

from mmfusion import progress, signals
from mmfusion.jobs import launch
from mmfusion.config import Config, StudyConfig
from mmfusion.errors import ConfigError, UserError
from mmfusion.tracking.contract import tracking_uri
from mmfusion.tracking.session import mlflow_run
from mmfusion.jobs.tune.best import log_best_outputs
from mmfusion.jobs.tune.checks import check_study
from mmfusion.jobs.tune.objective import AfterTrial, FailureLimit, Objective, ignore_further_signals, raise_if_stopped
from mmfusion.jobs.tune.report import ParentLog, log_best, log_plots, log_study_setup, parent_tags
from mmfusion.jobs.tune.storage import DEFAULT_STORAGE, FINISHED, PARENT_ATTR, count, fail_stale, open_study

log = logging.getLogger(__name__)


def short_params(params: dict) -> str:
    """`fusion=gate dropout=0.12 lr=0.0011`: a trial's parameters by their last key part, floats to 3 digits."""
    return " ".join(f"{k.rsplit('.', 1)[-1]}={f'{v:.3g}' if isinstance(v, float) else v}" for k, v in params.items())


class TrialLine:
    """One progress line per finished trial (stderr; none with `--quiet`): its number, state, value, parameters and
    time, how far the study is, the best so far and the time since the study started."""

    def __init__(self, n_trials: int | None, metric: str = "value") -> None:
        self.n_trials, self.metric, self.started = n_trials, metric, time.monotonic()

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        if progress.is_quiet():
            return
        done = count(study)
        value = f"{self.metric}={trial.value:.4f}" if trial.value is not None else "-"
        took = f" in {trial.duration.total_seconds():.0f} s" if trial.duration is not None else ""
        try:
            best = f"best {study.best_value:.4f} (trial {study.best_trial.number})"
        except ValueError:  # no complete trial yet
            best = "no complete trial yet"
        of = f"/{self.n_trials}" if self.n_trials else ""
        print(f"trial {trial.number} {trial.state.name.lower()} {value}{took} [{short_params(trial.params)}]; {done}{of} done, {best}, "
              f"{time.monotonic() - self.started:.0f} s elapsed", file=sys.stderr, flush=True)


class _StopAt:
    """Stop once finished + running trials reach n (if a running one fails, `optimize` starts again)."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        if count(study, (*FINISHED, TrialState.RUNNING)) >= self.n:
            study.stop()



def _await_stale(study: optuna.Study, sc: StudyConfig, deadline: float | None) -> None:
    """At start: a RUNNING trial belongs to a live worker or to a dead one (SIGKILL). Wait at most the grace period
    for the dead ones to turn stale, so that they are failed and re-queued, and their retry runs first."""
    running = {t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))}
    until = time.monotonic() + (sc.grace_period or 4 * sc.heartbeat_interval) + 1
    if running:
        log.info("trial(s) %s are RUNNING: waiting up to %.0f s to tell a live worker from a dead one", sorted(running), until - time.monotonic())
    while running and time.monotonic() < min(until, deadline or until):
        fail_stale(study)
        running &= {t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))}
        if running:
            time.sleep(1.0)


def _await_running(study: optuna.Study, sc: StudyConfig, deadline: float | None) -> None:
    """n_trials reached counting running trials: wait until those end (others' trials) or turn stale (dead workers)."""
    shown: list[int] = []
    while deadline is None or time.monotonic() < deadline:
        fail_stale(study)
        running = [t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))]
        if not running:
            return
        if running != shown:
            log.info("waiting for running trial(s) %s (another worker's, or a dead one's until it turns stale)", running)
            shown = running
        time.sleep(sc.heartbeat_interval)


def optimize(study: optuna.Study, objective: Objective, sc: StudyConfig, callbacks: list) -> None:
    """Run trials until `n_trials` are complete or pruned (in all workers together) or `timeout` passes; raise
    `TrialsFailing` after `max_failed_trials` failures in a row, `Interrupted` on SIGINT/SIGTERM."""
    deadline = None if sc.timeout is None else time.monotonic() + sc.timeout
    stop = [_StopAt(sc.n_trials)] if sc.n_trials else []
    _await_stale(study, sc, deadline)
    try:
        _optimize(study, objective, sc, callbacks, deadline, stop)
    finally:
        gc.unfreeze()  # AfterTrial froze what survived each trial; a long-lived process collects it normally again


def _optimize(study: optuna.Study, objective: Objective, sc: StudyConfig, callbacks: list, deadline: float | None, stop: list) -> None:
    while True:
        left = None if deadline is None else deadline - time.monotonic()
        if (left is not None and left <= 0) or (sc.n_trials and count(study) >= sc.n_trials):
            return
        try:
            # no gc_after_trial: AfterTrial collects, then re-raises a signal that a finalizer swallowed meanwhile
            study.optimize(objective, timeout=left, catch=(Exception,), callbacks=[AfterTrial(), TrialLine(sc.n_trials, sc.metric), *callbacks, FailureLimit(objective, sc.max_failed_trials), *stop])
        except ValueError as err:  # our trial was failed as stale by another worker while it ran (optuna#5470)
            if "Cannot tell a" not in str(err):
                raise
            log.warning("a trial of this worker was failed by another one (late heartbeat): %s", err)
        raise_if_stopped()
        if sc.n_trials is None:
            return  # timeout only
        _await_running(study, sc, deadline)


@dataclass
class StudyResult:
    study: optuna.Study
    parent_run_id: str
    best: FrozenTrial | None
    seconds: float


def _parent_id(study: optuna.Study, created: bool, client: MlflowClient) -> str | None:
    """The study's parent run, if it has one. A joining worker of a brand-new study gives its creator a moment."""
    rid = study.user_attrs.get(PARENT_ATTR)
    until = time.monotonic() + 20
    while rid is None and not created and not study.trials and time.monotonic() < until:
        time.sleep(0.5)
        rid = study.user_attrs.get(PARENT_ATTR)
    if rid is None:
        return None
    try:
        client.get_run(rid)
    except mlflow.exceptions.MlflowException:
        log.warning("the study's parent run %s is not in this MLflow store; starting a new one", rid)
        return None
    return rid




class _NoTraceback(logging.Filter):
    """Optuna logs a failed trial with its traceback: keep its one-line message (the reason is also the trial run's
    `mmfusion.error` tag); the traceback of an unexpected error goes to this module's DEBUG log."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info:
            if not isinstance(record.exc_info[1], (KeyboardInterrupt, UserError)):
                log.debug("the failed trial's traceback", exc_info=record.exc_info)
            record.exc_info, record.exc_text = None, None
        return True


def run_study(cfg: Config) -> StudyResult:
    """Check, then create, resume or join the study in `cfg.study` and run it. The parent run ends FINISHED; FAILED
    (with `TrialsFailing`, exit 2) after `max_failed_trials` failures in a row; KILLED on SIGINT/SIGTERM, like the
    running trial's run, whose Optuna trial ends FAIL (`Interrupted` is raised: exit 130/143)."""
    if cfg.study is None:
        raise ConfigError("the config has no `study` section (see experiments/study_quickstart.yaml)")
    if launch.launched_externally():
        raise ConfigError("run `tune` as a single process: a trial with trainer.devices > 1 starts its own workers")
    signals.reset()  # a signal remembered from an earlier job of this process is not this study's
    quiet = _NoTraceback()
    optuna_log = logging.getLogger("optuna.study._optimize")
    optuna_log.addFilter(quiet)
    try:
        with signals.stop_on_signals():
            return _run(cfg)
    finally:
        optuna_log.removeFilter(quiet)


def _run(cfg: Config) -> StudyResult:
    sc = cfg.study
    started = time.perf_counter()
    check_study(cfg)  # before any study or run exists
    study, created = open_study(cfg)
    client = MlflowClient(tracking_uri(cfg))
    parent_cfg = cfg.model_copy(deep=True)
    parent_cfg.tracking.run_name = sc.study_name
    try:
        if client.get_experiment_by_name(cfg.tracking.experiment) is None:
            client.create_experiment(cfg.tracking.experiment)
    except mlflow.exceptions.MlflowException:
        pass  # another worker created it a moment ago
    with mlflow_run(parent_cfg, parent_tags(sc), run_id=_parent_id(study, created, client)) as run:
        parent = run.info.run_id
        if study.user_attrs.get(PARENT_ATTR) != parent:
            study.set_user_attr(PARENT_ATTR, parent)
            log_study_setup(cfg)
        objective = Objective(cfg, parent, sc.storage or DEFAULT_STORAGE)
        try:
            optimize(study, objective, sc, [ParentLog(client, parent)])
        except BaseException as err:
            stopped = signals.interrupted_error(err)
            if stopped is None:
                raise
            ignore_further_signals()
            _record_stop(study, objective.current, parent)
            raise stopped from None  # mlflow_run ends the parent KILLED
        best = log_best(client, study, parent, step=len(study.trials))
        if best is not None:
            client.log_dict(parent, {"number": best.number, "value": best.value, "params": best.params, "run_id": best.user_attrs.get("mlflow_run_id")}, "best_trial.json")
            if sc.lean_trials:
                _best_outputs(client, study, parent, objective, tracking_uri(cfg))
        log_plots(client, study, parent)
    return StudyResult(study, parent, best, time.perf_counter() - started)


def _best_outputs(client: MlflowClient, study: optuna.Study, parent: str, objective: Objective, uri: str) -> None:
    """The best lean trial's plots and model, once; a failure there (e.g. an ONNX parity error) is reported, and the
    study, whose trials are all recorded, still ends FINISHED."""
    try:
        log_best_outputs(client, study, parent, objective.kept, uri)
    except Exception as err:
        if signals.received() is not None:  # stopped meanwhile: the parent ends KILLED
            raise
        log.warning("the best trial's plots and model were not logged: %s: %s", type(err).__name__, err)
    finally:
        objective.kept = None  # the fitted model is not needed any more


def _record_stop(study: optuna.Study, number: int | None, parent: str) -> None:
    """After a signal: this worker's trial FAIL if the signal came where Optuna could not tell it (e.g. in its
    heartbeat thread's join), and any trial run still active KILLED, so that the parent's end is the parent's."""
    while (active := mlflow.active_run()) is not None and active.info.run_id != parent:
        mlflow.end_run("KILLED")
    if number is None:
        return
    if any(t.number == number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))):
        try:
            study.tell(number, state=TrialState.FAIL)
        except (ValueError, RuntimeError) as err:  # failed as stale by another worker a moment ago
            log.warning("trial %d: could not mark it FAIL: %s", number, err)
