"""`train(cfg) -> TrainResult`: the one training path that `train`, `tune`, `zoo`, `reproduce` and the tests call."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import tempfile
import warnings
import time
from dataclasses import dataclass, field
from pathlib import Path

import lightning as L
import mlflow
import pandas as pd
import torch
from lightning.pytorch.loggers import MLFlowLogger
from mlflow.models import infer_signature

from mmfusion import signals
from mmfusion.jobs import launch as distributed
from mmfusion.serving.bundle import log_bundle_manifest, save_bundle
from mmfusion.training.callbacks import Heartbeat, LastCheckpoint, MemoryReport, SamplerEpoch, resumable_checkpoint
from mmfusion.config import Config
from mmfusion.data import synthetic
from mmfusion.data.datamodule import MultimodalDataModule, PreparedData, prepare_data
from mmfusion.data.embedding_cache import attach_chunk_embeddings
from mmfusion.encoders import load_text_backbone, load_tokenizer
from mmfusion.training.hardware import resolve_precision
from mmfusion.modeling.module import FusionClassifierModule, check_class_weights
from mmfusion.modeling.metrics import faithful_rows
from mmfusion.errors import ConfigError
from mmfusion.modeling.classifier import MultimodalClassifier, build_model
from mmfusion.analysis.plots import router_weights_figure
from mmfusion.export import log_onnx
from mmfusion.analysis.inspection import log_weight_plots
from mmfusion.tracking.runs import check_resumable
from mmfusion.tracking.session import git_sha, log_config, mlflow_run
from mmfusion.tracking.contract import MODALITY_NAMES, Tag, tracking_uri

log = logging.getLogger(__name__)
for _noise in (r".*module\(s\) in eval mode.*", r".*predict returned None.*", r".*smaller than the logging interval.*", r".*does not have many workers.*", r".*input example was not provided.*", r".*LeafSpec.*", r".*sync_dist=True.*"):
    warnings.filterwarnings("ignore", message=_noise)  # expected here: frozen encoders, small data, outputs kept by the module
RESUME_ENV = "MMFUSION_RESUME"


class RunMetricsLogger(MLFlowLogger):
    """Lightning's MLflow logger for metrics only: the run's status belongs to `tracking.mlflow_run` (or the
    supervisor), so the end of `fit` must not mark it FINISHED while test, export and logging are still to come."""

    def finalize(self, status: str = "success") -> None:
        pass


@dataclass
class TrainResult:
    run_id: str
    metrics: dict[str, float]
    predictions: pd.DataFrame
    module: FusionClassifierModule | None = field(default=None, repr=False)
    data: PreparedData | None = field(default=None, repr=False)


def predictions_frame(res: dict[str, torch.Tensor], data: PreparedData, split: str) -> pd.DataFrame:
    """Evaluation outputs -> rows: id, label, pred, prob_<class>..., w_text, w_tab[, expert_i], drop_text, drop_tab,
    faithful[, true_modality]."""
    classes = data.preprocessor.classes
    idx = res["index"].numpy()
    probs = res["probs"].numpy()
    df = pd.DataFrame({"id": [data.splits[split].ids[i] for i in idx], "label": [classes[i] for i in res["label"].numpy()], "pred": [classes[i] for i in probs.argmax(1)]})
    for k, c in enumerate(classes):
        df[f"prob_{c}"] = probs[:, k]
    df["w_text"], df["w_tab"] = res["weights"][:, 0].numpy(), res["weights"][:, 1].numpy()
    if "experts" in res:
        for e in range(res["experts"].shape[1]):
            df[f"expert_{e}"] = res["experts"][:, e].numpy()
    # the faithfulness check per sample: how much P(true class) falls without the text / the table, and whether the
    # modality the weight prefers is the one whose removal hurts more
    df["drop_text"], df["drop_tab"] = res["drop_text"].numpy(), res["drop_tab"].numpy()
    df["faithful"] = faithful_rows(res["weights"][:, 0], res["drop_text"], res["drop_tab"]).numpy()
    if data.has_modality:
        df["true_modality"] = [MODALITY_NAMES.get(int(m), "unknown") for m in res["modality"].numpy()]
    return df


def _strategy(cfg: Config):
    """fsdp: FSDP2 through ModelParallelStrategy (gloo on CPUs, NCCL on GPUs; sharding in configure_model)."""
    if cfg.trainer.strategy == "fsdp":
        from lightning.pytorch.strategies import ModelParallelStrategy

        return ModelParallelStrategy(data_parallel_size=distributed.world_size(cfg), tensor_parallel_size=1)
    return cfg.trainer.strategy


def _trainer(cfg: Config, logger, out_dir: Path, callbacks: list[L.Callback]) -> L.Trainer:
    t = cfg.trainer
    return L.Trainer(
        max_epochs=t.max_epochs,
        max_steps=t.max_steps,
        accelerator=t.accelerator,
        devices=t.devices,
        num_nodes=t.num_nodes,
        precision=resolve_precision(t.precision, t.accelerator),
        gradient_clip_val=t.gradient_clip_val,
        deterministic=t.deterministic,
        log_every_n_steps=t.log_every_n_steps,
        enable_progress_bar=t.enable_progress_bar,
        enable_model_summary=False,
        enable_checkpointing=cfg.trainer.checkpoints,
        num_sanity_val_steps=0,
        strategy=_strategy(cfg),
        logger=logger,
        callbacks=callbacks,
        default_root_dir=str(out_dir),
    )


def train(
    cfg: Config,
    *,
    callbacks: list[L.Callback] = (),
    parent_run_id: str | None = None,
    extra_tags: dict[str, str] | None = None,
    resume_run_id: str | None = None,
) -> TrainResult:
    """Load and check the data, then train, evaluate and log one MLflow run. Input errors raise before any run starts.

    `callbacks` join the Lightning trainer (e.g. Optuna pruning); `parent_run_id` nests the run (studies, zoo runs);
    `resume_run_id` continues that run from its last checkpoint. With several devices on one node this process
    supervises one worker per device (`mmfusion.jobs.launch`); in a worker, only rank 0 writes to MLflow.
    SIGINT and SIGTERM stop the job as `Interrupted` and its run ends KILLED (a worker of our supervisor takes SIGINT
    only: Lightning's SIGTERM handler runs a collective, and the supervisor forwards SIGINT).
    """
    worker = distributed.launched_externally() and distributed.RUN_ID_ENV in os.environ
    with signals.stop_on_signals((signal.SIGINT,) if worker else (signal.SIGINT, signal.SIGTERM)):
        return _train(cfg, list(callbacks), parent_run_id, extra_tags, resume_run_id, worker)


def _train(cfg: Config, callbacks: list[L.Callback], parent_run_id: str | None, extra_tags: dict[str, str] | None, resume_run_id: str | None, worker: bool) -> TrainResult:
    if resume_run_id is not None and not worker:  # before anything is reopened: a failed check changes no run
        check_resumable(resume_run_id, tracking_uri(cfg), Path(cfg.trainer.output_dir).resolve() / resume_run_id / "checkpoints")
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    tokenizer = load_tokenizer(cfg.model.text_encoder)
    data = prepare_data(cfg.data, cfg.seed, tokenizer)
    check_class_weights(cfg.optim, len(data.preprocessor.classes))
    if worker:  # a worker of our supervisor
        if os.environ.get("MMFUSION_OPTUNA_TRIAL"):  # a study's trial: every rank adds its pruning callback
            from mmfusion.jobs.tune import worker_callbacks

            callbacks = [*callbacks, *worker_callbacks()]
        return _fit(cfg, data, tokenizer, os.environ[distributed.RUN_ID_ENV], list(callbacks), resume=bool(resume_run_id or os.environ.get(RESUME_ENV)))

    tags = {Tag.FUSION: cfg.model.fusion, Tag.GIT_SHA: git_sha(), Tag.DATA_FINGERPRINT: data.fingerprint, **(extra_tags or {})}
    with mlflow_run(cfg, tags, run_id=resume_run_id, parent_run_id=parent_run_id) as run:
        run_id = run.info.run_id
        job_dir = Path(cfg.trainer.output_dir).resolve() / run_id
        job_dir.mkdir(parents=True, exist_ok=True)
        (job_dir / "run.json").write_text(json.dumps({"run_id": run_id, "tracking_uri": mlflow.get_tracking_uri()}))
        if resume_run_id is None:
            log_config(cfg)
            mlflow.log_text(data.preprocessor.to_json(), "preprocessing.json")
            mlflow.set_tags({Tag.JOB_DIR: str(job_dir), Tag.STRATEGY: cfg.trainer.strategy, Tag.WORLD_SIZE: str(distributed.world_size(cfg))})
        if not distributed.needs_supervisor(cfg):
            return _fit(cfg, data, tokenizer, run_id, list(callbacks), resume=resume_run_id is not None)
        if callbacks:
            log.warning("callbacks are not passed to worker processes: %s", [type(c).__name__ for c in callbacks])
        env_resume = {RESUME_ENV: "1"} if resume_run_id else {}
        os.environ.update(env_resume)
        try:
            result = distributed.run_workers(cfg, run_id, job_dir)
        finally:
            os.environ.pop(RESUME_ENV, None)
        return TrainResult(run_id, result["metrics"], pd.read_csv(job_dir / "predictions_test.csv"), None, data)


def _fit(cfg: Config, data: PreparedData, tokenizer, run_id: str, callbacks: list[L.Callback], resume: bool) -> TrainResult:
    """Train + evaluate in this process (one rank of a job, or the whole job)."""
    backbone = load_text_backbone(cfg.model.text_encoder)
    n_classes = len(data.preprocessor.classes)
    model = build_model(cfg.model, backbone, data.preprocessor.n_numeric_features, data.preprocessor.cardinalities, n_classes, len(data.preprocessor.texts))
    module = FusionClassifierModule(model, cfg.optim, n_classes, cfg.model.modality_dropout, data.preprocessor.class_counts)
    if cfg.trainer.compile and not cfg.model.freeze_text_encoder:
        backbone.compile(dynamic=True)  # in place: state-dict keys stay; dynamic: batch shapes vary (see results/bench.md)
    if cfg.model.freeze_text_encoder:
        stats = attach_chunk_embeddings(data, model.text_encoder, cfg.model.text_encoder, cfg.data.max_chunks, cfg.data.chunk_len, cfg.data.cache_dir)
        log.info("text embedding cache: %s", stats)
    datamodule = MultimodalDataModule(data, cfg.trainer.batch_size, cfg.trainer.eval_batch_size, cfg.data.num_workers, cfg.seed, tokenizer.pad_token_id or 0, cfg.data.bucket_by_length)
    job_dir = Path(cfg.trainer.output_dir).resolve() / run_id
    rank0 = distributed.global_rank() == 0
    logger = RunMetricsLogger(experiment_name=cfg.tracking.experiment, run_id=run_id, tracking_uri=tracking_uri(cfg)) if rank0 else False
    memory = MemoryReport()
    checkpoints = [LastCheckpoint(job_dir / "checkpoints", cfg.trainer.checkpoint_every_n_steps)] if cfg.trainer.checkpoints else []
    trainer = _trainer(cfg, logger, job_dir, [*callbacks, memory, SamplerEpoch(), Heartbeat(run_id), *checkpoints])
    ckpt = None
    if resume:
        ckpt = resumable_checkpoint(job_dir / "checkpoints")
        if ckpt is None:
            raise ConfigError(f"cannot resume run {run_id}: no complete checkpoint in {job_dir / 'checkpoints'}")
    with _attached(run_id, rank0 and distributed.RUN_ID_ENV in os.environ):
        started = time.perf_counter()
        trainer.fit(module, datamodule=datamodule, ckpt_path=str(ckpt) if ckpt else None)
        train_seconds = time.perf_counter() - started
        if "val" not in module.results:  # resumed from the final checkpoint: fit had no epoch left to validate
            trainer.validate(module, datamodule=datamodule, verbose=False)
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
        trainer.test(module, datamodule=datamodule, verbose=False)
        metrics.update({k: float(v) for k, v in trainer.callback_metrics.items()})
        trainer.predict(module, dataloaders=datamodule.eval_loader("train"), return_predictions=False)
        full_model = _full_model(cfg, module, backbone.config, data)  # collective under FSDP: every rank calls it
        if not trainer.is_global_zero:
            return TrainResult(run_id, metrics, None, None, data)
        module.model = full_model
        frames = {split: predictions_frame(module.results[key], data, split) for split, key in (("train", "predict"), ("val", "val"), ("test", "test")) if key in module.results}
        mlflow.log_metrics({"train_seconds": train_seconds, **memory.report, **_cost_metrics(full_model, trainer, len(data.splits["train"].ids), train_seconds)})
        _log_outputs(cfg, frames, module, data, tokenizer)
        if distributed.RUN_ID_ENV in os.environ:  # hand the result to the supervisor
            frames["test"].to_csv(job_dir / "predictions_test.csv", index=False)
            (job_dir / "result.json").write_text(json.dumps({"metrics": metrics}))
    return TrainResult(run_id, metrics, frames.get("test"), module, data)


def _cost_metrics(model: MultimodalClassifier, trainer: L.Trainer, n_train: int, seconds: float) -> dict[str, float]:
    """What `compare` puts beside the metrics: parameter counts and training samples per second of `fit`."""
    epochs = trainer.global_step / max(1, trainer.num_training_batches)  # optimizer steps, in epochs (any world size)
    return {
        "n_params": sum(p.numel() for p in model.parameters()),
        "n_trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "n_fusion_params": sum(p.numel() for p in model.fusion.parameters()),
        "train_samples_per_second": epochs * n_train / max(seconds, 1e-9),
    }


@contextlib.contextmanager
def _attached(run_id: str, reopen: bool):
    """In a worker, rank 0 logs into the supervisor's run, and leaves it RUNNING for the supervisor to end."""
    if not reopen:
        yield
        return
    mlflow.set_tracking_uri(os.environ.get("MLFLOW_TRACKING_URI") or mlflow.get_tracking_uri())
    mlflow.start_run(run_id=run_id)
    try:
        yield
    finally:
        mlflow.end_run(status="RUNNING")


def _full_model(cfg: Config, module: FusionClassifierModule, backbone_config, data: PreparedData) -> MultimodalClassifier:
    """An unsharded CPU copy of the trained network (FSDP: gathered from all ranks) for export and serving."""
    from torch.distributed.fsdp import FSDPModule

    if not any(isinstance(m, FSDPModule) for m in module.model.modules()):
        return module.model.cpu().eval()
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
    from transformers import AutoModel

    state = get_model_state_dict(module.model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    copy = build_model(cfg.model, AutoModel.from_config(backbone_config), data.preprocessor.n_numeric_features, data.preprocessor.cardinalities, len(data.preprocessor.classes), len(data.preprocessor.texts))
    if state:  # rank 0 receives the full state; the others get an empty dict
        copy.load_state_dict(state)
    return copy.eval()


def _input_columns(data: PreparedData) -> list[str]:
    c = data.columns
    return [c["id"], *c["texts"], *c["numeric"], *c["categorical"]]


def _output_columns(frame: pd.DataFrame) -> list[str]:
    return ["id", "pred", *[c for c in frame.columns if c.startswith("prob_")], "w_text", "w_tab"]


def _log_outputs(cfg: Config, frames: dict[str, pd.DataFrame], module: FusionClassifierModule, data: PreparedData, tokenizer) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "predictions").mkdir()
        frames["test"].to_csv(tmp / "predictions" / "test.csv", index=False)
        frames["val"].to_csv(tmp / "predictions" / "val.csv", index=False)
        mlflow.log_artifacts(str(tmp / "predictions"), "predictions")
        fig = router_weights_figure(frames, cfg.model.fusion)
        mlflow.log_figure(fig, "plots/router_weights.png")
        log_weight_plots(cfg, frames, module, data, tokenizer.pad_token_id or 0)
        if cfg.export.onnx:  # ONNX model + parity report; raises (the run fails) if ONNX and PyTorch disagree
            log_onnx(cfg, module.model, data, tokenizer)
        if cfg.tracking.log_model:
            bundle = save_bundle(tmp / "bundle", cfg, module.model, data.preprocessor, tokenizer)
            mlflow.pyfunc.log_model(
                name="model",
                python_model=str(Path(__file__).parents[1] / "serving" / "pyfunc.py"),
                artifacts={"bundle": str(bundle)},
                code_paths=[str(Path(__file__).parents[1])],
                signature=infer_signature(data.splits["test"].frame.head(5)[_input_columns(data)], frames["test"].head(5)[_output_columns(frames["test"])]),
                pip_requirements=[f"torch=={torch.__version__.split('+')[0]}", "transformers", "safetensors", "pandas", "pyyaml", "pydantic", "lightning", "torchmetrics", "scikit-learn"],
            )
            log_bundle_manifest(bundle)  # the files' sha256 in the run itself; the CLI checks them on every load
