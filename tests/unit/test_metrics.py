"""Attribution AUROC, the faithfulness check and the inputs it substitutes, on constructed cases with known answers."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mmfusion.config import OptimConfig
from mmfusion.modeling.module import FusionClassifierModule
from mmfusion.modeling.metrics import TAB, TEXT, attribution_auroc, faithfulness, modality_drops
from mmfusion.modeling.classifier import ModelOutput, blank_modalities


class AdditiveModel(nn.Module):
    """logit(class 1) = h_text[:, 0] + h_tab[:, 0]: each modality's evidence is known exactly."""

    def tab_encoder(self, numeric: torch.Tensor, categorical: torch.Tensor) -> torch.Tensor:
        return numeric[:, :1] + categorical[:, :1].float()

    def classify(self, h_text, h_tab, chunks, chunk_mask) -> ModelOutput:
        z = h_text[:, 0] + h_tab[:, 0]
        return ModelOutput(torch.stack([-z, z], dim=1) / 2, torch.full((len(z), 2), 0.5), z.new_zeros(()), None)


def _case():
    """Rows 0-1: the label is in the text (evidence +-4), the table says nothing. Rows 2-3: the reverse."""
    label = torch.tensor([1, 0, 1, 0])
    sign = (2 * label - 1).float()
    text_rows = torch.tensor([1.0, 1.0, 0.0, 0.0])
    h_text = (4 * sign * text_rows)[:, None]
    numeric = (4 * sign * (1 - text_rows))[:, None]
    batch = {"label": label, "numeric": numeric, "categorical": torch.zeros(4, 1, dtype=torch.long), "chunk_mask": torch.ones(4, 2, dtype=torch.long),
             "modality": torch.tensor([TEXT, TEXT, TAB, TAB])}
    model = AdditiveModel()
    h_tab = model.tab_encoder(batch["numeric"], batch["categorical"])
    chunks = h_text[:, None, :].expand(4, 2, 1)
    probs = model.classify(h_text, h_tab, chunks, batch["chunk_mask"]).logits.softmax(-1)
    return model, (h_text, chunks, h_tab), batch, probs


def test_modality_drops_find_the_informative_modality():
    model, encoded, batch, probs = _case()
    drop_text, drop_tab = modality_drops(model, encoded, batch, probs)
    expected = torch.sigmoid(torch.tensor(4.0)) - 0.5  # P(true class) falls from sigmoid(4) to the prior 0.5
    torch.testing.assert_close(drop_text[:2], expected.expand(2))  # text rows: removing the text costs it all
    torch.testing.assert_close(drop_tab[:2], torch.zeros(2))  # ... removing the table nothing
    torch.testing.assert_close(drop_tab[2:], expected.expand(2))
    torch.testing.assert_close(drop_text[2:], torch.zeros(2))


@pytest.mark.parametrize("w_text,expected", [([0.9, 0.8, 0.2, 0.1], 1.0), ([0.1, 0.2, 0.8, 0.9], 0.0), ([0.9, 0.2, 0.2, 0.9], 0.5)])
def test_faithfulness_scores_which_modality_the_weights_point_at(w_text, expected):
    model, encoded, batch, probs = _case()
    drop_text, drop_tab = modality_drops(model, encoded, batch, probs)
    assert faithfulness(torch.tensor(w_text), drop_text, drop_tab) == pytest.approx(expected)


def test_faithfulness_counts_a_tie_as_unfaithful():
    """A weight that points at a modality whose removal changes nothing more than the other's is not evidence."""
    zeros = torch.zeros(3)
    assert faithfulness(torch.tensor([0.9, 0.1, 0.5]), zeros, zeros) == 0.0


def test_attribution_auroc_ignores_both_and_unknown_rows():
    modality = torch.tensor([TEXT, TEXT, TAB, TAB, 2, -1])
    assert attribution_auroc(torch.tensor([0.9, 0.7, 0.3, 0.1, 0.0, 0.0]), modality) == pytest.approx(1.0)
    assert attribution_auroc(torch.tensor([0.1, 0.3, 0.7, 0.9, 1.0, 1.0]), modality) == pytest.approx(0.0)
    assert attribution_auroc(torch.tensor([0.5, 0.5]), torch.tensor([TEXT, TEXT])) is None  # one class: undefined


def test_blank_modalities_substitutes_the_faithfulness_nulls():
    batch = {"chunk_mask": torch.ones(3, 2, dtype=torch.long), "chunk_embeddings": torch.ones(3, 2, 4),
             "numeric": torch.randn(3, 5), "categorical": torch.ones(3, 2, dtype=torch.long), "label": torch.zeros(3, dtype=torch.long)}
    out = blank_modalities(batch, torch.tensor([True, False, False]), torch.tensor([False, True, False]))
    assert out["chunk_mask"].tolist() == [[0, 0], [1, 1], [1, 1]] and torch.all(out["chunk_embeddings"][0] == 0)
    assert torch.all(out["numeric"][1] == 0) and torch.all(out["categorical"][1] == 0)  # training mean, unknown category
    torch.testing.assert_close(out["numeric"][[0, 2]], batch["numeric"][[0, 2]])
    assert torch.all(batch["chunk_mask"] == 1)  # the input batch is left as it was


def test_modality_dropout_removes_one_modality_per_row_at_the_configured_rate():
    seen = []

    class Recorder(nn.Module):
        def forward(self, **inputs):
            seen.append(inputs)
            n = len(inputs["numeric"])
            return ModelOutput(torch.zeros(n, 2, requires_grad=True), torch.full((n, 2), 0.5), torch.zeros(()), None)

    module = FusionClassifierModule(Recorder(), OptimConfig(), 2, modality_dropout=0.2)
    module.log = lambda *a, **k: None
    n = 20000
    batch = {"input_ids": torch.ones(n, 2, 3, dtype=torch.long), "attention_mask": torch.ones(n, 2, 3, dtype=torch.long),
             "chunk_mask": torch.ones(n, 2, dtype=torch.long), "numeric": torch.ones(n, 3), "categorical": torch.ones(n, 1, dtype=torch.long),
             "label": torch.zeros(n, dtype=torch.long)}
    torch.manual_seed(0)
    module.training_step(batch, 0)
    no_text = seen[0]["chunk_mask"].sum(1) == 0
    no_tab = seen[0]["numeric"].abs().sum(1) == 0
    assert not torch.any(no_text & no_tab)  # never both: every row keeps something to learn from
    assert no_text.float().mean().item() == pytest.approx(0.2, abs=0.015)
    assert no_tab.float().mean().item() == pytest.approx(0.2, abs=0.015)
