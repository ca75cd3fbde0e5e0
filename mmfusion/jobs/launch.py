"""Multi-process jobs on one machine: a supervisor that owns the MLflow run and N worker processes.

Lightning can spawn its own workers, but if one dies its observer SIGKILLs the main process, which then cannot mark
the run FAILED. So `train` with several devices on one node runs as a supervisor: it creates the run, starts one
worker per device (`python -m mmfusion.jobs.launch`, with LOCAL_RANK/MASTER_* set, exactly as torchrun would), and
watches them; if any dies, it stops the others and the run ends FAILED with the rank and exit code. SIGINT or SIGTERM
to the supervisor is forwarded to the workers as SIGINT (Lightning's graceful stop), they get a few seconds to exit,
and the run ends KILLED. Multi-node jobs
are started by torchrun or the cluster's launcher instead (see README); rank 0 owns the run there.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from mmfusion.config import Config, to_yaml

RUN_ID_ENV = "MMFUSION_RUN_ID"  # set for workers: the supervisor's MLflow run
CONFIG_ENV = "MMFUSION_CONFIG_FILE"  # set for workers: the resolved config to train


class WorkerFailed(RuntimeError):
    pass


def global_rank() -> int:
    """This process's rank as launchers announce it (0 in a single process or a supervisor)."""
    if "RANK" in os.environ:
        return int(os.environ["RANK"])
    return int(os.environ.get("NODE_RANK", 0)) * int(os.environ.get("LOCAL_WORLD_SIZE", 1)) + int(os.environ.get("LOCAL_RANK", 0))


def launched_externally() -> bool:
    """torchrun, SLURM or our supervisor started this process as one rank of a job."""
    return "LOCAL_RANK" in os.environ


def devices_per_node(cfg: Config) -> int:
    return cfg.trainer.devices if isinstance(cfg.trainer.devices, int) else 1


def world_size(cfg: Config) -> int:
    return devices_per_node(cfg) * cfg.trainer.num_nodes


def needs_supervisor(cfg: Config) -> bool:
    return devices_per_node(cfg) > 1 and cfg.trainer.num_nodes == 1 and not launched_externally()


def _die_with_parent() -> None:
    """Linux: a worker gets SIGKILL when the supervisor dies (even by SIGKILL), so no orphan keeps training."""
    try:
        import ctypes

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


def run_workers(cfg: Config, run_id: str, job_dir: Path, poll_seconds: float = 0.5, grace_seconds: float = 10.0) -> dict:
    """Start one worker per device, wait for all; any failure stops the rest and raises WorkerFailed. An interrupt
    (`Interrupted`, KeyboardInterrupt) is passed on to the workers, who get `grace_seconds` to stop, then re-raised.

    -> the result rank 0 wrote to `job_dir/result.json`.
    """
    job_dir.mkdir(parents=True, exist_ok=True)
    config_file = job_dir / "config.yaml"
    config_file.write_text(to_yaml(cfg))
    n = int(cfg.trainer.devices)
    port = _free_port()
    procs = []
    for rank in range(n):
        env = dict(os.environ, LOCAL_RANK=str(rank), NODE_RANK="0", RANK=str(rank), WORLD_SIZE=str(n), LOCAL_WORLD_SIZE=str(n),
                   MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), **{RUN_ID_ENV: run_id, CONFIG_ENV: str(config_file)})
        procs.append(subprocess.Popen([sys.executable, "-m", "mmfusion.jobs.launch"], env=env, preexec_fn=_die_with_parent))
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
    return json.loads((job_dir / "result.json").read_text())


def main() -> int:
    """Worker entry point: train the config the supervisor wrote, as one rank."""
    from mmfusion.config import load_config
    from mmfusion.training.fit import train

    try:
        train(load_config(os.environ[CONFIG_ENV]))
    except KeyboardInterrupt as err:  # stopped by the supervisor: it reports the interrupt, once
        return getattr(err, "exit_code", 130)
    return 0


if __name__ == "__main__":
    sys.exit(main())
