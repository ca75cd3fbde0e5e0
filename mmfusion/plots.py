"""Figures of per-sample modality weights (matplotlib, headless)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

BINS = np.linspace(0.0, 1.0, 26)


def _hist(ax, groups: dict[str, np.ndarray], title: str) -> None:
    for name, values in groups.items():
        if len(values):
            ax.hist(values, bins=BINS, histtype="step", linewidth=1.8, density=True, label=f"{name} (n={len(values)})")
    ax.set_title(title)
    ax.set_xlabel("w_text (weight on the dialogue)")
    ax.set_ylabel("density")
    ax.set_xlim(0, 1)
    ax.legend(fontsize=8)


def router_weights_figure(by_split: dict[str, pd.DataFrame], fusion: str) -> plt.Figure:
    """Histograms of w_text by split, by true class and (synthetic data) by the truly informative modality."""
    test = by_split.get("test") if by_split.get("test") is not None and len(by_split["test"]) else by_split["val"]
    panels = 3 if "true_modality" in test.columns else 2
    fig, axes = plt.subplots(1, panels, figsize=(5.2 * panels, 4.2), constrained_layout=True)
    _hist(axes[0], {name: df["w_text"].to_numpy() for name, df in by_split.items()}, "w_text by split")
    _hist(axes[1], {f"class {c}": g["w_text"].to_numpy() for c, g in test.groupby("label")}, "w_text by true class (test)")
    if panels == 3:
        _hist(axes[2], {f"{m}-informative": g["w_text"].to_numpy() for m, g in test.groupby("true_modality")}, "w_text by informative modality (test)")
    fig.suptitle(f"Modality weights of '{fusion}'")
    return fig
