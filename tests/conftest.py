"""Shared fixtures: a tiny random BERT (with the packaged MiniLM tokenizer) and a temporary MLflow store."""

from __future__ import annotations

import os

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


@pytest.fixture
def mlflow_uri(tmp_path, monkeypatch) -> str:
    import mlflow

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.chdir(tmp_path)
    # MLflow's fluent API keeps process-wide state: a URI, active experiment or run left by an earlier test would
    # point into another test's store
    mlflow.set_tracking_uri(uri)
    while mlflow.active_run():
        mlflow.end_run()
    # forget the active experiment without touching the new store (tests check that errors create no database)
    monkeypatch.setattr(mlflow.tracking.fluent, "_active_experiment_id", None)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_ID", raising=False)  # set_experiment exports it
    return uri


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
