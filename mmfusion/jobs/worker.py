"""`python -m mmfusion.jobs.worker JOBFILE`: one rank of a supervisor's job (`mmfusion.jobs.launch`).

Everything the worker needs is in the job file (`launch.Job`); its rank and the rendezvous come from torch's launcher
variables (LOCAL_RANK, RANK, WORLD_SIZE, MASTER_ADDR/PORT). Rank 0 logs into the supervisor's run and hands the
result back with `launch.write_result`.
"""

from __future__ import annotations

import signal
import sys
from pathlib import Path

from mmfusion import signals
from mmfusion.config import load_config
from mmfusion.jobs.launch import Job, write_result
from mmfusion.jobs.train import TrainResult, prepare, resume_checkpoint, run_fit


def run(job: Job) -> TrainResult:
    cfg = load_config(job.config)
    data, tokenizer = prepare(cfg)
    job_dir = Path(job.job_dir)
    resume_from = resume_checkpoint(job.run_id, job_dir / "checkpoints") if job.resume else None
    callbacks = []
    if job.trial is not None:  # a study's trial: every rank adds its pruning callback (rank 0 reports, the decision is broadcast)
        from mmfusion.jobs.tune.storage import trial_callbacks  # Optuna only for trials

        callbacks = trial_callbacks(job.trial)
    result = run_fit(cfg, data, tokenizer, job.run_id, job.tracking_uri, callbacks, job_dir / "checkpoints", resume_from)
    if result.predictions is not None:  # rank 0
        write_result(job_dir, result.metrics, result.predictions)
    return result


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m mmfusion.jobs.worker JOBFILE", file=sys.stderr)
        return 2
    job = Job.read(args[0])
    try:
        # SIGINT only: Lightning's SIGTERM handler runs a collective, and the supervisor forwards SIGINT
        with signals.stop_on_signals((signal.SIGINT,)):
            run(job)
    except KeyboardInterrupt as err:  # stopped by the supervisor: it reports the interrupt, once
        return getattr(err, "exit_code", 130)
    return 0


if __name__ == "__main__":
    sys.exit(main())
