"""The figures of a comparison: metrics per variant across seeds, and the modality weight w_text per variant."""

from __future__ import annotations

import numpy as np
import pandas as pd

from mmfusion.analysis.compare.stats import Comparison


def metrics_figure(cmp: Comparison):
    """One panel per metric: bars = mean, error bars = 95% interval, dots = the seeds."""
    from mmfusion.analysis.plots import plt

    labels = cmp.summary["variant"].tolist()
    x = np.arange(len(labels))
    cols = min(3, len(cmp.metrics))
    rows = -(-len(cmp.metrics) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(max(4.5, 0.65 * len(labels) + 1.5) * cols, 4.2 * rows), squeeze=False, constrained_layout=True)
    for ax, metric in zip(axes.flat, cmp.metrics):
        s = cmp.summary
        mean = s[f"{metric}_mean"].to_numpy()
        err = np.vstack([mean - s[f"{metric}_ci_low"].to_numpy(), s[f"{metric}_ci_high"].to_numpy() - mean])
        colors = ["tab:orange" if v == cmp.baseline else "tab:blue" for v in labels]
        ax.bar(x, mean, yerr=np.nan_to_num(err), capsize=4, color=colors, alpha=0.75)
        for i, label in enumerate(labels):
            vals = cmp.runs.loc[cmp.runs["label"] == label, metric].dropna() if metric in cmp.runs else []
            ax.plot(np.full(len(vals), i), vals, "k.", markersize=5)
        ax.set_xticks(x, labels, rotation=35, ha="right", fontsize=8)
        ax.set_ylabel(metric)
        n = int(s[f"{metric}_n"].max())
        ax.set_title(f"{metric} ({n} seeds)", fontsize=10)
        seeds = cmp.runs[metric].dropna() if metric in cmp.runs else pd.Series(dtype=float)
        if len(seeds) and seeds.between(0.0, 1.0).all():  # a score in [0, 1]: show that range, intervals clipped to it
            low = np.nanmin(np.append(s[f"{metric}_ci_low"].to_numpy(), seeds.min()))
            ax.set_ylim(max(0.0, low - 0.05), 1.02)
    for ax in list(axes.flat)[len(cmp.metrics):]:
        ax.axis("off")
    if cmp.baseline:
        from matplotlib.patches import Patch

        fig.legend(handles=[Patch(color="tab:orange", alpha=0.75, label=f"baseline ({cmp.baseline})"), Patch(color="tab:blue", alpha=0.75, label="variant")], fontsize=8, loc="outside lower center", ncols=2)
    fig.suptitle("Fusion variants compared across seeds (bars: mean, whiskers: 95% interval of the mean, dots: seeds)")
    return fig


def weights_figure(weights: pd.DataFrame, order: list[str]):
    """w_text on the test set per variant (pooled over seeds), split by the truly informative modality if known."""
    from mmfusion.analysis.plots import plt

    groups = [("text", "tab:green"), ("tab", "tab:purple")] if "true_modality" in weights and weights["true_modality"].isin(["text", "tab"]).any() else [(None, "tab:blue")]
    fig, ax = plt.subplots(figsize=(max(6.0, 0.9 * len(order) + 2), 4.6), constrained_layout=True)
    width = 0.8 / len(groups)
    for k, (modality, color) in enumerate(groups):
        data, pos = [], []
        for i, label in enumerate(order):
            w = weights[(weights["label"] == label) & ((weights["true_modality"] == modality) if modality else True)]["w_text"].dropna().to_numpy()
            if len(w):
                data.append(w)
                pos.append(i + (k - (len(groups) - 1) / 2) * width)
        if data:
            parts = ax.violinplot(data, positions=pos, widths=width * 0.95, showmedians=True, showextrema=False)
            for body in parts["bodies"]:
                body.set_facecolor(color)
                body.set_alpha(0.55)
            parts["cmedians"].set_color("black")
        ax.plot([], [], color=color, linewidth=8, alpha=0.55, label=f"{modality}-informative samples" if modality else "all test samples")
    ax.set_xticks(range(len(order)), order, rotation=35, ha="right", fontsize=8)
    ax.set_ylim(-0.02, 1.02)
    ax.axhline(0.5, color="grey", linewidth=0.8, linestyle=":")
    ax.set_ylabel("w_text (weight on the dialogue)")
    ax.set_title("Modality weight w_text per variant\n(test set, all seeds pooled; black line: median)", fontsize=10)
    ax.legend(fontsize=8, loc="upper right")
    return fig
