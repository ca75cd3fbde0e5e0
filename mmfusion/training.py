"""`train(cfg) -> TrainResult`: the one training path that `train`, `tune`, `zoo`, `reproduce` and the tests call."""

from __future__ import annotations

import logging
import warnings
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import lightning as L
import mlflow
import pandas as pd
import torch
from lightning.pytorch.loggers import MLFlowLogger
from mlflow.models import infer_signature

from mmfusion.bundle import save_bundle
from mmfusion.config import Config
from mmfusion.data import synthetic
from mmfusion.data.datamodule import MultimodalDataModule, PreparedData, prepare_data
from mmfusion.data.embedding_cache import attach_chunk_embeddings
from mmfusion.encoders import load_text_backbone, load_tokenizer
from mmfusion.hardware import resolve_precision
from mmfusion.lit_module import FusionClassifierModule
from mmfusion.model import build_model
from mmfusion.plots import router_weights_figure
from mmfusion.tracking import git_sha, log_config, mlflow_run, tracking_uri

log = logging.getLogger(__name__)
for _noise in (r".*module\(s\) in eval mode.*", r".*predict returned None.*", r".*smaller than the logging interval.*", r".*does not have many workers.*", r".*input example was not provided.*", r".*LeafSpec.*"):
    warnings.filterwarnings("ignore", message=_noise)  # expected here: frozen encoders, small data, outputs kept by the module
MODALITY_NAMES = {0: "tab", 1: "text", 2: "both"}


@dataclass
class TrainResult:
    run_id: str
    metrics: dict[str, float]
    predictions: pd.DataFrame
    module: FusionClassifierModule | None = field(default=None, repr=False)
    data: PreparedData | None = field(default=None, repr=False)


def predictions_frame(res: dict[str, torch.Tensor], data: PreparedData, split: str) -> pd.DataFrame:
    """Evaluation outputs -> rows: id, label, pred, prob_<class>..., w_text, w_tab[, expert_i][, true_modality]."""
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
    if data.has_modality:
        df["true_modality"] = [MODALITY_NAMES.get(int(m), "unknown") for m in res["modality"].numpy()]
    return df


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
        enable_checkpointing=False,
        num_sanity_val_steps=0,
        logger=logger,
        callbacks=callbacks,
        default_root_dir=str(out_dir),
    )


def train(cfg: Config, *, callbacks: list[L.Callback] = (), parent_run_id: str | None = None, extra_tags: dict[str, str] | None = None) -> TrainResult:
    """Load and check the data, then train, evaluate and log one MLflow run. Input errors raise before any run starts.

    `callbacks` join the Lightning trainer (e.g. Optuna pruning); `parent_run_id` nests the run (studies, zoo runs).
    """
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    tokenizer = load_tokenizer(cfg.model.text_encoder)
    data = prepare_data(cfg.data, cfg.seed, tokenizer)
    backbone = load_text_backbone(cfg.model.text_encoder)
    model = build_model(cfg.model, backbone, data.preprocessor.n_numeric_features, data.preprocessor.cardinalities, len(data.preprocessor.classes))
    module = FusionClassifierModule(model, cfg.optim, len(data.preprocessor.classes))
    if cfg.model.freeze_text_encoder:
        stats = attach_chunk_embeddings(data, model.text_encoder, cfg.model.text_encoder, cfg.data.max_chunks, cfg.data.chunk_len, cfg.data.cache_dir)
        log.info("text embedding cache: %s", stats)
    datamodule = MultimodalDataModule(data, cfg.trainer.batch_size, cfg.trainer.eval_batch_size, cfg.data.num_workers, cfg.seed, tokenizer.pad_token_id or 0)

    tags = {"mmfusion.fusion": cfg.model.fusion, "mmfusion.git_sha": git_sha(), "mmfusion.data_fingerprint": data.fingerprint, **(extra_tags or {})}
    with mlflow_run(cfg, tags, parent_run_id=parent_run_id) as run:
        run_id = run.info.run_id
        log_config(cfg)
        mlflow.log_text(data.preprocessor.to_json(), "preprocessing.json")
        logger = MLFlowLogger(experiment_name=cfg.tracking.experiment, run_id=run_id, tracking_uri=tracking_uri(cfg))
        trainer = _trainer(cfg, logger, Path(cfg.trainer.output_dir) / run_id, list(callbacks))
        started = time.perf_counter()
        trainer.fit(module, datamodule=datamodule)
        train_seconds = time.perf_counter() - started
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
        trainer.test(module, datamodule=datamodule, verbose=False)
        metrics.update({k: float(v) for k, v in trainer.callback_metrics.items()})
        trainer.predict(module, dataloaders=datamodule._loader("train", shuffle=False), return_predictions=False)
        frames = {split: predictions_frame(module.results[key], data, split) for split, key in (("train", "predict"), ("val", "val"), ("test", "test")) if key in module.results}
        if trainer.is_global_zero:
            mlflow.log_metric("train_seconds", train_seconds)
            _log_outputs(cfg, frames, module, data, tokenizer)
    return TrainResult(run_id, metrics, frames.get("test"), module, data)


def _input_columns(data: PreparedData) -> list[str]:
    c = data.columns
    return [c["id"], c["text"], *c["numeric"], *c["categorical"]]


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
        if cfg.tracking.log_model:
            bundle = save_bundle(tmp / "bundle", cfg, module.model, data.preprocessor, tokenizer)
            mlflow.pyfunc.log_model(
                name="model",
                python_model=str(Path(__file__).with_name("pyfunc_model.py")),
                artifacts={"bundle": str(bundle)},
                code_paths=[str(Path(__file__).parent)],
                signature=infer_signature(data.splits["test"].frame.head(5)[_input_columns(data)], frames["test"].head(5)[_output_columns(frames["test"])]),
                pip_requirements=[f"torch=={torch.__version__.split('+')[0]}", "transformers", "safetensors", "pandas", "pyyaml", "pydantic", "lightning", "torchmetrics", "scikit-learn"],
            )
