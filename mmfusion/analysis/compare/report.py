"""The outputs of a comparison: the markdown table, the folder of tables and figures, and logging it to MLflow."""

from __future__ import annotations

import tempfile
from pathlib import Path

import mlflow
import pandas as pd

from mmfusion.analysis.compare.figures import metrics_figure, weights_figure
from mmfusion.analysis.compare.runs import weights_frame
from mmfusion.analysis.compare.stats import Comparison, compare
from mmfusion.tracking.contract import Tag


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
