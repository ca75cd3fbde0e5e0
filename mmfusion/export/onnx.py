"""Exporting a trained model to ONNX as one graph, and what both exports share.

    export_onnx(model, batch, path)  raw inputs (token ids, attention masks, chunk mask, numeric, categorical) ->
                                     probs, modality_weights[, expert_weights]; dynamic batch, chunk and token axes;
                                     every padding chunk encoded: what runs exported before `packed.py` (the bench
                                     compares against it)
    add_metadata(path, metadata)     `mmfusion.*` metadata in the file; -> its sha256
    quantize_onnx(src, dst)          int8 dynamic quantization (onnxruntime.quantization)

torch is imported inside the functions that need it.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mmfusion.hashing import sha256_bytes, sha256_file  # noqa: F401 (re-exported: callers import them from here)

if TYPE_CHECKING:
    import torch

    from mmfusion.modeling.classifier import MultimodalClassifier

log = logging.getLogger(__name__)

INPUTS = ("input_ids", "attention_mask", "chunk_mask", "numeric", "categorical")
COLUMN_INPUT = "chunk_column"  # (B, C) which text column each chunk came from: only models with several text columns
OUTPUTS = ("probs", "modality_weights", "expert_weights")
DYNAMIC_AXES = {"input_ids": {0: "batch", 1: "chunks", 2: "tokens"}, "attention_mask": {0: "batch", 1: "chunks", 2: "tokens"}, "chunk_mask": {0: "batch", 1: "chunks"}, "numeric": {0: "batch"}, "categorical": {0: "batch"}, COLUMN_INPUT: {0: "batch", 1: "chunks"}}
OPSET = 17


def _export_copy(model: "MultimodalClassifier") -> "MultimodalClassifier":
    """The copy that gets traced: the model's own `export_copy` (its fusion variant decides what traces cleanly)."""
    return model.export_copy()


def input_names(model: "MultimodalClassifier") -> tuple[str, ...]:
    """The graph's inputs: `INPUTS`, plus `chunk_column` when the model embeds which text column a chunk came from."""
    return (*INPUTS, COLUMN_INPUT) if getattr(model, "column_embedding", None) is not None else INPUTS


def _example_inputs(batch: dict, names: tuple[str, ...] = INPUTS) -> tuple:
    """Example tensors with batch >= 2 and chunks >= 2: a size-1 dimension could be specialised as static."""
    import torch

    x = {k: _tensor(batch[k]) for k in names}
    if x["chunk_mask"].shape[1] < 2:  # add one padding chunk
        x = _pad(x, chunks=1)
    if x["chunk_mask"].shape[0] < 2:  # repeat the sample
        x = {k: torch.cat([v, v], 0) for k, v in x.items()}
    return tuple(x[k] for k in names)


def _tensor(value) -> "torch.Tensor":
    import torch

    t = value if isinstance(value, torch.Tensor) else torch.as_tensor(np.asarray(value))
    return t.cpu().float() if t.is_floating_point() else t.cpu().long()


def _pad(x: dict, chunks: int = 0, tokens: int = 0) -> dict:
    """Add padding chunks and/or padding tokens (masked out: the outputs must not change)."""
    import torch.nn.functional as F

    x = dict(x)
    for k in ("input_ids", "attention_mask"):
        x[k] = F.pad(x[k], (0, tokens, 0, chunks))
    for k in ("chunk_mask", COLUMN_INPUT):
        if k in x:
            x[k] = F.pad(x[k], (0, chunks))
    return x


def _probe(wrapper, path: Path) -> bool:
    """Does the exported file run and agree with PyTorch on shapes other than the example's? (catches baked shapes)"""
    import torch

    from mmfusion.export.parity import _max_abs  # here: parity and serving import this module
    from mmfusion.serving.onnx_scorer import OnnxScorer

    try:
        session = OnnxScorer(path)
        x = {k: v for k, v in zip(wrapper.names, wrapper.example)}
        small = {k: v[:1, :1] if v.dim() > 2 or k in ("chunk_mask", COLUMN_INPUT) else v[:1] for k, v in x.items()}
        big = _pad({k: v[:2] for k, v in x.items()}, chunks=1, tokens=1)
        for probe in (small, big):
            with torch.no_grad():
                want = wrapper(*(probe[k] for k in wrapper.names))
            got = session(probe)
            if any(_max_abs(got[n], w.numpy()) > 1e-3 for n, w in zip(session.output_names, want)):
                return False
        return True
    except Exception as err:  # noqa: BLE001 - any failure means: use the other exporter
        log.info("TorchScript export failed its shape probe (%s: %s)", type(err).__name__, str(err)[:200])
        return False


def export_onnx(model: "MultimodalClassifier", example_batch: dict, path: str | Path, *, dynamo: bool | None = None) -> Path:
    """Export the whole model (eval mode, fp32) to `path`; returns the path.

    Outputs: probs (B, K), modality_weights (B, 2)[, expert_weights (B, E) for mixture-of-experts variants].
    `dynamo=None` (default) uses the TorchScript exporter (~1 s for a tiny BERT against ~15-40 s for torch.export)
    and falls back to the dynamo exporter when the traced file fails a probe on other batch/chunk/token sizes;
    True/False force one exporter. `check_parity` is the real proof either way.
    """
    import torch
    from torch import nn

    class Exportable(nn.Module):
        def __init__(self, inner: nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, input_ids, attention_mask, chunk_mask, numeric, categorical, chunk_column=None):
            out = self.inner(input_ids, attention_mask, chunk_mask, numeric, categorical, chunk_column=chunk_column)
            outs = (out.logits.float().softmax(-1), out.modality_weights.float())
            return outs if out.expert_weights is None else (*outs, out.expert_weights.float())

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    wrapper = Exportable(_export_copy(model)).eval()  # a traceable copy; the model is left as it was
    wrapper.names = inputs = input_names(model)
    wrapper.example = args = _example_inputs(example_batch, inputs)
    axes_in = {k: DYNAMIC_AXES[k] for k in inputs}
    with torch.no_grad():
        n_out = len(wrapper(*args))
    names = list(OUTPUTS[:n_out])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer and deprecation chatter; parity is the real check
        if not dynamo:
            axes = {**axes_in, **{n: {0: "batch"} for n in names}}
            torch.onnx.export(wrapper, args, str(path), input_names=list(inputs), output_names=names, dynamic_axes=axes, opset_version=OPSET, dynamo=False)
            if dynamo is False or _probe(wrapper, path):
                return path
            log.info("falling back to the dynamo ONNX exporter")
        dims = {"batch": torch.export.Dim("batch", min=1), "chunks": torch.export.Dim("chunks", min=1), "tokens": torch.export.Dim("tokens", min=2)}
        shapes = {k: {i: dims[n] for i, n in ax.items()} for k, ax in axes_in.items()}
        prog = torch.onnx.export(wrapper, args, input_names=list(inputs), output_names=names, dynamic_shapes=shapes, dynamo=True, verbose=False)
        prog.save(str(path), external_data=False)
    return path


def add_metadata(path: str | Path, metadata: dict[str, str]) -> str:
    """Write `mmfusion.*` metadata into the ONNX file; returns the file's sha256 (what `OnnxPredictor` checks)."""
    import onnx

    proto = onnx.load(str(path))
    for k, v in metadata.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = f"mmfusion.{k}", v
    blob = proto.SerializeToString()
    Path(path).write_bytes(blob)
    return sha256_bytes(blob)


def quantize_onnx(src: str | Path, dst: str | Path, **options: Any) -> Path:
    """int8 dynamic quantization of the weights (activations quantized at run time), MatMul/Gather ops; `options` go
    to onnxruntime's `quantize_dynamic` (`extra_options` merged into the defaults). What runs ship: s8 weights, one
    scale per output channel, only the MatMuls by a weight (attention's activation x activation ones stay fp32):
    as fast as per-tensor s8 over every MatMul and closer to fp32 (benchmarks/int8_settings.py, results/bench.md)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    extra = {"MatMulConstBOnly": True, **options.pop("extra_options", {})}
    options = {"weight_type": QuantType.QInt8, "per_channel": True, **options, "extra_options": extra}
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    # its advice to pre-process first does not apply: symbolic shape inference fails on BERT's dynamic token axis
    quiet = lambda record: "pre-processing before quantization" not in record.getMessage()  # noqa: E731
    logging.getLogger().addFilter(quiet)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            quantize_dynamic(str(src), str(dst), **options)
    finally:
        logging.getLogger().removeFilter(quiet)
    return dst
