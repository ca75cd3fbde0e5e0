"""The ONNX export of a run in MLflow: `log_onnx` exports, proves parity and logs the model and its `onnx/` files."""

from __future__ import annotations

import contextlib
import json
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

import numpy as np
import onnxruntime as ort

from mmfusion.export.onnx import OPSET, add_metadata, export_onnx, quantize_onnx
from mmfusion.export.parity import ParityError, check_parity, int8_report, parity_batches
from mmfusion.hashing import sha256_bytes, sha256_file
from mmfusion.serving.onnx_scorer import (
    INT8_FILE,
    INT8_MODEL_NAME,
    META_FILE,
    ONNX_DTYPES,
    ONNX_MODEL_NAME,
    PARITY_FILE,
    PREPROCESSING_FILE,
    TOKENIZER_DIR,
    OnnxScorer,
)

if TYPE_CHECKING:
    from mmfusion.config import Config
    from mmfusion.data.datamodule import PreparedData
    from mmfusion.modeling.classifier import MultimodalClassifier

log = logging.getLogger(__name__)


def _signature(scorer: OnnxScorer):
    from mlflow.models.signature import ModelSignature
    from mlflow.types.schema import Schema, TensorSpec

    def spec(args) -> Schema:
        return Schema([TensorSpec(np.dtype(ONNX_DTYPES[a.type]), tuple(d if isinstance(d, int) else -1 for d in a.shape), a.name) for a in args])

    return ModelSignature(spec(scorer.session.get_inputs()), spec(scorer.session.get_outputs()))


def _log_onnx_model(path: Path, scorer: OnnxScorer, example: dict, name: str) -> str:
    quiet = lambda record: "unavailable in this onnxruntime build" not in record.getMessage()  # noqa: E731  (CUDA listed for serving elsewhere)
    logging.getLogger("mlflow.onnx").addFilter(quiet)
    try:
        info = _log_model(path, scorer, example, name)
    finally:
        logging.getLogger("mlflow.onnx").removeFilter(quiet)
    return info.model_id


def _log_model(path: Path, scorer: OnnxScorer, example: dict, name: str):
    import mlflow
    import onnx

    return mlflow.onnx.log_model(
        onnx.load(str(path)),
        name=name,
        signature=_signature(scorer),
        input_example={k: np.asarray(example[k].numpy() if hasattr(example[k], "numpy") else example[k]) for k in scorer.inputs},
        pip_requirements=[f"onnx=={onnx.__version__}", f"onnxruntime=={ort.__version__}"],
        save_as_external_data=False,  # one file, whose sha256 predict checks
    )


@contextlib.contextmanager
def _logging_into(run_id: str | None) -> Iterator[None]:
    """Log into the active run (None), or into the finished run `run_id`, which gets its status back."""
    if run_id is None:
        yield
        return
    import mlflow

    status = mlflow.MlflowClient().get_run(run_id).info.status
    mlflow.start_run(run_id=run_id)
    try:
        yield
    finally:
        mlflow.end_run(status)


def log_onnx(cfg: "Config", model: "MultimodalClassifier", data: "PreparedData", tokenizer, *, quantize: bool | None = None, tolerance: float | None = None,
             into_run: str | None = None) -> dict:
    """Export, prove parity, and log: the ONNX model (MLflow onnx flavour, signature and input example), metric
    `onnx_max_abs_diff`, and under `onnx/` the parity report, tokenizer files, preprocessing.json and onnx_meta.json.
    Optionally the int8 model with its figures. Everything is computed and checked before anything is logged.

    Without `into_run`: into the active run (training), and a failed parity check logs its report before raising
    ParityError (that run then fails). With `into_run` (`mmfusion export`): into that finished run, which keeps its
    status; a failure logs nothing, so a run's passing report is never replaced by a failing one. -> the report."""
    import tempfile

    import mlflow

    from mmfusion.data.chunking import DialogueChunker

    quantize = cfg.export.quantize if quantize is None else quantize
    tolerance = cfg.export.tolerance if tolerance is None else tolerance
    pad_id = tokenizer.pad_token_id or 0
    held_out = data.splits["test"] if len(data.splits["test"].ids) else data.splits["val"]
    batches = parity_batches(held_out, pad_id)
    pre_text = data.preprocessor.to_json()
    chunker = DialogueChunker(tokenizer, cfg.data.max_chunks, cfg.data.chunk_len)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        started = time.perf_counter()
        model_path = export_onnx(model, batches[0], tmp / "model.onnx")
        meta = {"fusion": cfg.model.fusion, "classes": json.dumps(data.preprocessor.classes), "preprocessing_sha256": sha256_bytes(pre_text.encode())}
        digest = add_metadata(model_path, meta)
        export_seconds = time.perf_counter() - started
        scorer = OnnxScorer(model_path)
        try:
            report = check_parity(model, scorer, batches, tolerance)
        except ParityError as err:
            if into_run is None:
                mlflow.log_dict(err.report, f"onnx/{PARITY_FILE}")
                mlflow.log_metric("onnx_max_abs_diff", min(err.report["max_abs_diff"], 1e30))
            raise
        report["export_seconds"] = export_seconds
        files = tmp / "artifacts"
        tokenizer.save_pretrained(files / TOKENIZER_DIR)
        (files / PREPROCESSING_FILE).write_text(pre_text)
        run_meta = {"model_sha256": digest, "max_chunks": cfg.data.max_chunks, "chunk_len": cfg.data.chunk_len, "pad_id": pad_id, "cls_id": chunker.cls_id, "sep_id": chunker.sep_id,
                    "classes": data.preprocessor.classes, "fusion": cfg.model.fusion, "inputs": list(scorer.inputs), "outputs": scorer.output_names, "opset": OPSET}
        q_path = q_scorer = q_report = None
        if quantize:
            q_path = quantize_onnx(model_path, tmp / "model_int8.onnx")
            q_scorer = OnnxScorer(q_path)
            from functools import partial

            from torch.utils.data import DataLoader

            from mmfusion.data.datamodule import SplitDataset, collate

            loader = DataLoader(SplitDataset(held_out), batch_size=cfg.trainer.eval_batch_size, collate_fn=partial(collate, pad_id=pad_id))
            q_report = int8_report(scorer, q_scorer, list(loader), model_path, q_path)
            run_meta["int8_model_sha256"] = sha256_file(q_path)
        with _logging_into(into_run):  # only now: every check has passed
            mlflow.log_dict(report, f"onnx/{PARITY_FILE}")
            mlflow.log_metric("onnx_max_abs_diff", report["max_abs_diff"])
            run_meta["onnx_model_id"] = _log_onnx_model(model_path, scorer, batches[1], ONNX_MODEL_NAME)
            if q_report is not None:
                mlflow.log_dict(q_report, f"onnx/{INT8_FILE}")
                mlflow.log_metrics({"onnx_int8_max_abs_diff": q_report["max_abs_diff_probs"], "onnx_int8_agreement": q_report["prediction_agreement"], "onnx_int8_accuracy": q_report["accuracy_int8"]})
                run_meta["onnx_int8_model_id"] = _log_onnx_model(q_path, q_scorer, batches[1], INT8_MODEL_NAME)
            (files / META_FILE).write_text(json.dumps(run_meta, indent=2))
            mlflow.log_artifacts(str(files), "onnx")
    log.info("ONNX export: %.1fs, max |ONNX - PyTorch| = %.2g over %d samples", export_seconds, report["max_abs_diff"], report["samples_checked"])
    return report

