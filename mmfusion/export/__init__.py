"""ONNX export of a trained model, proven numerically equal to PyTorch, and logged to its run.

    packed.py    export_packed: the model as two graphs, chunk encoder (N, T) -> (N, H) and fusion + head, that
                 the scorer drives so that padding chunks are never encoded (what runs export since then)
    onnx.py      export_onnx (the whole model as one graph: runs exported before), add_metadata, quantize_onnx
    parity.py    check_parity, parity_batches, int8_report: ONNX against PyTorch, int8 against fp32
    files.py     export_files: every file of an export, written and proven, before anything is logged
    tracking.py  log_onnx: the export of a run in MLflow

Scoring an exported model (OnnxScorer, PackedScorer, OnnxPredictor, download_onnx) is `mmfusion.serving`: export
imports serving, never the other way round. torch is imported inside the functions that need it.
"""

from mmfusion.export.onnx import DYNAMIC_AXES, INPUTS, OPSET, OUTPUTS, add_metadata, export_onnx, quantize_onnx
from mmfusion.export.packed import PackedFiles, export_packed
from mmfusion.export.parity import ParityError, check_parity, int8_report, parity_batches, score_all
from mmfusion.export.files import ExportFiles, export_files
from mmfusion.export.tracking import log_onnx

__all__ = [
    "DYNAMIC_AXES", "INPUTS", "OPSET", "OUTPUTS", "ExportFiles", "PackedFiles", "ParityError", "add_metadata", "check_parity", "export_files", "export_onnx",
    "export_packed", "int8_report", "log_onnx", "parity_batches", "quantize_onnx", "score_all",
]
