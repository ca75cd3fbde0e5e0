"""ONNX export of a trained model, proven numerically equal to PyTorch, and scoring with onnxruntime alone.

    export_onnx(model, batch, path)  raw inputs (token ids, attention masks, chunk mask, numeric, categorical) ->
                                     probs, modality_weights[, expert_weights]; dynamic batch, chunk and token axes
    OnnxScorer(path)(batch)          an onnxruntime session that takes collate()-style batches (numpy or torch)
    check_parity(model, scorer, bs)  max |ONNX - PyTorch| over held-out batches; raises ParityError above tolerance
    quantize_onnx(src, dst)          int8 dynamic quantization (onnxruntime.quantization)

The ONNX path (OnnxScorer, OnnxPredictor) imports no torch, so rows can be scored from a run's artifacts with
onnxruntime, numpy, pandas and `tokenizers` only. torch is imported inside the functions that need it.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import onnxruntime as ort

from mmfusion.errors import DataError

if TYPE_CHECKING:
    import pandas as pd
    import torch

    from mmfusion.config import Config
    from mmfusion.data.datamodule import PreparedData, Split
    from mmfusion.model import MultimodalClassifier

log = logging.getLogger(__name__)

INPUTS = ("input_ids", "attention_mask", "chunk_mask", "numeric", "categorical")
OUTPUTS = ("probs", "modality_weights", "expert_weights")
DYNAMIC_AXES = {"input_ids": {0: "batch", 1: "chunks", 2: "tokens"}, "attention_mask": {0: "batch", 1: "chunks", 2: "tokens"}, "chunk_mask": {0: "batch", 1: "chunks"}, "numeric": {0: "batch"}, "categorical": {0: "batch"}}
ONNX_DTYPES = {"tensor(int64)": np.int64, "tensor(float)": np.float32, "tensor(int32)": np.int32, "tensor(double)": np.float64}
OPSET = 17
# Files under the run's `onnx/` artifact folder: with the ONNX logged model they are all `predict --onnx` needs.
META_FILE, PARITY_FILE, INT8_FILE, PREPROCESSING_FILE, TOKENIZER_DIR = "onnx_meta.json", "onnx_parity.json", "onnx_int8.json", "preprocessing.json", "tokenizer"
ONNX_MODEL_NAME, INT8_MODEL_NAME = "model_onnx", "model_onnx_int8"  # LoggedModels; not "onnx", which MLflow would list inside onnx/


class ParityError(RuntimeError):
    """The exported model does not reproduce PyTorch within tolerance: a bug, never to be shipped."""

    def __init__(self, message: str, report: dict) -> None:
        super().__init__(message)
        self.report = report


class ArtifactError(DataError):
    """ONNX artifacts that do not belong together: a tampered model file or a preprocessing.json from elsewhere."""


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# ---- export ------------------------------------------------------------------------------------------------------


def _traceable_attention(mha) -> "torch.nn.Module | None":
    """nn.MultiheadAttention written with plain tensor ops (same weights, same result), or None if it uses options
    this does not cover. The TorchScript tracer bakes the sequence length of nn.MultiheadAttention as a constant."""
    import math

    import torch
    import torch.nn.functional as F
    from torch import nn

    if not (mha.batch_first and mha._qkv_same_embed_dim and mha.bias_k is None and not mha.add_zero_attn):
        return None

    class PlainAttention(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.heads, self.in_proj_weight, self.in_proj_bias, self.out_proj = mha.num_heads, mha.in_proj_weight, mha.in_proj_bias, mha.out_proj

        def forward(self, query, key, value, key_padding_mask=None, need_weights=True, attn_mask=None, average_attn_weights=True, is_causal=False):
            b, _, d = query.shape
            h = self.heads
            wq, wk, wv = self.in_proj_weight.chunk(3)
            bq, bk, bv = self.in_proj_bias.chunk(3) if self.in_proj_bias is not None else (None, None, None)
            q, k, v = (F.linear(x, w, bias).reshape(b, -1, h, d // h).transpose(1, 2) for x, w, bias in ((query, wq, bq), (key, wk, bk), (value, wv, bv)))  # (B, h, L, hd)
            scores = q @ k.transpose(-2, -1) / math.sqrt(d // h)  # (B, h, L, S)
            if attn_mask is not None:
                scores = scores.masked_fill(attn_mask, float("-inf")) if attn_mask.dtype == torch.bool else scores + attn_mask
            if key_padding_mask is not None:
                scores = scores.masked_fill(key_padding_mask[:, None, None, :].bool(), float("-inf"))
            attn = scores.softmax(-1)  # eval: no dropout
            out = self.out_proj((attn @ v).transpose(1, 2).reshape(b, -1, d))
            return out, (attn.mean(1) if average_attn_weights else attn) if need_weights else None

    return PlainAttention()


def _export_copy(model: "MultimodalClassifier") -> "MultimodalClassifier":
    """An fp32 CPU eval copy that traces cleanly: padding chunks encoded and masked out, eager attention."""
    import torch
    from torch import nn

    m = copy.deepcopy(model).to("cpu", torch.float32).eval()
    m.text_encoder.pack_chunks = False  # packing indexes real chunks data-dependently; same result (see TextEncoder)
    backbone = m.text_encoder.backbone
    if hasattr(backbone, "set_attn_implementation"):
        try:  # eager attention: additive finite masks, so a fully padded chunk stays finite (no NaN from SDPA)
            backbone.set_attn_implementation("eager")
        except (ValueError, NotImplementedError):
            pass
    for parent in list(m.fusion.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.MultiheadAttention) and (plain := _traceable_attention(child)) is not None:
                setattr(parent, name, plain)
    return m


def _example_inputs(batch: dict) -> tuple:
    """Example tensors with batch >= 2 and chunks >= 2: a size-1 dimension could be specialised as static."""
    import torch

    x = {k: _tensor(batch[k]) for k in INPUTS}
    if x["chunk_mask"].shape[1] < 2:  # add one padding chunk
        x = _pad(x, chunks=1)
    if x["chunk_mask"].shape[0] < 2:  # repeat the sample
        x = {k: torch.cat([v, v], 0) for k, v in x.items()}
    return tuple(x[k] for k in INPUTS)


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
    x["chunk_mask"] = F.pad(x["chunk_mask"], (0, chunks))
    return x


def _probe(wrapper, path: Path) -> bool:
    """Does the exported file run and agree with PyTorch on shapes other than the example's? (catches baked shapes)"""
    import torch

    try:
        session = OnnxScorer(path)
        x = {k: v for k, v in zip(INPUTS, wrapper.example)}
        small = {k: v[:1, :1] if v.dim() > 2 or k == "chunk_mask" else v[:1] for k, v in x.items()}
        big = _pad({k: v[:2] for k, v in x.items()}, chunks=1, tokens=1)
        for probe in (small, big):
            with torch.no_grad():
                want = wrapper(*(probe[k] for k in INPUTS))
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

        def forward(self, input_ids, attention_mask, chunk_mask, numeric, categorical):
            out = self.inner(input_ids, attention_mask, chunk_mask, numeric, categorical)
            outs = (out.logits.float().softmax(-1), out.modality_weights.float())
            return outs if out.expert_weights is None else (*outs, out.expert_weights.float())

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    wrapper = Exportable(_export_copy(model)).eval()
    wrapper.example = args = _example_inputs(example_batch)
    with torch.no_grad():
        n_out = len(wrapper(*args))
    names = list(OUTPUTS[:n_out])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer and deprecation chatter; parity is the real check
        if not dynamo:
            axes = {**DYNAMIC_AXES, **{n: {0: "batch"} for n in names}}
            torch.onnx.export(wrapper, args, str(path), input_names=list(INPUTS), output_names=names, dynamic_axes=axes, opset_version=OPSET, dynamo=False)
            if dynamo is False or _probe(wrapper, path):
                return path
            log.info("falling back to the dynamo ONNX exporter")
        dims = {"batch": torch.export.Dim("batch", min=1), "chunks": torch.export.Dim("chunks", min=1), "tokens": torch.export.Dim("tokens", min=2)}
        shapes = {k: {i: dims[n] for i, n in ax.items()} for k, ax in DYNAMIC_AXES.items()}
        prog = torch.onnx.export(wrapper, args, input_names=list(INPUTS), output_names=names, dynamic_shapes=shapes, dynamo=True, verbose=False)
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


def quantize_onnx(src: str | Path, dst: str | Path) -> Path:
    """int8 dynamic quantization of the weights (activations quantized at run time), MatMul/Gather ops."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    # its advice to pre-process first does not apply: symbolic shape inference fails on BERT's dynamic token axis
    quiet = lambda record: "pre-processing before quantization" not in record.getMessage()  # noqa: E731
    logging.getLogger().addFilter(quiet)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8)
    finally:
        logging.getLogger().removeFilter(quiet)
    return dst


# ---- scoring -----------------------------------------------------------------------------------------------------


class OnnxScorer:
    """An onnxruntime session over an exported model: `scorer(batch) -> {"probs", "modality_weights"[, "expert_weights"]}`.

    `batch` is a collate()-style dict (numpy arrays or torch tensors); extra keys are ignored.
    """

    def __init__(self, path: str | Path, threads: int | None = None, providers: list[str] | None = None) -> None:
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        if threads:
            opts.intra_op_num_threads = threads
            opts.inter_op_num_threads = 1
        try:
            self.session = ort.InferenceSession(str(path), opts, providers=providers or ["CPUExecutionProvider"])
        except Exception as err:  # onnxruntime raises its own exception types for unreadable models
            raise ArtifactError(f"{path}: not a loadable ONNX model ({type(err).__name__}: {str(err).splitlines()[0][:200]})") from None
        self.inputs = {i.name: i for i in self.session.get_inputs()}
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.metadata: dict[str, str] = dict(self.session.get_modelmeta().custom_metadata_map)

    def _feed(self, batch: dict) -> dict[str, np.ndarray]:
        feed = {}
        for name, info in self.inputs.items():
            if name not in batch:
                raise DataError(f"ONNX input {name!r} is missing from the batch (has: {', '.join(batch)})")
            value = batch[name]
            value = value.detach().cpu().numpy() if hasattr(value, "detach") else np.asarray(value)
            value = np.ascontiguousarray(value, dtype=ONNX_DTYPES.get(info.type, value.dtype))
            for axis, (want, got) in enumerate(zip(info.shape, value.shape)):
                if isinstance(want, int) and want != got:
                    raise ArtifactError(
                        f"ONNX input {name!r} has {got} values on axis {axis} but the model expects {want}: "
                        "the preprocessing does not match the exported model"
                    )
            feed[name] = value
        return feed

    def __call__(self, batch: dict) -> dict[str, np.ndarray]:
        return dict(zip(self.output_names, self.session.run(self.output_names, self._feed(batch))))


# ---- parity ------------------------------------------------------------------------------------------------------


def _max_abs(a: np.ndarray, b: np.ndarray) -> float:
    if a.shape != b.shape:
        return float("inf")
    if a.size == 0:
        return 0.0
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        return float("inf")  # NaN is never "equal"
    return float(np.abs(a.astype(np.float64) - b.astype(np.float64)).max())


def check_parity(model: "MultimodalClassifier", scorer: OnnxScorer, batches: list[dict], tolerance: float = 1e-4) -> dict:
    """Run PyTorch (fp32, CPU, eval) and ONNX Runtime on each batch; -> report. Raises ParityError above tolerance."""
    import torch

    ref = model if next(model.parameters()).device.type == "cpu" else copy.deepcopy(model).cpu()
    was_training = ref.training
    ref.eval()
    diffs = {"probs": 0.0, "modality_weights": 0.0, "expert_weights": 0.0}
    rows, samples = [], 0
    try:
        with torch.inference_mode():
            for batch in batches:
                x = {k: _tensor(batch[k]) for k in INPUTS}
                out = ref(*(x[k] for k in INPUTS))
                want = {"probs": out.logits.float().softmax(-1).numpy(), "modality_weights": out.modality_weights.float().numpy()}
                if out.expert_weights is not None:
                    want["expert_weights"] = out.expert_weights.float().numpy()
                got = scorer(x)
                row = {"batch_size": int(x["chunk_mask"].shape[0]), "chunks": int(x["chunk_mask"].shape[1]), "tokens": int(x["input_ids"].shape[2]),
                       "padded_chunks": int((x["chunk_mask"] == 0).sum()), "samples_without_text": int((x["chunk_mask"].sum(1) == 0).sum())}
                for key, value in want.items():
                    d = _max_abs(got[key], value) if key in got else float("inf")
                    row[f"max_abs_diff_{key}"] = d
                    diffs[key] = max(diffs[key], d)
                rows.append(row)
                samples += row["batch_size"]
    finally:
        ref.train(was_training)
    worst = max(diffs.values())
    report = {
        "max_abs_diff": worst,
        "max_abs_diff_probs": diffs["probs"],
        "max_abs_diff_weights": diffs["modality_weights"],
        **({"max_abs_diff_expert_weights": diffs["expert_weights"]} if any("max_abs_diff_expert_weights" in r for r in rows) else {}),
        "samples_checked": samples,
        "batches_checked": len(rows),
        "padded_chunks_checked": sum(r["padded_chunks"] for r in rows),
        "samples_without_text_checked": sum(r["samples_without_text"] for r in rows),
        "batch_of_one_checked": any(r["batch_size"] == 1 for r in rows),
        "tolerance": tolerance,
        "passed": bool(worst <= tolerance),
        "batches": rows,
    }
    if not report["passed"]:
        raise ParityError(f"ONNX export does not match PyTorch: max |difference| {worst:.3g} > tolerance {tolerance:g} (probs {diffs['probs']:.3g}, weights {diffs['modality_weights']:.3g})", report)
    return report


def parity_batches(split: "Split", pad_id: int = 0, batch_size: int = 16) -> list[dict]:
    """Held-out batches that cover the hard cases: a regular batch with padded chunks, a batch of one (the longest
    dialogue), a sample with no text beside a full one, and a sample with no text alone. When the split has no
    sample without text, one is made by clearing a sample's dialogue (what scoring an empty dialogue gives)."""
    from mmfusion.data.datamodule import SplitDataset, collate

    ds = SplitDataset(split)
    items = [{k: v for k, v in ds[i].items() if k != "chunk_embeddings"} for i in range(len(ds))]
    if not items:
        return []
    size = lambda it: (len(it["chunks"]), sum(map(len, it["chunks"])))  # noqa: E731
    order = sorted(range(len(items)), key=lambda i: size(items[i]))
    longest = items[order[-1]]
    empty = next((it for it in items if not it["chunks"]), None) or {**items[0], "chunks": []}
    regular = items[:batch_size] if len(items) >= 2 else [items[0], longest]
    return [collate(b, pad_id) for b in (regular, [longest], [empty, longest], [empty], [items[order[0]], longest])]


# ---- artifacts: what a run logs, and scoring from them ------------------------------------------------------------


class FastTokenizer:
    """The `tokenizer.json` of a run through the `tokenizers` library: what DialogueChunker needs, without torch."""

    def __init__(self, directory: str | Path, meta: dict) -> None:
        from tokenizers import Tokenizer

        file = Path(directory) / "tokenizer.json"
        self.tok = Tokenizer.from_file(str(file))
        self.tok.no_truncation()  # chunking truncates, as with the training tokenizer
        self.tok.no_padding()
        self.cls_token_id, self.sep_token_id = meta["cls_id"], meta["sep_id"]
        self.bos_token_id = self.eos_token_id = None
        self.pad_token_id = meta["pad_id"]

    def __call__(self, texts: list[str], add_special_tokens: bool = False) -> dict:
        return {"input_ids": [e.ids for e in self.tok.encode_batch(texts, add_special_tokens=add_special_tokens)]}


def numpy_batch(chunks: list[list[list[int]]], numeric: np.ndarray, categorical: np.ndarray, pad_id: int) -> dict[str, np.ndarray]:
    """collate() without torch: pad chunks to the batch's most (at least 1) and tokens to its longest chunk."""
    b = len(chunks)
    c = max(1, max((len(ch) for ch in chunks), default=0))
    t = max([len(x) for ch in chunks for x in ch] or [2])
    ids = np.full((b, c, t), pad_id, np.int64)
    att = np.zeros((b, c, t), np.int64)
    cmask = np.zeros((b, c), np.int64)
    for i, sample in enumerate(chunks):
        for j, ch in enumerate(sample):
            ids[i, j, : len(ch)], att[i, j, : len(ch)], cmask[i, j] = ch, 1, 1
    return {"input_ids": ids, "attention_mask": att, "chunk_mask": cmask, "numeric": numeric.astype(np.float32), "categorical": categorical.astype(np.int64)}


def scores_frame(outputs: dict[str, np.ndarray], classes: list[str]) -> "pd.DataFrame":
    """ONNX outputs -> the prediction columns every scorer writes: pred, prob_<class>..., w_text, w_tab[, expert_i]."""
    import pandas as pd

    probs, weights = outputs["probs"], outputs["modality_weights"]
    df = pd.DataFrame({"pred": np.asarray(classes)[probs.argmax(1)] if len(probs) else []})
    for k, c in enumerate(classes):
        df[f"prob_{c}"] = probs[:, k]
    df["w_text"], df["w_tab"] = weights[:, 0], weights[:, 1]
    if "expert_weights" in outputs:
        for e in range(outputs["expert_weights"].shape[1]):
            df[f"expert_{e}"] = outputs["expert_weights"][:, e]
    return df


class OnnxPredictor:
    """Scores raw rows from a folder holding model.onnx, onnx_meta.json, preprocessing.json and tokenizer/.

    Checks before scoring that the files belong together: the model's sha256 is the one recorded at export, and
    preprocessing.json is the one the model was exported with.
    """

    def __init__(self, model_path: str | Path, artifacts: str | Path, threads: int | None = None, int8: bool = False) -> None:
        from mmfusion.data.chunking import DialogueChunker
        from mmfusion.data.tabular import TabularPreprocessor

        artifacts = Path(artifacts)
        meta_file = artifacts / META_FILE
        if not meta_file.is_file():
            raise ArtifactError(f"{meta_file}: missing; was the run exported (export.onnx=true or `mmfusion export`)?")
        self.meta = json.loads(meta_file.read_text())
        digest, expected = sha256_file(model_path), self.meta.get("int8_model_sha256" if int8 else "model_sha256")
        if expected is None:
            raise ArtifactError(f"{meta_file}: the latest export of this run made no {'int8' if int8 else 'fp32'} model; run `mmfusion export` again")
        if digest != expected:
            raise ArtifactError(f"{model_path}: sha256 {digest[:12]}... differs from the exported model's {expected[:12]}...: the ONNX file was modified")
        pre_file = artifacts / PREPROCESSING_FILE
        pre_text = pre_file.read_text() if pre_file.is_file() else ""
        self.scorer = OnnxScorer(model_path, threads)
        expected = self.scorer.metadata.get("mmfusion.preprocessing_sha256")
        if sha256_bytes(pre_text.encode()) != expected:
            raise ArtifactError(f"{pre_file}: does not match the preprocessing the ONNX model was exported with (sha256 mismatch)")
        self.pre = TabularPreprocessor.load(pre_file)
        tokenizer_dir = artifacts / TOKENIZER_DIR
        if (tokenizer_dir / "tokenizer.json").is_file():
            tokenizer = FastTokenizer(tokenizer_dir, self.meta)
        else:  # a tokenizer without a `tokenizers` file: transformers reads it
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
        self.chunker = DialogueChunker(tokenizer, self.meta["max_chunks"], self.meta["chunk_len"])

    def check_columns(self, frame: "pd.DataFrame", source: str) -> None:
        from mmfusion.data.table import check_columns, check_numeric

        check_columns(frame, [self.pre.text_column, *self.pre.numeric, *self.pre.categorical], source)
        check_numeric(frame, list(self.pre.numeric), source)

    def predict(self, frame: "pd.DataFrame", batch_size: int = 64) -> "pd.DataFrame":
        import pandas as pd

        parts = []
        for start in range(0, len(frame), batch_size):
            part = frame.iloc[start : start + batch_size]
            numeric, categorical = self.pre.transform(part)
            batch = numpy_batch(self.chunker(part[self.pre.text_column].tolist()), numeric, categorical, self.meta["pad_id"])
            parts.append(scores_frame(self.scorer(batch), self.pre.classes))
        result = pd.concat(parts, ignore_index=True) if parts else scores_frame({"probs": np.zeros((0, len(self.pre.classes))), "modality_weights": np.zeros((0, 2))}, self.pre.classes)
        if self.pre.id_column and self.pre.id_column in frame.columns:
            result.insert(0, "id", frame[self.pre.id_column].astype(str).to_numpy())
        return result


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


def score_all(scorer: OnnxScorer, batches: list[dict]) -> tuple[dict[str, np.ndarray], float]:
    """Score every batch -> (outputs concatenated over the batches, seconds)."""
    started = time.perf_counter()
    parts = [scorer(b) for b in batches]
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}, time.perf_counter() - started


def int8_report(fp32: OnnxScorer, int8: OnnxScorer, batches: list[dict], fp32_path: Path, int8_path: Path) -> dict:
    """Accuracy figures of the int8 model against the fp32 one (which equals PyTorch) on a whole held-out split."""
    (a, seconds_a), (b, seconds_b) = score_all(fp32, batches), score_all(int8, batches)
    labels = np.concatenate([np.asarray(batch["label"]) for batch in batches])
    n = len(labels)
    return {
        "samples": n,
        "max_abs_diff_probs": _max_abs(a["probs"], b["probs"]),
        "mean_abs_diff_probs": float(np.abs(a["probs"] - b["probs"]).mean()) if n else 0.0,
        "max_abs_diff_weights": _max_abs(a["modality_weights"], b["modality_weights"]),
        "prediction_agreement": float((a["probs"].argmax(1) == b["probs"].argmax(1)).mean()) if n else 1.0,
        "accuracy_fp32": float((a["probs"].argmax(1) == labels).mean()) if n else float("nan"),
        "accuracy_int8": float((b["probs"].argmax(1) == labels).mean()) if n else float("nan"),
        "size_mb_fp32": fp32_path.stat().st_size / 2**20,
        "size_mb_int8": int8_path.stat().st_size / 2**20,
        "seconds_fp32": seconds_a,
        "seconds_int8": seconds_b,
    }


def log_onnx(cfg: "Config", model: "MultimodalClassifier", data: "PreparedData", tokenizer, *, quantize: bool | None = None, tolerance: float | None = None) -> dict:
    """Export, prove parity, and log to the active MLflow run: the ONNX model (MLflow onnx flavour, signature and
    input example), metric `onnx_max_abs_diff`, and under `onnx/` the parity report, tokenizer files,
    preprocessing.json and onnx_meta.json. Optionally the int8 model with its figures. Raises ParityError (after
    logging the failed report) when ONNX and PyTorch disagree. -> the parity report."""
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
            mlflow.log_dict(err.report, f"onnx/{PARITY_FILE}")
            mlflow.log_metric("onnx_max_abs_diff", min(err.report["max_abs_diff"], 1e30))
            raise
        report["export_seconds"] = export_seconds
        mlflow.log_dict(report, f"onnx/{PARITY_FILE}")
        mlflow.log_metric("onnx_max_abs_diff", report["max_abs_diff"])
        files = tmp / "artifacts"
        tokenizer.save_pretrained(files / TOKENIZER_DIR)
        (files / PREPROCESSING_FILE).write_text(pre_text)
        run_meta = {"model_sha256": digest, "max_chunks": cfg.data.max_chunks, "chunk_len": cfg.data.chunk_len, "pad_id": pad_id, "cls_id": chunker.cls_id, "sep_id": chunker.sep_id,
                    "classes": data.preprocessor.classes, "fusion": cfg.model.fusion, "inputs": list(scorer.inputs), "outputs": scorer.output_names, "opset": OPSET}
        run_meta["onnx_model_id"] = _log_onnx_model(model_path, scorer, batches[1], ONNX_MODEL_NAME)
        if quantize:
            q_path = quantize_onnx(model_path, tmp / "model_int8.onnx")
            q_scorer = OnnxScorer(q_path)
            from functools import partial

            from torch.utils.data import DataLoader

            from mmfusion.data.datamodule import SplitDataset, collate

            loader = DataLoader(SplitDataset(held_out), batch_size=cfg.trainer.eval_batch_size, collate_fn=partial(collate, pad_id=pad_id))
            q_report = int8_report(scorer, q_scorer, list(loader), model_path, q_path)
            mlflow.log_dict(q_report, f"onnx/{INT8_FILE}")
            mlflow.log_metrics({"onnx_int8_max_abs_diff": q_report["max_abs_diff_probs"], "onnx_int8_agreement": q_report["prediction_agreement"], "onnx_int8_accuracy": q_report["accuracy_int8"]})
            run_meta["int8_model_sha256"] = sha256_file(q_path)
            run_meta["onnx_int8_model_id"] = _log_onnx_model(q_path, q_scorer, batches[1], INT8_MODEL_NAME)
        (files / META_FILE).write_text(json.dumps(run_meta, indent=2))
        mlflow.log_artifacts(str(files), "onnx")
    log.info("ONNX export: %.1fs, max |ONNX - PyTorch| = %.2g over %d samples", export_seconds, report["max_abs_diff"], report["samples_checked"])
    return report


# ---- reading a run's ONNX artifacts back -------------------------------------------------------------------------


def logged_model_id(run_id: str, name: str) -> str | None:
    """The id of the LoggedModel called `name` that `run_id` produced (MLflow 3: models are not run artifacts)."""
    import mlflow

    client = mlflow.MlflowClient()
    run = client.get_run(run_id)
    models = [client.get_logged_model(out.model_id) for out in (run.outputs.model_outputs if run.outputs else [])]
    named = sorted((m for m in models if m.name == name), key=lambda m: m.creation_timestamp)
    return named[-1].model_id if named else None  # the latest: `export` may have run again


def download_onnx(run_id: str, dst: str | Path, int8: bool = False) -> tuple[Path, Path]:
    """-> (model.onnx, folder with the run's `onnx/` artifacts), downloaded into `dst`."""
    import mlflow

    dst = Path(dst)
    name = INT8_MODEL_NAME if int8 else ONNX_MODEL_NAME
    model_id = logged_model_id(run_id, name)
    if model_id is None:
        raise DataError(f"run {run_id} has no {name!r} model; export it first: python -m mmfusion export --run-id {run_id}" + (" --quantize" if int8 else ""))
    model_dir = Path(mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{model_id}", dst_path=str(dst / name)))
    artifacts = Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="onnx", dst_path=str(dst)))
    return model_dir / "model.onnx", artifacts
