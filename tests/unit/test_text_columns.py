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
from mmfusion.data.datamodule import SplitDataset, collate, prepare_data
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
    model = build_model(ModelConfig(fusion="concat", fusion_dim=8, column_pooling="joint"), AutoModel.from_pretrained(tiny_bert), 0, [], 2, n_text_columns=2).eval()
    ids = torch.randint(5, 100, (2, 2, 6))
    att, cmask = torch.ones_like(ids), torch.ones(2, 2, dtype=torch.long)
    same, other = torch.zeros(2, 2, dtype=torch.long), torch.tensor([[0, 1], [1, 1]])
    empty = torch.zeros(2, 0)
    with torch.no_grad():
        base = model(ids, att, cmask, empty, empty.long(), chunk_column=same).logits
        torch.testing.assert_close(model(ids, att, cmask, empty, empty.long(), chunk_column=other).logits, base)  # zero at the start
        model.column_embedding.weight.normal_()
        assert not torch.allclose(model(ids, att, cmask, empty, empty.long(), chunk_column=other).logits, model(ids, att, cmask, empty, empty.long(), chunk_column=same).logits)
    one = build_model(ModelConfig(), AutoModel.from_pretrained(tiny_bert), 0, [], 2)
    assert one.column_embedding is None and one.column_pool is None  # one column: as before


def _two_columns(tiny_bert, **model):
    model.setdefault("column_pooling", "separate")
    return build_model(ModelConfig(fusion="concat", fusion_dim=8, train_text_layers=0, **model), AutoModel.from_pretrained(tiny_bert), 0, [], 2, n_text_columns=2).eval()


def test_separate_pooling_starts_as_the_mean_of_each_columns_pooled_chunks(tiny_bert):
    model = _two_columns(tiny_bert, chunk_pooling="mean")
    chunks = torch.randn(2, 3, model.text_encoder.hidden_size)  # (B, C, H) cached chunk embeddings
    cmask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    column = torch.tensor([[0, 1, 1], [1, 1, 0]])  # the second row has no chunk of column 0 (an empty title)
    empty = torch.zeros(2, 0)
    with torch.no_grad():
        h_text, _, _ = model.encode(None, None, cmask, empty, empty.long(), chunk_embeddings=chunks, chunk_column=column)
    expected = torch.stack([(chunks[0, 0] + chunks[0, 1:].mean(0)) / 2, chunks[1, :2].mean(0) / 2])
    torch.testing.assert_close(h_text, expected)


@pytest.mark.parametrize("chunk_pooling", ["mean", "attention"])
def test_separate_pooling_keeps_which_column_said_what(tiny_bert, chunk_pooling):
    """Two rows with the same two texts in swapped columns: pooled together (column vectors still zero) they are the
    same h_text; pooled apart and projected they are not."""
    x, y = torch.randn(2, 32)
    chunks = torch.stack([torch.stack([x, y]), torch.stack([y, x])])  # (2, 2, H)
    cmask, column, empty = torch.ones(2, 2, dtype=torch.long), torch.tensor([[0, 1], [0, 1]]), torch.zeros(2, 0)
    h = {}
    for pooling in ("joint", "separate"):
        model = _two_columns(tiny_bert, chunk_pooling=chunk_pooling, column_pooling=pooling)
        assert chunks.shape[-1] == model.text_encoder.hidden_size
        with torch.no_grad():
            if model.column_pool is not None:
                model.column_pool.proj.weight.normal_()  # a trained projection: columns weighed differently
            h[pooling], _, _ = model.encode(None, None, cmask, empty, empty.long(), chunk_embeddings=chunks, chunk_column=column)
    torch.testing.assert_close(h["joint"][0], h["joint"][1])
    assert not torch.allclose(h["separate"][0], h["separate"][1])


@pytest.mark.parametrize(("layers", "pooling"), [("all", "separate"), (0, "separate"), (1, "separate"), (0, "joint")],
                         ids=["fine-tuned", "frozen-cached", "top-layer-cached", "frozen-cached-joint"])
def test_train_export_and_predict_with_two_text_columns(mlflow_uri, tiny_overrides, tmp_path, layers, pooling):
    reviews(160).to_csv(tmp_path / "r.csv", index=False)
    table = ["data.source=table", f"data.path={tmp_path / 'r.csv'}", "data.text_columns=[title,body]", "data.label_column=y", "data.id_column=id",
             "data.numeric_columns=[age]", "data.categorical_columns=[]", f"data.cache_dir={tmp_path / 'cache'}", f"model.train_text_layers={layers}",
             f"model.column_pooling={pooling}"]
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


@pytest.mark.parametrize("columns", ["joint", "separate"])
@pytest.mark.parametrize("pooling", ["attention", "mean"])
def test_chunk_weights_are_the_poolings_own_and_shares_add_up(tiny_bert, tokenizer, tmp_path, pooling, columns):
    from mmfusion.analysis.text_columns import SHARE_PREFIX, chunk_weights, column_shares
    from mmfusion.modeling.module import MODEL_INPUTS

    reviews().to_csv(tmp_path / "r.csv", index=False)
    cfg = load_config(None, ["data.source=table", f"data.path={tmp_path / 'r.csv'}", "data.text_columns=[title,body]", "data.label_column=y", "data.id_column=id",
                             "data.numeric_columns=[age]", "data.categorical_columns=[]", "data.max_chunks=4", "data.chunk_len=16", f"model.text_encoder={tiny_bert}",
                             f"model.chunk_pooling={pooling}", f"model.column_pooling={columns}", "model.fusion_dim=8"])
    data = prepare_data(cfg.data, cfg.seed, tokenizer)
    model = build_model(cfg.model, AutoModel.from_pretrained(tiny_bert), data.preprocessor.n_numeric_features, data.preprocessor.cardinalities, 2, 2).eval()
    torch.manual_seed(0)
    with torch.no_grad():
        model.column_embedding.weight.normal_()  # columns told apart, as after training
        if model.column_pool is not None:
            model.column_pool.proj.weight.normal_(std=0.1)
    split = data.splits["test"]
    batch = collate([SplitDataset(split)[i] for i in range(len(split.ids))])
    with torch.no_grad():
        h_text, chunks, _ = model.encode(*(batch.get(k) for k in MODEL_INPUTS))
        if columns == "joint":
            made = (chunk_weights(model, batch).unsqueeze(-1) * chunks).sum(1)  # the weights that made h_text
        else:  # one term per column, the bias aside: the terms the shares measure
            made = model.column_pool.terms(model.pool_columns(chunks, batch["chunk_mask"], batch["chunk_column"])).sum(1) + model.column_pool.proj.bias
    torch.testing.assert_close(made, h_text, atol=1e-5, rtol=1e-4)
    shares = column_shares(model, split, ["title", "body"], batch_size=5)
    assert list(shares.columns) == ["id", SHARE_PREFIX + "title", SHARE_PREFIX + "body"] and shares["id"].tolist() == split.ids
    total = shares[[SHARE_PREFIX + "title", SHARE_PREFIX + "body"]].sum(1)
    assert np.allclose(total, 1.0, atol=1e-5)  # every review has a body
    no_title = [i for i, f in enumerate(split.frame["title"]) if not isinstance(f, str)]
    assert no_title and (shares.loc[no_title, SHARE_PREFIX + "title"] == 0).all()
    if pooling == "mean" and columns == "joint":  # each column's fraction of the chunks
        counts = [np.mean([c == 0 for c in cols]) for cols in split.chunk_columns]
        assert np.allclose(shares[SHARE_PREFIX + "title"], counts, atol=1e-6)


def test_inspect_reports_the_text_column_shares(mlflow_uri, tiny_overrides, tmp_path):
    from mmfusion.analysis.inspection import build_report, format_text, to_html

    reviews(160).to_csv(tmp_path / "r.csv", index=False)
    table = ["data.source=table", f"data.path={tmp_path / 'r.csv'}", "data.text_columns=[title,body]", "data.label_column=y", "data.id_column=id",
             "data.numeric_columns=[age]", "data.categorical_columns=[]", "model.chunk_pooling=attention", "model.fusion=gate", "tracking.log_model=false"]
    result = train(load_config(None, [*tiny_overrides, *table, "trainer.max_epochs=2"]))
    report = build_report(result.run_id, top=3)
    summary = report.per_text_column.set_index("label")
    assert list(summary.index) == ["all", "0", "1"] and summary.loc["all", "n"] == len(result.predictions)
    assert np.isclose(summary.loc["all", "title share"] + summary.loc["all", "body share"], 1.0, atol=1e-5)
    assert np.isclose(summary.loc["all", "leans on title"] + summary.loc["all", "leans on body"], 1.0)
    assert report.top_text["text_shares"].str.match(r"title \d\.\d\d, body \d\.\d\d").all()
    assert "Text columns the samples leaned on" in format_text(report) and "leans on title" in to_html(report)
