"""Scoring new rows with onnxruntime alone, from the files a run logged.

    OnnxPredictor(model, artifacts)  raw rows -> predictions, after checking the files belong together
    download_onnx(run_id, dst)       a run's ONNX model and `onnx/` artifacts
    (OnnxScorer, PackedScorer: the onnxruntime sessions, in `onnx_session.py`; re-exported here)

A run exported since the packed export holds two graphs: the logged model's model.onnx is the chunk encoder and
`Artifact.ONNX_HEAD` the fusion + head; onnx_meta.json records both sha256 (`model_sha256`, `head_sha256`). A run
exported before holds one whole-model graph (model.onnx, `model_sha256` only) and is scored as it always was.

The export side (`mmfusion.export`) writes these files and imports this module; this module imports nothing from it.

This path imports no torch, so rows can be scored from a run's artifacts with onnxruntime, numpy, pandas and
`tokenizers` only.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from mmfusion.errors import DataError
from mmfusion.hashing import sha256_bytes, sha256_file
from mmfusion.progress import progress
from mmfusion.serving.logged_models import logged_model_id
from mmfusion.serving.onnx_session import ONNX_DTYPES, OnnxScorer, PackedScorer
from mmfusion.serving.streaming import length_order
from mmfusion.tracking.artifacts import ArtifactError, reading
from mmfusion.tracking.contract import Artifact, Tag

if TYPE_CHECKING:
    import pandas as pd

# Files under the run's `onnx/` artifact folder: with the ONNX logged model they are all `predict --onnx` needs.
META_FILE, PARITY_FILE, INT8_FILE = Artifact.ONNX_META, Artifact.ONNX_PARITY, Artifact.ONNX_INT8  # names: tracking/contract.py
PREPROCESSING_FILE, TOKENIZER_DIR = Artifact.PREPROCESSING, Artifact.ONNX_TOKENIZER
ONNX_MODEL_NAME, INT8_MODEL_NAME = Artifact.ONNX_MODEL, Artifact.ONNX_INT8_MODEL
HEAD_FILE = Artifact.ONNX_HEAD  # the head graph, beside the encoder graph in the logged model (packed export)

__all__ = ["FastTokenizer", "ONNX_DTYPES", "OnnxPredictor", "OnnxScorer", "PackedScorer", "download_onnx", "numpy_batch", "scores_frame"]


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


def numpy_batch(chunks: list[list[list[int]]], numeric: np.ndarray, categorical: np.ndarray, pad_id: int, columns: list[list[int]] | None = None) -> dict[str, np.ndarray]:
    """collate() without torch: pad chunks to the batch's most (at least 1) and tokens to its longest chunk."""
    b = len(chunks)
    c = max(1, max((len(ch) for ch in chunks), default=0))
    t = max([len(x) for ch in chunks for x in ch] or [2])
    ids = np.full((b, c, t), pad_id, np.int64)
    att = np.zeros((b, c, t), np.int64)
    cmask, ccol = np.zeros((b, c), np.int64), np.zeros((b, c), np.int64)
    for i, sample in enumerate(chunks):
        for j, ch in enumerate(sample):
            ids[i, j, : len(ch)], att[i, j, : len(ch)], cmask[i, j] = ch, 1, 1
        if columns is not None and columns[i]:
            ccol[i, : len(columns[i])] = columns[i]
    return {"input_ids": ids, "attention_mask": att, "chunk_mask": cmask, "chunk_column": ccol, "numeric": numeric.astype(np.float32), "categorical": categorical.astype(np.int64)}


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
    """Scores raw rows from a folder holding model.onnx (+ the head graph, packed export), onnx_meta.json,
    preprocessing.json and tokenizer/.

    Checks before scoring that the files belong together: each graph's sha256 is the one recorded at export, and
    preprocessing.json is the one the model was exported with.
    """

    def __init__(self, model_path: str | Path, artifacts: str | Path, threads: int | None = None, int8: bool = False, source: str | None = None) -> None:
        """`source` names the files' owner in errors ("run 3f2a..."), which then show names, not temporary paths."""
        from mmfusion.data.chunking import DialogueChunker
        from mmfusion.data.tabular import TabularPreprocessor

        artifacts, model_path = Path(artifacts), Path(model_path)
        meta_file = artifacts / META_FILE
        name = lambda p, folder: f"{source}: {folder}{Path(p).name}" if source else str(p)  # noqa: E731
        meta_name = name(meta_file, "onnx/")
        if not meta_file.is_file():
            raise ArtifactError(f"{meta_name}: missing; was the run exported (export.onnx=true or `mmfusion export`)?")
        try:
            self.meta = json.loads(meta_file.read_text())
            missing = [k for k in ("max_chunks", "chunk_len", "pad_id", "cls_id", "sep_id") if k not in self.meta]
        except (ValueError, TypeError, OSError) as err:  # not JSON, or not an object
            raise ArtifactError(f"{meta_name}: not a valid {META_FILE} ({type(err).__name__}: {err})") from None
        if missing:
            raise ArtifactError(f"{meta_name}: not a valid {META_FILE} (no {', '.join(missing)})")
        expected = self.meta.get("int8_model_sha256" if int8 else "model_sha256")
        if expected is None:
            raise ArtifactError(f"{meta_name}: the latest export of this run made no {'int8' if int8 else 'fp32'} model; run `mmfusion export` again")
        _verify(model_path, expected, name(model_path, "logged model "))
        head = model_path.parent / HEAD_FILE
        if "head_sha256" in self.meta:  # the packed export: the head graph is checked like the encoder
            _verify(head, self.meta["head_sha256"], name(head, f"logged model {Path(HEAD_FILE).parent}/"))
        pre_file = artifacts / PREPROCESSING_FILE
        pre_text = pre_file.read_text() if pre_file.is_file() else ""
        self.scorer = PackedScorer(model_path, head, threads) if "head_sha256" in self.meta else OnnxScorer(model_path, threads)
        expected = self.scorer.metadata.get(Tag.PREPROCESSING_SHA256)
        if sha256_bytes(pre_text.encode()) != expected:
            raise ArtifactError(f"{name(pre_file, 'onnx/')}: does not match the preprocessing the ONNX model was exported with (sha256 mismatch)")
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

        check_columns(frame, [*self.pre.texts, *self.pre.numeric, *self.pre.categorical], source)
        check_numeric(frame, list(self.pre.numeric), source)

    def predict(self, frame: "pd.DataFrame", batch_size: int = 64, show_progress: bool = True) -> "pd.DataFrame":
        """Rows -> predictions in the same order. Rows are scored in batches of similar length (sorted by token
        count), so a batch pads little; the order is restored after."""
        numeric, categorical = self.pre.transform(frame)
        chunks, columns = self.chunker.chunk_columns(frame, self.pre.texts)
        order = length_order(chunks)
        parts = []
        starts = range(0, len(frame), batch_size)
        for start in progress(starts, f"scoring {len(frame)} rows (ONNX Runtime)", unit="batches") if show_progress else starts:
            rows = order[start : start + batch_size]
            batch = numpy_batch([chunks[i] for i in rows], numeric[rows], categorical[rows], self.meta["pad_id"], [columns[i] for i in rows])
            parts.append(self.scorer(batch))
        if parts:
            outputs = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
            restore = np.empty_like(order)
            restore[order] = np.arange(len(order))  # sorted position of each input row
            result = scores_frame({k: v[restore] for k, v in outputs.items()}, self.pre.classes)
        else:
            result = scores_frame({"probs": np.zeros((0, len(self.pre.classes))), "modality_weights": np.zeros((0, 2))}, self.pre.classes)
        if self.pre.id_column and self.pre.id_column in frame.columns:
            result.insert(0, "id", frame[self.pre.id_column].astype(str).to_numpy())
        return result


def _verify(path: Path, expected: str, shown: str) -> None:
    """ArtifactError unless the file at `path` exists and has the sha256 recorded at export."""
    if not path.is_file():
        raise ArtifactError(f"{shown}: the ONNX model file is missing from the run's logged model")
    digest = sha256_file(path)
    if digest != expected:
        raise ArtifactError(f"{shown}: sha256 {digest[:12]}... differs from the exported model's {expected[:12]}...: the ONNX file was modified")


def download_onnx(run_id: str, dst: str | Path, int8: bool = False) -> tuple[Path, Path]:
    """-> (model.onnx, folder with the run's `onnx/` artifacts), downloaded into `dst`."""
    import mlflow

    dst = Path(dst)
    name = INT8_MODEL_NAME if int8 else ONNX_MODEL_NAME
    model_id = logged_model_id(run_id, name)
    if model_id is None:
        raise DataError(f"run {run_id} has no {name!r} model; export it first: python -m mmfusion export --run-id {run_id}" + (" --quantize" if int8 else ""))
    with reading(f"run {run_id}", f"its {name!r} logged model"):
        model_dir = Path(mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{model_id}", dst_path=str(dst / name)))
    with reading(f"run {run_id}", "onnx/ (the export's artifacts)"):
        artifacts = Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="onnx", dst_path=str(dst)))
    return model_dir / "model.onnx", artifacts
