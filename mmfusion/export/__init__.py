"""ONNX export of a trained model, proven numerically equal to PyTorch, and logged to its run.

    onnx.py      export_onnx, add_metadata, quantize_onnx: the model as an ONNX file (torch imported lazily)
    parity.py    check_parity, parity_batches, int8_report: ONNX against PyTorch, int8 against fp32
    tracking.py  log_onnx: the export of a run in MLflow

Scoring an exported model (OnnxScorer, OnnxPredictor, download_onnx) is `mmfusion.serving.onnx_scorer`: export
imports serving, never the other way round.
"""

from mmfusion.export.onnx import DYNAMIC_AXES, INPUTS, OPSET, OUTPUTS, add_metadata, export_onnx, quantize_onnx
from mmfusion.export.parity import ParityError, check_parity, int8_report, parity_batches, score_all
from mmfusion.export.tracking import log_onnx

__all__ = [
    "DYNAMIC_AXES", "INPUTS", "OPSET", "OUTPUTS", "ParityError", "add_metadata", "check_parity", "export_onnx", "int8_report", "log_onnx",
    "parity_batches", "quantize_onnx", "score_all",
]
