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


# ---- figures `train` logs beside router_weights.png, and `inspect` embeds in its report -------------------------


def correctness_figure(by_split: dict[str, pd.DataFrame], fusion: str) -> plt.Figure:
    """Histograms of w_text for correct vs wrong predictions, one panel per evaluated split."""
    splits = [s for s in ("val", "test") if by_split.get(s) is not None and len(by_split[s])]
    fig, axes = plt.subplots(1, max(1, len(splits)), figsize=(5.2 * max(1, len(splits)), 4.2), constrained_layout=True, squeeze=False)
    for ax, split in zip(axes[0], splits):
        df = by_split[split]
        right = df["label"].astype(str) == df["pred"].astype(str)
        _hist(ax, {"correct": df.loc[right, "w_text"].to_numpy(), "wrong": df.loc[~right, "w_text"].to_numpy()}, f"w_text, correct vs wrong ({split})")
    fig.suptitle(f"Does '{fusion}' lean differently when it errs?")
    return fig


def epochs_figure(epoch_weights: list[np.ndarray], fusion: str) -> plt.Figure:
    """How the validation w_text distribution moved over the epochs: a box per epoch, with the mean as a line."""
    values = [np.asarray(w, dtype=float) for w in epoch_weights]
    epochs = np.arange(1, len(values) + 1)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.6 * len(values) + 3.5), 4.2), constrained_layout=True)
    box = ax.boxplot(values, positions=epochs, widths=0.5, showfliers=False, patch_artist=True, boxprops={"facecolor": "tab:blue", "alpha": 0.35})
    box["boxes"][0].set_label("quartiles (whiskers: 1.5 IQR)")
    ax.plot(epochs, [v.mean() for v in values], marker="o", color="tab:red", label="mean")
    ax.set_ylim(0, 1)
    ax.set_xlabel("epoch")
    ax.set_ylabel("w_text (validation split)")
    ax.set_title(f"How the weights of '{fusion}' moved over the epochs")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.15), ncol=2, fontsize=8)  # below the axes: never over data
    return fig


def expert_load_figure(by_split: dict[str, pd.DataFrame], fusion: str, modalities: list[str] | None = None) -> plt.Figure:
    """Mixture of experts: mean routing weight and top-1 share per expert, per split; `modalities`: what each expert
    reads (the variant's `expert_modalities`), shown under its number."""
    splits = [s for s in ("train", "val", "test") if by_split.get(s) is not None and len(by_split[s])]
    experts = [c for c in by_split[splits[0]].columns if c.startswith("expert_")]
    n = len(experts)
    fig, axes = plt.subplots(1, 2, figsize=(max(9.0, 1.2 * n * len(splits) / 2 + 6), 4.2), constrained_layout=True)
    width = 0.8 / len(splits)
    x = np.arange(n)
    for i, split in enumerate(splits):
        g = by_split[split][experts].to_numpy()
        axes[0].bar(x + i * width, g.mean(0), width, label=split)
        axes[1].bar(x + i * width, np.bincount(g.argmax(1), minlength=n) / len(g), width, label=split)
    reads = {"text": "text", "tab": "table"}
    labels = [e.split("_")[1] + (f"\n{reads.get(modalities[k], modalities[k])}" if modalities and k < len(modalities) else "") for k, e in enumerate(experts)]
    for ax, what in zip(axes, ("mean routing weight", "share of samples (top-1 expert)")):
        ax.set_xticks(x + width * (len(splits) - 1) / 2, labels)
        ax.axhline(1.0 / n, color="grey", linestyle="--", linewidth=1, label="uniform")
        ax.set_xlabel("expert (and the modality it reads)")
        ax.set_ylabel(what)
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.22), ncol=len(splits) + 1, fontsize=8)
    axes[0].set_title("Expert load: mean weight")
    axes[1].set_title("Expert load: top-1 picks")
    fig.suptitle(f"Per-expert load of '{fusion}'")
    return fig


def dimensions_figure(mean: np.ndarray, std: np.ndarray, fusion: str, split: str, name: str = "gate") -> plt.Figure:
    """A per-dimension diagnostic of a variant (gate: g_d, the weight on the text projection): its mean per fused
    dimension over the samples, with its spread."""
    d = np.arange(len(mean))
    fig, ax = plt.subplots(figsize=(max(6.0, 0.12 * len(mean) + 4), 4.2), constrained_layout=True)
    ax.bar(d, mean, yerr=std, color="tab:blue", ecolor="grey", capsize=0, label=f"mean {name} (± std over samples)")
    ax.axhline(float(np.mean(mean)), color="tab:red", linestyle="--", label=f"w_text = mean over dimensions ({np.mean(mean):.2f})")
    ax.set_ylim(0, 1)
    ax.set_xlabel("fused dimension")
    ax.set_ylabel(f"{name} (1: text, 0: table)")
    ax.set_title(f"Mean {name} per dimension of '{fusion}' ({split})")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.15), ncol=2, fontsize=8)
    return fig
