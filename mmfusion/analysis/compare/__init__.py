"""Compare fusion variants across seeds: what `mmfusion compare` and `mmfusion zoo` report.

One row per variant: mean and 95% t-interval over seeds of each metric, parameter counts, training time and
throughput. Against a baseline (default `concat`) a paired t-test over seeds: runs are paired when they share the seed
*and* the data fingerprint, so both saw the same data, split, initial seed and batch order. The p-values are also
Holm-adjusted across variants (one family per metric), because a zoo asks the question once per variant.

    runs.py     find_runs, runs_table, weights_frame: the runs to compare, one row each, and their predictions
    stats.py    compare -> Comparison: intervals, paired tests, Holm adjustment
    figures.py  metrics_figure, weights_figure
    report.py   to_markdown, write, run_comparison, log_comparison: the outputs, on disk and in MLflow
"""

from mmfusion.analysis.compare.figures import metrics_figure, weights_figure
from mmfusion.analysis.compare.report import log_comparison, run_comparison, to_markdown, write
from mmfusion.analysis.compare.runs import find_runs, runs_table, weights_frame
from mmfusion.analysis.compare.stats import COSTS, Comparison, compare, holm, interval, paired_test, paired_tests, summarize

__all__ = [
    "COSTS", "Comparison", "compare", "find_runs", "holm", "interval", "log_comparison", "metrics_figure", "paired_test", "paired_tests",
    "run_comparison", "runs_table", "summarize", "to_markdown", "weights_figure", "weights_frame", "write",
]
