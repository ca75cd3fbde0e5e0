"""Optuna studies whose trials are `train` runs, nested under one MLflow parent run per study.

- Search space: `study.search_space` (validated with the config); a parameter with `when` is sampled only when an
  earlier categorical parameter took one of the listed values (per-fusion parameters).
- Pruning: optuna-integration's Lightning callback reports `study.metric` every epoch. In one process it raises
  inside `fit`; in a multi-process trial every worker adds it (`worker_callbacks`), rank 0 reports, and the decision
  comes back through the RDB storage: `check_pruned()` after `train` returns. This process alone owns the study.
- Crashes: trials run inside `Study.optimize` with RDB heartbeats; a trial whose worker died is failed (its MLflow run
  too) and re-queued with the same parameters; the study stops at exactly `n_trials` complete + pruned trials.
- The parent run id is a study user attribute, so a re-run of the same command, or a second worker on the same
  storage, logs into the same parent run.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import time
import warnings
from dataclasses import dataclass
from typing import Any

import matplotlib.pyplot as plt
import mlflow
import optuna
import sqlalchemy
from mlflow import MlflowClient
from mlflow.entities import Param
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID, MLFLOW_RUN_NOTE
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback, fail_stale_trials
from optuna.trial import FrozenTrial, TrialState
from optuna_integration import PyTorchLightningPruningCallback

from mmfusion import distributed
from mmfusion.config import Config, ParamSpec, PrunerConfig, SamplerConfig, StudyConfig, build_config, flatten, to_yaml
from mmfusion.errors import ConfigError
from mmfusion.tracking import git_sha, mlflow_run, tracking_uri
from mmfusion.training import train

log = logging.getLogger(__name__)
DEFAULT_STORAGE = "sqlite:///optuna.db"
PARENT_ATTR = "mlflow_parent_run_id"
TRIAL_ENV = "MMFUSION_OPTUNA_TRIAL"  # tells the workers of a multi-process trial which trial to report to
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
_MISSING = object()


# ---- search space -> trial config ------------------------------------------------------------------------------


def sample_params(trial: optuna.Trial, space: dict[str, ParamSpec]) -> dict[str, Any]:
    """Suggest every parameter whose `when` holds, in the order of the search space. -> {dotted key: value}."""
    params: dict[str, Any] = {}
    for name, spec in space.items():
        if not all(params.get(k, _MISSING) in (v if isinstance(v, list) else [v]) for k, v in spec.when.items()):
            continue
        if spec.type == "categorical":
            params[name] = trial.suggest_categorical(name, spec.choices)
        elif spec.type == "int":
            params[name] = trial.suggest_int(name, int(spec.low), int(spec.high), step=int(spec.step or 1), log=spec.log)
        else:
            params[name] = trial.suggest_float(name, spec.low, spec.high, step=spec.step, log=spec.log)
    return params


def trial_config(cfg: Config, params: dict[str, Any], number: int) -> Config:
    """The study's base config (without `study`) with the sampled values: what `train` runs and logs."""
    raw = cfg.model_dump(mode="json", exclude={"study", "zoo"})
    for name, value in params.items():
        *parents, leaf = name.split(".")
        node = raw
        for part in parents:
            node = node[part]
        node[leaf] = value
    raw["tracking"]["run_name"] = f"{cfg.study.study_name}-trial-{number}"
    return build_config(raw, f"trial {number}'s config")


# ---- Optuna pieces -----------------------------------------------------------------------------------------------


def safe_url(url: str) -> str:
    try:
        return sqlalchemy.engine.make_url(url).render_as_string(hide_password=True)
    except sqlalchemy.exc.ArgumentError:
        return url


def engine_url(url: str) -> str:
    """`postgresql://` means psycopg (v3) to SQLAlchemy 2.1; use psycopg2 (what requirements.txt pins) when v3 is absent."""
    try:
        parsed = sqlalchemy.engine.make_url(url)
    except sqlalchemy.exc.ArgumentError:
        return url
    if parsed.drivername in ("postgresql", "postgres") and importlib.util.find_spec("psycopg") is None and importlib.util.find_spec("psycopg2"):
        return parsed.set(drivername="postgresql+psycopg2").render_as_string(hide_password=False)
    return url


def make_storage(url: str, study: StudyConfig | None = None, tracking: str | None = None) -> RDBStorage:
    """RDB storage; with `study`, heartbeats on: a silent trial is failed (with its MLflow run) and re-queued."""
    shown, url = safe_url(url), engine_url(url)
    engine = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {"pool_pre_ping": True}
    heartbeat: dict[str, Any] = {}
    if study is not None:
        heartbeat = {
            "heartbeat_interval": study.heartbeat_interval,
            "grace_period": study.grace_period or 4 * study.heartbeat_interval,
            "heartbeat_stale_trial_callback": _StaleTrial(study.max_retry, tracking),
        }
    for attempt in range(3):
        try:
            return RDBStorage(url, engine_kwargs=engine, **heartbeat)
        except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.ProgrammingError) as err:  # two workers creating the
            if attempt == 2:  # tables of a fresh database at once: the second attempt finds them
                raise ConfigError(f"study.storage {shown!r} cannot be opened: {str(err).splitlines()[0]}") from None
            time.sleep(1.0 + attempt)
        except (sqlalchemy.exc.SQLAlchemyError, ImportError, ValueError) as err:
            raise ConfigError(f"study.storage {shown!r} cannot be opened: {str(err).splitlines()[0]}") from None
    raise AssertionError("unreachable")


def make_sampler(cfg: SamplerConfig, seed: int) -> optuna.samplers.BaseSampler:
    if cfg.name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=cfg.n_startup_trials)


def make_pruner(cfg: PrunerConfig, max_resource: int | str) -> optuna.pruners.BasePruner:
    if cfg.name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=cfg.n_startup_trials, n_warmup_steps=cfg.n_warmup_steps)
    if cfg.name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=cfg.min_resource, max_resource=max_resource, reduction_factor=cfg.reduction_factor)
    return optuna.pruners.NopPruner()


def _max_resource(cfg: Config) -> int | str:
    return "auto" if "trainer.max_epochs" in cfg.study.search_space else cfg.trainer.max_epochs


def open_study(cfg: Config) -> tuple[optuna.Study, bool]:
    """Create the study, or load it (resume / join). -> (study, created by this call)."""
    sc = cfg.study
    url = sc.storage or DEFAULT_STORAGE
    storage = make_storage(url, sc, tracking_uri(cfg))
    pruner = make_pruner(sc.pruner, _max_resource(cfg))
    try:
        study = optuna.create_study(storage=storage, study_name=sc.study_name, direction=sc.direction, pruner=pruner)
        created = True
    except optuna.exceptions.DuplicatedStudyError:
        study = optuna.load_study(study_name=sc.study_name, storage=storage, pruner=pruner)
        created = False
        if study.direction.name.lower() != sc.direction:
            raise ConfigError(f"study {sc.study_name!r} in {safe_url(url)} is set to {study.direction.name.lower()}, the config says {sc.direction}; pick another study.study_name") from None
    seed = sc.sampler.seed if sc.sampler.seed is not None else cfg.seed
    if not created:  # a joining/resuming worker must not replay the creator's random draws
        seed = (seed + 7919 * len(study.trials) + os.getpid()) % 2**32
    study.sampler = make_sampler(sc.sampler, seed)
    return study, created


def count(study: optuna.Study, states: tuple[TrialState, ...] = FINISHED) -> int:
    return len(study.get_trials(deepcopy=False, states=states))


class _StopAt:
    """Stop once finished + running trials reach n (if a running one fails, `optimize` starts again)."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        if count(study, (*FINISHED, TrialState.RUNNING)) >= self.n:
            study.stop()


# ---- MLflow: trial runs and the parent run -----------------------------------------------------------------------


def trial_run(client: MlflowClient, parent_id: str, number: int):
    """The MLflow run of trial `number` under the parent, or None (the trial died before its run started)."""
    exp = client.get_run(parent_id).info.experiment_id
    found = client.search_runs([exp], f"tags.`{MLFLOW_PARENT_RUN_ID}` = '{parent_id}' and tags.`mmfusion.trial_number` = '{number}'", max_results=1)
    return found[0] if found else None


class _StaleTrial:
    """A trial whose worker stopped sending heartbeats: end its MLflow run FAILED with the reason, then re-queue it."""

    def __init__(self, max_retry: int, tracking: str | None) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            self.retry = RetryHeartbeatStaleTrialCallback(max_retry=max_retry)
        self.tracking = tracking

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        parent = study.user_attrs.get(PARENT_ATTR)
        client = MlflowClient(self.tracking)
        run = trial_run(client, parent, trial.number) if parent else None
        if run is not None and run.info.status in ("RUNNING", "SCHEDULED"):
            client.set_tag(run.info.run_id, "mmfusion.error", "the worker stopped (no heartbeat): trial failed and re-queued")
            client.set_terminated(run.info.run_id, "FAILED")
        log.warning("trial %d: its worker stopped sending heartbeats; failed and re-queued", trial.number)
        self.retry(study, trial)


class StudyFull(Exception):
    """A trial that another worker's concurrent trial made unnecessary (it ends FAIL, and no run is logged)."""


class Objective:
    """One trial = one nested `train` run; pruned trials end KILLED, failed ones FAILED with the reason."""

    def __init__(self, cfg: Config, parent_id: str, storage_url: str) -> None:
        self.cfg, self.parent_id, self.storage_url = cfg, parent_id, storage_url
        self.client = MlflowClient(tracking_uri(cfg))

    def __call__(self, trial: optuna.Trial) -> float:
        sc = self.cfg.study
        if sc.n_trials is not None:  # two workers asked at once: the one with the higher number is not needed
            ahead = [t for t in trial.study.get_trials(deepcopy=False, states=(*FINISHED, TrialState.RUNNING)) if t.state in FINISHED or t.number < trial.number]
            if len(ahead) >= sc.n_trials:
                trial.study.stop()
                raise StudyFull(f"not run: the study already has {sc.n_trials} finished or running trials")
        params = sample_params(trial, sc.search_space)
        tags = {"mmfusion.study": sc.study_name, "mmfusion.trial_number": str(trial.number), "mmfusion.trial_params": json.dumps(params)}
        try:
            result = self._train(trial, trial_config(self.cfg, params, trial.number), tags)
            if sc.metric not in result.metrics:
                raise ValueError(f"the trial logged no {sc.metric} (logged: {', '.join(sorted(result.metrics))})")
        except optuna.TrialPruned as pruned:
            self._end_run(trial, "KILLED", str(pruned), params, tags)
            raise
        except Exception as err:
            self._end_run(trial, "FAILED", f"{type(err).__name__}: {err}", params, tags)
            raise
        trial.set_user_attr("mlflow_run_id", result.run_id)
        return result.metrics[sc.metric]

    def _train(self, trial: optuna.Trial, cfg: Config, tags: dict[str, str]):
        sc = self.cfg.study
        pruning = PyTorchLightningPruningCallback(trial, monitor=sc.metric) if sc.pruner.name != "none" else None
        if not distributed.needs_supervisor(cfg):
            result = train(cfg, callbacks=[pruning] if pruning else [], parent_run_id=self.parent_id, extra_tags=tags)
        else:  # worker processes build their own callback from this (mmfusion.training reads it)
            if pruning:
                os.environ[TRIAL_ENV] = json.dumps({"storage": self.storage_url, "study": sc.study_name, "trial_id": trial._trial_id, "metric": sc.metric,
                                                    "pruner": sc.pruner.model_dump(), "max_resource": _max_resource(self.cfg)})
            try:
                result = train(cfg, parent_run_id=self.parent_id, extra_tags=tags)
            finally:
                os.environ.pop(TRIAL_ENV, None)
        if pruning:
            pruning.check_pruned()  # multi-process: rank 0's decision, read back from the storage (no-op otherwise)
        return result

    def _end_run(self, trial: optuna.Trial, status: str, reason: str, params: dict[str, Any], tags: dict[str, str]) -> None:
        try:
            self._set_run_status(trial, status, reason, params, tags)
        except mlflow.exceptions.MlflowException as err:  # never hide the trial's own outcome behind a tracking error
            log.warning("trial %d: could not mark its MLflow run %s: %s", trial.number, status, err)

    def _set_run_status(self, trial: optuna.Trial, status: str, reason: str, params: dict[str, Any], tags: dict[str, str]) -> None:
        run = trial_run(self.client, self.parent_id, trial.number)
        if run is None:  # failed before `train` started its run (e.g. an invalid combination): log one to say why
            exp = self.client.get_run(self.parent_id).info.experiment_id
            run = self.client.create_run(exp, run_name=f"{self.cfg.study.study_name}-trial-{trial.number}", tags={**tags, MLFLOW_PARENT_RUN_ID: self.parent_id})
            self.client.log_batch(run.info.run_id, params=[Param(k, str(v)) for k, v in params.items()])
        run_id = run.info.run_id
        trial.set_user_attr("mlflow_run_id", run_id)
        if status == "KILLED":
            if "mmfusion.error" in run.data.tags:  # train ended it FAILED when the callback raised inside fit
                self.client.delete_tag(run_id, "mmfusion.error")
            self.client.set_tag(run_id, "mmfusion.pruned", reason)
        else:
            self.client.set_tag(run_id, "mmfusion.error", reason[:5000])
        self.client.set_terminated(run_id, status)


class _ParentLog:
    """After every trial: the trial's value and the best so far on the parent run."""

    def __init__(self, client: MlflowClient, parent_id: str) -> None:
        self.client, self.parent_id = client, parent_id

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        if trial.state == TrialState.COMPLETE:
            self.client.log_metric(self.parent_id, "trial_value", trial.value, step=trial.number)
        log_best(self.client, study, self.parent_id, step=trial.number)


def log_best(client: MlflowClient, study: optuna.Study, parent_id: str, step: int = 0) -> FrozenTrial | None:
    """Counts, best value, best params (`best.<key>` tags) and a link to the best trial's run."""
    for state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL):
        client.log_metric(parent_id, f"n_{state.name.lower()}", count(study, (state,)), step=step)
    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not done:
        return None
    best = study.best_trial
    run_id = best.user_attrs.get("mlflow_run_id")
    parent = client.get_run(parent_id)
    client.log_metric(parent_id, "best_value", best.value, step=step)
    for key in [k for k in parent.data.tags if k.startswith("best.") and k[5:] not in best.params]:
        client.delete_tag(parent_id, key)  # a conditional parameter of an earlier best
    tags = {"mmfusion.best_trial": str(best.number), "mmfusion.best_value": f"{best.value:.6g}", **{f"best.{k}": str(v) for k, v in best.params.items()}}
    link = ""
    if run_id:
        tags.update({"mmfusion.best_run_id": run_id, "mmfusion.best_run_uri": f"runs:/{run_id}"})
        link = f", run [{run_id}](#/experiments/{parent.info.experiment_id}/runs/{run_id})"
    tags[MLFLOW_RUN_NOTE] = (f"Best trial **#{best.number}** of study `{study.study_name}`: {study.direction.name.lower()}d value "
                             f"{best.value:.4f}{link}\n\nParams: `{json.dumps(best.params)}`")
    for key, value in tags.items():
        client.set_tag(parent_id, key, value)
    return best


def log_plots(client: MlflowClient, study: optuna.Study, parent_id: str) -> list[str]:
    """Optuna's optimization history, parameter importances and parallel coordinates as images. -> logged paths."""
    from optuna.visualization import matplotlib as ovm

    logged = []
    for name, plot in (("optimization_history", ovm.plot_optimization_history), ("param_importances", ovm.plot_param_importances), ("parallel_coordinates", ovm.plot_parallel_coordinate)):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                warnings.simplefilter("ignore", UserWarning)  # a flat axis when all trials share a value
                ax = plot(study)
            fig = ax.figure if hasattr(ax, "figure") else ax.flat[0].figure
            fig.set_size_inches(9, 5)
            fig.tight_layout()
            client.log_figure(parent_id, fig, f"plots/{name}.png")
            logged.append(f"plots/{name}.png")
        except (ValueError, RuntimeError, ZeroDivisionError) as err:  # e.g. importances need 2+ complete trials
            log.warning("study plot %s skipped: %s", name, err)
        finally:
            plt.close("all")
    return logged


# ---- the study loop -------------------------------------------------------------------------------------------


def _fail_stale(study: optuna.Study) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        fail_stale_trials(study)


def _await_stale(study: optuna.Study, sc: StudyConfig, deadline: float | None) -> None:
    """At start: a RUNNING trial belongs to a live worker or to a dead one (SIGKILL). Wait at most the grace period
    for the dead ones to turn stale, so that they are failed and re-queued, and their retry runs first."""
    running = {t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))}
    until = time.monotonic() + (sc.grace_period or 4 * sc.heartbeat_interval) + 1
    if running:
        log.info("trial(s) %s are RUNNING: waiting up to %.0f s to tell a live worker from a dead one", sorted(running), until - time.monotonic())
    while running and time.monotonic() < min(until, deadline or until):
        _fail_stale(study)
        running &= {t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))}
        if running:
            time.sleep(1.0)


def _await_running(study: optuna.Study, sc: StudyConfig, deadline: float | None) -> None:
    """n_trials reached counting running trials: wait until those end (others' trials) or turn stale (dead workers)."""
    shown: list[int] = []
    while deadline is None or time.monotonic() < deadline:
        _fail_stale(study)
        running = [t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))]
        if not running:
            return
        if running != shown:
            log.info("waiting for running trial(s) %s (another worker's, or a dead one's until it turns stale)", running)
            shown = running
        time.sleep(sc.heartbeat_interval)


def optimize(study: optuna.Study, objective: Objective, sc: StudyConfig, callbacks: list) -> None:
    """Run trials until `n_trials` are complete or pruned (in all workers together) or `timeout` passes."""
    deadline = None if sc.timeout is None else time.monotonic() + sc.timeout
    stop = [_StopAt(sc.n_trials)] if sc.n_trials else []
    _await_stale(study, sc, deadline)
    while True:
        left = None if deadline is None else deadline - time.monotonic()
        if (left is not None and left <= 0) or (sc.n_trials and count(study) >= sc.n_trials):
            return
        try:
            study.optimize(objective, timeout=left, catch=(Exception,), callbacks=[*callbacks, *stop], gc_after_trial=True)
        except ValueError as err:  # our trial was failed as stale by another worker while it ran (optuna#5470)
            if "Cannot tell a" not in str(err):
                raise
            log.warning("a trial of this worker was failed by another one (late heartbeat): %s", err)
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


def _study_params(sc: StudyConfig) -> dict[str, Any]:
    """`study.*` settings, one param per search-space entry (its spec as JSON)."""
    params = {k: json.dumps(v) if isinstance(v, (list, dict)) or v is None else v for k, v in flatten(sc.model_dump(mode="json", exclude={"search_space"}), "study.").items()}
    params.update({f"study.search_space.{k}": json.dumps(v.model_dump(mode="json", exclude_defaults=True)) for k, v in sc.search_space.items()})
    return params


def run_study(cfg: Config) -> StudyResult:
    """Create, resume or join the study in `cfg.study` and run it; the parent run ends FINISHED (KILLED on Ctrl-C)."""
    if cfg.study is None:
        raise ConfigError("the config has no `study` section (see experiments/study_quickstart.yaml)")
    if distributed.launched_externally():
        raise ConfigError("run `tune` as a single process: a trial with trainer.devices > 1 starts its own workers")
    sc = cfg.study
    started = time.perf_counter()
    study, created = open_study(cfg)
    uri = tracking_uri(cfg)
    client = MlflowClient(uri)
    parent_cfg = cfg.model_copy(deep=True)
    parent_cfg.tracking.run_name = sc.study_name
    url = sc.storage or DEFAULT_STORAGE
    tags = {"mmfusion.study": sc.study_name, "mmfusion.role": "study", "mmfusion.storage": safe_url(url), "mmfusion.git_sha": git_sha()}
    try:
        if client.get_experiment_by_name(cfg.tracking.experiment) is None:
            client.create_experiment(cfg.tracking.experiment)
    except mlflow.exceptions.MlflowException:
        pass  # another worker created it a moment ago
    with mlflow_run(parent_cfg, tags, run_id=_parent_id(study, created, client)) as run:
        parent = run.info.run_id
        if study.user_attrs.get(PARENT_ATTR) != parent:
            study.set_user_attr(PARENT_ATTR, parent)
            mlflow.log_params(_study_params(sc))
            mlflow.log_text(to_yaml(cfg), "study_config.yaml")  # base config + study: this file alone re-runs the study
        optimize(study, Objective(cfg, parent, url), sc, [_ParentLog(client, parent)])
        best = log_best(client, study, parent, step=len(study.trials))
        if best is not None:
            client.log_dict(parent, {"number": best.number, "value": best.value, "params": best.params, "run_id": best.user_attrs.get("mlflow_run_id")}, "best_trial.json")
        log_plots(client, study, parent)
    return StudyResult(study, parent, best, time.perf_counter() - started)


def worker_callbacks() -> list:
    """In each worker of a multi-process trial (all ranks: the prune decision is broadcast): the trial's pruning callback."""
    spec = json.loads(os.environ[TRIAL_ENV])
    pruner = make_pruner(PrunerConfig(**spec["pruner"]), spec["max_resource"])
    study = optuna.load_study(study_name=spec["study"], storage=make_storage(spec["storage"]), pruner=pruner)
    return [PyTorchLightningPruningCallback(optuna.trial.Trial(study, spec["trial_id"]), monitor=spec["metric"])]
