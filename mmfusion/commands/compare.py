"""`mmfusion compare (--experiment NAME | --parent RUN_ID | --study NAME | --runs ID ...) [--out DIR]`"""

from __future__ import annotations

import argparse

HELP = "compare fusion variants across seeds: mean ± 95% interval, costs, paired tests against a baseline; tables + plots"


def add_arguments(p: argparse.ArgumentParser) -> None:
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--experiment", help="every training run of this MLflow experiment")
    src.add_argument("--parent", metavar="RUN_ID", help="the child runs of a parent run (a zoo)")
    src.add_argument("--study", help="the runs of an Optuna study (tag mmfusion.study)")
    src.add_argument("--runs", nargs="+", metavar="RUN_ID", help="these runs")
    p.add_argument("--metrics", nargs="+", help="default: a zoo parent's zoo.metrics, else every test_* metric")
    p.add_argument("--baseline", help="variant label for the paired tests (default: the zoo's baseline, else concat); 'none' for no tests")
    p.add_argument("--group-by", help="a run column that names the variant, e.g. params.model.fusion (default: tag mmfusion.zoo.label, else mmfusion.fusion)")
    p.add_argument("--out", default="comparison", help="output folder (default: ./comparison)")
    p.add_argument("--include-reproductions", action="store_true", help="count runs made by `mmfusion reproduce` as seeds too")
    p.add_argument("--no-weights", action="store_true", help="skip the w_text figure (it downloads every run's test predictions)")
    p.add_argument("--no-log", action="store_true", help="do not log the comparison to MLflow")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db)")


def _zoo_settings(parent: str) -> tuple[list[str] | None, str | None]:
    """(metrics, baseline) from a zoo parent's zoo.yaml; (None, None) for any other parent."""
    import mlflow
    import yaml

    try:
        zoo = (yaml.safe_load(mlflow.artifacts.load_text(f"runs:/{parent}/zoo.yaml")) or {}).get("zoo") or {}
    except Exception:  # not a zoo parent
        return None, None
    return zoo.get("metrics"), zoo.get("baseline", "concat")


def main(args: argparse.Namespace) -> int:
    from mmfusion.analysis import compare as comparison
    from mmfusion.paths import check_output_dir
    from mmfusion.tracking.contract import tracking_uri, use_store

    check_output_dir(args.out, "--out")
    use_store(tracking_uri(flag=args.tracking_uri))
    metrics, baseline = _zoo_settings(args.parent) if args.parent else (None, None)
    metrics = args.metrics or metrics
    baseline = args.baseline or baseline or "concat"
    notes: list[str] = []
    found = comparison.find_runs(experiment=args.experiment, parent=args.parent, study=args.study, run_ids=args.runs)
    # a study's trials differ in hyperparameters, not seeds: keep them all (no pairing); elsewhere a rerun replaces a run
    runs = comparison.runs_table(found, group_by=args.group_by, include_reproductions=args.include_reproductions, latest_per_seed=args.study is None, notes=notes)
    cmp, paths = comparison.run_comparison(runs, args.out, metrics, None if baseline.lower() == "none" else baseline, notes, with_weights=not args.no_weights)
    print(comparison.to_markdown(cmp))
    print("written: " + ", ".join(str(p) for p in paths))
    if not args.no_log:
        run_id = comparison.log_comparison(args.out, cmp, into_run=args.parent)
        print(f"logged to MLflow run {run_id} under comparison/")
    return 0
