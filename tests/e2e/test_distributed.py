"""Multi-process jobs for real: 2 CPU processes over gloo with FSDP2 (no mocks)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch

from mmfusion.config import load_config
from mmfusion.serving.logged_models import logged_model_id
from mmfusion.errors import ConfigError
from mmfusion.modeling.metrics import classification_metrics
from mmfusion.tracking.runs import ensure_same_config
from mmfusion.jobs.train import train

pytestmark = pytest.mark.slow
FSDP = ["trainer.strategy=fsdp", "trainer.devices=2", "trainer.accelerator=cpu"]


@pytest.fixture
def job(tiny_overrides):
    # 203 samples: val and test splits of 31 rows, not a multiple of the world size
    # attention pooling and modality dropout: the chunk pool is sharded too, the dropout draws run on every rank
    return [*tiny_overrides, "data.synthetic.n_samples=203", "trainer.max_epochs=2", "model.fusion=moe_topk", "model.chunk_pooling=attention", "model.modality_dropout=0.1"]


def test_fsdp_shards_parameters_trains_and_logs_one_run(mlflow_uri, job):
    single = train(load_config(None, job))
    sharded = train(load_config(None, [*job, *FSDP]))
    client = mlflow.MlflowClient(mlflow_uri)
    runs = mlflow.search_runs(search_all_experiments=True)
    assert sorted(runs["status"]) == ["FINISHED", "FINISHED"] and len(runs) == 2  # one run per job, not per rank
    m1, m2 = client.get_run(single.run_id).data.metrics, client.get_run(sharded.run_id).data.metrics
    for rank in (0, 1):  # each rank holds about half of the parameters, gradients and optimizer state
        assert 0.45 <= m2[f"rank{rank}_param_mb"] / m1["rank0_param_mb"] <= 0.55
        assert 0.45 <= m2[f"rank{rank}_train_state_mb"] / m1["rank0_train_state_mb"] <= 0.55
    assert client.get_run(sharded.run_id).data.tags["mmfusion.world_size"] == "2"
    losses = [m.value for m in client.get_metric_history(sharded.run_id, "train_loss")]
    assert len(losses) == 2 and losses[-1] < losses[0]


def test_two_process_evaluation_equals_one_process(mlflow_uri, job, tmp_path):
    """Predictions and metrics of the 2-rank job equal single-process inference with the same (gathered) weights."""
    result = train(load_config(None, [*job, *FSDP]))
    run = mlflow.MlflowClient(mlflow_uri).get_run(result.run_id)
    logged = pd.read_csv(mlflow.artifacts.download_artifacts(run_id=result.run_id, artifact_path="predictions/test.csv", dst_path=str(tmp_path)))
    assert len(logged) == 31 and logged["id"].is_unique  # every id once: no sampler duplicates, no dropped tail
    assert logged["id"].tolist() == sorted(logged["id"], key=result.data.splits["test"].ids.index)  # stable order
    model = mlflow.pyfunc.load_model(f"models:/{logged_model_id(result.run_id, 'model')}")
    single = model.predict(result.data.splits["test"].frame)
    np.testing.assert_allclose(single["prob_escalate"], logged["prob_escalate"], atol=1e-5)
    np.testing.assert_allclose(single["w_text"], logged["w_text"], atol=1e-5)
    import torch

    probs = torch.tensor(single[["prob_escalate", "prob_resolved"]].to_numpy())
    labels = torch.tensor(result.data.splits["test"].labels)
    recomputed = classification_metrics(probs, labels)
    for key in ("accuracy", "f1_macro", "auroc"):
        assert recomputed[key] == pytest.approx(run.data.metrics[f"test_{key}"], abs=1e-6)


def test_a_torchrun_job_is_one_run_owned_by_rank_0(mlflow_uri, job, tmp_path):
    """torchrun starts every rank as `mmfusion train`: rank 0 alone creates and logs the run, the others only train."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "mmfusion", "train", *job, *FSDP,
           "export.onnx=false", "tracking.log_model=false"]
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    runs = mlflow.search_runs(search_all_experiments=True)
    assert runs["status"].tolist() == ["FINISHED"] and runs["tags.mmfusion.world_size"].tolist() == ["2"]  # one run, not one per rank
    [run_id] = runs["run_id"]
    assert [p.name for p in (tmp_path / "outputs").iterdir()] == [run_id]  # the other rank used rank 0's folder
    assert (tmp_path / "outputs" / run_id / "checkpoints" / "last.ckpt" / "meta.pt").is_file()
    logged = pd.read_csv(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="predictions/test.csv", dst_path=str(tmp_path)))
    assert len(logged) == 31 and logged["id"].is_unique
    assert [line for line in proc.stdout.splitlines() if line.startswith("run ")] == [line for line in proc.stdout.splitlines() if line.startswith(f"run {run_id}:")] != []


def test_a_dying_rank_fails_the_job_not_hangs(mlflow_uri, tiny_bert, tmp_path):
    cmd = [sys.executable, "-m", "mmfusion", "train", f"model.text_encoder={tiny_bert}", "data.synthetic.n_samples=4000", "data.cache_dir=null",
           "trainer.max_epochs=50", "trainer.enable_progress_bar=false", *FSDP]
    proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    victim = _wait_for_worker(proc.pid, rank=1)
    time.sleep(5)  # let it train a little
    os.kill(victim, signal.SIGKILL)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode != 0
    assert "rank 1 of 2 was killed by SIGKILL" in out
    runs = mlflow.search_runs(search_all_experiments=True)
    assert runs["status"].tolist() == ["FAILED"] and "rank 1" in runs["tags.mmfusion.error"][0]


def test_killed_job_resumes_to_the_same_result(mlflow_uri, tiny_bert, tmp_path):
    args = [f"model.text_encoder={tiny_bert}", "data.synthetic.n_samples=1500", "data.cache_dir=null", "model.fusion=gate", "trainer.max_epochs=3",
            "trainer.enable_progress_bar=false", "model.fusion_dim=16", "data.max_chunks=4", "data.chunk_len=32", *FSDP]
    reference = train(load_config(None, args))
    cmd = [sys.executable, "-m", "mmfusion", "train", *args]
    workdir = tmp_path / "job"  # its own outputs/ folder, apart from the reference run's
    workdir.mkdir()
    proc = subprocess.Popen(cmd, cwd=workdir, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpt = _wait_for(lambda: next(iter((workdir / "outputs").glob("*/checkpoints/last.ckpt/meta.pt")), None), timeout=300)
    time.sleep(1.0)  # into the second epoch
    proc.send_signal(signal.SIGKILL)  # supervisor dies; its workers die with it
    proc.wait()
    assert torch.load(ckpt, weights_only=True)["epoch"] == 0  # killed mid-training: one of three epochs done
    run_id = ckpt.parent.parent.parent.name
    assert mlflow.MlflowClient(mlflow_uri).get_run(run_id).info.status == "RUNNING"
    done = subprocess.run([sys.executable, "-m", "mmfusion", "train", "--resume", run_id], cwd=workdir, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    client = mlflow.MlflowClient(mlflow_uri)
    resumed = client.get_run(run_id)
    assert resumed.info.status == "FINISHED"
    assert len(client.get_metric_history(run_id, "val_loss")) >= 3  # one run holds the whole job
    for key in ("val_loss", "val_accuracy", "val_auroc", "test_loss"):
        assert resumed.data.metrics[key] == pytest.approx(reference.metrics[key], abs=1e-6), key


def test_sigterm_to_the_supervisor_stops_the_workers_and_ends_the_run_killed(mlflow_uri, tiny_bert, tmp_path):
    cmd = [sys.executable, "-m", "mmfusion", "train", f"model.text_encoder={tiny_bert}", "data.synthetic.n_samples=1500", "data.cache_dir=null",
           "trainer.max_epochs=20", "trainer.enable_progress_bar=false", "model.fusion_dim=16", "data.max_chunks=4", "data.chunk_len=32", *FSDP]
    proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    workers = [_wait_for_worker(proc.pid, rank) for rank in (0, 1)]
    _wait_for(lambda: next(iter(tmp_path.glob("outputs/*/checkpoints/last.ckpt/meta.pt")), None), timeout=300)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err[-3000:]
    assert [line for line in err.splitlines() if line.startswith("error:")] == ["error: interrupted by SIGTERM (runs in progress were marked KILLED)"]
    assert "Traceback" not in err  # the workers stop quietly too
    assert not [pid for pid in workers if Path(f"/proc/{pid}").exists()]  # no worker outlives the job
    runs = mlflow.search_runs(search_all_experiments=True)
    assert runs["status"].tolist() == ["KILLED"] and runs["tags.mmfusion.stopped_by"][0] == "SIGTERM"


def test_resume_with_another_config_is_an_error(tiny_overrides):
    a = load_config(None, tiny_overrides)
    with pytest.raises(ConfigError, match="model.fusion"):
        ensure_same_config(a, load_config(None, [*tiny_overrides, "model.fusion=gate"]))
    assert ensure_same_config(a, load_config(None, [*tiny_overrides, "tracking.experiment=other"])) == a


def _wait_for(probe, timeout: float, every: float = 0.2):
    end = time.time() + timeout
    while time.time() < end:
        found = probe()
        if found:
            return found
        time.sleep(every)
    raise TimeoutError("condition not reached")


def _wait_for_worker(parent: int, rank: int) -> int:
    def probe():
        for pid in os.listdir("/proc"):
            if not pid.isdigit():
                continue
            try:
                status = Path(f"/proc/{pid}/status").read_text()
                environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            except OSError:
                continue
            if f"PPid:\t{parent}\n" in status and f"LOCAL_RANK={rank}".encode() in environ:
                return int(pid)
        return None

    return _wait_for(probe, timeout=120)


@pytest.mark.parametrize("pooling", ["joint", "separate"])
def test_fsdp_job_with_several_text_columns(mlflow_uri, tiny_overrides, tmp_path, pooling):
    """Two text columns under FSDP: the column vectors (and, pooled apart, the column projection and the chunk scorer
    called per column) are sharded with the rest, so gradient clipping sees DTensors only; the gathered model logged
    by rank 0 predicts the test rows as the 2-rank job logged them."""
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 120)
    pd.DataFrame({"id": [f"r{i}" for i in range(120)], "title": np.where(y == 1, "love it", "send it back"),
                  "body": [f"arrived on day {d}" for d in rng.integers(1, 9, 120)], "age": rng.integers(18, 80, 120), "y": y}).to_csv(tmp_path / "r.csv", index=False)
    table = ["data.source=table", f"data.path={tmp_path / 'r.csv'}", "data.text_columns=[title,body]", "data.label_column=y", "data.id_column=id",
             "data.numeric_columns=[age]", "data.categorical_columns=[]", f"model.column_pooling={pooling}", "model.chunk_pooling=attention", "trainer.max_epochs=2"]
    result = train(load_config(None, [*tiny_overrides, *table, *FSDP]))
    run = mlflow.MlflowClient(mlflow_uri).get_run(result.run_id)
    assert run.info.status == "FINISHED" and run.data.tags["mmfusion.world_size"] == "2"
    logged = pd.read_csv(mlflow.artifacts.download_artifacts(run_id=result.run_id, artifact_path="predictions/test.csv", dst_path=str(tmp_path)))
    single = mlflow.pyfunc.load_model(f"models:/{logged_model_id(result.run_id, 'model')}").predict(result.data.splits["test"].frame)
    assert len(logged) == len(result.data.splits["test"].ids)
    np.testing.assert_allclose(single.filter(like="prob_").to_numpy(), logged.filter(like="prob_").to_numpy(), atol=1e-5)
