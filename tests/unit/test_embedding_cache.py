"""The embedding cache key: a function of what the embeddings depend on (encoder, C, T, H, the split's tokens)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from safetensors.torch import save_file

from mmfusion.data.datamodule import Split
from mmfusion.data.embedding_cache import cache_key, read_cached, write_cached


def split(chunks, numeric=0.0) -> Split:
    n = len(chunks)
    return Split(pd.DataFrame({"x": range(n)}), [f"r{i}" for i in range(n)], chunks, np.full((n, 2), numeric, np.float32),
                 np.zeros((n, 0), np.int64), np.zeros(n, np.int64), np.full(n, -1))


def test_key_follows_the_tokens_not_the_other_columns():
    a = [[[101, 7, 102]], [[101, 8, 9, 102], [101, 5, 102]]]
    key = cache_key("enc", 4, 32, split(a), 384)
    assert cache_key("enc", 4, 32, split(a, numeric=3.0), 384) == key  # other columns changed: reuse
    assert cache_key("enc", 4, 32, split([a[1], a[0]]), 384) != key  # row order
    assert cache_key("enc", 4, 32, split([[[101, 7, 102]], [[101, 8, 9, 102]]]), 384) != key  # a chunk less
    assert cache_key("enc", 4, 32, split([[[101, 7, 102]], [[101, 8, 9], [102, 101, 5, 102]]]), 384) != key  # chunk boundary moved
    assert len({cache_key(e, c, t, split(a), h) for e, c, t, h in [("enc", 4, 32, 384), ("other", 4, 32, 384), ("enc", 5, 32, 384), ("enc", 4, 64, 384), ("enc", 4, 32, 768)]}) == 5


def test_cache_file_round_trip_and_a_damaged_file_reads_as_a_miss(tmp_path):
    per_sample = [torch.randn(2, 3), torch.randn(0, 3), torch.randn(1, 3)]
    path = tmp_path / "k.safetensors"
    write_cached(path, "embeddings", per_sample, torch.zeros(0, 3))
    read, counts = read_cached(path, "embeddings")
    assert counts == [2, 0, 1] and all(torch.equal(a, b) for a, b in zip(read, per_sample))
    assert read_cached(path, "hidden") is None  # not the key asked for
    save_file({"embeddings": torch.randn(4, 3), "counts": torch.tensor([2, 0, 1])}, str(path))  # counts do not add up
    assert read_cached(path, "embeddings") is None
    write_cached(tmp_path / "e.safetensors", "embeddings", [], torch.zeros(0, 3))
    assert read_cached(tmp_path / "e.safetensors", "embeddings") == ([], [])
