"""A trained model as a folder of safe files (no pickle), and loading it back for scoring.

    config.yaml          the resolved config
    preprocessing.json   tabular scaling, category vocabularies, classes
    model.safetensors    all weights
    text_encoder/        encoder config + tokenizer files (the weights are in model.safetensors)

Integrity: when the bundle is logged, the sha256 of every file is recorded in the run itself (tag
`mmfusion.bundle_sha256`, in the tracking store, apart from the model's files). Every CLI load (`download_bundle`)
checks the downloaded files against it: an altered, substituted, added or missing file is one error line naming it.
Someone who can rewrite both the run's records and the files is not detected.

Loading reads YAML (safe_load), JSON, tokenizer files and safetensors only: no pickle, no code from the store.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import yaml
from safetensors.torch import load_file, save_file

from mmfusion.config import Config, build_config, to_yaml
from mmfusion.data.chunking import DialogueChunker
from mmfusion.data.datamodule import collate
from mmfusion.data.tabular import TabularPreprocessor
from mmfusion.errors import DataError
from mmfusion.hashing import sha256_file
from mmfusion.progress import progress
from mmfusion.modeling.classifier import MultimodalClassifier, build_model
from mmfusion.serving.logged_models import logged_model_id
from mmfusion.serving.streaming import length_order
from mmfusion.tracking.artifacts import ArtifactError, get_run, reading
from mmfusion.tracking.contract import Tag


def save_bundle(path: str | Path, cfg: Config, model: MultimodalClassifier, pre: TabularPreprocessor, tokenizer) -> Path:
    path = Path(path)
    (path / "text_encoder").mkdir(parents=True, exist_ok=True)
    (path / "config.yaml").write_text(to_yaml(cfg))
    pre.save(path / "preprocessing.json")
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(path / "model.safetensors"))
    model.text_encoder.backbone.config.save_pretrained(path / "text_encoder")
    tokenizer.save_pretrained(path / "text_encoder")
    return path


MANIFEST_TAG = Tag.BUNDLE_SHA256  # JSON {relative path: sha256} of the logged bundle


def bundle_manifest(path: str | Path) -> dict[str, str]:
    """{relative path: sha256} of every file in the bundle folder."""
    root = Path(path)
    return {p.relative_to(root).as_posix(): sha256_file(p) for p in sorted(root.rglob("*")) if p.is_file()}


def log_bundle_manifest(path: str | Path) -> None:
    """Record the bundle's hashes in the active run (a tag: the tracking store, not the model's artifact folder)."""
    import mlflow

    mlflow.set_tag(MANIFEST_TAG, json.dumps(bundle_manifest(path), separators=(",", ":")))


def verify_bundle(path: str | Path, expected: dict[str, str], run_id: str) -> None:
    """ArtifactError naming the first file that is altered, missing or was added since the bundle was logged."""
    actual = bundle_manifest(path)
    for name, digest in sorted(expected.items()):
        if name not in actual:
            raise ArtifactError(f"run {run_id}: bundle file {name} is missing from the logged model")
        if actual[name] != digest:
            raise ArtifactError(f"run {run_id}: bundle file {name} has sha256 {actual[name][:12]}..., not the {digest[:12]}... recorded when it was logged: the file was altered")
    extra = sorted(set(actual) - set(expected))
    if extra:
        raise ArtifactError(f"run {run_id}: bundle file {extra[0]} was not in the model when it was logged")


def download_bundle(run_id: str, dst: str | Path) -> Path:
    """The bundle folder of the run's logged model, checked against the hashes the run recorded -> its path."""
    import logging

    import mlflow

    run = get_run(run_id)
    model_id = logged_model_id(run_id, "model")
    if model_id is None:
        raise DataError(f"run {run_id} has no logged model (was it trained with tracking.log_model=false?)")
    with reading(f"run {run_id}", "its logged model 'model'"):
        model_dir = Path(mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{model_id}", dst_path=str(dst)))
    bundle = next((p.parent for p in model_dir.rglob("model.safetensors")), None)
    if bundle is None:  # the folder that held it: look for the other files the bundle always has
        bundle = next((p.parent for p in model_dir.rglob("preprocessing.json") if (p.parent / "config.yaml").is_file()), None)
    if bundle is None:
        raise ArtifactError(f"run {run_id}: its logged model holds no bundle (model.safetensors)")
    recorded = run.data.tags.get(MANIFEST_TAG)
    if recorded is None:
        logging.getLogger(__name__).warning("run %s recorded no bundle hashes (logged before they were added): its files are not verified", run_id)
        return bundle
    with reading(f"run {run_id}", f"tag {MANIFEST_TAG}"):
        expected = json.loads(recorded)
    verify_bundle(bundle, expected, run_id)
    return bundle


def load_predictor(run_id: str, dst: str | Path) -> "Predictor":
    """The run's verified bundle, loaded for scoring (what predict and export use)."""
    return Predictor(download_bundle(run_id, dst), source=f"run {run_id}: bundle")


class Predictor:
    """Scores raw rows (a DataFrame with the training columns) with a saved bundle."""

    def __init__(self, path: str | Path, source: str | None = None) -> None:
        """`source` names the bundle in errors (default: its folder), e.g. "run 3f2a...: bundle"."""
        from transformers import AutoConfig, AutoModel, AutoTokenizer

        path = Path(path)
        where = source or str(path)
        with reading(where, "config.yaml"):
            raw = yaml.safe_load((path / "config.yaml").read_text())
            if not isinstance(raw, dict):
                raise ValueError(f"a mapping was expected, got {type(raw).__name__}")
        self.cfg = build_config(raw, f"{where} config.yaml")
        self.pre = TabularPreprocessor.load(path / "preprocessing.json", where)
        with reading(where, "text_encoder/ (encoder config and tokenizer)"):
            self.tokenizer = AutoTokenizer.from_pretrained(path / "text_encoder")
            backbone = AutoModel.from_config(AutoConfig.from_pretrained(path / "text_encoder"), attn_implementation="sdpa")
        self.model = build_model(self.cfg.model, backbone, self.pre.n_numeric_features, self.pre.cardinalities, len(self.pre.classes), len(self.pre.texts))
        with reading(where, "model.safetensors"):
            self.model.load_state_dict(load_file(str(path / "model.safetensors")))
        self.model.eval()
        self.chunker = DialogueChunker(self.tokenizer, self.cfg.data.max_chunks, self.cfg.data.chunk_len)

    def check_columns(self, frame: pd.DataFrame, source: str) -> None:
        """DataError naming the first missing column or non-numeric value (the columns the model was trained on)."""
        from mmfusion.data.table import check_columns, check_numeric

        check_columns(frame, [*self.pre.texts, *self.pre.numeric, *self.pre.categorical], source)
        check_numeric(frame, list(self.pre.numeric), source)

    def batch(self, frame: pd.DataFrame) -> dict[str, torch.Tensor]:
        numeric, categorical = self.pre.transform(frame)
        chunks, columns = self.chunker.chunk_columns(frame, self.pre.texts)
        return self._collate(chunks, columns, numeric, categorical, range(len(frame)))

    def _collate(self, chunks, columns, numeric, categorical, rows) -> dict[str, torch.Tensor]:
        items = [{"chunks": chunks[i], "chunk_column": columns[i], "numeric": numeric[i], "categorical": categorical[i], "label": 0, "modality": -1, "index": i} for i in rows]
        return collate(items, self.tokenizer.pad_token_id or 0)

    @torch.inference_mode()
    def predict(self, frame: pd.DataFrame, batch_size: int = 64, show_progress: bool = True) -> pd.DataFrame:
        """Rows -> predictions in the same order; scored in batches of similar length (sorted by token count, so a
        batch pads little), the order restored after."""
        numeric, categorical = self.pre.transform(frame)
        chunks, columns = self.chunker.chunk_columns(frame, self.pre.texts)
        order = length_order(chunks)
        probs, weights = np.zeros((len(frame), len(self.pre.classes)), np.float32), np.zeros((len(frame), 2), np.float32)
        starts = range(0, len(frame), batch_size)
        for start in progress(starts, f"scoring {len(frame)} rows", unit="batches") if show_progress else starts:
            rows = order[start : start + batch_size]
            b = self._collate(chunks, columns, numeric, categorical, rows)
            out = self.model(b["input_ids"], b["attention_mask"], b["chunk_mask"], b["numeric"], b["categorical"], chunk_column=b["chunk_column"])
            probs[rows] = out.logits.float().softmax(-1).numpy()
            weights[rows] = out.modality_weights.float().numpy()
        result = pd.DataFrame({"pred": np.asarray(self.pre.classes)[probs.argmax(1)] if len(frame) else []})
        for k, c in enumerate(self.pre.classes):
            result[f"prob_{c}"] = probs[:, k]
        result["w_text"], result["w_tab"] = weights[:, 0], weights[:, 1]
        if self.pre.id_column and self.pre.id_column in frame.columns:
            result.insert(0, "id", frame[self.pre.id_column].astype(str).to_numpy())
        return result
