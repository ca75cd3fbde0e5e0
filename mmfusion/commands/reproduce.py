"""`mmfusion reproduce --run-id ID [--allow-data-change] [--tolerance 1e-6]`"""

from __future__ import annotations

import argparse

HELP = "train a logged run again from its MLflow records (config, data check, code and library versions) and compare"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--run-id", required=True, help="the MLflow run to reproduce")
    p.add_argument("--allow-data-change", action="store_true", help="train even if the data's fingerprint differs from the recorded one")
    p.add_argument("--tolerance", type=float, default=1e-6, help="largest metric / prediction difference that counts as reproduced (exit 1 above it)")
    p.add_argument("--tracking-uri", help="MLflow tracking URI holding the run (default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db); the new run goes there too")


def main(args: argparse.Namespace) -> int:
    import math

    from mmfusion.errors import UserError
    from mmfusion.jobs.reproduce import report, reproduce
    from mmfusion.tracking.contract import tracking_uri, use_store

    if not (math.isfinite(args.tolerance) and args.tolerance >= 0):
        raise UserError(f"--tolerance must be a finite number >= 0, got {args.tolerance:g}")

    # read the original and write the new run in the same store, whatever the recorded tracking.uri says
    uri = use_store(tracking_uri(flag=args.tracking_uri))
    rep = reproduce(args.run_id, allow_data_change=args.allow_data_change, tracking_uri=uri)
    print(report(rep))
    ok = rep.within(args.tolerance)
    print(f"reproduced within {args.tolerance:g}: {'yes' if ok else 'no'}")
    return 0 if ok else 1
