"""Every registered fusion variant, tested the day it is added (timm-style parametrisation over the registry)."""

from __future__ import annotations

import pytest
import torch

from mmfusion.config import ModelConfig
from mmfusion.fusion import PRESETS, create_fusion, list_fusions, list_presets

B, C, DT, DA = 6, 3, 12, 10


def inputs(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    chunks = torch.randn(B, C, DT, generator=g)
    chunk_mask = torch.tensor([[1, 1, 1], [1, 0, 0], [1, 1, 0], [0, 0, 0], [1, 0, 0], [1, 1, 1]])
    chunks = chunks * chunk_mask.unsqueeze(-1)
    h_text = chunks.sum(1) / chunk_mask.sum(1, keepdim=True).clamp_min(1)
    return h_text, torch.randn(B, DA, generator=g), chunks, chunk_mask


def variants():
    """Every registered fusion with its default options, and every registered preset."""
    return [(name, None) for name in list_fusions()] + [(PRESETS[p].variant, p) for p in list_presets()]


def build(name: str, preset: str | None = None, **options):
    cfg = ModelConfig(fusion=preset or name, fusion_dim=8, fusion_options=options)
    return create_fusion(cfg.fusion, DT, DA, cfg)


@pytest.mark.parametrize("name,preset", variants(), ids=lambda v: v)
def test_shapes_weights_and_gradients(name, preset):
    torch.manual_seed(0)
    fusion = build(name, preset).train()
    h_text, h_tab, chunks, chunk_mask = inputs()
    out = fusion(h_text, h_tab, chunks, chunk_mask)
    assert out.fused.shape == (B, fusion.out_dim) == (B, 8)
    assert out.modality_weights.shape == (B, 2)
    assert torch.all((out.modality_weights >= 0) & (out.modality_weights <= 1))
    torch.testing.assert_close(out.modality_weights.sum(-1), torch.ones(B))
    assert out.aux_loss.shape == ()
    if out.expert_weights is not None:
        torch.testing.assert_close(out.expert_weights.sum(-1), torch.ones(B))
    (out.fused.square().mean() + out.aux_loss).backward()
    for pname, p in fusion.named_parameters():  # every parameter is used: none is left for a zero-gradient fill
        assert p.grad is not None, f"{name}: {pname} gets no gradient"
        assert torch.isfinite(p.grad).all(), f"{name}: {pname} has a non-finite gradient"


@pytest.mark.parametrize("name", list_fusions())
def test_eval_is_deterministic_and_batch_independent(name):
    torch.manual_seed(0)
    fusion = build(name, heads=2) if name == "attention" else build(name)
    fusion.eval()
    h_text, h_tab, chunks, chunk_mask = inputs()
    full = fusion(h_text, h_tab, chunks, chunk_mask)
    again = fusion(h_text, h_tab, chunks, chunk_mask)
    torch.testing.assert_close(full.fused, again.fused)
    one = fusion(h_text[2:3], h_tab[2:3], chunks[2:3], chunk_mask[2:3])  # a batch of one gives the same row
    torch.testing.assert_close(one.fused, full.fused[2:3], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(one.modality_weights, full.modality_weights[2:3], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", list_fusions())
def test_padding_chunks_change_nothing(name):
    torch.manual_seed(0)
    fusion = build(name, heads=2) if name == "attention" else build(name)
    fusion.eval()
    h_text, h_tab, chunks, chunk_mask = inputs()
    base = fusion(h_text, h_tab, chunks, chunk_mask)
    padded_chunks = torch.cat([chunks, torch.randn(B, 2, DT)], dim=1)  # garbage in padding positions
    padded_mask = torch.cat([chunk_mask, torch.zeros(B, 2, dtype=chunk_mask.dtype)], dim=1)
    padded = fusion(h_text, h_tab, padded_chunks, padded_mask)
    torch.testing.assert_close(padded.fused, base.fused, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(padded.modality_weights, base.modality_weights, atol=1e-5, rtol=1e-5)


def test_ablations_weights():
    h_text, h_tab, chunks, chunk_mask = inputs()
    cfg = ModelConfig(fusion_dim=8)
    assert create_fusion("text_only", DT, DA, cfg).reads == ("text",) and create_fusion("tab_only", DT, DA, cfg).reads == ("tab",)
    assert torch.all(create_fusion("text_only", DT, DA, cfg)(h_text, h_tab, chunks, chunk_mask).modality_weights[:, 0] == 1)
    assert torch.all(create_fusion("tab_only", DT, DA, cfg)(h_text, h_tab, chunks, chunk_mask).modality_weights[:, 0] == 0)


def test_hard_routing_mixes_one_expert_but_reports_soft_weights():
    torch.manual_seed(0)
    fusion = build("moe", "moe-mlp-hard").eval()
    h_text, h_tab, chunks, chunk_mask = inputs()
    out = fusion(h_text, h_tab, chunks, chunk_mask)
    experts = torch.stack([fusion.text_expert(h_text), fusion.tab_expert(h_tab)], 1)
    pick = out.modality_weights.argmax(-1)
    torch.testing.assert_close(out.fused, experts[torch.arange(B), pick])  # exactly one expert, the likelier one
    has_text = chunk_mask.sum(1) > 0
    assert ((out.modality_weights[has_text] > 0) & (out.modality_weights[has_text] < 1)).all()  # a belief, not a one-hot


@pytest.mark.parametrize("name,preset", [v for v in variants() if v[1] and v[0].startswith("moe")], ids=lambda v: v)
@pytest.mark.parametrize("training", [False, True])
def test_routers_never_send_a_sample_without_text_to_a_text_expert(name, preset, training):
    torch.manual_seed(0)
    fusion = build(name, preset).train(training)
    h_text, h_tab, chunks, chunk_mask = inputs()
    assert chunk_mask[3].sum() == 0  # row 3 has no text
    out = fusion(h_text, h_tab, chunks, chunk_mask)
    assert out.modality_weights[3, 0] == 0 and out.modality_weights[3, 1] == 1
    if name == "moe":  # its router gives every row with text some text weight (top-k may pick two tab experts)
        assert out.modality_weights[chunk_mask.sum(1) > 0, 0].min() > 0


def test_topk_keeps_k_experts_and_balance_loss_is_positive():
    torch.manual_seed(0)
    fusion = build("moe_topk", n_experts=6, top_k=2, load_balance_weight=1.0).eval()
    out = fusion(*inputs())
    assert ((out.expert_weights > 0).sum(-1) == 2).all()
    assert out.aux_loss > 0
    torch.testing.assert_close(out.modality_weights[:, 0], out.expert_weights[:, :3].sum(-1))
    assert type(fusion).expert_modalities(fusion.options) == ["text"] * 3 + ["tab"] * 3


def test_hard_topk_mixes_exactly_one_expert_and_has_no_noise_net():
    torch.manual_seed(0)
    fusion = build("moe_topk_hard", n_experts=4).eval()
    out = fusion(*inputs())
    assert not hasattr(fusion, "noise") and fusion.options.n_experts == 4
    assert ((out.expert_weights > 0) & (out.expert_weights < 1)).any()  # reported: the router's belief, not a one-hot
    mix, reported, _ = fusion.gates(torch.cat([fusion.text_in(inputs()[0]), fusion.tab_in(inputs()[1])], -1), inputs()[3])
    assert ((mix == 1).sum(-1) == 1).all() and torch.equal(mix.argmax(-1), reported.argmax(-1))


def test_gate_diagnostics_are_its_per_dimension_gate():
    torch.manual_seed(0)
    fusion = build("gate").eval()
    out, diag = fusion(*inputs()), fusion.diagnostics(*inputs())
    assert set(diag) == {"gate"} and diag["gate"].shape == (B, 8)
    torch.testing.assert_close(out.modality_weights[:, 0], diag["gate"].mean(-1))
    assert build("concat").diagnostics(*inputs()) == {}


def test_attention_export_copy_computes_the_same():
    import copy

    torch.manual_seed(0)
    fusion = build("attention", heads=2, layers=2).eval()
    plain = copy.deepcopy(fusion).export_copy()
    assert not any(isinstance(m, torch.nn.MultiheadAttention) for m in plain.modules())
    assert any(isinstance(m, torch.nn.MultiheadAttention) for m in fusion.modules())  # the original is untouched
    a, b = fusion(*inputs()), plain(*inputs())
    torch.testing.assert_close(b.fused, a.fused, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(b.modality_weights, a.modality_weights, atol=1e-5, rtol=1e-5)
