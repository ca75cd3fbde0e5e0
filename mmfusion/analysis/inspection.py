"""Inspecting per-sample modality weights: the plots every run logs, and the report `mmfusion inspect` builds.

A report reads a run back from MLflow (predictions, config, preprocessing, plots) plus the data the config names,
and holds: the samples that leaned most on the text and on the table (with a dialogue snippet and the strongest
tabular values), w_text statistics per class (and per truly informative modality on synthetic data, with
`attribution_auroc`), and the run's plots. rendering.py prints it (`format_text`) or makes one page (`to_html`).
"""

from __future__ import annotations

import io
import tempfile
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import mlflow
import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader

from mmfusion.analysis import plots
from mmfusion.analysis.text_columns import column_summary, describe_shares, log_column_shares, share_columns
from mmfusion.data.datamodule import SplitDataset, collate, fingerprint, load_frames, used_columns
from mmfusion.data.tabular import TabularPreprocessor
from mmfusion.errors import DataError
from mmfusion.fusion import FUSIONS
from mmfusion.modeling.metrics import attribution_auroc
from mmfusion.modeling.module import MODEL_INPUTS
from mmfusion.tracking.artifacts import get_run, reading
from mmfusion.tracking.contract import MODALITY_CODES, UNKNOWN_MODALITY, Artifact, Tag
from mmfusion.tracking.runs import config_of_run

if TYPE_CHECKING:
    from mmfusion.config import Config
    from mmfusion.data.datamodule import PreparedData, Split
    from mmfusion.modeling.module import FusionClassifierModule
    from mmfusion.modeling.classifier import MultimodalClassifier

plt = plots.plt  # pyplot, after `plots` chose the Agg backend
SNIPPET_CHARS = 100


# ---- plots logged by every run -----------------------------------------------------------------------------------


def fusion_diagnostics(model: "MultimodalClassifier", split: "Split", pad_id: int, batch_size: int = 64) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The variant's per-sample diagnostics (`Fusion.diagnostics`, e.g. gate's g) over a split: name -> per dimension,
    mean and std over the samples, (D,), (D,). Empty for a variant without any."""



    found: dict[str, list[torch.Tensor]] = {}
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for batch in DataLoader(SplitDataset(split), batch_size=batch_size, collate_fn=partial(collate, pad_id=pad_id)):
                x = [batch[k].to(device) if batch.get(k) is not None else None for k in MODEL_INPUTS]
                h_text, chunks, h_tab = model.encode(*x)
                for name, value in model.fusion.diagnostics(h_text, h_tab, chunks, x[2]).items():
                    found.setdefault(name, []).append(value.float().cpu())
    finally:
        model.train(was_training)
    return {name: (torch.cat(v).numpy().mean(0), torch.cat(v).numpy().std(0)) for name, v in found.items()}


def expert_modalities(model_cfg) -> list[str] | None:
    """The modality each expert of the configured variant reads (None: not a mixture of experts)."""

    variant = FUSIONS.get(model_cfg.fusion)
    return variant.expert_modalities(variant.Options.model_validate(model_cfg.fusion_options))


def weight_figures(frames: dict[str, pd.DataFrame], fusion: str, epoch_weights: list | None = None, diagnostics: dict | None = None, experts: list[str] | None = None) -> dict:
    """name -> matplotlib figure, beside router_weights.png (by split, class, informative modality). `diagnostics`:
    name -> (mean, std, split) per dimension; `experts`: the modality each expert reads."""

    figures = {"w_text_correct_vs_wrong": plots.correctness_figure(frames, fusion)}
    if epoch_weights:
        figures["w_text_over_epochs"] = plots.epochs_figure([np.asarray(w) for w in epoch_weights], fusion)
    if any(c.startswith("expert_") for c in next(iter(frames.values())).columns):
        figures["expert_load"] = plots.expert_load_figure(frames, fusion, experts)
    for name, (mean, std, split) in (diagnostics or {}).items():
        figures[f"{name}_by_dimension"] = plots.dimensions_figure(mean, std, fusion, split, name)
    return figures


def log_weight_plots(cfg: "Config", frames: dict[str, pd.DataFrame], module: "FusionClassifierModule", data: "PreparedData", pad_id: int) -> list[str]:
    """Log the modality-weight figures to the active MLflow run under plots/ (and, with several text columns, each
    sample's per-column shares under text_columns/); -> the artifact paths."""

    split = "test" if len(data.splits["test"].ids) else "val"
    found = fusion_diagnostics(module.model, data.splits[split], pad_id, cfg.trainer.eval_batch_size)
    diagnostics = {name: (mean, std, split) for name, (mean, std) in found.items()}
    logged = []
    epoch_weights = [w.cpu().numpy() for w in module.epoch_weights]
    for name, fig in weight_figures(frames, cfg.model.fusion, epoch_weights, diagnostics, expert_modalities(cfg.model)).items():
        mlflow.log_figure(fig, f"plots/{name}.png")
        plt.close(fig)
        logged.append(f"plots/{name}.png")
    return logged + log_column_shares(module.model, data, pad_id, cfg.trainer.eval_batch_size)


# ---- the report ----------------------------------------------------------------------------------------------------


@dataclass
class Report:
    run_id: str
    fusion: str
    split: str  # the split the tables describe (test, or val when there is no test split)
    metrics: dict[str, float]
    top_text: pd.DataFrame  # samples that leaned most on the dialogue
    top_tab: pd.DataFrame  # samples that leaned most on the table
    per_class: pd.DataFrame
    per_modality: pd.DataFrame | None  # synthetic data: by the truly informative modality
    attribution_auroc: float | None
    per_text_column: pd.DataFrame | None = None  # several text columns: which column's chunks the samples leaned on
    plots: dict[str, bytes] = field(default_factory=dict)  # name -> PNG
    notes: list[str] = field(default_factory=list)


def _snippet(text) -> str:
    if text is None or (isinstance(text, float) and np.isnan(text)):
        return "(no text)"
    flat = " / ".join(line.strip() for line in str(text).splitlines() if line.strip())
    return flat if len(flat) <= SNIPPET_CHARS else flat[: SNIPPET_CHARS - 1] + "…"


def strongest_tabular(rows: pd.DataFrame, pre: "TabularPreprocessor", k: int = 3) -> pd.Series:
    """Per row, the k numeric values furthest from the training mean (in standard deviations, after the column's
    transform: what the model sees); categories fill in."""
    cols = list(pre.numeric)
    if cols:
        values = rows[cols].apply(pd.to_numeric, errors="coerce").to_numpy(float)
        z = np.stack([pre.scores(c, values[:, j]) for j, c in enumerate(cols)], axis=1)
    out = []
    for i in range(len(rows)):
        parts = []
        if cols:
            order = [j for j in np.argsort(-np.nan_to_num(np.abs(z[i]), nan=-1.0)) if not np.isnan(z[i, j])][:k]
            parts = [f"{cols[j]}={values[i, j]:.4g} (z={z[i, j]:+.1f})" for j in order]
        parts += [f"{c}={rows[c].iloc[i]}" for c in pre.categorical if pd.notna(rows[c].iloc[i])][: k - len(parts)]
        out.append(", ".join(parts) or "(none)")
    return pd.Series(out, index=rows.index)


def source_rows(cfg: "Config", fingerprint_tag: str | None) -> tuple[pd.DataFrame | None, list[str]]:
    """The raw rows the run was trained on, indexed by the id its predictions carry (as prepare_data assigns them)."""

    try:
        seed = cfg.data.split_seed if getattr(cfg.data, "split_seed", None) is not None else cfg.seed  # as prepare_data
        frame, test, cols = load_frames(cfg.data, seed)
    except DataError as err:
        return None, [f"the run's data could not be read, so no snippets are shown ({err})"]
    frame = frame.reset_index(drop=True)
    if cols["id"] is None:
        frame = frame.assign(id=[f"row{i}" for i in range(len(frame))])
        test = test.assign(id=[f"test_row{i}" for i in range(len(test))]) if test is not None else None
        cols["id"] = "id"
    notes = []
    if fingerprint_tag and fingerprint([frame, test], used_columns(cols)) != fingerprint_tag:  # every text column, as prepare_data
        notes.append("the data at the run's data path changed since training: snippets and tabular values may not match")
    rows = pd.concat([f for f in (frame, test) if f is not None], ignore_index=True)
    rows.index = rows[cols["id"]].astype(str)
    return rows[~rows.index.duplicated()], notes


def class_summary(frame: pd.DataFrame, by: str = "label") -> pd.DataFrame:
    """w_text statistics and accuracy per group (true class, or truly informative modality)."""
    right = frame["label"].astype(str) == frame["pred"].astype(str)
    g = frame.assign(correct=right, leans_text=frame["w_text"] > 0.5).groupby(by)
    out = pd.DataFrame({
        "n": g.size(),
        "accuracy": g["correct"].mean(),
        "w_text_mean": g["w_text"].mean(),
        "w_text_median": g["w_text"].median(),
        "w_text_std": g["w_text"].std(ddof=0),
        "w_text_q10": g["w_text"].quantile(0.1),
        "w_text_q90": g["w_text"].quantile(0.9),
        "share_leaning_text": g["leans_text"].mean(),
    })
    if "faithful" in frame.columns:  # runs logged before the per-sample check have no such column
        out["faithfulness"] = g["faithful"].mean()
    return out.reset_index()


def modality_auroc(frame: pd.DataFrame) -> float | None:
    """Synthetic data: how well w_text separates text-informative from tab-informative samples (0.5: no attribution)."""
    if "true_modality" not in frame.columns:
        return None


    codes = torch.tensor(frame["true_modality"].map(MODALITY_CODES).fillna(UNKNOWN_MODALITY).to_numpy(np.int64))
    return attribution_auroc(torch.tensor(frame["w_text"].to_numpy(np.float32)), codes)


def top_samples(frame: pd.DataFrame, rows: pd.DataFrame | None, pre: "TabularPreprocessor", n: int, modality: str) -> pd.DataFrame:
    """The n samples with the highest w_text (modality='text') or w_tab ('tab')."""
    top = frame.sort_values("w_text" if modality == "text" else "w_tab", ascending=False, kind="stable").head(n)
    out = top[["id", "label", "pred", "w_text", "w_tab"]].copy()
    for col in ("faithful", "true_modality"):
        if col in top.columns:
            out[col] = top[col]
    if share_columns(top):
        out["text_shares"] = describe_shares(top).to_numpy()
    if rows is not None:
        found = rows.reindex(top["id"].astype(str))
        out["dialogue"] = [_snippet(t) if ok else "(id not in data)" for t, ok in zip(found[pre.text_column], found.index.isin(rows.index))]
        out["strongest_tabular"] = strongest_tabular(found, pre).to_numpy() if len(found) else []
    return out.reset_index(drop=True)


def build_report(run_id: str, top: int = 10) -> Report:
    """Read a run back from the active MLflow tracking store and assemble its report."""


    client = mlflow.MlflowClient()
    run = get_run(run_id, client)
    where = f"run {run_id}"
    with tempfile.TemporaryDirectory() as tmp:
        download = lambda path: Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=path, dst_path=tmp))  # noqa: E731
        with reading(where, "predictions/"):
            pred_dir = download("predictions")
        with reading(where, "preprocessing.json"):
            pre_file = download("preprocessing.json")
        pre = TabularPreprocessor.load(pre_file, where)
        frames = {}
        for p in sorted(pred_dir.glob("*.csv")):
            with reading(where, f"predictions/{p.name}"):
                frames[p.stem] = pd.read_csv(p, dtype={"id": str, "label": str, "pred": str})
                missing = [c for c in ("id", "label", "pred", "w_text", "w_tab") if c not in frames[p.stem].columns]
                if missing:
                    raise ValueError(f"no column(s) {', '.join(missing)}")
        listed = {a.path for a in client.list_artifacts(run_id)}
        if Artifact.TEXT_COLUMNS_DIR in listed:  # runs with several text columns
            with reading(where, f"{Artifact.TEXT_COLUMNS_DIR}/"):
                shares_dir = download(Artifact.TEXT_COLUMNS_DIR)
                for p in sorted(shares_dir.glob("*.csv")):
                    if p.stem in frames:
                        frames[p.stem] = frames[p.stem].merge(pd.read_csv(p, dtype={"id": str}), on="id", how="left")
        png = {}
        with reading(where, "plots/"):
            if any(a.path == "plots" for a in client.list_artifacts(run_id)):
                png = {p.stem: p.read_bytes() for p in sorted(download("plots").glob("*.png"))}
    cfg = config_of_run(run_id, client=client)  # the one reader of a run's config
    split = "test" if len(frames.get("test", [])) else "val"
    if split not in frames:
        raise DataError(f"run {run_id}: no predictions/test.csv or predictions/val.csv")
    frame = frames[split]
    rows, notes = source_rows(cfg, run.data.tags.get(Tag.DATA_FINGERPRINT))
    if not png:  # an older run without logged plots: draw what the predictions allow

        figs = {"router_weights": plots.router_weights_figure(frames, cfg.model.fusion), **weight_figures(frames, cfg.model.fusion, experts=expert_modalities(cfg.model))}
        for name, fig in figs.items():
            buf = io.BytesIO()
            fig.savefig(buf, format="png", dpi=100)
            png[name] = buf.getvalue()
            plots.plt.close(fig)
    per_modality = class_summary(frame, "true_modality") if "true_modality" in frame.columns else None
    if share_columns(frame) and cfg.model.chunk_pooling == "mean" and cfg.model.column_pooling == "joint":
        notes.append("model.chunk_pooling=mean: every chunk weighs the same, so the text-column shares are only each column's fraction of the chunks")
    return Report(
        run_id=run_id,
        fusion=cfg.model.fusion,
        split=split,
        metrics={k: v for k, v in sorted(run.data.metrics.items()) if k.startswith(split + "_") or k.startswith("onnx")},
        top_text=top_samples(frame, rows, pre, top, "text"),
        top_tab=top_samples(frame, rows, pre, top, "tab"),
        per_class=class_summary(frame),
        per_modality=per_modality,
        per_text_column=column_summary(frame) if share_columns(frame) else None,
        attribution_auroc=modality_auroc(frame),
        plots=png,
        notes=notes,
    )


from mmfusion.analysis.rendering import format_text, to_html, write_report  # noqa: E402,F401  (where callers import them)
