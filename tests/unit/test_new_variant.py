"""Adding a fusion variant with its own options is one class + one decorator: this file registers one and runs it
through the config, the shared network and the LightningModule with no other change."""

from __future__ import annotations

import pytest
import torch
from pydantic import Field

from mmfusion.config import load_config
from mmfusion.errors import ConfigError
from mmfusion.fusion import Fusion, FusionOptions, FusionOutput, register_fusion, unregister_fusion
from mmfusion.fusion.base import projection, two_way


class ScaledOptions(FusionOptions):
    text_scale: float = Field(1.0, gt=0.0)


@pytest.fixture
def scaled():
    @register_fusion("scaled_mean", options=ScaledOptions, presets={"scaled_mean-2": {"text_scale": 2.0}})
    class ScaledMean(Fusion):
        """fused = (s p_text + p_tab) / (s + 1); w_text = s / (s + 1)."""

        def __init__(self, text_dim, tab_dim, cfg):
            super().__init__(text_dim, tab_dim, cfg)
            self.text, self.tab = projection(text_dim, cfg.fusion_dim, cfg.dropout), projection(tab_dim, cfg.fusion_dim, cfg.dropout)

        def forward(self, h_text, h_tab, chunks, chunk_mask):
            s = self.options.text_scale
            w = h_text.new_full((h_text.shape[0],), s / (s + 1))
            return FusionOutput((s * self.text(h_text) + self.tab(h_tab)) / (s + 1), two_way(w), h_text.new_zeros(()))

    yield ScaledMean
    unregister_fusion("scaled_mean")


def test_a_new_variant_is_configured_built_and_trained(scaled, tiny_bert):
    from transformers import AutoModel

    from mmfusion.modeling.classifier import build_model
    from mmfusion.modeling.module import FusionClassifierModule

    cfg = load_config(None, [f"model.text_encoder={tiny_bert}", "model.fusion=scaled_mean-2", "model.fusion_dim=8"])
    assert (cfg.model.fusion, cfg.model.fusion_preset, cfg.model.fusion_options) == ("scaled_mean", "scaled_mean-2", {"text_scale": 2.0})
    torch.manual_seed(0)
    model = build_model(cfg.model, AutoModel.from_pretrained(tiny_bert), n_numeric=3, cardinalities=[4], n_classes=2)
    module = FusionClassifierModule(model, cfg.optim, n_classes=2)
    b, c, t = 4, 2, 6
    batch = {"input_ids": torch.randint(1, 100, (b, c, t)), "attention_mask": torch.ones(b, c, t, dtype=torch.long), "chunk_mask": torch.ones(b, c),
             "numeric": torch.randn(b, 3), "categorical": torch.randint(0, 4, (b, 1)), "label": torch.tensor([0, 1, 0, 1])}
    module.log = lambda *a, **k: None  # no trainer attached
    loss = module.training_step(batch, 0)
    loss.backward()
    assert all(p.grad is not None for p in model.fusion.parameters())
    out = module(batch)
    torch.testing.assert_close(out.modality_weights[:, 0], torch.full((b,), 2 / 3))


def test_its_options_are_checked_only_when_it_is_chosen(scaled):
    with pytest.raises(ConfigError, match=r"model.fusion_options: 'scale' is not an option of fusion 'scaled_mean'; its options: text_scale \(default 1.0\)"):
        load_config(None, ["model.fusion=scaled_mean", "model.fusion_options.scale=2"])
    with pytest.raises(ConfigError, match=r"text_scale of fusion 'scaled_mean': Input should be greater than 0"):
        load_config(None, ["model.fusion=scaled_mean", "model.fusion_options.text_scale=0"])
    with pytest.raises(ConfigError, match="'text_scale' is not an option of fusion 'gate'"):
        load_config(None, ["model.fusion=gate", "model.fusion_options.text_scale=2"])
    with pytest.raises(ValueError, match="registered twice"):
        register_fusion("scaled_mean-2")(scaled)
