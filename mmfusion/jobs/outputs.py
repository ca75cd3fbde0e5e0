"""What a trained model leaves in its run (rank 0, active run): cost metrics, the predictions tables, the plots, the
ONNX export with its parity report, and the pyfunc model over a safe-file bundle."""

from __future__ import annotations

import tempfile
import warnings
from pathlib import Path

import lightning as L
import matplotlib.pyplot as plt
import mlflow
import pandas as pd
import torch
from mlflow.models import infer_signature

from mmfusion.analysis.inspection import log_weight_plots
from mmfusion.analysis.plots import router_weights_figure
from mmfusion.config import Config
from mmfusion.data.datamodule import MultimodalDataModule, PreparedData
from mmfusion.export import log_onnx
from mmfusion.serving.bundle import log_bundle_manifest, save_bundle
from mmfusion.tracking import predictions
from mmfusion.tracking.contract import Artifact
from mmfusion.training.fit import SPLIT_RESULTS, FitResult

warnings.filterwarnings("ignore", message=r".*input example was not provided.*")  # the signature is given instead
PACKAGE = Path(__file__).resolve().parents[1]  # mmfusion/: the pyfunc model's code
PIP_REQUIREMENTS = [f"torch=={torch.__version__.split('+')[0]}", "transformers", "safetensors", "pandas", "pyyaml", "pydantic", "lightning", "torchmetrics", "scikit-learn"]


def prediction_tables(fitted: FitResult, data: PreparedData) -> dict[str, pd.DataFrame]:
    """split -> its predictions table (rank 0)."""
    return {split: predictions.table(out, data, split) for split, out in fitted.outputs.items()}


def log_outputs(cfg: Config, fitted: FitResult, data: PreparedData, tokenizer, lean: bool = False) -> dict[str, pd.DataFrame]:
    """Log everything a finished `fit` leaves in the active run. -> the predictions tables by split.

    `lean` (study trials): the metrics and the val/test tables only; `log_model_outputs` is left to the study's end."""
    frames = prediction_tables(fitted, data)
    mlflow.log_metrics({"train_seconds": fitted.train_seconds, **fitted.cost_metrics})
    predictions.log_tables(frames)
    if not lean:
        log_model_outputs(cfg, fitted.module, frames, data, tokenizer)
    return frames


def log_model_outputs(cfg: Config, module, frames: dict[str, pd.DataFrame], data: PreparedData, tokenizer) -> None:
    """The plots, and as `cfg` asks the ONNX export and the pyfunc model, of a fitted module, into the active run."""
    fig = router_weights_figure(frames, cfg.model.fusion)
    mlflow.log_figure(fig, Artifact.ROUTER_PLOT)
    plt.close(fig)  # pyplot keeps every figure it made: a zoo or study process would pile them up
    log_weight_plots(cfg, frames, module, data, tokenizer.pad_token_id or 0)
    if cfg.export.onnx:  # ONNX model + parity report; raises (the run fails) if ONNX and PyTorch disagree
        log_onnx(cfg, module.model, data, tokenizer)
    if cfg.tracking.log_model:
        log_pyfunc(cfg, module.model, data, tokenizer, frames["test"])


def full_tables(cfg: Config, module, data: PreparedData, pad_id: int) -> dict[str, pd.DataFrame]:
    """The predictions tables of every split of a module fitted in this process, the train split predicted now (a
    lean trial skipped it): what `log_model_outputs` draws."""
    loader = MultimodalDataModule(data, cfg.trainer.batch_size, cfg.trainer.eval_batch_size, 0, cfg.seed, pad_id).eval_loader("train")
    trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False)
    trainer.predict(module, dataloaders=loader, return_predictions=False)
    return {split: predictions.table(module.results[key], data, split) for split, key in SPLIT_RESULTS if key in module.results}


def _input_columns(data: PreparedData) -> list[str]:
    c = data.columns
    return [c["id"], *c["texts"], *c["numeric"], *c["categorical"]]


def log_pyfunc(cfg: Config, model, data: PreparedData, tokenizer, test: pd.DataFrame) -> None:
    """The pyfunc model ("model from code", serving/pyfunc.py) over a bundle of safe files; the bundle's sha256 go in
    the run itself (the CLI checks them on every load)."""
    with tempfile.TemporaryDirectory() as tmp:
        bundle = save_bundle(Path(tmp) / "bundle", cfg, model, data.preprocessor, tokenizer)
        mlflow.pyfunc.log_model(
            name=Artifact.MODEL,
            python_model=str(PACKAGE / "serving" / "pyfunc.py"),
            artifacts={"bundle": str(bundle)},
            code_paths=[str(PACKAGE)],
            signature=infer_signature(data.splits["test"].frame.head(5)[_input_columns(data)], test.head(5)[predictions.served_columns(test)]),
            pip_requirements=PIP_REQUIREMENTS,
        )
        log_bundle_manifest(bundle)
