"""The length-bucketing batch sampler: every sample once, similar lengths together, seeded, distributed-safe."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import BatchSampler, DataLoader, DistributedSampler, RandomSampler, SequentialSampler

from mmfusion.data.sampler import LengthBucketBatchSampler, bucketed_loader, padded_length


def heavy_tailed_lengths(n: int, seed: int = 0) -> list[int]:
    return np.minimum(2 + np.random.default_rng(seed).lognormal(2.5, 1.0, n).astype(int), 512).tolist()


def batches_of(sampler) -> list[list[int]]:
    return [list(b) for b in sampler]


def padded_cost(batches: list[list[int]], lengths: list[int]) -> int:
    return sum(len(b) * max(lengths[i] for i in b) for b in batches)


@pytest.mark.parametrize("n,batch_size,bucket_batches", [(100, 8, 4), (97, 16, 8), (5, 8, 2), (64, 8, 1)])
def test_every_sample_exactly_once_per_epoch(n, batch_size, bucket_batches):
    lengths = heavy_tailed_lengths(n)
    sampler = LengthBucketBatchSampler(RandomSampler(range(n), generator=torch.Generator().manual_seed(0)), batch_size, lengths=lengths, bucket_batches=bucket_batches, seed=1)
    for _ in range(3):  # several epochs
        batches = batches_of(sampler)
        flat = [i for b in batches for i in b]
        assert sorted(flat) == list(range(n))  # none lost, none duplicated
        assert len(batches) == len(sampler) == -(-n // batch_size)
        assert sum(len(b) < batch_size for b in batches) <= 1  # only one partial batch


def test_drop_last_drops_only_the_partial_batch():
    sampler = LengthBucketBatchSampler(SequentialSampler(range(21)), 8, drop_last=True, lengths=heavy_tailed_lengths(21))
    batches = batches_of(sampler)
    assert len(batches) == len(sampler) == 2 and all(len(b) == 8 for b in batches)
    assert len({i for b in batches for i in b}) == 16


def test_buckets_hold_similar_lengths_and_pad_less():
    n, bs = 512, 16
    lengths = heavy_tailed_lengths(n)
    plain = batches_of(BatchSampler(RandomSampler(range(n), generator=torch.Generator().manual_seed(0)), bs, False))
    bucketed = batches_of(LengthBucketBatchSampler(RandomSampler(range(n), generator=torch.Generator().manual_seed(0)), bs, lengths=lengths, bucket_batches=8))
    assert padded_cost(bucketed, lengths) < 0.7 * padded_cost(plain, lengths)
    # within each bucket of 8 batches the batches are contiguous in length: no two batches' ranges interleave
    spread = np.mean([max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in bucketed])
    assert spread < 0.5 * np.mean([max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in plain])


def test_seeded_and_reshuffled_each_epoch():
    lengths = heavy_tailed_lengths(200)

    def make(seed: int) -> LengthBucketBatchSampler:
        return LengthBucketBatchSampler(RandomSampler(range(200), generator=torch.Generator().manual_seed(seed)), 16, lengths=lengths, seed=seed)

    a, b = make(3), make(3)
    first = batches_of(a)
    assert first == batches_of(b)  # same seed, same batches
    assert batches_of(a) != first  # the next epoch is shuffled anew
    assert batches_of(make(4)) != first


def test_lightning_injects_a_distributed_sampler_and_every_rank_gets_equal_batches():
    """Under DDP Lightning re-creates the batch sampler around a DistributedSampler (use_distributed_sampler=True)."""
    from lightning.fabric.utilities.data import _replace_dunder_methods, _set_sampler_epoch
    from lightning.pytorch.trainer.states import RunningStage
    from lightning.pytorch.utilities.data import _update_dataloader

    n, bs, world = 103, 8, 2
    lengths = heavy_tailed_lengths(n)
    dataset = list(range(n))
    with _replace_dunder_methods(DataLoader, "dataset"), _replace_dunder_methods(BatchSampler):  # as Lightning does around *_dataloader()
        loader = DataLoader(dataset, batch_sampler=LengthBucketBatchSampler(RandomSampler(dataset), bs, lengths=lengths, seed=5), collate_fn=list)
    for epoch in range(2):
        per_rank = []
        for rank in range(world):
            dist = DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=True, seed=7)
            ranked = _update_dataloader(loader, dist, mode=RunningStage.TRAINING)
            assert isinstance(ranked.batch_sampler, LengthBucketBatchSampler) and ranked.batch_sampler.sampler is dist
            _set_sampler_epoch(ranked, epoch)
            per_rank.append([b for b in ranked])
        assert len(per_rank[0]) == len(per_rank[1])  # unequal batch counts would hang the all-reduce
        seen = [i for batches in per_rank for b in batches for i in b]
        assert set(seen) == set(range(n))
        assert len(seen) - n == (-n) % world  # only DistributedSampler's own padding repeats samples


def test_bucketed_loader_over_a_split(tiny_bert):
    from functools import partial

    from mmfusion.config import load_config
    from mmfusion.data.datamodule import SplitDataset, collate, prepare_data
    from mmfusion.encoders import load_tokenizer

    cfg = load_config(None, [f"model.text_encoder={tiny_bert}", "data.synthetic.n_samples=200", "data.max_chunks=4", "data.chunk_len=32"])
    data = prepare_data(cfg.data, 0, load_tokenizer(tiny_bert))
    split = data.splits["train"]
    loader = bucketed_loader(SplitDataset(split), 16, seed=0, collate_fn=partial(collate, pad_id=0))
    seen = []
    for batch in loader:
        seen += batch["index"].tolist()
        longest = batch["attention_mask"].sum(-1).max()
        assert batch["input_ids"].shape[2] == longest  # padded to the batch's longest chunk
    assert sorted(seen) == list(range(len(split.ids)))
    assert [padded_length(c) for c in split.chunks[:3]] == [max(map(len, c), default=0) for c in split.chunks[:3]]
