"""Multi-process jobs on one machine: a supervisor that owns the MLflow run and N worker processes.

Lightning can spawn its own workers, but if one dies its observer SIGKILLs the main process, which then cannot mark
the run FAILED. So `train` with several devices on one node runs as a supervisor: it creates the run, writes the job
file (`Job`, JSON) into the job folder, and starts one worker per device, `python -m mmfusion.jobs.worker JOBFILE`,
with LOCAL_RANK/RANK/WORLD_SIZE/MASTER_* set exactly as torchrun would (torch's launcher protocol; nothing else comes
through the environment). It watches them; if any dies, it stops the others and the run ends FAILED with the rank and
exit code. SIGINT or SIGTERM to the supervisor is forwarded to the workers as SIGINT (Lightning's graceful stop), they
get a few seconds to exit, and the run ends KILLED.

Result: rank 0 of the workers logs the outputs into the run (left RUNNING for the supervisor to end) and hands its
metrics and test predictions back with `write_result`; the supervisor reads them with `read_result`.

Multi-node jobs are started by torchrun or the cluster's launcher instead (see README); rank 0 owns the run there.
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from mmfusion.config import Config, to_yaml
from mmfusion.training.hardware import devices_per_node

JOB_FILE, CONFIG_FILE = "job.json", "config.yaml"
RESULT_FILE, RESULT_PREDICTIONS = "result.json", "result_test.csv"


class WorkerFailed(RuntimeError):
    pass


@dataclass
class Job:
    """What a worker trains, in one file: the resolved config, the run it logs into, and how."""

    config: str  # path of the resolved config (YAML)
    run_id: str
    tracking_uri: str
    job_dir: str  # the run's folder: checkpoints/, the result
    resume: bool = False  # continue from job_dir/checkpoints
    trial: dict[str, Any] | None = None  # a study's trial to report to for pruning (`jobs.tune.storage.trial_spec`)

    def write(self, path: Path) -> Path:
        path.write_text(json.dumps(asdict(self), indent=1))
        return path

    @classmethod
    def read(cls, path: str | Path) -> "Job":
        return cls(**json.loads(Path(path).read_text()))


def global_rank() -> int:
    """This process's rank as launchers announce it (0 in a single process or a supervisor)."""
    if "RANK" in os.environ:
        return int(os.environ["RANK"])
    return int(os.environ.get("NODE_RANK", 0)) * int(os.environ.get("LOCAL_WORLD_SIZE", 1)) + int(os.environ.get("LOCAL_RANK", 0))


def launched_externally() -> bool:
    """torchrun, SLURM or our supervisor started this process as one rank of a job."""
    return "LOCAL_RANK" in os.environ


def needs_supervisor(cfg: Config) -> bool:
    return devices_per_node(cfg) > 1 and cfg.trainer.num_nodes == 1 and not launched_externally()


def write_result(job_dir: Path, metrics: dict[str, float], predictions: pd.DataFrame) -> None:
    """Rank 0 of the workers: the job's metrics and test predictions, for the supervisor."""
    predictions.to_csv(job_dir / RESULT_PREDICTIONS, index=False)
    (job_dir / RESULT_FILE).write_text(json.dumps({"metrics": metrics, "predictions": RESULT_PREDICTIONS}))


def read_result(job_dir: Path) -> tuple[dict[str, float], pd.DataFrame]:
    raw = json.loads((job_dir / RESULT_FILE).read_text())
    return raw["metrics"], pd.read_csv(job_dir / raw["predictions"])


def _die_with_parent() -> None:
    """Linux: a worker gets SIGKILL when the supervisor dies (even by SIGKILL), so no orphan keeps training."""
    try:
        ctypes.CDLL("libc.so.6").prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _describe_exit(code: int) -> str:
    if code < 0:
        return f"was killed by {signal.Signals(-code).name}"
    return f"exited with code {code}"


def _stop(procs: list[subprocess.Popen], grace_seconds: float) -> None:
    """SIGINT to the live workers, then wait up to `grace_seconds` for them to exit (the caller kills the rest)."""
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGINT)
    end = time.monotonic() + grace_seconds
    while time.monotonic() < end and any(p.poll() is None for p in procs):
        time.sleep(0.1)


def run_workers(cfg: Config, run_id: str, tracking_uri: str, job_dir: Path, *, resume: bool = False, trial: dict | None = None,
                poll_seconds: float = 0.5, grace_seconds: float = 10.0) -> tuple[dict[str, float], pd.DataFrame]:
    """Write the job file, start one worker per device, wait for all; any failure stops the rest and raises
    WorkerFailed. An interrupt (`Interrupted`, KeyboardInterrupt) is passed on to the workers, who get `grace_seconds`
    to stop, then re-raised. -> (metrics, test predictions) from rank 0 (`read_result`)."""
    job_dir.mkdir(parents=True, exist_ok=True)
    for stale in (RESULT_FILE, RESULT_PREDICTIONS):  # an earlier attempt's (a resumed job)
        (job_dir / stale).unlink(missing_ok=True)
    (job_dir / CONFIG_FILE).write_text(to_yaml(cfg))
    job_file = Job(str(job_dir / CONFIG_FILE), run_id, tracking_uri, str(job_dir), resume, trial).write(job_dir / JOB_FILE)
    n = int(cfg.trainer.devices)
    port = _free_port()
    procs = []
    for rank in range(n):
        env = dict(os.environ, LOCAL_RANK=str(rank), NODE_RANK="0", RANK=str(rank), WORLD_SIZE=str(n), LOCAL_WORLD_SIZE=str(n),
                   MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        procs.append(subprocess.Popen([sys.executable, "-m", "mmfusion.jobs.worker", str(job_file)], env=env, preexec_fn=_die_with_parent))
    try:
        while True:
            codes = [p.poll() for p in procs]
            failed = [(r, c) for r, c in enumerate(codes) if c not in (None, 0)]
            if failed:
                rank, code = failed[0]
                raise WorkerFailed(f"rank {rank} of {n} {_describe_exit(code)}; the job was stopped (see that rank's output above)")
            if all(c == 0 for c in codes):
                break
            time.sleep(poll_seconds)
    except KeyboardInterrupt:
        _stop(procs, grace_seconds)
        raise
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    return read_result(job_dir)
