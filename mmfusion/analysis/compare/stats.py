"""The statistics of a comparison: per-variant means with 95% t-intervals, and paired t-tests against a baseline
(Holm-adjusted across variants)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy import stats

from mmfusion.errors import UserError

COSTS = ["n_params", "n_trainable_params", "n_fusion_params", "train_seconds", "train_samples_per_second"]


@dataclass
class Comparison:
    runs: pd.DataFrame  # one row per run: label, seed, run_id, fingerprint, metrics and costs
    summary: pd.DataFrame  # one row per variant: n, <m>_mean, <m>_ci_low, <m>_ci_high for every metric and cost
    tests: pd.DataFrame  # one row per (variant, metric): n_pairs, diff_mean, diff_ci_low/high, t, p, p_holm
    metrics: list[str]
    baseline: str | None
    notes: list[str] = field(default_factory=list)


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
