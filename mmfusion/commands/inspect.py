"""`mmfusion inspect --run-id ID [--top N] [--output DIR]`"""

from __future__ import annotations

import argparse

HELP = "per-sample modality weights of a run: the samples leaning most on text / table, per-class statistics, HTML report"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--run-id", required=True, help="the MLflow run to inspect")
    p.add_argument("--top", type=int, default=10, help="how many samples to list per modality (default 10)")
    p.add_argument("--output", help="folder for report.html (default: inspect_<run id>)")
    p.add_argument("--no-log", action="store_true", help="do not log the report to the run (inspect/report.html)")
    p.add_argument("--tracking-uri", help="MLflow tracking URI holding the run (default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db)")


def main(args: argparse.Namespace) -> int:
    import mlflow

    from mmfusion.tracking.artifacts import check_run_id
    from mmfusion.errors import UserError
    from mmfusion.paths import check_output_dir
    from mmfusion.analysis.inspection import build_report, format_text, write_report
    from mmfusion.tracking.contract import tracking_uri, use_store

    if args.top < 1:
        raise UserError(f"--top must be at least 1, got {args.top}")
    check_run_id(args.run_id)
    out_dir = check_output_dir(args.output or f"inspect_{args.run_id}", "--output")
    use_store(tracking_uri(flag=args.tracking_uri))
    report = build_report(args.run_id, args.top)
    print(format_text(report))
    path = write_report(report, out_dir)
    if not args.no_log:
        mlflow.MlflowClient().log_artifact(args.run_id, str(path), "inspect")
    print(f"\nreport: {path}" + ("" if args.no_log else f" (logged to run {args.run_id} as inspect/{path.name})"))
    return 0
