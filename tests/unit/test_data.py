"""Data loading (CSV/TSV/Parquet), checks with clear errors, splitting, train-only preprocessing and dialogue chunking."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from mmfusion.config import DataConfig, SyntheticConfig
from mmfusion.data.chunking import DialogueChunker, split_messages
from mmfusion.data.datamodule import MODALITY_CODES, SPLITS, prepare_data
from mmfusion.data.tabular import TabularPreprocessor
from mmfusion.errors import DataError

NUMERIC = ["x1", "x2"]
CATEGORICAL = ["color"]
COLORS = ["red", "green", "blue"]


@pytest.fixture(scope="module")
def tokenizer():
    from mmfusion.encoders import load_tokenizer

    return load_tokenizer("all-MiniLM-L6-v2")


def make_table(n: int = 60, n_classes: int = 2, int_labels: bool = False, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    names = ["resolved", "escalate", "late"][:n_classes]
    labels = [i % n_classes if int_labels else names[i % n_classes] for i in range(n)]
    return pd.DataFrame({
        "dialogue": [f"Buyer: where is order {i}?\nSeller: it ships on day {i % 7}." for i in range(n)],
        "x1": rng.normal(10.0, 3.0, n).round(3),
        "x2": rng.integers(0, 100, n).astype(float),
        "color": [COLORS[i % 3] for i in range(n)],
        "label": labels,
    })


def write(frame: pd.DataFrame, path) -> str:
    suffix = str(path).rsplit(".", 1)[-1]
    if suffix in ("parquet", "pq"):
        frame.to_parquet(path, index=False)
    else:
        frame.to_csv(path, index=False, sep="\t" if suffix == "tsv" else ",")
    return str(path)


def table_cfg(path, **kw) -> DataConfig:
    kw = {"numeric_columns": NUMERIC, "categorical_columns": CATEGORICAL, "cache_dir": None, **kw}
    return DataConfig(source="table", path=str(path), **kw)


def prepared(tmp_path, tokenizer, frame: pd.DataFrame | None = None, name: str = "data.csv", seed: int = 0, **kw):
    path = write(make_table() if frame is None else frame, tmp_path / name)
    return prepare_data(table_cfg(path, **kw), seed, tokenizer)


def data_error(cfg: DataConfig, tokenizer) -> str:
    with pytest.raises(DataError) as info:
        prepare_data(cfg, 0, tokenizer)
    assert info.value.exit_code == 2
    return str(info.value)


# ---- file formats and labels ---------------------------------------------------------------------------------


def test_csv_tsv_parquet_load_the_same(tmp_path, tokenizer):
    frame = make_table(n=50)
    frame.loc[3, "x1"] = np.nan
    frame.loc[4, "color"] = None
    frame.loc[5, "dialogue"] = None
    results = {ext: prepared(tmp_path, tokenizer, frame, f"data.{ext}") for ext in ("csv", "tsv", "parquet", "pq")}
    ref = results["csv"]
    for ext, data in results.items():
        assert data.preprocessor == ref.preprocessor, ext
        for split in SPLITS:
            a, b = data.splits[split], ref.splits[split]
            assert a.ids == b.ids, (ext, split)
            np.testing.assert_allclose(a.numeric, b.numeric, err_msg=ext)
            np.testing.assert_array_equal(a.categorical, b.categorical)
            np.testing.assert_array_equal(a.labels, b.labels)
            assert a.chunks == b.chunks, (ext, split)
    assert sum(len(s.ids) for s in ref.splits.values()) == 50


@pytest.mark.parametrize("n_classes", [2, 3])
@pytest.mark.parametrize("int_labels", [False, True], ids=["str", "int"])
def test_labels(tmp_path, tokenizer, n_classes, int_labels):
    frame = make_table(n=60, n_classes=n_classes, int_labels=int_labels)
    data = prepared(tmp_path, tokenizer, frame)
    classes = data.preprocessor.classes
    assert classes == sorted(frame["label"].astype(str).unique())
    assert len(classes) == n_classes
    for split in SPLITS:
        s = data.splits[split]
        assert s.labels.dtype == np.int64 and set(s.labels) <= set(range(n_classes))
        assert (np.asarray(classes)[s.labels] == s.frame["label"].astype(str).to_numpy()).all()
    assert set(data.splits["train"].labels) == set(range(n_classes))  # stratified: every class trains


# ---- chunking ------------------------------------------------------------------------------------------------

MESSAGES = ["Buyer: hi, my parcel has not arrived yet.", "Seller: sorry to hear that, let me check the tracking.",
            "Buyer: thanks, the order number is 12345.", "Seller: it left the depot this morning."]


def test_json_list_and_newline_dialogues_chunk_the_same(tokenizer):
    newline, as_json = "\n".join(MESSAGES), json.dumps(MESSAGES)
    assert split_messages(newline) == split_messages(as_json) == split_messages(MESSAGES) == MESSAGES
    chunker = DialogueChunker(tokenizer, max_chunks=4, chunk_len=24)
    a, b = chunker([newline, as_json])
    assert a == b and len(a) >= 2


def test_json_and_newline_through_a_table(tmp_path, tokenizer):
    frame = make_table(n=40)
    frame["dialogue"] = [json.dumps(MESSAGES) if i % 2 else "\n".join(MESSAGES) for i in range(40)]
    data = prepared(tmp_path, tokenizer, frame, max_chunks=3, chunk_len=24)
    chunks = [c for s in data.splits.values() for c in s.chunks]
    assert all(c == chunks[0] for c in chunks) and chunks[0]


@pytest.mark.parametrize("text", ["", "   ", "\n\n", None, float("nan"), "[]", "  \n \t\n"])
def test_empty_or_missing_text_gives_no_chunks(tokenizer, text):
    assert DialogueChunker(tokenizer, max_chunks=4, chunk_len=16)([text]) == [[]]


def test_missing_text_in_a_table(tmp_path, tokenizer):
    frame = make_table(n=40)
    frame.loc[::4, "dialogue"] = None
    frame.loc[1::4, "dialogue"] = ""
    data = prepared(tmp_path, tokenizer, frame)
    for s in data.splits.values():
        for text, chunks in zip(s.frame["dialogue"], s.chunks):
            assert (len(chunks) == 0) == (pd.isna(text) or text == "")


@pytest.mark.parametrize("max_chunks,chunk_len", [(1, 8), (3, 16), (8, 64)])
def test_chunk_limits_and_special_tokens(tokenizer, max_chunks, chunk_len):
    rng = np.random.default_rng(0)
    words = "order parcel refund courier delivered damaged late tracking seller buyer".split()
    dialogues = ["\n".join(" ".join(rng.choice(words, rng.integers(1, 40))) for _ in range(rng.integers(1, 12))) for _ in range(50)]
    chunker = DialogueChunker(tokenizer, max_chunks=max_chunks, chunk_len=chunk_len)
    out = chunker(dialogues)
    assert len(out) == len(dialogues)
    assert any(len(c) == max_chunks for c in out)  # some dialogues were long enough to hit the limit
    for chunks in out:
        assert 1 <= len(chunks) <= max_chunks
        for chunk in chunks:
            assert 3 <= len(chunk) <= chunk_len
            assert chunk[0] == tokenizer.cls_token_id and chunk[-1] == tokenizer.sep_token_id
            assert tokenizer.cls_token_id not in chunk[1:-1] and tokenizer.sep_token_id not in chunk[1:-1]


def test_long_message_spans_chunks(tokenizer):
    message = " ".join(f"word{i}" for i in range(60))
    ids = tokenizer(message, add_special_tokens=False)["input_ids"]
    chunks = DialogueChunker(tokenizer, max_chunks=50, chunk_len=16)([message])[0]
    assert len(chunks) == -(-len(ids) // 14) > 1
    assert [t for c in chunks for t in c[1:-1]] == ids  # nothing lost, order kept
    assert all(len(c) == 16 for c in chunks[:-1])


def test_packing_at_message_boundaries(tokenizer):
    ids = [tokenizer(m, add_special_tokens=False)["input_ids"] for m in MESSAGES]
    chunk_len = max(len(i) for i in ids) + 2  # every message fits alone; no two fit together
    assert all(len(a) + len(b) > chunk_len - 2 for a, b in zip(ids, ids[1:]))
    chunks = DialogueChunker(tokenizer, max_chunks=10, chunk_len=chunk_len)(["\n".join(MESSAGES)])[0]
    assert [c[1:-1] for c in chunks] == ids
    together = DialogueChunker(tokenizer, max_chunks=10, chunk_len=512)(["\n".join(MESSAGES)])[0]
    assert len(together) == 1 and together[0][1:-1] == [t for i in ids for t in i]


def test_truncation_keeps_the_start(tokenizer):
    dialogue = "\n".join(MESSAGES * 5)
    full = [t for c in DialogueChunker(tokenizer, max_chunks=100, chunk_len=20)([dialogue])[0] for t in c[1:-1]]
    cut = DialogueChunker(tokenizer, max_chunks=2, chunk_len=20)([dialogue])[0]
    kept = [t for c in cut for t in c[1:-1]]
    assert len(cut) == 2 and full[: len(kept)] == kept


# ---- tabular preprocessing -----------------------------------------------------------------------------------


def test_missing_numeric_values(tmp_path, tokenizer):
    frame = make_table(n=60)
    frame.loc[::5, "x1"] = np.nan
    data = prepared(tmp_path, tokenizer, frame)
    assert data.preprocessor.n_numeric_features == 4
    for s in data.splits.values():
        assert s.numeric.shape == (len(s.ids), 4) and s.numeric.dtype == np.float32
        assert np.isfinite(s.numeric).all()
        missing = s.frame["x1"].isna().to_numpy()
        assert missing.any()
        np.testing.assert_array_equal(s.numeric[:, 2], missing.astype(np.float32))  # x1's missing flag
        assert (s.numeric[missing, 0] == 0).all()
        assert (s.numeric[:, 3] == 0).all()  # x2 never missing
    mean, std = data.preprocessor.numeric["x1"]
    train = data.splits["train"]
    ok = ~train.frame["x1"].isna().to_numpy()
    np.testing.assert_allclose(train.numeric[ok, 0], (train.frame["x1"][ok] - mean) / std, rtol=1e-5)


def test_unseen_and_missing_categories_at_test_time(tmp_path, tokenizer):
    train_path = write(make_table(n=60), tmp_path / "train.csv")
    test = make_table(n=6, seed=1)
    test["color"] = ["red", "purple", None, "blue", "RED", "green"]
    test_path = write(test, tmp_path / "test.csv")
    data = prepare_data(table_cfg(train_path, test_path=test_path), 0, tokenizer)
    vocab = data.preprocessor.categorical["color"]
    assert vocab == sorted(COLORS)
    s = data.splits["test"]
    assert s.ids == [f"test_row{i}" for i in range(6)]
    expected = [vocab.index("red") + 1, 0, 0, vocab.index("blue") + 1, 0, vocab.index("green") + 1]
    assert s.categorical[:, 0].tolist() == expected
    assert data.preprocessor.cardinalities == [len(COLORS) + 1]
    assert (data.splits["train"].categorical > 0).all()


def test_integer_coded_categories_match_across_tables(tmp_path, tokenizer):
    """A missing cell makes pandas read integer codes as floats; the same code must still map to the same index."""
    frame = make_table(n=60)
    frame["store"] = [i % 4 for i in range(60)]
    frame["store"] = frame["store"].astype(object)
    frame.loc[0, "store"] = None  # train table: read back as float64 (1.0, 2.0, ...)
    test = make_table(n=8, seed=1).assign(store=[0, 1, 2, 3, 0, 1, 2, 9])  # test table: int64
    cfg = table_cfg(write(frame, tmp_path / "train.csv"), test_path=write(test, tmp_path / "test.csv"), categorical_columns=["color", "store"])
    data = prepare_data(cfg, 0, tokenizer)
    codes = data.splits["test"].categorical[:, 1].tolist()
    assert all(c > 0 for c in codes[:7]) and codes[7] == 0
    assert codes[:3] == codes[4:7] and len(set(codes[:4])) == 4
    train = data.splits["train"]
    seen = {}
    for value, code in zip(train.frame["store"], train.categorical[:, 1]):
        if pd.notna(value):
            seen.setdefault(int(value), set()).add(int(code))
    assert all(len(c) == 1 for c in seen.values())
    assert [next(iter(seen[v])) for v in (0, 1, 2, 3)] == codes[:4]


def test_text_only_zero_tabular_columns(tmp_path, tokenizer):
    data = prepared(tmp_path, tokenizer, numeric_columns=[], categorical_columns=[])
    assert data.preprocessor.n_numeric_features == 0 and data.preprocessor.cardinalities == []
    for s in data.splits.values():
        n = len(s.ids)
        assert s.numeric.shape == (n, 0) and s.numeric.dtype == np.float32
        assert s.categorical.shape == (n, 0) and s.categorical.dtype == np.int64
        assert len(s.chunks) == n and all(s.chunks)


def test_preprocessing_fitted_on_train_only(tmp_path, tokenizer):
    frame = make_table(n=80)
    frame.loc[70:, "x1"] = 1000.0  # outliers: wherever they land, train-only and full-table means differ
    frame.loc[7, "color"] = "violet"  # a single row: in exactly one split
    data = prepared(tmp_path, tokenizer, frame)
    train = data.splits["train"].frame
    mean, std = data.preprocessor.numeric["x1"]
    assert mean == pytest.approx(train["x1"].mean()) and std == pytest.approx(train["x1"].std())
    assert mean != pytest.approx(frame["x1"].mean())
    assert data.preprocessor.categorical["color"] == sorted(train["color"].unique())
    where = next(name for name, s in data.splits.items() if "violet" in set(s.frame["color"]))
    assert ("violet" in data.preprocessor.categorical["color"]) == (where == "train")


def test_preprocessor_save_load_round_trip(tmp_path, tokenizer):
    frame = make_table(n=60)
    frame.loc[::7, "x2"] = np.nan
    data = prepared(tmp_path, tokenizer, frame, id_column=None)
    pre = data.preprocessor
    path = tmp_path / "preprocessing.json"
    pre.save(path)
    loaded = TabularPreprocessor.load(path)
    assert loaded == pre and loaded.to_json() == pre.to_json()
    assert json.loads(path.read_text())["classes"] == pre.classes
    test = data.splits["test"].frame
    for a, b in zip(loaded.transform(test), pre.transform(test)):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(loaded.encode_labels(test["label"], "t"), data.splits["test"].labels)


def test_preprocessor_load_bad_json(tmp_path):
    path = tmp_path / "preprocessing.json"
    path.write_text("{not json")
    with pytest.raises(DataError, match="preprocessing.json"):
        TabularPreprocessor.load(path)


# ---- errors --------------------------------------------------------------------------------------------------


def test_missing_file(tmp_path, tokenizer):
    path = tmp_path / "nope.csv"
    msg = data_error(table_cfg(path), tokenizer)
    assert str(path) in msg and "does not exist" in msg


def test_missing_test_file(tmp_path, tokenizer):
    path = write(make_table(), tmp_path / "data.csv")
    msg = data_error(table_cfg(path, test_path=str(tmp_path / "nope.parquet")), tokenizer)
    assert "nope.parquet" in msg and "does not exist" in msg


@pytest.mark.parametrize("name", ["data.xlsx", "data.txt", "data"])
def test_unsupported_extension(tmp_path, tokenizer, name):
    path = tmp_path / name
    path.write_text("a,b\n1,2\n")
    msg = data_error(table_cfg(path), tokenizer)
    assert str(path) in msg and "unsupported" in msg and ".csv" in msg and ".parquet" in msg


@pytest.mark.parametrize("kw,column", [
    ({"numeric_columns": ["x1", "nope"]}, "nope"),
    ({"categorical_columns": ["shade"]}, "shade"),
    ({"text_column": "chat"}, "chat"),
    ({"label_column": "target"}, "target"),
    ({"id_column": "uid"}, "uid"),
])
def test_missing_column_lists_the_tables_columns(tmp_path, tokenizer, kw, column):
    path = write(make_table(), tmp_path / "data.csv")
    msg = data_error(table_cfg(path, **kw), tokenizer)
    assert path in msg and repr(column) in msg
    for col in make_table().columns:
        assert col in msg


def test_missing_column_in_test_table(tmp_path, tokenizer):
    path = write(make_table(), tmp_path / "train.csv")
    test_path = write(make_table(n=10).drop(columns="x2"), tmp_path / "test.csv")
    msg = data_error(table_cfg(path, test_path=test_path), tokenizer)
    assert test_path in msg and "'x2'" in msg


@pytest.mark.parametrize("name", ["empty.csv", "empty.parquet", "empty.tsv"])
def test_empty_table(tmp_path, tokenizer, name):
    path = write(make_table().iloc[:0], tmp_path / name)
    msg = data_error(table_cfg(path), tokenizer)
    assert path in msg and "empty" in msg


def test_label_column_with_one_class(tmp_path, tokenizer):
    frame = make_table().assign(label="resolved")
    path = write(frame, tmp_path / "data.csv")
    msg = data_error(table_cfg(path), tokenizer)
    assert path in msg and "'label'" in msg and "single class" in msg and "resolved" in msg


def test_missing_labels(tmp_path, tokenizer):
    frame = make_table()
    frame.loc[3, "label"] = None
    path = write(frame, tmp_path / "data.csv")
    msg = data_error(table_cfg(path), tokenizer)
    assert path in msg and "'label'" in msg and "missing" in msg


def test_unknown_label_in_test_table(tmp_path, tokenizer):
    path = write(make_table(), tmp_path / "train.csv")
    test_path = write(make_table(n=4).assign(label=["resolved", "escalate", "refund", "refund"]), tmp_path / "test.csv")
    msg = data_error(table_cfg(path, test_path=test_path), tokenizer)
    assert test_path in msg and "'label'" in msg and "refund" in msg


@pytest.mark.parametrize("name", ["garbage.parquet", "garbage.pq"])
def test_unreadable_file(tmp_path, tokenizer, name):
    path = tmp_path / name
    path.write_bytes(bytes(range(256)) * 4)
    msg = data_error(table_cfg(path), tokenizer)
    assert str(path) in msg and "cannot read" in msg and "PARQUET" in msg.upper()


def test_non_numeric_values_in_numeric_column(tmp_path, tokenizer):
    frame = make_table()
    frame["x1"] = frame["x1"].astype(object)
    frame.loc[5, "x1"] = "abc"
    path = write(frame, tmp_path / "data.csv")
    msg = data_error(table_cfg(path), tokenizer)
    assert path in msg and "'x1'" in msg and "abc" in msg and "categorical_columns" in msg


def test_column_both_numeric_and_categorical(tmp_path, tokenizer):
    path = write(make_table(), tmp_path / "data.csv")
    msg = data_error(table_cfg(path, categorical_columns=["color", "x1"]), tokenizer)
    assert "x1" in msg and "both" in msg


def test_duplicate_ids(tmp_path, tokenizer):
    frame = make_table().assign(uid=[f"u{i % 30}" for i in range(60)])
    path = write(frame, tmp_path / "data.csv")
    msg = data_error(table_cfg(path, id_column="uid"), tokenizer)
    assert path in msg and "'uid'" in msg and "duplicate" in msg


# ---- splits and fingerprint ----------------------------------------------------------------------------------


def split_ids(data) -> dict[str, list[str]]:
    return {name: s.ids for name, s in data.splits.items()}


def test_split_seeded_disjoint_covering(tmp_path, tokenizer):
    path = write(make_table(n=100), tmp_path / "data.csv")
    a, b, c = (prepare_data(table_cfg(path), seed, tokenizer) for seed in (0, 0, 1))
    assert split_ids(a) == split_ids(b)
    for name in SPLITS:
        assert set(split_ids(a)[name]) != set(split_ids(c)[name]), name
    for data in (a, c):
        ids = split_ids(data)
        sets = [set(v) for v in ids.values()]
        assert sum(len(v) for v in ids.values()) == 100 == len(set().union(*sets))
        assert all(len(v) == len(s) for v, s in zip(ids.values(), sets))  # no duplicates within a split
        assert set().union(*sets) == {f"row{i}" for i in range(100)}
        assert len(ids["test"]) == 15 and abs(len(ids["val"]) - 15) <= 1  # sklearn rounds the val share up
    # ids follow their rows: the frame of each split holds the rows those ids name
    for s in a.splits.values():
        assert s.frame["id"].tolist() == s.ids


def test_split_with_id_column(tmp_path, tokenizer):
    frame = make_table(n=60).assign(uid=[f"u{i:03d}" for i in range(60)])
    data = prepared(tmp_path, tokenizer, frame, id_column="uid")
    ids = split_ids(data)
    assert set().union(*map(set, ids.values())) == set(frame["uid"])
    for s in data.splits.values():
        assert s.frame["uid"].tolist() == s.ids


def test_separate_test_table_is_the_test_split(tmp_path, tokenizer):
    path = write(make_table(n=60), tmp_path / "train.csv")
    test_path = write(make_table(n=9, seed=3), tmp_path / "test.csv")
    data = prepare_data(table_cfg(path, test_path=test_path), 0, tokenizer)
    ids = split_ids(data)
    assert ids["test"] == [f"test_row{i}" for i in range(9)]
    assert set(ids["train"]) | set(ids["val"]) == {f"row{i}" for i in range(60)}
    assert not set(ids["train"]) & set(ids["val"])


def test_fingerprint(tmp_path, tokenizer):
    frame = make_table(n=60)
    base = prepared(tmp_path, tokenizer, frame, "a.csv").fingerprint
    assert prepared(tmp_path, tokenizer, frame, "b.csv").fingerprint == base  # same values, other file
    assert prepared(tmp_path, tokenizer, frame, "c.csv", seed=5).fingerprint == base  # the split seed is not data
    for col, value in (("x1", 99.5), ("color", "blue"), ("label", "escalate"), ("dialogue", "Buyer: hello")):
        changed = frame.copy()
        changed.loc[0, col] = value
        assert changed.loc[0, col] != frame.loc[0, col]
        assert prepared(tmp_path, tokenizer, changed, "d.csv").fingerprint != base, col
    unused = frame.assign(notes="anything")
    assert prepared(tmp_path, tokenizer, unused, "e.csv").fingerprint == base  # columns not used do not count
    fewer = prepared(tmp_path, tokenizer, frame, "f.csv", numeric_columns=["x1"]).fingerprint
    assert fewer != base


def test_fingerprint_covers_the_test_table(tmp_path, tokenizer):
    path = write(make_table(n=60), tmp_path / "train.csv")
    test = make_table(n=8, seed=1)
    t1 = write(test, tmp_path / "t1.csv")
    changed = test.copy()
    changed.loc[2, "x2"] = -1.0
    t2 = write(changed, tmp_path / "t2.csv")
    fp = lambda t: prepare_data(table_cfg(path, test_path=t), 0, tokenizer).fingerprint  # noqa: E731
    assert fp(t1) == fp(t1) != fp(t2)
    assert fp(t1) != prepare_data(table_cfg(path), 0, tokenizer).fingerprint


# ---- synthetic source ----------------------------------------------------------------------------------------


def test_synthetic_source(tokenizer):
    cfg = DataConfig(synthetic=SyntheticConfig(n_samples=200), cache_dir=None)
    assert DataConfig().source == "synthetic"
    data = prepare_data(cfg, 0, tokenizer)
    assert data.has_modality
    assert sum(len(s.ids) for s in data.splits.values()) == 200
    for s in data.splits.values():
        n = len(s.ids)
        assert set(np.unique(s.modality)) <= set(MODALITY_CODES.values()) == {0, 1, 2}
        assert s.numeric.shape == (n, 2 * len(data.columns["numeric"])) and s.categorical.shape == (n, len(data.columns["categorical"]))
        assert all(1 <= len(c) <= cfg.max_chunks for c in s.chunks)
    assert set(np.concatenate([s.modality for s in data.splits.values()])) >= {0, 1}
    again = prepare_data(cfg, 0, tokenizer)
    assert split_ids(again) == split_ids(data) and again.fingerprint == data.fingerprint


def test_table_without_modality_column(tmp_path, tokenizer):
    data = prepared(tmp_path, tokenizer)
    assert not data.has_modality
    assert all((s.modality == -1).all() for s in data.splits.values())
