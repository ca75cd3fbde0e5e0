"""ONNX export of a trained model, proven numerically equal to PyTorch, and scoring with onnxruntime alone.

    onnx.py      export_onnx, add_metadata, quantize_onnx: the model as an ONNX file (torch imported lazily)
    parity.py    check_parity, parity_batches, int8_report: ONNX against PyTorch, int8 against fp32
    serving.py   OnnxScorer, OnnxPredictor, download_onnx: scoring new rows, no torch
    tracking.py  log_onnx, logged_model_id: the export of a run in MLflow

No module imports torch at import time: `predict --onnx` runs where torch is not installed.
"""

from mmfusion.export.onnx import DYNAMIC_AXES, INPUTS, ONNX_DTYPES, OPSET, OUTPUTS, add_metadata, export_onnx, quantize_onnx, sha256_bytes, sha256_file
from mmfusion.export.parity import ParityError, check_parity, int8_report, parity_batches, score_all
from mmfusion.serving.onnx_scorer import (
    INT8_FILE,
    INT8_MODEL_NAME,
    META_FILE,
    ONNX_MODEL_NAME,
    PARITY_FILE,
    PREPROCESSING_FILE,
    TOKENIZER_DIR,
    ArtifactError,
    FastTokenizer,
    OnnxPredictor,
    OnnxScorer,
    download_onnx,
    numpy_batch,
    scores_frame,
)
from mmfusion.export.tracking import log_onnx, logged_model_id

__all__ = [
    "DYNAMIC_AXES", "INPUTS", "INT8_FILE", "INT8_MODEL_NAME", "META_FILE", "ONNX_DTYPES", "ONNX_MODEL_NAME", "OPSET", "OUTPUTS", "PARITY_FILE",
    "PREPROCESSING_FILE", "TOKENIZER_DIR", "ArtifactError", "FastTokenizer", "OnnxPredictor", "OnnxScorer", "ParityError", "add_metadata",
    "check_parity", "download_onnx", "export_onnx", "int8_report", "log_onnx", "logged_model_id", "numpy_batch", "parity_batches",
    "quantize_onnx", "score_all", "scores_frame", "sha256_bytes", "sha256_file",
]
