"""`mmfusion runs --stale [--experiment NAME] [--older-than SECONDS] [--mark-killed]`"""

from __future__ import annotations

import argparse

HELP = "list RUNNING runs whose process is gone (killed with SIGKILL, a lost machine); --mark-killed ends them KILLED"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--stale", action="store_true", required=True, help="list RUNNING runs whose owning process is gone")
    p.add_argument("--experiment", help="only this MLflow experiment (default: all)")
    p.add_argument("--older-than", type=float, metavar="SECONDS",
                   help="also stale: no heartbeat (one per epoch) for this long, on any host (without it: only runs of this host whose pid is dead)")
    p.add_argument("--mark-killed", action="store_true", help="end the stale runs KILLED (tag mmfusion.killed_reason); `train --resume RUN_ID` continues them")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db)")


def main(args: argparse.Namespace) -> int:
    import mlflow

    from mmfusion.errors import UserError
    from mmfusion.tracking.runs import mark_killed, stale_runs
    from mmfusion.tracking.contract import tracking_uri

    if args.older_than is not None and not args.older_than > 0:
        raise UserError(f"--older-than must be a number of seconds > 0, got {args.older_than}")
    client = mlflow.MlflowClient(tracking_uri(flag=args.tracking_uri))
    stale = stale_runs(client, args.experiment, args.older_than)
    for run, why in stale:
        if args.mark_killed:
            mark_killed(client, run, why)
        print(f"{run.info.run_id}  {run.info.run_name or '-'}  experiment {run.info.experiment_id}  {why}{'  -> KILLED' if args.mark_killed else ''}")
    print(f"{len(stale)} stale run(s){' marked KILLED' if args.mark_killed and stale else ''}")
    return 0
