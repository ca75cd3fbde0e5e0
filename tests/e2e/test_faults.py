"""Faults for real: SIGKILL, SIGINT and SIGTERM in the middle of an epoch, atomic checkpoint writes, resumes that
must not touch a finished run, and stale RUNNING runs."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import mlflow
import pytest
import torch

from mmfusion.training.callbacks import LastCheckpoint, resumable_checkpoint
from mmfusion.cli import main as cli
from mmfusion.config import load_config, to_yaml
from mmfusion.jobs.train import train


@pytest.fixture
def job(tiny_overrides) -> list[str]:
    # batch 4 over ~560 training rows: 140 steps an epoch, seconds long even on a fast CPU, so "mid-epoch" is a wide target
    return [*tiny_overrides, "data.synthetic.n_samples=800", "trainer.batch_size=4", "trainer.max_epochs=5", "model.fusion=gate",
            "model.modality_dropout=0.1", "export.onnx=false", "tracking.log_model=false"]


def _start(args: list[str], workdir: Path) -> tuple[subprocess.Popen, Path]:
    workdir.mkdir(exist_ok=True)
    stderr = workdir / "stderr.txt"
    proc = subprocess.Popen([sys.executable, "-m", "mmfusion", "train", *args], cwd=workdir, stdout=subprocess.DEVNULL, stderr=stderr.open("w"))
    return proc, stderr


def _wait_for(probe, timeout: float, proc: subprocess.Popen | None = None, every: float = 0.1):
    end = time.time() + timeout
    while time.time() < end:
        found = probe()
        if found:
            return found
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the job ended (exit {proc.returncode}) before the condition was reached")
        time.sleep(every)
    raise TimeoutError("condition not reached")


def _completed_epochs(workdir: Path) -> tuple[Path, int] | None:
    """(checkpoint, epochs it holds) for the job's last.ckpt, None before the first one."""
    ckpt = next(iter(workdir.glob("outputs/*/checkpoints/last.ckpt")), None)
    if ckpt is None:
        return None
    return ckpt, torch.load(ckpt, map_location="cpu", weights_only=True)["epoch"] + 1  # saved after epoch index e


def _wait_epochs(workdir: Path, n: int, proc: subprocess.Popen) -> Path:
    found = _wait_for(lambda: (c := _completed_epochs(workdir)) and c[1] >= n and c, timeout=300, proc=proc)
    assert found[1] == n, f"missed the moment: {found[1]} epochs done"
    return found[0]


@pytest.mark.slow
def test_sigkill_mid_epoch_3_then_stale_marked_killed_and_resumed_to_equal_metrics(mlflow_uri, job, tmp_path, capsys):
    reference = train(load_config(None, job))
    workdir = tmp_path / "job"
    proc, _ = _start(job, workdir)
    ckpt = _wait_epochs(workdir, 2, proc)
    time.sleep(0.3)  # into epoch 3 (an epoch takes seconds here; checked below)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert _completed_epochs(workdir)[1] == 2  # killed inside epoch 3, not after it
    run_id = ckpt.parent.parent.name
    client = mlflow.MlflowClient(mlflow_uri)
    assert client.get_run(run_id).info.status == "RUNNING"

    assert cli(["runs", "--stale"]) == 0
    listed = capsys.readouterr().out
    assert run_id in listed and f"process {proc.pid}" in listed and reference.run_id not in listed
    assert cli(["runs", "--stale", "--mark-killed"]) == 0
    killed = client.get_run(run_id)
    assert killed.info.status == "KILLED" and "is gone" in killed.data.tags["mmfusion.killed_reason"]

    done = subprocess.run([sys.executable, "-m", "mmfusion", "train", "--resume", run_id], cwd=workdir, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    resumed = client.get_run(run_id)
    assert resumed.info.status == "FINISHED"
    worst = 0.0
    revalidated = client.get_run(reference.run_id).data.metrics["restored_epoch"] != 4  # the best epoch was not the last
    for key in ("val_loss", "val_accuracy", "val_auroc", "train_loss"):  # every epoch's value, in the one run
        got = [m.value for m in sorted(client.get_metric_history(run_id, key), key=lambda m: m.step)]
        want = [m.value for m in sorted(client.get_metric_history(reference.run_id, key), key=lambda m: m.step)]
        assert len(got) == len(want) == 5 + (key != "train_loss" and revalidated), key  # val: every epoch, then the restored best one
        worst = max(worst, *(abs(a - b) for a, b in zip(got, want)))
    for key in ("test_loss", "test_accuracy", "test_auroc", "test_f1_macro"):
        worst = max(worst, abs(resumed.data.metrics[key] - reference.metrics[key]))
    print(f"SIGKILL mid-epoch 3 + resume: max |metric difference| vs uninterrupted = {worst:.3g}")
    assert worst <= 1e-6


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_sigint_and_sigterm_mid_epoch_end_the_run_killed_with_one_line(mlflow_uri, job, tmp_path, signum):
    workdir = tmp_path / "job"
    proc, stderr = _start(job, workdir)
    ckpt = _wait_epochs(workdir, 1, proc)
    time.sleep(0.3)  # into epoch 2 (checked below)
    proc.send_signal(signum)
    assert proc.wait(timeout=120) == 128 + signum
    assert _completed_epochs(workdir)[1] == 1  # stopped inside epoch 2
    err = stderr.read_text()
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert errors == [f"error: interrupted by {signal.Signals(signum).name} (runs in progress were marked KILLED)"], err[-3000:]
    assert "Traceback" not in err
    run = mlflow.MlflowClient(mlflow_uri).get_run(ckpt.parent.parent.name)
    assert run.info.status == "KILLED" and run.data.tags["mmfusion.stopped_by"] == signal.Signals(signum).name
    assert "mmfusion.error" not in run.data.tags


# ---- atomic checkpoint writes (no training: a stand-in trainer) -------------------------------------------------


class _Crash(BaseException):
    """Stands for SIGKILL arriving in the middle of a write."""


def _stub_trainer(write):
    strategy = SimpleNamespace(barrier=lambda *a, **k: None)
    return SimpleNamespace(is_global_zero=True, global_rank=0, strategy=strategy, loggers=[], global_step=0, save_checkpoint=write)


def test_a_crash_while_writing_leaves_the_previous_checkpoint_loadable(tmp_path):
    cb = LastCheckpoint(tmp_path)

    def write(step: int, crash: bool = False):
        def save(path, weights_only=False):
            data = {"global_step": torch.tensor(step), "weights": torch.arange(1000.0) * step}
            if crash:  # half a file, then the process dies
                Path(path).write_bytes(b"PK\x03\x04" + b"\0" * 100)
                raise _Crash
            torch.save(data, path)
        return _stub_trainer(save)

    cb.write_last(write(1))
    with pytest.raises(_Crash):
        cb.write_last(write(2, crash=True))
    last = resumable_checkpoint(tmp_path)
    assert last == tmp_path / "last.ckpt" and torch.load(last, weights_only=True)["global_step"] == 1
    cb.write_last(write(3))  # the next save clears the torn file and replaces last.ckpt
    assert torch.load(tmp_path / "last.ckpt", weights_only=True)["global_step"] == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]


def test_a_sharded_checkpoint_is_never_missing_during_its_swap(tmp_path, monkeypatch):
    cb = LastCheckpoint(tmp_path)

    def sharded(step: int):
        def save(path, weights_only=False):
            Path(path).mkdir()
            (Path(path) / "__0_0.distcp").write_text(f"shard {step}")
            torch.save({"global_step": step}, Path(path) / "meta.pt")
        return _stub_trainer(save)

    cb.write_last(sharded(1))
    real_replace, calls = os.replace, []

    def replace_then_die(src, dst):  # dies after moving the old checkpoint aside, before the new one is in place
        calls.append(dst)
        if len(calls) == 2:
            raise _Crash
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace_then_die)
    with pytest.raises(_Crash):
        cb.write_last(sharded(2))
    monkeypatch.setattr(os, "replace", real_replace)
    assert not (tmp_path / "last.ckpt").exists()
    found = resumable_checkpoint(tmp_path)
    assert found == tmp_path / "last.ckpt.old" and (found / "__0_0.distcp").read_text() == "shard 1"
    cb.write_last(sharded(3))
    assert resumable_checkpoint(tmp_path) == tmp_path / "last.ckpt"
    assert (tmp_path / "last.ckpt" / "__0_0.distcp").read_text() == "shard 3"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]


# ---- resume checks and stale runs (runs made directly in the store, no training) ----------------------------------


def _fake_run(client: mlflow.MlflowClient, cfg, status: str, tags: dict[str, str] | None = None) -> str:
    exp = client.get_experiment_by_name("faults") or client.get_experiment(client.create_experiment("faults"))
    run_id = client.create_run(exp.experiment_id, tags=tags or {}).info.run_id
    client.log_text(run_id, to_yaml(cfg), "config.yaml")
    client.log_metric(run_id, "val_loss", 0.5)
    if status != "RUNNING":
        client.set_terminated(run_id, status)
    return run_id


def _snapshot(client: mlflow.MlflowClient, run_id: str):
    run = client.get_run(run_id)
    return run.info.status, run.info.end_time, run.data.tags, run.data.params, run.data.metrics


def test_resume_of_a_finished_run_is_exit_2_and_changes_nothing(mlflow_uri, tiny_overrides, tmp_path, capsys):
    client = mlflow.MlflowClient(mlflow_uri)
    cfg = load_config(None, tiny_overrides)
    finished = _fake_run(client, cfg, "FINISHED")
    (tmp_path / "outputs" / finished / "checkpoints").mkdir(parents=True)
    (tmp_path / "outputs" / finished / "checkpoints" / "last.ckpt").write_bytes(b"x")  # even with a checkpoint
    killed = _fake_run(client, cfg, "KILLED")  # no checkpoint at all
    for run_id, message in ((finished, "FINISHED: nothing to resume"), (killed, "no complete checkpoint")):
        before = _snapshot(client, run_id)
        assert cli(["train", "--resume", run_id]) == 2
        err = capsys.readouterr().err
        errors = [line for line in err.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and message in errors[0] and "Traceback" not in err, err
        assert _snapshot(client, run_id) == before


def test_runs_stale_lists_dead_owners_and_marks_them_killed(mlflow_uri, tiny_overrides, capsys):
    client = mlflow.MlflowClient(mlflow_uri)
    cfg = load_config(None, tiny_overrides)
    gone = subprocess.Popen(["true"])
    gone.wait()
    here = socket.gethostname()
    dead = _fake_run(client, cfg, "RUNNING", {"mmfusion.host": here, "mmfusion.pid": str(gone.pid)})
    alive = _fake_run(client, cfg, "RUNNING", {"mmfusion.host": here, "mmfusion.pid": str(os.getpid()), "mmfusion.heartbeat": "1"})
    remote = _fake_run(client, cfg, "RUNNING", {"mmfusion.host": "elsewhere", "mmfusion.pid": "1", "mmfusion.heartbeat": str(int(time.time()) - 7200)})
    ended = _fake_run(client, cfg, "FINISHED", {"mmfusion.host": here, "mmfusion.pid": str(gone.pid)})

    assert cli(["runs", "--stale", "--experiment", "faults"]) == 0
    out = capsys.readouterr().out
    assert dead in out and alive not in out and remote not in out and ended not in out and "1 stale run(s)" in out
    assert cli(["runs", "--stale", "--older-than", "3600"]) == 0
    out = capsys.readouterr().out
    assert dead in out and remote in out and "no heartbeat for 7" in out and alive not in out

    assert cli(["runs", "--stale", "--mark-killed"]) == 0
    capsys.readouterr()
    statuses = {r: client.get_run(r).info.status for r in (dead, alive, remote, ended)}
    assert statuses == {dead: "KILLED", alive: "RUNNING", remote: "RUNNING", ended: "FINISHED"}
    assert cli(["runs", "--stale", "--experiment", "no-such"]) == 2
    assert "no MLflow experiment named 'no-such'" in capsys.readouterr().err
    # a live RUNNING run is not taken over by a resume
    assert cli(["train", "--resume", alive]) == 2
    assert "still RUNNING" in capsys.readouterr().err
    assert client.get_run(alive).info.status == "RUNNING"
