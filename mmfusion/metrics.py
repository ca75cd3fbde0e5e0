"""Evaluation metrics over de-duplicated, gathered predictions (torchmetrics' functional API)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torchmetrics.functional.classification import binary_auroc, multiclass_accuracy, multiclass_auroc, multiclass_f1_score

TEXT, TAB = 1, 0  # modality codes (see data.datamodule.MODALITY_CODES)


def classification_metrics(probs: torch.Tensor, labels: torch.Tensor, class_weights: torch.Tensor | None = None) -> dict[str, float]:
    """probs (N, K), labels (N,) -> loss, accuracy, macro-F1, AUROC (binary: on P(class 1); else one-vs-rest macro)."""
    k = probs.shape[1]
    out = {
        "loss": F.nll_loss(probs.clamp_min(1e-12).log(), labels, weight=class_weights).item(),
        "accuracy": multiclass_accuracy(probs, labels, num_classes=k, average="micro").item(),
        "f1_macro": multiclass_f1_score(probs, labels, num_classes=k, average="macro").item(),
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
