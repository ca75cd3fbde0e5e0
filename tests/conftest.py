"""Shared fixtures: a tiny random BERT (with the packaged MiniLM tokenizer) and a temporary MLflow store."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory) -> str:
    """A 2-layer, 32-wide BERT saved like any Hugging Face model: pass its path as model.text_encoder."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    from mmfusion.encoders.text import resolve_encoder

    path = tmp_path_factory.mktemp("tiny_bert")
    torch.manual_seed(0)
    config = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, max_position_embeddings=128)
    BertModel(config).save_pretrained(path)
    AutoTokenizer.from_pretrained(resolve_encoder("all-MiniLM-L6-v2")).save_pretrained(path)
    return str(path)


def use_mlflow_store(root: Path, mp: pytest.MonkeyPatch, uri: str | None = None) -> str:
    """Point MLflow at a store (default: a new SQLite file in `root`) through the environment and the process-wide
    URI, work in `root`, and forget any active run or experiment; `mp` undoes the environment and directory changes.
    -> the tracking URI."""
    import mlflow

    uri = uri or f"sqlite:///{root / 'mlflow.db'}"
    mp.setenv("MLFLOW_TRACKING_URI", uri)
    mp.setenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    mp.chdir(root)
    # MLflow's fluent API keeps process-wide state: a URI, active experiment or run left by an earlier test would
    # point into another test's store
    mlflow.set_tracking_uri(uri)
    while mlflow.active_run():
        mlflow.end_run()
    # forget the active experiment without touching the new store (tests check that errors create no database)
    mp.setattr(mlflow.tracking.fluent, "_active_experiment_id", None)
    mp.delenv("MLFLOW_EXPERIMENT_ID", raising=False)  # set_experiment exports it
    return uri


@pytest.fixture
def point_mlflow(monkeypatch):
    """`point_mlflow(folder, uri)`: `use_mlflow_store` for fixtures elsewhere (an e2e server)."""
    return lambda folder, uri=None: use_mlflow_store(folder, monkeypatch, uri)


@pytest.fixture
def mlflow_uri(tmp_path, monkeypatch) -> str:
    """A store of this test's own."""
    return use_mlflow_store(tmp_path, monkeypatch)


@pytest.fixture(scope="module")
def mlflow_module_uri(tmp_path_factory, request) -> Iterator[str]:
    """One store shared by a test module (creating a SQLite store costs seconds); the working directory is its
    folder while the module runs."""
    root = tmp_path_factory.mktemp(request.module.__name__.rsplit(".", 1)[-1])
    with pytest.MonkeyPatch.context() as mp:
        yield use_mlflow_store(root, mp)


@pytest.fixture
def tiny_overrides(tiny_bert) -> list[str]:
    """A config small enough to train in seconds on a CPU."""
    return [
        f"model.text_encoder={tiny_bert}",
        "data.synthetic.n_samples=120",
        "data.max_chunks=4",
        "data.chunk_len=32",
        "model.fusion_dim=16",
        "model.tab_hidden=16",
        "model.tab_dim=16",
        "trainer.max_epochs=1",
        "trainer.batch_size=16",
        "trainer.enable_progress_bar=false",
        "trainer.precision=32-true",
        "data.cache_dir=null",
    ]


E2E = Path(__file__).parent / "e2e"


def pytest_collection_modifyitems(config, items) -> None:
    """tests/e2e/ is the slow lane (processes, servers, browsers, real models): every test there is marked `slow`, so
    `-m "not slow"` and `tests/unit` are the same fast lane."""
    for item in items:
        if E2E in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.slow)
