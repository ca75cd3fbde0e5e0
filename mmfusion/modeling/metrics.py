"""Evaluation metrics over de-duplicated, gathered predictions (torchmetrics' functional API)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torchmetrics.functional.classification import binary_auroc, multiclass_accuracy, multiclass_auroc, multiclass_f1_score

from mmfusion.modeling.classifier import blank_modalities

from mmfusion.tracking.contract import TAB, TEXT


def classification_metrics(probs: torch.Tensor, labels: torch.Tensor, class_weights: torch.Tensor | None = None) -> dict[str, float]:
    """probs (N, K), labels (N,) -> loss, accuracy, macro-F1, balanced accuracy, AUROC (binary: on P(class 1); else one-vs-rest macro)."""
    k = probs.shape[1]
    out = {
        "loss": F.nll_loss(probs.clamp_min(1e-12).log(), labels, weight=class_weights).item(),
        "accuracy": multiclass_accuracy(probs, labels, num_classes=k, average="micro").item(),
        "f1_macro": multiclass_f1_score(probs, labels, num_classes=k, average="macro").item(),
        "balanced_accuracy": multiclass_accuracy(probs, labels, num_classes=k, average="macro").item(),  # mean recall per class
    }
    if labels.unique().numel() >= 2:  # AUROC is undefined on a single class
        auroc = binary_auroc(probs[:, 1], labels) if k == 2 else multiclass_auroc(probs, labels, num_classes=k)
        out["auroc"] = auroc.item()
    return out


def attribution_auroc(w_text: torch.Tensor, modality: torch.Tensor) -> float | None:
    """How well w_text separates text-informative from tab-informative samples (0.5: no attribution)."""
    keep = (modality == TEXT) | (modality == TAB)
    target = (modality[keep] == TEXT).long()
    if target.unique().numel() < 2:
        return None
    return binary_auroc(w_text[keep].float(), target).item()


def modality_drops(model, encoded: tuple, batch: dict, probs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Drop in the true-class probability when the text, or the table, is replaced by an uninformative input.

    Uninformative text: no chunks at all. Uninformative table: every numeric value at its training mean and every
    category unknown (what the preprocessing maps missing values to). The same inputs as `model.blank_modalities`
    (what `model.modality_dropout` trains on), substituted after encoding. -> (drop_text, drop_tab), each (B,).
    """
    h_text, chunks, h_tab = encoded
    mask = batch["chunk_mask"]
    no_text = model.classify(torch.zeros_like(h_text), h_tab, torch.zeros_like(chunks), torch.zeros_like(mask))
    every = torch.ones_like(batch["label"], dtype=torch.bool)
    blank = blank_modalities(batch, ~every, every)
    null_tab = model.tab_encoder(blank["numeric"], blank["categorical"])
    no_tab = model.classify(h_text, null_tab, chunks, mask)
    label = batch["label"].unsqueeze(1)
    p_true = probs.gather(1, label).squeeze(1)
    p_no_text = no_text.logits.float().softmax(-1).gather(1, label).squeeze(1)
    p_no_tab = no_tab.logits.float().softmax(-1).gather(1, label).squeeze(1)
    return p_true - p_no_text, p_true - p_no_tab


def faithful_rows(w_text: torch.Tensor, drop_text: torch.Tensor, drop_tab: torch.Tensor) -> torch.Tensor:
    """Per sample (bool): removing the modality the weight prefers (w_text >= 0.5: text) hurts more than removing the
    other one. A tie is not faithful: the weight then points at a modality the prediction does not rest on more."""
    return torch.where(w_text >= 0.5, drop_text > drop_tab, drop_tab > drop_text)


def faithfulness(w_text: torch.Tensor, drop_text: torch.Tensor, drop_tab: torch.Tensor) -> float:
    """Share of samples where removing the modality the weights prefer hurts more than removing the other one."""
    return faithful_rows(w_text, drop_text, drop_tab).float().mean().item()
