"""`train(cfg) -> TrainResult`: one MLflow run around the training core, the one training path that the `train`,
`tune`, `zoo` and `reproduce` jobs and the tests call.

The run is opened here (input errors raise before), the config and preprocessing are logged, then either this process
fits (`run_fit`), or, with several devices on one node, a supervisor starts one worker per device
(`mmfusion.jobs.launch`) that does the same. In a job started by torchrun or a cluster launcher, rank 0 owns the run
and the other ranks only train. The outputs (predictions, plots, ONNX, pyfunc) are logged by `mmfusion.jobs.outputs`.
"""

from __future__ import annotations

import contextlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import lightning as L
import mlflow
import pandas as pd
from lightning.pytorch.loggers import MLFlowLogger

from mmfusion import signals
from mmfusion.config import Config
from mmfusion.data.datamodule import PreparedData, prepare_data
from mmfusion.data.memo import prepared_data as memo_data
from mmfusion.encoders import load_tokenizer
from mmfusion.encoders.partial import check_encoder_layers
from mmfusion.errors import UserError
from mmfusion.jobs import launch
from mmfusion.jobs.outputs import log_outputs
from mmfusion.modeling.module import FusionClassifierModule, check_class_weights
from mmfusion.tracking import contract
from mmfusion.tracking.contract import Artifact, Tag
from mmfusion.tracking.lineage import log_inputs
from mmfusion.tracking.registry import register
from mmfusion.tracking.runs import check_resumable
from mmfusion.tracking.session import beat, git_sha, log_config, mlflow_run
from mmfusion.training.callbacks import resumable_checkpoint
from mmfusion.training.fit import fit
from mmfusion.training.hardware import world_size

log = logging.getLogger(__name__)
RUN_FILE = "run.json"  # in the job folder: the run id and tracking URI, for `train --resume <folder>`


@dataclass
class TrainResult:
    """The same in every mode. `predictions` is the test split's predictions table; `module` (its `model` the full
    network) and `data` are this process's: `module` is None where the model was trained in worker processes, and on
    ranks other than 0, which also have no `run_id` and no `predictions` (rank 0 owns the run)."""

    run_id: str | None
    metrics: dict[str, float]
    predictions: pd.DataFrame | None
    module: FusionClassifierModule | None = field(default=None, repr=False)
    data: PreparedData | None = field(default=None, repr=False)


class RunMetricsLogger(MLFlowLogger):
    """Lightning's MLflow logger for metrics only: the run's status belongs to `tracking.session.mlflow_run` (or the
    supervisor), so the end of `fit` must not mark it FINISHED while test, export and logging are still to come."""

    def finalize(self, status: str = "success") -> None:
        pass


class Heartbeat(L.Callback):
    """Rank 0 stamps the run's heartbeat tag at each epoch's end (`runs --stale` compares it with a threshold)."""

    def __init__(self, run_id: str, tracking_uri: str | None = None) -> None:
        self.run_id, self.tracking_uri = run_id, tracking_uri

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.is_global_zero:
            beat(self.run_id, self.tracking_uri)


def prepare(cfg: Config, memo: bool = False) -> tuple[PreparedData, object]:
    """Seed, load the tokenizer and the data, check what depends on the data. -> (data, tokenizer). `memo`: the data
    prepared once per data config, seed and tokenizer in this process (`mmfusion.data.memo`: lean study trials)."""
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    tokenizer = load_tokenizer(cfg.model.text_encoder)
    check_encoder_layers(cfg.model.train_text_layers, cfg.model.text_encoder)
    if memo:
        data = memo_data(cfg.data, cfg.seed, tokenizer, cfg.model.text_encoder)
    else:
        data = prepare_data(cfg.data, cfg.seed, tokenizer)
    if cfg.data.numeric_transform == "auto":  # each column's choice joins the config the run logs: a rebuild repeats it
        cfg.data.numeric_transforms = dict(data.preprocessor.transforms)
    check_class_weights(cfg.optim, len(data.preprocessor.classes))
    return data, tokenizer


def checkpoint_dir(cfg: Config, run_id: str) -> Path:
    return Path(cfg.trainer.output_dir).resolve() / run_id / "checkpoints"


def resume_checkpoint(run_id: str, folder: Path) -> Path:
    """The complete checkpoint in the job's folder to continue run `run_id` from."""
    ckpt = resumable_checkpoint(folder)
    if ckpt is None:
        raise UserError(f"cannot resume run {run_id}: no complete checkpoint in {folder} (was trainer.checkpoints off, or the job killed before its first epoch ended?)")
    return ckpt


@contextlib.contextmanager
def _into_run(run_id: str, uri: str) -> Iterator[None]:
    """The outputs go into the active run; in a worker, rank 0 reopens the supervisor's run and leaves it RUNNING for
    the supervisor to end."""
    active = mlflow.active_run()
    if active is not None and active.info.run_id == run_id:
        yield
        return
    contract.use_store(uri)
    mlflow.start_run(run_id=run_id)
    try:
        yield
    finally:
        mlflow.end_run(status="RUNNING")


def run_fit(cfg: Config, data: PreparedData, tokenizer, run_id: str | None, uri: str, callbacks: Sequence[L.Callback], ckpt_dir: Path,
            resume_from: Path | None, lean: bool = False) -> TrainResult:
    """This process's part of a job (all of it, a worker, or a rank of a torchrun job). With a `run_id`, rank 0
    logs the metrics while fitting and the outputs after (`lean`: no train-split pass, metrics and tables only)."""
    owner = run_id is not None and launch.global_rank() == 0
    logger = RunMetricsLogger(experiment_name=cfg.tracking.experiment, run_id=run_id, tracking_uri=uri) if owner else False
    beats = [Heartbeat(run_id, uri)] if owner else []
    fitted = fit(cfg, data, [*callbacks, *beats], logger=logger, checkpoint_dir=ckpt_dir, resume_from=resume_from, pad_id=tokenizer.pad_token_id or 0,
                 predict_train=not lean, memo=lean)
    if not (owner and fitted.is_global_zero):
        return TrainResult(run_id, fitted.metrics, None, None, data)
    with _into_run(run_id, uri):
        frames = log_outputs(cfg, fitted, data, tokenizer, lean=lean)
    return TrainResult(run_id, fitted.metrics, frames["test"], fitted.module, data)


def train(
    cfg: Config,
    *,
    callbacks: Sequence[L.Callback] = (),
    parent_run_id: str | None = None,
    extra_tags: dict[str, str] | None = None,
    resume_run_id: str | None = None,
    tracking_uri: str | None = None,
    trial: dict | None = None,
    lean: bool = False,
) -> TrainResult:
    """Load and check the data, then train, evaluate and log one MLflow run. Input errors raise before any run starts.

    `callbacks` join the Lightning trainer (e.g. Optuna pruning; not passed to worker processes); `parent_run_id`
    nests the run (studies, zoo runs); `resume_run_id` continues that run from its last checkpoint; `tracking_uri`:
    where the run goes (default `contract.tracking_uri(cfg)`); `trial`: the study trial the workers of a
    multi-process job report to (`jobs.tune.storage.trial_spec`); `lean` (a study's trial in one process): the data from
    the in-process memo, and no train-split prediction pass, plots, ONNX or model (the run gets tag mmfusion.lean;
    multi-process jobs ignore it). SIGINT and SIGTERM stop the job as `Interrupted`
    and its run ends KILLED.
    """
    with signals.stop_on_signals():
        result = _train(cfg, list(callbacks), parent_run_id, extra_tags, resume_run_id, contract.tracking_uri(cfg, flag=tracking_uri), trial, lean)
    if cfg.tracking.register_as and result.run_id is not None:  # after the run ended FINISHED: a name for its model
        version = register(result.run_id, cfg.tracking.register_as)
        log.info("registered run %s as models:/%s/%s (@best)", result.run_id, cfg.tracking.register_as, version.version)
    return result


def _train(cfg: Config, callbacks: list[L.Callback], parent_run_id: str | None, extra_tags: dict[str, str] | None, resume_run_id: str | None,
           uri: str, trial: dict | None, lean: bool = False) -> TrainResult:
    owner = launch.global_rank() == 0
    lean = lean and owner and not launch.needs_supervisor(cfg) and resume_run_id is None
    resume_from = None
    if resume_run_id is not None:  # before anything is reopened: a failed check changes no run
        if owner:
            check_resumable(resume_run_id, uri)
        resume_from = resume_checkpoint(resume_run_id, checkpoint_dir(cfg, resume_run_id))
    data, tokenizer = prepare(cfg, memo=lean)
    if not owner:  # a rank of a torchrun/SLURM job: rank 0 owns the run, and Lightning gives every rank its checkpoint folder
        placeholder = checkpoint_dir(cfg, resume_run_id or f"rank{launch.global_rank()}")
        return run_fit(cfg, data, tokenizer, None, uri, callbacks, placeholder, resume_from)

    tags = {Tag.FUSION: cfg.model.fusion, Tag.GIT_SHA: git_sha(), Tag.DATA_FINGERPRINT: data.fingerprint, **({Tag.LEAN: "true"} if lean else {}), **(extra_tags or {})}
    with mlflow_run(cfg, tags, run_id=resume_run_id, parent_run_id=parent_run_id, uri=uri) as run:
        run_id = run.info.run_id
        job_dir = checkpoint_dir(cfg, run_id).parent
        job_dir.mkdir(parents=True, exist_ok=True)
        (job_dir / RUN_FILE).write_text(json.dumps({"run_id": run_id, "tracking_uri": uri}))
        if resume_run_id is None:
            log_config(cfg)
            log_inputs(cfg, data)  # lineage: the run's Datasets tab, and the digests reproduce/compare check
            mlflow.log_text(data.preprocessor.to_json(), Artifact.PREPROCESSING)
            mlflow.set_tags({Tag.JOB_DIR: str(job_dir), Tag.STRATEGY: cfg.trainer.strategy, Tag.WORLD_SIZE: str(world_size(cfg))})
        if not launch.needs_supervisor(cfg):
            return run_fit(cfg, data, tokenizer, run_id, uri, callbacks, job_dir / "checkpoints", resume_from, lean)
        if callbacks:
            log.warning("callbacks are not passed to worker processes: %s", [type(c).__name__ for c in callbacks])
        metrics, test = launch.run_workers(cfg, run_id, uri, job_dir, resume=resume_run_id is not None, trial=trial)
        return TrainResult(run_id, metrics, test, None, data)
