"""The ONNX export of a run in MLflow: `log_onnx` exports and proves parity (`files.export_files`), then logs the model and its `onnx/` files."""

from __future__ import annotations

import contextlib
import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

import numpy as np
import onnxruntime as ort

from mmfusion.export.files import export_files
from mmfusion.serving.onnx_scorer import INT8_FILE, INT8_MODEL_NAME, META_FILE, ONNX_DTYPES, ONNX_MODEL_NAME, PARITY_FILE, OnnxScorer

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


def _encoder_example(batch: dict) -> dict[str, np.ndarray]:
    """The real chunks of a collate() batch as the encoder graph's (N, T) inputs."""
    ids, att, cmask = (np.asarray(batch[k]) for k in ("input_ids", "attention_mask", "chunk_mask"))
    real = np.flatnonzero(cmask.reshape(-1))
    t = ids.shape[-1]
    return {"input_ids": ids.reshape(-1, t)[real], "attention_mask": att.reshape(-1, t)[real]}


def _log_onnx_model(encoder: Path, head: Path, scorer: OnnxScorer, example: dict, name: str) -> str:
    """The encoder graph as an MLflow onnx-flavour model (its signature, an input example) with the head graph as
    its extra file (`Artifact.ONNX_HEAD`): one LoggedModel holds everything the packed scorer needs."""
    quiet = lambda record: "unavailable in this onnxruntime build" not in record.getMessage()  # noqa: E731  (CUDA listed for serving elsewhere)
    logging.getLogger("mlflow.onnx").addFilter(quiet)
    try:
        info = _log_model(encoder, head, scorer, example, name)
    finally:
        logging.getLogger("mlflow.onnx").removeFilter(quiet)
    return info.model_id


def _log_model(encoder: Path, head: Path, scorer: OnnxScorer, example: dict, name: str):
    import mlflow
    import onnx

    return mlflow.onnx.log_model(
        onnx.load(str(encoder)),
        name=name,
        signature=_signature(scorer),
        input_example=example,
        pip_requirements=[f"onnx=={onnx.__version__}", f"onnxruntime=={ort.__version__}"],
        save_as_external_data=False,  # one file, whose sha256 predict checks
        extra_files=[str(head)],
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
    """Export (the packed pair: chunk-encoder and fusion + head graphs, `export_files`), prove parity, and log: the
    ONNX model (MLflow onnx flavour over the encoder graph, with signature and input example; the head graph as its
    extra file), metric `onnx_max_abs_diff`, and under `onnx/` the parity report, tokenizer files, preprocessing.json
    and onnx_meta.json (the sha256 of both graphs). Optionally the int8 model (int8 encoder, fp32 head) with its
    figures. Everything is computed and checked before anything is logged.

    Without `into_run`: into the active run (training), and a failed parity check logs its report before raising
    ParityError (that run then fails). With `into_run` (`mmfusion export`): into that finished run, which keeps its
    status; a failure logs nothing, so a run's passing report is never replaced by a failing one. -> the report."""
    import tempfile

    import mlflow

    def record_failure(report: dict) -> None:
        if into_run is None:
            mlflow.log_dict(report, f"onnx/{PARITY_FILE}")
            mlflow.log_metric("onnx_max_abs_diff", min(report["max_abs_diff"], 1e30))

    quantize = cfg.export.quantize if quantize is None else quantize
    tolerance = cfg.export.tolerance if tolerance is None else tolerance
    with tempfile.TemporaryDirectory() as tmp:
        out = export_files(cfg, model, data, tokenizer, tmp, quantize=quantize, tolerance=tolerance, on_failure=record_failure)
        report, meta, example = out.report, dict(out.meta), _encoder_example(out.example)
        with _logging_into(into_run):  # only now: every check has passed
            mlflow.log_dict(report, f"onnx/{PARITY_FILE}")
            mlflow.log_metric("onnx_max_abs_diff", report["max_abs_diff"])
            meta["onnx_model_id"] = _log_onnx_model(*out.fp32, OnnxScorer(out.fp32.encoder), example, ONNX_MODEL_NAME)
            if out.int8 is not None:
                q = out.int8_report
                mlflow.log_dict(q, f"onnx/{INT8_FILE}")
                mlflow.log_metrics({"onnx_int8_max_abs_diff": q["max_abs_diff_probs"], "onnx_int8_agreement": q["prediction_agreement"], "onnx_int8_accuracy": q["accuracy_int8"]})
                meta["onnx_int8_model_id"] = _log_onnx_model(*out.int8, OnnxScorer(out.int8.encoder), example, INT8_MODEL_NAME)
            (out.artifacts / META_FILE).write_text(json.dumps(meta, indent=2))
            mlflow.log_artifacts(str(out.artifacts), "onnx")
    log.info("ONNX export: %.1fs, max |ONNX - PyTorch| = %.2g over %d samples", report["export_seconds"], report["max_abs_diff"], report["samples_checked"])
    return report
