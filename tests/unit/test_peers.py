"""benchmarks/peers/autogluon.py without AutoGluon: its arguments, the split it prepares, the JSON it writes, its errors."""

from __future__ import annotations

import ast
import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "peers" / "autogluon.py"


@pytest.fixture(scope="module")
def peer():
    spec = importlib.util.spec_from_file_location("peer_autogluon", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def split(tmp_path):
    """train/test parquet files like the clothing split: an id, an extra column, missing titles and categories."""
    rng = np.random.default_rng(0)

    def table(n: int) -> pd.DataFrame:
        return pd.DataFrame({
            "id": np.arange(n), "Recommended IND": (np.arange(n) % 5 != 0).astype(int),
            "Title": [None if i % 3 == 0 else f"title {i}" for i in range(n)], "Review Text": [f"review {i}" for i in range(n)],
            "Clothing ID": rng.integers(1000, 1010, n), "Division Name": ["General", None] * (n // 2),
            "Department Name": "Tops", "Class Name": "Knits", "Rating": rng.integers(1, 6, n),
            "Age": rng.integers(18, 80, n), "Positive Feedback Count": rng.integers(0, 9, n), "Extra": 1.5,
        })

    table(40).to_parquet(tmp_path / "train.parquet")
    table(10).to_parquet(tmp_path / "test.parquet")
    return tmp_path


def test_script_imports_neither_mmfusion_nor_autogluon_at_load(peer):
    tree = ast.parse(SCRIPT.read_text())
    imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert "mmfusion" not in imported  # standalone: runs in AutoGluon's venv
    top = {a.name.split(".")[0] for n in tree.body if isinstance(n, ast.Import) for a in n.names}
    top |= {n.module.split(".")[0] for n in tree.body if isinstance(n, ast.ImportFrom) and n.module}
    assert "autogluon" in imported and "autogluon" not in top  # only inside the fit function


def test_arguments(peer, tmp_path):
    args = peer.parse_args(["--data", str(tmp_path), "--out", "o.json"])
    assert (args.no_rating, args.time_limit, args.seed, args.holdout_frac) == (False, 900, 0, None)
    args = peer.parse_args(["--data", str(tmp_path), "--out", "o.json", "--no-rating", "--time-limit", "60", "--seed", "3"])
    assert (args.no_rating, args.time_limit, args.seed) == (True, 60, 3)
    with pytest.raises(SystemExit):
        peer.parse_args(["--data", str(tmp_path)])  # --out is required


@pytest.mark.parametrize("no_rating", [False, True])
def test_split_is_prepared_with_the_task_columns(peer, split, no_rating):
    args = peer.parse_args(["--data", str(split), "--out", "o.json"] + (["--no-rating"] if no_rating else []))
    train, test, roles = peer.load_split(args)
    nums = ["Age", "Positive Feedback Count"] if no_rating else ["Rating", "Age", "Positive Feedback Count"]
    assert roles["numeric_columns"] == nums
    expected = ["Title", "Review Text", "Clothing ID", "Division Name", "Department Name", "Class Name", *nums, "Recommended IND"]
    assert list(train.columns) == expected and list(test.columns) == expected  # no id, no Extra, Rating only when asked
    assert (len(train), len(test)) == (40, 10)
    assert train["Title"].iloc[0] == "" and train["Title"].iloc[1] == "title 1"
    assert train["Clothing ID"].map(type).eq(str).all()  # an integer code, given to AutoGluon as a category
    assert train["Division Name"].iloc[1] == "missing"
    assert train["Recommended IND"].tolist()[:6] == [0, 1, 1, 1, 1, 0]


def test_manifest_roles_win_and_csv_is_read(peer, split):
    for name in ("train", "test"):
        pd.read_parquet(split / f"{name}.parquet").to_csv(split / f"{name}.csv", index=False)
        (split / f"{name}.parquet").unlink()
    (split / "manifest.json").write_text(json.dumps({"label_column": "Recommended IND", "numeric_columns": ["Age"]}))
    train, _, roles = peer.load_split(peer.parse_args(["--data", str(split), "--out", "o.json"]))
    assert roles["numeric_columns"] == ["Age"] and "Rating" not in train.columns and "Title" in train.columns


def test_run_writes_the_report(peer, split, tmp_path, monkeypatch):
    seen = {}

    def fake_fit(train, test, roles, args, checkpoint):
        seen.update(train=train, test=test, checkpoint=checkpoint, limit=args.time_limit)
        return {"metrics": dict.fromkeys(["accuracy", "macro_f1", "balanced_accuracy", "auroc"], 0.5),
                "fit_seconds": 1.0, "predict_seconds": 0.1, "threads": 2}

    monkeypatch.setattr(peer, "fit_and_score", fake_fit)
    out = tmp_path / "res" / "ag.json"
    argv = ["--data", str(split), "--no-rating", "--time-limit", "30", "--checkpoint", "/models/minilm", "--out", str(out)]
    assert peer.main(argv) == 0
    report = json.loads(out.read_text())
    assert report["variant"] == "without Rating" and report["time_limit_s"] == 30 and report["text_backbone"] == "/models/minilm"
    assert (report["train_rows"], report["test_rows"]) == (40, 10) and report["metrics"]["auroc"] == 0.5
    assert "--no-rating" in report["command"] and report["cpu"]
    assert set(report["load_average"]) == {"before", "after"} and all(v >= 0 for v in report["load_average"].values())
    assert seen["checkpoint"] == "/models/minilm" and seen["limit"] == 30 and "Rating" not in seen["train"].columns


def test_hyperparameters_name_the_local_backbone_and_no_image_model(peer):
    hp = peer.hyperparameters("/models/minilm", 2)
    assert hp["model.hf_text.checkpoint_name"] == "/models/minilm" and hp["env.num_gpus"] == 0 and hp["optim.max_epochs"] == 2
    assert hp["model.hf_text.text_trivial_aug_maxscale"] == 0.0  # the augmentation would download NLTK data
    assert set(hp["model.names"]) == {"hf_text", "numerical_mlp", "categorical_mlp", "fusion_mlp"}


def test_missing_column_and_missing_autogluon_are_one_error_line(peer, split, tmp_path, monkeypatch, capsys):
    frame = pd.read_parquet(split / "test.parquet").drop(columns=["Age"])
    frame.to_parquet(split / "test.parquet")
    assert peer.main(["--data", str(split), "--checkpoint", "x", "--out", str(tmp_path / "a.json")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and "missing column(s) ['Age']" in err[0]

    pd.read_parquet(split / "train.parquet").to_parquet(split / "test.parquet")
    monkeypatch.setitem(sys.modules, "autogluon", None)  # as where AutoGluon is not installed (our venv)
    monkeypatch.setitem(sys.modules, "autogluon.multimodal", None)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    assert peer.main(["--data", str(split), "--checkpoint", "x", "--out", str(tmp_path / "b.json")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "autogluon.multimodal is not importable" in err[0]
    assert not (tmp_path / "a.json").exists() and not (tmp_path / "b.json").exists()
