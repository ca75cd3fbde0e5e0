"""The Optuna side of a study: storage (with heartbeats), sampler, pruner, and the trial <-> MLflow run link."""

from __future__ import annotations

import importlib.util
import logging
import os
import time
import warnings
from typing import Any

import optuna
import sqlalchemy
from mlflow import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback, fail_stale_trials
from optuna.trial import FrozenTrial, TrialState
from optuna_integration import PyTorchLightningPruningCallback

from mmfusion.config import Config, PrunerConfig, SamplerConfig, StudyConfig
from mmfusion.errors import ConfigError
from mmfusion.tracking.contract import tracking_uri
from mmfusion.tracking.contract import Tag

log = logging.getLogger(__name__)
DEFAULT_STORAGE = "sqlite:///optuna.db"
PARENT_ATTR = "mlflow_parent_run_id"
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


# ---- the storage URL: never shown or logged with its password ---------------------------------------------------


def safe_url(url: str) -> str:
    """The URL with its password as `***` (what is printed, logged and put in error messages)."""
    try:
        return sqlalchemy.engine.make_url(url).render_as_string(hide_password=True)
    except sqlalchemy.exc.ArgumentError:
        return url


def redact(text: str, url: str) -> str:
    """`text` (e.g. a driver's error message) without the password of `url`, wherever it appears."""
    try:
        password = sqlalchemy.engine.make_url(url).password
    except sqlalchemy.exc.ArgumentError:
        return text
    return text.replace(str(password), "***") if password else text


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
                raise ConfigError(f"study.storage {shown!r} cannot be opened: {redact(str(err).splitlines()[0], url)}") from None
            time.sleep(1.0 + attempt)
        except (sqlalchemy.exc.SQLAlchemyError, ImportError, ValueError) as err:
            raise ConfigError(f"study.storage {shown!r} cannot be opened: {redact(str(err).splitlines()[0], url)}") from None
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


def max_resource(cfg: Config) -> int | str:
    return "auto" if "trainer.max_epochs" in cfg.study.search_space else cfg.trainer.max_epochs


def open_study(cfg: Config) -> tuple[optuna.Study, bool]:
    """Create the study, or load it (resume / join). -> (study, created by this call)."""
    sc = cfg.study
    url = sc.storage or DEFAULT_STORAGE
    storage = make_storage(url, sc, tracking_uri(cfg))
    pruner = make_pruner(sc.pruner, max_resource(cfg))
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


def fail_stale(study: optuna.Study) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        fail_stale_trials(study)


# ---- trials and their MLflow runs ---------------------------------------------------------------------------------


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
            client.set_tag(run.info.run_id, Tag.ERROR, "the worker stopped (no heartbeat): trial failed and re-queued")
            client.set_terminated(run.info.run_id, "FAILED")
        log.warning("trial %d: its worker stopped sending heartbeats; failed and re-queued", trial.number)
        self.retry(study, trial)


def trial_spec(storage_url: str, sc: StudyConfig, number: int, max_resource: int | str) -> dict[str, Any]:
    """What the workers of a multi-process trial need to report to it (JSON, in their job file): the study and the
    trial's number, never Optuna's internal trial id."""
    return {"storage": storage_url, "study": sc.study_name, "trial_number": number, "metric": sc.metric, "pruner": sc.pruner.model_dump(), "max_resource": max_resource}


def trial_callbacks(spec: dict[str, Any]) -> list:
    """In each worker of a multi-process trial (all ranks: the prune decision is broadcast): the trial's pruning callback."""
    storage = make_storage(spec["storage"])
    study = optuna.load_study(study_name=spec["study"], storage=storage, pruner=make_pruner(PrunerConfig(**spec["pruner"]), spec["max_resource"]))
    trial_id = storage.get_trial_id_from_study_id_trial_number(storage.get_study_id_from_name(spec["study"]), spec["trial_number"])
    return [PyTorchLightningPruningCallback(optuna.trial.Trial(study, trial_id), monitor=spec["metric"])]
