"""`mmfusion train --config X.yaml [key=value ...]` and `mmfusion train --resume RUN_ID_OR_JOB_DIR`"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from mmfusion.cli import add_config_arguments

HELP = "train one model and log it to MLflow (or --resume a killed, failed or stale job)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_config_arguments(p)
    p.add_argument("--resume", metavar="RUN_ID_OR_PATH", help="continue a job from its last checkpoint: an MLflow run id, or its job folder / checkpoint path")


def resume_target(target: str) -> tuple[str, str | None]:
    """-> (run id, tracking URI recorded by the job or None) for a run id, a job folder or a path inside it."""
    from mmfusion.jobs.train import RUN_FILE

    path = Path(target)
    for folder in (path, *path.parents) if path.exists() else ():
        if (folder / RUN_FILE).is_file():
            info = json.loads((folder / RUN_FILE).read_text())
            return info["run_id"], info.get("tracking_uri")
    return target, None


def main(args: argparse.Namespace) -> int:
    from mmfusion import signals
    from mmfusion.config import load_config
    from mmfusion.training.hardware import describe

    signals.reset()  # one job per process: a signal recorded now stopped this job
    cfg = load_config(args.config, args.overrides) if args.config or args.overrides else None
    run_id = uri = None
    if args.resume:
        from mmfusion.tracking.runs import config_of_run, ensure_same_config

        run_id, uri = resume_target(args.resume)
        logged = config_of_run(run_id, uri)
        cfg = ensure_same_config(logged, cfg) if cfg is not None else logged
    elif cfg is None:
        cfg = load_config(None)
    from mmfusion.jobs.train import train

    print(f"mmfusion train: fusion={cfg.model.fusion} encoder={cfg.model.text_encoder} strategy={cfg.trainer.strategy} | {describe()}")
    result = train(cfg, resume_run_id=run_id, tracking_uri=uri)  # a resumed run continues in the store it was read from
    if result.run_id is not None:  # not on ranks other than 0 of a torchrun job (rank 0 owns the run)
        shown = {k: round(v, 4) for k, v in sorted(result.metrics.items()) if k.startswith(("val_", "test_"))}
        print(f"run {result.run_id}: {shown}")
    return 0
