"""The embedding cache key: a function of what the embeddings depend on (encoder, C, T, H, the split's tokens)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from mmfusion.data.datamodule import Split
from mmfusion.data.embedding_cache import cache_key


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
