"""Several text columns (`data.text_columns`): each column's messages become chunks tagged with their column, the
model adds a learned column vector to each chunk, and training, the cache, ONNX export and predict all carry it."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from transformers import AutoModel

from mmfusion.cli import main
from mmfusion.config import ModelConfig, load_config
from mmfusion.data.chunking import DialogueChunker
from mmfusion.data.datamodule import collate, prepare_data
from mmfusion.encoders import load_tokenizer
from mmfusion.errors import DataError
from mmfusion.modeling.classifier import build_model
from mmfusion.jobs.train import train


@pytest.fixture(scope="module")
def tokenizer(tiny_bert):
    return load_tokenizer(tiny_bert)


def reviews(n: int = 120, seed: int = 0) -> pd.DataFrame:
    """The label is in the title only; the body is the same noise for both classes."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    titles = np.where(y == 1, "love it", "send it back")
    titles = [t if i % 10 else None for i, t in enumerate(titles)]  # some empty titles
    body = [f"arrived on day {d}\nsize {s}" for d, s in zip(rng.integers(1, 9, n), rng.integers(1, 5, n))]
    return pd.DataFrame({"id": [f"r{i}" for i in range(n)], "title": titles, "body": body, "age": rng.integers(18, 80, n), "y": y})


def test_chunks_follow_the_column_order_and_empty_cells_give_none(tokenizer):
    chunker = DialogueChunker(tokenizer, max_chunks=3, chunk_len=16)
    frame = pd.DataFrame({"a": ["hello", None, "x"], "b": ["one\ntwo", "three", "w " * 40]})
    chunks, sources = chunker.chunk_columns(frame, ["a", "b"])
    assert sources[0][0] == 0 and set(sources[0][1:]) == {1} and len(chunks[0]) == len(sources[0])
    assert sources[1] == [1] * len(chunks[1])  # the empty title gives no chunk
    assert len(chunks[2]) == 3 and sources[2][0] == 0  # at most max_chunks in all, the first column first


def test_prepared_splits_know_each_chunks_column(tmp_path, tokenizer):
    reviews().to_csv(tmp_path / "r.csv", index=False)
    cfg = load_config(None, ["data.source=table", f"data.path={tmp_path / 'r.csv'}", "data.text_columns=[title,body]", "data.label_column=y",
                             "data.id_column=id", "data.numeric_columns=[age]", "data.categorical_columns=[]", "data.max_chunks=4", "data.chunk_len=16"])
    data = prepare_data(cfg.data, 0, tokenizer)
    assert data.preprocessor.texts == ["title", "body"] and data.columns["texts"] == ["title", "body"]
    split = data.splits["train"]
    assert all(len(c) == len(s) for c, s in zip(split.chunks, split.chunk_columns)) and {0, 1} <= {k for s in split.chunk_columns for k in s}
    batch = collate([{"index": i, "chunks": split.chunks[i], "chunk_column": split.chunk_columns[i], "numeric": split.numeric[i],
                      "categorical": split.categorical[i], "label": 0, "modality": 0} for i in range(4)])
    assert batch["chunk_column"].shape == batch["chunk_mask"].shape and (batch["chunk_column"][batch["chunk_mask"] == 0] == 0).all()
    missing = cfg.data.model_copy(update={"text_columns": ["title", "summary"]})
    with pytest.raises(DataError, match="summary"):
        prepare_data(missing, 0, tokenizer)


def test_column_vectors_start_at_zero_and_then_tell_columns_apart(tiny_bert):
    model = build_model(ModelConfig(fusion="concat", fusion_dim=8), AutoModel.from_pretrained(tiny_bert), 0, [], 2, n_text_columns=2).eval()
    ids = torch.randint(5, 100, (2, 2, 6))
    att, cmask = torch.ones_like(ids), torch.ones(2, 2, dtype=torch.long)
    same, other = torch.zeros(2, 2, dtype=torch.long), torch.tensor([[0, 1], [1, 1]])
    empty = torch.zeros(2, 0)
    with torch.no_grad():
        base = model(ids, att, cmask, empty, empty.long(), chunk_column=same).logits
        torch.testing.assert_close(model(ids, att, cmask, empty, empty.long(), chunk_column=other).logits, base)  # zero at the start
        model.column_embedding.weight.normal_()
        assert not torch.allclose(model(ids, att, cmask, empty, empty.long(), chunk_column=other).logits, model(ids, att, cmask, empty, empty.long(), chunk_column=same).logits)
    assert build_model(ModelConfig(), AutoModel.from_pretrained(tiny_bert), 0, [], 2).column_embedding is None  # one column: as before


@pytest.mark.parametrize("layers", ["all", 0, 1], ids=["fine-tuned", "frozen-cached", "top-layer-cached"])
def test_train_export_and_predict_with_two_text_columns(mlflow_uri, tiny_overrides, tmp_path, layers):
    reviews(160).to_csv(tmp_path / "r.csv", index=False)
    table = ["data.source=table", f"data.path={tmp_path / 'r.csv'}", "data.text_columns=[title,body]", "data.label_column=y", "data.id_column=id",
             "data.numeric_columns=[age]", "data.categorical_columns=[]", f"data.cache_dir={tmp_path / 'cache'}", f"model.train_text_layers={layers}"]
    result = train(load_config(None, [*tiny_overrides, *table, "trainer.max_epochs=2", "export.onnx=true", "tracking.log_model=true"]))
    assert result.module.model.column_embedding.weight.abs().sum() > 0  # the column vectors trained away from zero
    rows = tmp_path / "rows.csv"
    reviews(30, seed=5).drop(columns="y").to_csv(rows, index=False)
    assert main(["predict", "--run-id", result.run_id, "--input", str(rows), "--output", str(tmp_path / "pt.csv")]) == 0
    assert main(["predict", "--run-id", result.run_id, "--input", str(rows), "--output", str(tmp_path / "ox.csv"), "--onnx"]) == 0
    pt, ox = pd.read_csv(tmp_path / "pt.csv"), pd.read_csv(tmp_path / "ox.csv")
    assert (pt["pred"] == ox["pred"]).all() and np.abs(pt.filter(like="prob_").to_numpy() - ox.filter(like="prob_").to_numpy()).max() < 1e-4


def test_inspect_finds_the_rows_of_a_table_with_several_text_columns(tmp_path, tokenizer):
    """The fingerprint inspect compares covers every text column, as training's does: an unchanged table is no change."""
    from mmfusion.analysis.inspection import source_rows

    reviews().to_csv(tmp_path / "r.csv", index=False)
    cfg = load_config(None, ["data.source=table", f"data.path={tmp_path / 'r.csv'}", "data.text_columns=[title,body]", "data.label_column=y",
                             "data.id_column=id", "data.numeric_columns=[age]", "data.categorical_columns=[]", "data.max_chunks=4", "data.chunk_len=16"])
    recorded = prepare_data(cfg.data, cfg.seed, tokenizer).fingerprint
    rows, notes = source_rows(cfg, recorded)
    assert rows is not None and len(rows) == 120 and notes == []
    edited = reviews().assign(body="changed")
    edited.to_csv(tmp_path / "r.csv", index=False)
    assert any("changed since training" in n for n in source_rows(cfg, recorded)[1])  # the second text column counts
