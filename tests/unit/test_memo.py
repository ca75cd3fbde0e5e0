"""The in-process memo of lean study trials: the same data config, seed and tokenizer share one preparation and one
set of frozen-encoder embeddings; anything the data depends on misses; each caller gets its own splits."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mmfusion.config import load_config
from mmfusion.data import memo
from mmfusion.data.datamodule import prepare_data
from mmfusion.encoders import load_text_backbone, load_tokenizer
from mmfusion.encoders.text import TextEncoder


@pytest.fixture
def setup(tiny_bert):
    memo.clear()
    cfg = load_config(None, [f"model.text_encoder={tiny_bert}", "data.synthetic.n_samples=40", "data.max_chunks=2", "data.chunk_len=16", "data.cache_dir=null"])
    yield cfg, load_tokenizer(tiny_bert)
    memo.clear()


def _get(cfg, tok, seed=None):
    return memo.prepared_data(cfg.data, cfg.seed if seed is None else seed, tok, cfg.model.text_encoder)


def test_the_same_key_is_prepared_once_and_equals_a_fresh_preparation(setup):
    cfg, tok = setup
    a, b = _get(cfg, tok), _get(cfg, tok)
    assert a is not b and a.splits["train"] is not b.splits["train"]  # own objects ...
    assert a.splits["train"].chunks is b.splits["train"].chunks  # ... over one preparation
    fresh = prepare_data(cfg.data, cfg.seed, tok)
    for name, split in fresh.splits.items():
        assert a.splits[name].chunks == split.chunks and a.splits[name].ids == split.ids
        np.testing.assert_array_equal(a.splits[name].numeric, split.numeric)
    assert a.fingerprint == fresh.fingerprint


@pytest.mark.parametrize("change", ["data.max_chunks=3", "data.chunk_len=24", "data.synthetic.n_samples=44", "data.val_fraction=0.2", "seed=8"])
def test_what_the_data_depends_on_misses(setup, change):
    cfg, tok = setup
    base = _get(cfg, tok)
    other = load_config(None, [f"model.text_encoder={cfg.model.text_encoder}", "data.synthetic.n_samples=40", "data.max_chunks=2", "data.chunk_len=16",
                               "data.cache_dir=null", change])
    assert _get(other, tok).splits["train"].chunks is not base.splits["train"].chunks


def test_embeddings_are_memoized_per_encoder_and_never_leak_into_another_callers_splits(setup):
    cfg, tok = setup
    encoder = TextEncoder(load_text_backbone(cfg.model.text_encoder), frozen=True)
    first = _get(cfg, tok)
    stats = memo.attach_embeddings(first, encoder, "enc-a", 2, 16, None)
    assert stats["misses"] == 3
    second = _get(cfg, tok)
    assert all(s.chunk_embeddings is None for s in second.splits.values())  # a copy comes without them
    assert memo.attach_embeddings(second, encoder, "enc-a", 2, 16, None) == {"hits": 0, "misses": 0, "memo": 3}
    for name in first.splits:
        assert all(torch.equal(x, y) for x, y in zip(first.splits[name].chunk_embeddings, second.splits[name].chunk_embeddings))
    third = _get(cfg, tok)
    assert memo.attach_embeddings(third, encoder, "enc-b", 2, 16, None)["misses"] == 3  # another encoder: encoded again
    unmemoized = prepare_data(cfg.data, cfg.seed, tok)  # not from the memo: plain attach_chunk_embeddings
    assert memo.attach_embeddings(unmemoized, encoder, "enc-a", 2, 16, None)["misses"] == 3


def test_the_backbone_is_read_once_and_every_caller_gets_its_own_copy(setup, monkeypatch):
    cfg, _ = setup
    reads = []
    monkeypatch.setattr(memo, "load_text_backbone", lambda name: reads.append(name) or load_text_backbone(name))
    a, b = memo.text_backbone(cfg.model.text_encoder), memo.text_backbone(cfg.model.text_encoder)
    assert reads == [cfg.model.text_encoder] and a is not b
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    with torch.no_grad():
        next(a.parameters()).add_(1.0)  # one trial trains (or re-configures) its copy: the next copy is the pretrained one
    a.config.hidden_dropout_prob = 0.5
    c = memo.text_backbone(cfg.model.text_encoder)
    assert torch.equal(next(c.parameters()), next(b.parameters())) and c.config.hidden_dropout_prob == b.config.hidden_dropout_prob != 0.5
    memo.clear()
    memo.text_backbone(cfg.model.text_encoder)
    assert len(reads) == 2  # cleared: read again
