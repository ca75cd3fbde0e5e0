"""The packed ONNX export (chunk encoder + head, driven by PackedScorer): parity with PyTorch on the hard batches,
several text columns, length grouping, scoring raw rows in order from packed and old single-graph files, integrity
of both graphs, and streaming a file through either predictor."""

from __future__ import annotations

import copy
import functools
import json
import shutil

import numpy as np
import pandas as pd
import pytest
import torch

from mmfusion.config import load_config
from mmfusion.data.datamodule import prepare_data
from mmfusion.encoders import load_text_backbone, load_tokenizer
from mmfusion.errors import DataError
from mmfusion.hashing import sha256_bytes
from mmfusion.export import add_metadata, check_parity, export_files, export_onnx, export_packed, parity_batches
from mmfusion.modeling.classifier import build_model
from mmfusion.serving.onnx_scorer import OnnxPredictor
from mmfusion.serving.onnx_session import OnnxScorer, PackedScorer, length_groups
from mmfusion.serving.streaming import predict_file
from mmfusion.tracking.artifacts import ArtifactError

TINY = ["data.synthetic.n_samples=80", "data.max_chunks=4", "data.chunk_len=24", "model.fusion_dim=16", "model.tab_hidden=16", "model.tab_dim=16"]


@functools.lru_cache(maxsize=1)
def _backbone(path: str):
    return load_text_backbone(path)


@pytest.fixture(scope="module")
def tiny(tiny_bert):
    cfg = load_config(None, [f"model.text_encoder={tiny_bert}", *TINY])
    tokenizer = load_tokenizer(tiny_bert)
    return cfg, prepare_data(cfg.data, cfg.seed, tokenizer), tokenizer


def _model(cfg, data, fusion: str = "gate", n_text_columns: int = 1):
    torch.manual_seed(0)
    pre = data.preprocessor
    return build_model(cfg.model.model_copy(update={"fusion": fusion}), copy.deepcopy(_backbone(cfg.model.text_encoder)), pre.n_numeric_features, pre.cardinalities,
                       len(pre.classes), n_text_columns).eval()


@pytest.mark.parametrize("fusion", ["gate", "moe_topk"])
def test_packed_export_matches_pytorch_on_the_hard_batches(tiny, fusion, tmp_path):
    cfg, data, tokenizer = tiny
    model = _model(cfg, data, fusion)
    batches = parity_batches(data.splits["test"], tokenizer.pad_token_id, batch_size=8)
    assert any(b["chunk_mask"].sum() == 0 for b in batches)  # a batch with no real chunk at all
    scorer = PackedScorer(*export_packed(model, batches[0], tmp_path))
    report = check_parity(model, scorer, batches, tolerance=1e-4)
    assert report["passed"] and report["batch_of_one_checked"] and report["padded_chunks_checked"] > 0 and report["samples_without_text_checked"] >= 2
    assert [i.shape for i in scorer.encoder.session.get_inputs()] == [["chunks", "tokens"]] * 2  # nothing baked static
    assert scorer.head.session.get_inputs()[0].shape[:2] == ["batch", "chunks"]
    assert ("expert_weights" in scorer(batches[0])) == (fusion == "moe_topk")


def test_packed_export_with_several_text_columns(tiny, tmp_path):
    cfg, data, tokenizer = tiny
    model = _model(cfg, data, "attention", n_text_columns=2)
    with torch.no_grad():
        model.column_embedding.weight.normal_()  # trained away from zero: which column a chunk came from matters
    batches = parity_batches(data.splits["test"], tokenizer.pad_token_id, batch_size=8)
    for b in batches:  # alternate the chunks' columns
        b["chunk_column"] = (torch.arange(b["chunk_mask"].shape[1]) % 2).expand_as(b["chunk_mask"]) * b["chunk_mask"]
    scorer = PackedScorer(*export_packed(model, batches[0], tmp_path))
    assert "chunk_column" in scorer.inputs
    assert check_parity(model, scorer, batches, tolerance=1e-4)["passed"]
    swapped = {**batches[0], "chunk_column": (1 - batches[0]["chunk_column"]) * batches[0]["chunk_mask"]}
    assert np.abs(scorer(swapped)["probs"] - scorer(batches[0])["probs"]).max() > 1e-6  # the input is read


@pytest.mark.parametrize("lengths,budget", [([5, 1, 3, 3, 9, 2], 8), ([4] * 10, 16), ([30, 2], 16), ([], 8)])
def test_length_groups_cover_every_chunk_once_sorted_within_budget(lengths, budget):
    lengths = np.asarray(lengths, dtype=np.int64)
    groups = length_groups(lengths, budget)
    flat = np.concatenate(groups) if groups else np.zeros(0, np.int64)
    assert sorted(flat.tolist()) == list(range(len(lengths)))
    assert (np.diff(lengths[flat]) >= 0).all()  # ascending
    for g in groups:
        assert len(g) == 1 or len(g) * lengths[g].max() <= budget


def test_group_size_does_not_change_the_scores(tiny, tmp_path):
    cfg, data, tokenizer = tiny
    model = _model(cfg, data)
    batch = parity_batches(data.splits["test"], tokenizer.pad_token_id, batch_size=16)[0]
    files = export_packed(model, batch, tmp_path)
    one_by_one, all_at_once = PackedScorer(*files, group_tokens=1)(batch), PackedScorer(*files, group_tokens=10**6)(batch)
    np.testing.assert_allclose(one_by_one["probs"], all_at_once["probs"], atol=1e-5)


@pytest.fixture(scope="module")
def exported(tiny, tmp_path_factory):
    """The files of a packed export (as a run's download lays them out) and, beside them, an old single-graph export."""
    cfg, data, tokenizer = tiny
    model = _model(cfg, data, "concat")
    root = tmp_path_factory.mktemp("export")
    out = export_files(cfg, model, data, tokenizer, root, quantize=True, tolerance=1e-4)
    legacy = root / "legacy"
    batch = parity_batches(data.splits["test"], tokenizer.pad_token_id)[0]
    single = export_onnx(model, batch, legacy / "model" / "model.onnx")
    meta = json.loads((out.artifacts / "onnx_meta.json").read_text())
    tags = {"fusion": "concat", "classes": json.dumps(data.preprocessor.classes), "preprocessing_sha256": sha256_bytes((out.artifacts / "preprocessing.json").read_text().encode())}
    # what the export wrote before the packed pair: one graph, onnx_meta.json with model_sha256 only
    old_meta = {k: v for k, v in meta.items() if k not in ("format", "head_sha256", "int8_model_sha256")} | {"model_sha256": add_metadata(single, tags)}
    shutil.copytree(out.artifacts, legacy / "onnx")
    (legacy / "onnx" / "onnx_meta.json").write_text(json.dumps(old_meta))
    rows = data.splits["test"].frame.reset_index(drop=True)
    return model, out, legacy, rows


def test_packed_and_old_single_graph_files_score_rows_alike_and_in_order(exported):
    model, out, legacy, rows = exported
    packed = OnnxPredictor(out.fp32.encoder, out.artifacts)
    old = OnnxPredictor(legacy / "model" / "model.onnx", legacy / "onnx")
    assert isinstance(packed.scorer, PackedScorer) and isinstance(old.scorer, OnnxScorer)
    a, b = packed.predict(rows, batch_size=4), old.predict(rows, batch_size=4)
    assert list(a["id"]) == list(rows["id"].astype(str))  # length-sorted batches, the input order restored
    pd.testing.assert_frame_equal(a, b, atol=1e-5, rtol=0)
    # the same rows one at a time (no sorting, no neighbours) score the same
    single = pd.concat([packed.predict(rows.iloc[[i]], show_progress=False) for i in range(5)], ignore_index=True)
    pd.testing.assert_frame_equal(single, a.head(5), atol=1e-5, rtol=0)
    int8 = OnnxPredictor(out.int8.encoder, out.artifacts, int8=True).predict(rows)
    assert np.abs(int8["prob_" + str(packed.pre.classes[0])] - a["prob_" + str(packed.pre.classes[0])]).max() < 0.1


def test_an_altered_head_graph_is_detected(exported, tmp_path):
    _, out, _, _ = exported
    model_dir = shutil.copytree(out.fp32.encoder.parent, tmp_path / "model")
    head = model_dir / "extra_files" / "head.onnx"
    head.write_bytes(head.read_bytes() + b"\0")
    with pytest.raises(ArtifactError, match="head.onnx: sha256 .* the ONNX file was modified"):
        OnnxPredictor(model_dir / "model.onnx", out.artifacts)
    head.unlink()
    with pytest.raises(ArtifactError, match="head.onnx: the ONNX model file is missing"):
        OnnxPredictor(model_dir / "model.onnx", out.artifacts)


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_predict_file_streams_pieces_in_order(exported, tmp_path, suffix):
    _, out, _, rows = exported
    predictor = OnnxPredictor(out.fp32.encoder, out.artifacts)
    src = tmp_path / f"rows{suffix}"
    rows.to_csv(src, index=False) if suffix == ".csv" else rows.to_parquet(src, index=False)
    assert predict_file(predictor, src, tmp_path / "p.csv", batch_size=3, piece_rows=5) == len(rows)
    streamed = pd.read_csv(tmp_path / "p.csv", dtype={"id": str})
    whole = predictor.predict(pd.read_csv(src) if suffix == ".csv" else pd.read_parquet(src))
    pd.testing.assert_frame_equal(streamed, whole, check_dtype=False, atol=1e-5, rtol=0)


def test_a_bad_row_late_in_the_file_leaves_no_output(exported, tmp_path):
    _, out, _, rows = exported
    predictor = OnnxPredictor(out.fp32.encoder, out.artifacts)
    bad = rows.copy()
    column = predictor.pre.numeric and next(iter(predictor.pre.numeric))
    bad.loc[len(bad) - 1, column] = float("inf")
    bad.to_csv(tmp_path / "rows.csv", index=False)
    with pytest.raises(DataError, match=f"numeric column '{column}'"):
        predict_file(predictor, tmp_path / "rows.csv", tmp_path / "p.csv", piece_rows=4)
    assert not (tmp_path / "p.csv").exists() and not (tmp_path / "p.csv.partial").exists()


def test_a_batch_without_text_skips_the_encoder(exported):
    _, out, _, _ = exported
    scorer = PackedScorer(*out.fp32)
    calls, encoder = [], scorer.encoder
    scorer.encoder = lambda feed: calls.append(feed) or encoder(feed)
    b, head = 3, scorer.head.inputs
    x = {"input_ids": np.zeros((b, 1, 2), np.int64), "attention_mask": np.zeros((b, 1, 2), np.int64), "chunk_mask": np.zeros((b, 1), np.int64),
         "numeric": np.zeros((b, head["numeric"].shape[1]), np.float32), "categorical": np.zeros((b, head["categorical"].shape[1]), np.int64)}
    got = scorer(x)
    assert calls == [] and got["probs"].shape == (b, 2) and np.isfinite(got["probs"]).all()
