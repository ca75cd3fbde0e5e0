"""Compare fusion variants across seeds: what `mmfusion compare` and `mmfusion zoo` report.

One row per variant: mean and 95% t-interval over seeds of each metric, parameter counts, training time and
throughput. Against a baseline (default `concat`) a paired t-test over seeds: runs are paired when they share the seed
*and* the data fingerprint, so both saw the same data, split, initial seed and batch order. The p-values are also
Holm-adjusted across variants (one family per metric), because a zoo asks the question once per variant.
"""

from __future__ import annotations

import logging
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
from scipy import stats

from mmfusion.tracking.artifacts import check_run_id
from mmfusion.errors import UserError
from mmfusion.tracking.contract import Tag

log = logging.getLogger(__name__)
COSTS = ["n_params", "n_trainable_params", "n_fusion_params", "train_seconds", "train_samples_per_second"]
LABEL_TAG, FUSION_TAG, FINGERPRINT_TAG = Tag.ZOO_LABEL, Tag.FUSION, Tag.DATA_FINGERPRINT
REPRODUCES_TAG, STUDY_TAG = Tag.REPRODUCES, Tag.STUDY


@dataclass
class Comparison:
    runs: pd.DataFrame  # one row per run: label, seed, run_id, fingerprint, metrics and costs
    summary: pd.DataFrame  # one row per variant: n, <m>_mean, <m>_ci_low, <m>_ci_high for every metric and cost
    tests: pd.DataFrame  # one row per (variant, metric): n_pairs, diff_mean, diff_ci_low/high, t, p, p_holm
    metrics: list[str]
    baseline: str | None
    notes: list[str] = field(default_factory=list)


# ---- finding runs ----------------------------------------------------------------------------------------------


def find_runs(*, experiment: str | None = None, parent: str | None = None, study: str | None = None, run_ids: list[str] | None = None) -> pd.DataFrame:
    """MLflow's `search_runs` frame of the runs to compare (exactly one source), training runs only."""
    if sum(x is not None for x in (experiment, parent, study, run_ids)) != 1:
        raise UserError("give exactly one of: an experiment, a parent run, a study or a list of run ids")
    if experiment is not None:
        if mlflow.get_experiment_by_name(experiment) is None:
            names = [e.name for e in mlflow.search_experiments()]
            raise UserError(f"no MLflow experiment {experiment!r} at {mlflow.get_tracking_uri()}; experiments: {', '.join(names) or 'none'}")
        df = mlflow.search_runs(experiment_names=[experiment])
    elif parent is not None:
        df = _children(check_run_id(parent, "--parent"))
        if df.empty:
            raise UserError(f"run {parent!r} has no child runs at {mlflow.get_tracking_uri()}")
    elif study is not None:
        # the study name never enters a filter string: every run with the tag, then an exact match here
        df = _search(f"tags.`{STUDY_TAG}` LIKE '%'")
        df = df[df[f"tags.{STUDY_TAG}"] == study] if not df.empty else df
        parents = df[~_has(df, FUSION_TAG)]["run_id"].tolist() if not df.empty else []
        if parents:  # the study's parent run(s): compare their trials
            df = pd.concat([df[_has(df, FUSION_TAG)], *[_children(p) for p in parents]]).drop_duplicates("run_id")
        if df.empty:
            raise UserError(f"no runs tagged {STUDY_TAG}={study!r} at {mlflow.get_tracking_uri()}")
    else:
        ids = ", ".join(f"'{check_run_id(r, '--runs')}'" for r in run_ids)  # validated: no quote can reach the filter
        df = _search(f"attributes.run_id IN ({ids})")
        missing = sorted(set(run_ids) - set(df["run_id"] if not df.empty else []))
        if missing:
            raise UserError(f"no such run(s) at {mlflow.get_tracking_uri()}: {', '.join(missing)}")
    return df[_has(df, FUSION_TAG)].reset_index(drop=True) if not df.empty else df


def _search(filter_string: str) -> pd.DataFrame:
    """search_runs over every experiment; the filter is built from validated ids and constants only."""
    try:
        return mlflow.search_runs(search_all_experiments=True, filter_string=filter_string)
    except mlflow.exceptions.MlflowException as err:
        raise UserError(f"cannot search the runs at {mlflow.get_tracking_uri()} ({str(err).splitlines()[0][:300]})") from None


def _children(parent: str) -> pd.DataFrame:
    return _search(f"tags.mlflow.parentRunId = '{parent}'")


def _has(df: pd.DataFrame, tag: str) -> pd.Series:
    col = f"tags.{tag}"
    return df[col].notna() if col in df.columns else pd.Series(False, index=df.index)


def runs_table(df: pd.DataFrame, *, group_by: str | None = None, include_reproductions: bool = False, latest_per_seed: bool = True, notes: list[str] | None = None) -> pd.DataFrame:
    """search_runs frame -> rows: label, seed, run_id, fingerprint, metrics. `latest_per_seed`: one run per (variant,
    seed), the latest (a rerun replaces a run); false keeps them all (a study's trials share a seed)."""
    notes = notes if notes is not None else []
    if df.empty:
        raise UserError("no finished training runs to compare")
    if not include_reproductions and f"tags.{REPRODUCES_TAG}" in df.columns:
        repro = df[f"tags.{REPRODUCES_TAG}"].notna()
        if repro.any():
            notes.append(f"{int(repro.sum())} reproduction run(s) left out (they repeat a run, they are not new seeds)")
        df = df[~repro]
    unfinished = df["status"] != "FINISHED"
    if unfinished.any():
        notes.append(f"{int(unfinished.sum())} run(s) not FINISHED left out")
        df = df[~unfinished]
    if df.empty:
        raise UserError("no finished training runs to compare")
    if group_by is not None:
        if group_by not in df.columns:
            raise UserError(f"--group-by {group_by!r} is not a column of these runs; e.g. params.model.fusion, tags.mmfusion.fusion")
        label = df[group_by].astype(str)
    else:
        label = df[f"tags.{LABEL_TAG}"].fillna(df[f"tags.{FUSION_TAG}"]) if f"tags.{LABEL_TAG}" in df.columns else df[f"tags.{FUSION_TAG}"]
    missing = pd.Series(None, index=df.index, dtype=object)
    out = pd.DataFrame({
        "label": label.astype(str).to_numpy(),
        "seed": pd.to_numeric(df.get("params.seed", missing), errors="coerce").to_numpy(),
        "run_id": df["run_id"].to_numpy(),
        "start_time": df["start_time"].to_numpy(),
        "fingerprint": df.get(f"tags.{FINGERPRINT_TAG}", missing).to_numpy(),
    })
    for col in df.columns:
        if col.startswith("metrics."):
            out[col.removeprefix("metrics.")] = pd.to_numeric(df[col], errors="coerce").to_numpy()
    out = out.sort_values("start_time")
    dup = out.duplicated(["label", "seed"], keep="last") & out["seed"].notna() & latest_per_seed
    if dup.any():
        notes.append(f"{int(dup.sum())} older run(s) with the same variant and seed left out (the latest is kept)")
    return out[~dup].drop(columns="start_time").sort_values(["label", "seed"]).reset_index(drop=True)


# ---- statistics ------------------------------------------------------------------------------------------------


def interval(values) -> tuple[float, float, float, int]:
    """-> (mean, low, high, n): the 95% Student-t interval of the mean; low = high = NaN below two values."""
    x = np.asarray(values, dtype=float)
    x = x[~np.isnan(x)]
    n = len(x)
    if n == 0:
        return np.nan, np.nan, np.nan, 0
    mean = float(x.mean())
    if n < 2:
        return mean, np.nan, np.nan, 1
    half = float(stats.t.ppf(0.975, n - 1) * x.std(ddof=1) / np.sqrt(n))
    return mean, mean - half, mean + half, n


def holm(p: pd.Series) -> pd.Series:
    """Holm-Bonferroni adjusted p-values (NaN stays NaN)."""
    valid = p.dropna().sort_values()
    m = len(valid)
    adjusted = np.minimum(1.0, np.maximum.accumulate((m - np.arange(m)) * valid.to_numpy()))
    return pd.Series(adjusted, index=valid.index).reindex(p.index)


def paired_test(diffs) -> tuple[float, float]:
    """-> (t, two-sided p) of a paired t-test on the differences; differences that never vary give p = 1 or 0."""
    d = np.asarray(diffs, dtype=float)
    if len(d) < 2:
        return np.nan, np.nan
    if np.allclose(d, d[0], rtol=0.0, atol=1e-12):
        return (np.nan, 1.0) if abs(d[0]) < 1e-12 else (np.copysign(np.inf, d[0]), 0.0)
    res = stats.ttest_1samp(d, 0.0)  # = ttest_rel(variant, baseline) on the pairs
    return float(res.statistic), float(res.pvalue)


def summarize(runs: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    rows = []
    for label, group in runs.groupby("label", sort=False):
        row = {"variant": label, "n_runs": len(group), "seeds": ",".join(str(int(s)) for s in group["seed"].dropna())}
        for col in columns:
            mean, low, high, n = interval(group[col]) if col in group else (np.nan, np.nan, np.nan, 0)
            row.update({f"{col}_mean": mean, f"{col}_ci_low": low, f"{col}_ci_high": high, f"{col}_n": n})
        rows.append(row)
    return pd.DataFrame(rows)


def paired_tests(runs: pd.DataFrame, metrics: list[str], baseline: str, notes: list[str]) -> pd.DataFrame:
    base = runs[runs["label"] == baseline].dropna(subset=["seed"])
    rows = []
    for label, group in runs.groupby("label", sort=False):
        if label == baseline:
            continue
        if group["seed"].dropna().duplicated().any() or base["seed"].duplicated().any():
            notes.append(f"{label}: several runs share a seed, so runs cannot be paired: no paired test")
            continue
        pairs = group.dropna(subset=["seed"]).merge(base, on="seed", suffixes=("", "_base"))
        mismatch = pairs["fingerprint"] != pairs["fingerprint_base"]
        if mismatch.any():
            notes.append(f"{label}: {int(mismatch.sum())} seed(s) left out of the paired test: different data than {baseline} with the same seed")
            pairs = pairs[~mismatch]
        for metric in metrics:
            if metric not in pairs or f"{metric}_base" not in pairs:
                continue
            d = (pairs[metric] - pairs[f"{metric}_base"]).dropna()
            mean, low, high, n = interval(d)
            t, p = paired_test(d)
            rows.append({"variant": label, "metric": metric, "n_pairs": n, "diff_mean": mean, "diff_ci_low": low, "diff_ci_high": high, "t": t, "p": p})
    tests = pd.DataFrame(rows, columns=["variant", "metric", "n_pairs", "diff_mean", "diff_ci_low", "diff_ci_high", "t", "p"])
    tests["p_holm"] = tests.groupby("metric")["p"].transform(holm) if len(tests) else pd.Series(dtype=float)
    return tests


def compare(runs: pd.DataFrame, metrics: list[str] | None = None, baseline: str | None = "concat", notes: list[str] | None = None) -> Comparison:
    """`runs` from `runs_table`; `metrics` default: every test_* metric the runs have (loss last)."""
    notes = list(notes or [])
    if metrics is None:
        metrics = sorted((c for c in runs.columns if c.startswith("test_")), key=lambda c: (c == "test_loss", c))
    absent = [m for m in metrics if m not in runs.columns]
    if absent:
        notes.append(f"no run logged {', '.join(absent)}")
    metrics = [m for m in metrics if m in runs.columns]
    if not metrics:
        raise UserError(f"none of the requested metrics was logged; the runs have: {', '.join(c for c in runs.columns if c.startswith(('val_', 'test_')))}")
    summary = summarize(runs, metrics + [c for c in COSTS if c in runs.columns])
    if baseline is not None and baseline not in set(runs["label"]):
        notes.append(f"baseline {baseline!r} is not among the variants: no paired tests")
        baseline = None
    tests = paired_tests(runs, metrics, baseline, notes) if baseline else pd.DataFrame()
    return Comparison(runs, summary, tests, metrics, baseline, notes)


# ---- tables ----------------------------------------------------------------------------------------------------


def _pm(row: pd.Series, col: str, digits: int = 3) -> str:
    mean, low, high, n = row.get(f"{col}_mean"), row.get(f"{col}_ci_low"), row.get(f"{col}_ci_high"), row.get(f"{col}_n", 0)
    if n == 0 or pd.isna(mean):
        return "—"
    return f"{mean:.{digits}f} ± {(high - low) / 2:.{digits}f}" if n > 1 else f"{mean:.{digits}f} (n=1)"


def to_markdown(cmp: Comparison) -> str:
    s = cmp.summary
    head = ["variant", "seeds", *cmp.metrics]
    costs = [(c, name, d) for c, name, d in (("n_fusion_params", "fusion params", 0), ("n_trainable_params", "trainable params", 0), ("train_seconds", "train s", 1), ("train_samples_per_second", "samples/s", 0)) if f"{c}_mean" in s]
    lines = ["| " + " | ".join(head + [name for _, name, _ in costs]) + " |", "|" + "---|" * (len(head) + len(costs))]
    for _, row in s.iterrows():
        cells = [f"**{row['variant']}**" if row["variant"] == cmp.baseline else row["variant"], str(row["n_runs"]), *[_pm(row, m) for m in cmp.metrics]]
        cells += [f"{row[f'{c}_mean']:,.{d}f}" if pd.notna(row[f"{c}_mean"]) else "—" for c, _, d in costs]
        lines.append("| " + " | ".join(cells) + " |")
    out = ["Mean ± half-width of the 95% t-interval over seeds; training time and throughput (training samples per second of `fit`, validation included) are means.", "", *lines]
    if cmp.baseline and len(cmp.tests):
        t = cmp.tests
        out += ["", f"Paired t-test against **{cmp.baseline}** (pairs: same seed and same data): mean difference ± half-width of its 95% interval (two-sided p, Holm-adjusted across variants); * where the adjusted p < 0.05.", ""]
        out += ["| variant | pairs | " + " | ".join(cmp.metrics) + " |", "|" + "---|" * (len(cmp.metrics) + 2)]
        for label, g in t.groupby("variant", sort=False):
            by = g.set_index("metric")
            cells = [label, str(int(by["n_pairs"].max()))]
            for m in cmp.metrics:
                if m not in by.index or by.loc[m, "n_pairs"] == 0:
                    cells.append("—")
                    continue
                r = by.loc[m]
                ci = f" ± {(r.diff_ci_high - r.diff_ci_low) / 2:.3f}" if pd.notna(r.diff_ci_low) else ""
                p = f" (p={r.p:.2g}, Holm {r.p_holm:.2g}){'*' if r.p_holm < 0.05 else ''}" if pd.notna(r.p) else ""
                cells.append(f"{r.diff_mean:+.3f}{ci}{p}")
            out.append("| " + " | ".join(cells) + " |")
    if cmp.notes:
        out += ["", *[f"- note: {n}" for n in cmp.notes]]
    return "\n".join(out) + "\n"


# ---- figures ---------------------------------------------------------------------------------------------------


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


def weights_frame(runs: pd.DataFrame, dst: Path) -> pd.DataFrame:
    """Every run's test predictions (w_text, true_modality) with its variant label."""
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # one bar per run is noise here
    frames = []
    for row in runs.itertuples():
        try:
            path = mlflow.artifacts.download_artifacts(run_id=row.run_id, artifact_path="predictions/test.csv", dst_path=str(dst / row.run_id))
        except Exception as err:  # an old or failed run without predictions: leave it out of the figure
            log.warning("run %s: no predictions/test.csv (%s)", row.run_id, str(err).splitlines()[0])
            continue
        cols = ["w_text", "true_modality"]
        df = pd.read_csv(path)
        frames.append(df[[c for c in cols if c in df.columns]].assign(label=row.label, seed=row.seed))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["w_text", "label", "seed"])


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


# ---- writing and logging ---------------------------------------------------------------------------------------


def write(cmp: Comparison, out_dir: str | Path, weights: pd.DataFrame | None = None) -> list[Path]:
    """comparison.md, summary.csv, tests.csv, runs.csv, metrics.png and (with predictions) w_text.png."""
    from mmfusion.analysis.plots import plt

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"md": out / "comparison.md", "summary": out / "summary.csv", "tests": out / "tests.csv", "runs": out / "runs.csv", "metrics": out / "metrics.png"}
    paths["md"].write_text(to_markdown(cmp))
    cmp.summary.to_csv(paths["summary"], index=False)
    cmp.tests.to_csv(paths["tests"], index=False)
    cmp.runs.to_csv(paths["runs"], index=False)
    for key, fig in (("metrics", metrics_figure(cmp)),) + ((("w_text", weights_figure(weights, cmp.summary["variant"].tolist())),) if weights is not None and len(weights) else ()):
        paths[key] = out / f"{key}.png"
        fig.savefig(paths[key], dpi=120)
        plt.close(fig)
    return list(paths.values())


def run_comparison(runs: pd.DataFrame, out_dir: str | Path, metrics: list[str] | None = None, baseline: str | None = "concat", notes: list[str] | None = None, with_weights: bool = True) -> tuple[Comparison, list[Path]]:
    cmp = compare(runs, metrics, baseline, notes)
    with tempfile.TemporaryDirectory() as tmp:
        weights = weights_frame(cmp.runs, Path(tmp)) if with_weights else None
    return cmp, write(cmp, out_dir, weights)


def log_comparison(out_dir: str | Path, cmp: Comparison, into_run: str | None = None) -> str:
    """Log the folder as `comparison/` of `into_run` (a zoo's parent), else of a new run beside the first compared one."""
    client = mlflow.MlflowClient()
    if into_run is not None:
        client.log_artifacts(into_run, str(out_dir), "comparison")
        return into_run
    experiment_id = client.get_run(cmp.runs["run_id"].iloc[0]).info.experiment_id
    run = client.create_run(experiment_id, run_name="compare", tags={Tag.KIND: "comparison", Tag.COMPARED_RUNS: ",".join(cmp.runs["run_id"])[:5000]})
    try:
        client.log_artifacts(run.info.run_id, str(out_dir), "comparison")
    except BaseException:
        client.set_terminated(run.info.run_id, "FAILED")
        raise
    client.set_terminated(run.info.run_id, "FINISHED")
    return run.info.run_id
