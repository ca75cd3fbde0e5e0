"""`tune` under faults and bad input: failing trials end the study, pre-checks refuse what every trial would fail,
a signal stops it at once (runs KILLED, no trial RUNNING), and the storage password is never logged or printed."""

from __future__ import annotations

import gc
import os
import signal
import subprocess
import sys
import time

import mlflow
import optuna
import pytest
from optuna.trial import TrialState
from test_tune import _wait_for, count_states, parent_runs, study_overrides, trial_runs  # noqa: F401 (a fixture)

from mmfusion import cli, signals
from mmfusion.config import load_config
from mmfusion.data import synthetic
from mmfusion.errors import Interrupted
from mmfusion.jobs.train import TrainResult
from mmfusion.jobs.tune import PARENT_ATTR, log_study_setup
from mmfusion.jobs.tune.report import parent_tags
from mmfusion.jobs.tune.storage import redact, safe_url

ONE_PARAM = "study.search_space={optim.lr: {type: float, low: 1.0e-3, high: 3.0e-2, log: true}}"


def _error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("error:")]


# ---- failing trials end the study ---------------------------------------------------------------------------------


def test_k_failed_trials_in_a_row_end_the_study_and_a_fixed_rerun_resumes_it(mlflow_uri, study_overrides, tmp_path, monkeypatch, capsys):
    args = ["tune", *study_overrides, ONE_PARAM, "study.study_name=broken", "study.n_trials=1", "study.max_failed_trials=2", "study.pruner.name=none"]

    from mmfusion.jobs.tune import objective

    real_train, broken = objective.train, [True]

    def failing_train(cfg, **kwargs):  # what a data error that shows only inside fit looks like to the study
        if broken:
            raise RuntimeError("column 'x' has a value fit cannot use")
        return real_train(cfg, **kwargs)

    monkeypatch.setattr(objective, "train", failing_train)
    code = cli.main(args)
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err, err
    [line] = _error_lines(err)
    assert "2 trials failed in a row (study.max_failed_trials=2)" in line and "column 'x' has a value fit cannot use" in line

    study = optuna.load_study(study_name="broken", storage="sqlite:///optuna.db")
    assert [t.state for t in study.trials] == [TrialState.FAIL, TrialState.FAIL]  # exactly K, then it stopped
    parent = mlflow.MlflowClient(mlflow_uri).get_run(study.user_attrs[PARENT_ATTR])
    assert parent.info.status == "FAILED" and "column 'x' has a value fit cannot use" in parent.data.tags["mmfusion.error"]
    runs = trial_runs(mlflow_uri, parent.info.run_id)
    assert sorted(runs) == [0, 1] and {r.info.status for r in runs.values()} == {"FAILED"}

    broken.clear()  # the cause fixed: the same command resumes the study in the same parent run
    assert cli.main(args) == 0, capsys.readouterr().err
    study = optuna.load_study(study_name="broken", storage="sqlite:///optuna.db")
    assert [t.state for t in study.trials] == [TrialState.FAIL, TrialState.FAIL, TrialState.COMPLETE]
    assert [p.info.run_id for p in parent_runs(mlflow_uri, "broken")] == [parent.info.run_id]
    assert mlflow.MlflowClient(mlflow_uri).get_run(parent.info.run_id).info.status == "FINISHED"


def test_only_failures_in_a_row_count(mlflow_uri, study_overrides, monkeypatch):
    calls = []

    def flaky_train(cfg, **kwargs):
        calls.append(cfg.optim.lr)
        if len(calls) % 2:
            raise RuntimeError("odd call")
        return TrainResult("no-run", {"val_loss": 1.0 / len(calls)}, None)

    monkeypatch.setattr("mmfusion.jobs.tune.objective.train", flaky_train)
    cfg = load_config(None, [*study_overrides, ONE_PARAM, "study.study_name=flaky", "study.n_trials=3", "study.max_failed_trials=2", "study.pruner.name=none"])
    from mmfusion.jobs.tune import run_study

    study = run_study(cfg).study
    assert [t.state for t in study.trials] == [TrialState.FAIL, TrialState.COMPLETE] * 3


def test_a_signal_swallowed_by_a_finalizer_during_garbage_collection_still_stops_the_study(mlflow_uri, study_overrides, monkeypatch):
    class SignalsWhenCollected:  # Ctrl-C arriving while gc runs a finalizer: Python only prints "Exception ignored"
        def __init__(self) -> None:
            self.cycle = self

        def __del__(self) -> None:
            os.kill(os.getpid(), signal.SIGINT)

    def train_leaving_garbage(cfg, **kwargs):
        SignalsWhenCollected()
        return TrainResult("no-run", {"val_loss": 0.5}, None)

    monkeypatch.setattr("mmfusion.jobs.tune.objective.train", train_leaving_garbage)
    cfg = load_config(None, [*study_overrides, ONE_PARAM, "study.study_name=gc", "study.n_trials=3", "study.pruner.name=none"])
    from mmfusion.jobs.tune import run_study

    swallowed = []
    monkeypatch.setattr(sys, "unraisablehook", lambda u: swallowed.append(u.exc_type))  # where "Exception ignored" goes
    gc.disable()  # collect only where the study does, after the trial
    try:
        with pytest.raises(Interrupted):
            run_study(cfg)
    finally:
        gc.enable()
        signals.reset()
    assert swallowed == [Interrupted]  # the Interrupted raised inside __del__ was swallowed ...
    study = optuna.load_study(study_name="gc", storage="sqlite:///optuna.db")
    assert [t.state for t in study.trials] == [TrialState.COMPLETE]  # ... and still no second trial started
    assert mlflow.MlflowClient(mlflow_uri).get_run(study.user_attrs[PARENT_ATTR]).info.status == "KILLED"


# ---- checked before the first trial ----------------------------------------------------------------------------


@pytest.fixture
def table_without_modality(tmp_path) -> str:
    frame = synthetic.make_synthetic(synthetic.SyntheticSpec(n_samples=120), seed=0).drop(columns=[synthetic.MODALITY_COLUMN])
    path = tmp_path / "table.csv"
    frame.to_csv(path, index=False)
    return str(path)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["data.source=table", "{table}", "study.metric=val_attribution_auroc"], "study.metric 'val_attribution_auroc' cannot be computed: the data has no true-modality column"),
        (["data.source=table", "{table}", "data.label_column=outcome"], "outcome"),
        (["optim.class_weights=[1.0, 2.0, 3.0]"], "optim.class_weights has 3 values but the data has 2 classes"),
        (["study.metric=test_accuracy"], "study.metric"),
        (["study.max_failed_trials=0"], "study.max_failed_trials"),
    ],
)
def test_what_every_trial_would_fail_is_refused_before_any_study_or_run(mlflow_uri, study_overrides, tmp_path, capsys, table_without_modality, overrides, message):
    overrides = [f"data.path={table_without_modality}" if o == "{table}" else o for o in overrides]
    code = cli.main(["tune", *study_overrides, ONE_PARAM, "study.n_trials=2", *overrides])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err, err
    [line] = _error_lines(err)
    assert message in line, line
    assert not (tmp_path / "optuna.db").exists() and not (tmp_path / "mlflow.db").exists()  # no study, no run


# ---- the storage password ----------------------------------------------------------------------------------------

SECRET_URL = "postgresql://mmf:s3cret-pw@db.invalid:5432/optuna"


def test_the_storage_password_is_in_no_param_tag_or_artifact_of_the_parent_run(mlflow_uri, study_overrides):
    cfg = load_config(None, [*study_overrides, ONE_PARAM, "study.n_trials=1", f"study.storage={SECRET_URL}"])
    mlflow.set_experiment("tune")
    with mlflow.start_run(tags=parent_tags(cfg.study)) as run:
        log_study_setup(cfg)
    client = mlflow.MlflowClient(mlflow_uri)
    logged = client.get_run(run.info.run_id).data
    yaml_text = mlflow.artifacts.load_text(f"runs:/{run.info.run_id}/study_config.yaml")
    everything = [*logged.params.values(), *logged.tags.values(), yaml_text]
    assert not [v for v in everything if "s3cret-pw" in v]
    shown = "postgresql://mmf:***@db.invalid:5432/optuna"
    assert logged.params["study.storage"] == shown and logged.tags["mmfusion.storage"] == shown and shown in yaml_text
    assert load_config(None, [*study_overrides, ONE_PARAM, "study.n_trials=1"]).study.storage is None  # the default stays null


def test_the_storage_password_is_not_printed_when_the_storage_cannot_be_opened(mlflow_uri, study_overrides, capsys):
    url = "postgresql://mmf:s3cret-pw@127.0.0.1:1/optuna"  # nothing listens on port 1: refused at once
    code = cli.main(["tune", *study_overrides, ONE_PARAM, "study.n_trials=1", f"study.storage={url}"])
    out, err = capsys.readouterr()
    assert code == 2 and "s3cret-pw" not in out + err, out + err
    [line] = _error_lines(err)
    assert "study.storage 'postgresql://mmf:***@127.0.0.1:1/optuna' cannot be opened" in line
    assert redact("password s3cret-pw rejected", url) == "password *** rejected" and safe_url(url).count("***") == 1


# ---- SIGINT / SIGTERM ---------------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_mid_trial_stops_the_study_at_once_and_the_same_command_resumes(mlflow_uri, study_overrides, tmp_path, signum):
    name = f"stop{int(signum)}"
    cmd = [sys.executable, "-m", "mmfusion", "tune", *study_overrides, ONE_PARAM, f"study.study_name={name}", "study.n_trials=1", "study.pruner.name=none"]
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"

    def trial_mid_fit():  # trial 0 RUNNING, its run RUNNING, and at least one epoch logged: inside `fit`
        study = optuna.load_study(study_name=name, storage=storage)
        runs = trial_runs(mlflow_uri, study.user_attrs[PARENT_ATTR]) if PARENT_ATTR in study.user_attrs else {}
        run = runs.get(0)
        return run is not None and run.info.status == "RUNNING" and study.trials[0].state == TrialState.RUNNING and \
            len(mlflow.MlflowClient(mlflow_uri).get_metric_history(run.info.run_id, "val_loss")) >= 1

    proc = subprocess.Popen([*cmd, "trainer.max_epochs=200"], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        _wait_for(trial_mid_fit, proc, 240, "trial 0 inside fit")
        proc.send_signal(signum)
        sent = time.monotonic()
        out = proc.communicate(timeout=60)[0]
        took = time.monotonic() - sent
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 128 + signum, out[-3000:]
    assert took < 30 and "Traceback" not in out and _error_lines(out) == [f"error: interrupted by {signal.Signals(signum).name} (runs in progress were marked KILLED)"], out[-3000:]

    study = optuna.load_study(study_name=name, storage=storage)
    assert [t.state for t in study.trials] == [TrialState.FAIL]  # none RUNNING, and no next trial was started
    parent_id = study.user_attrs[PARENT_ATTR]
    client = mlflow.MlflowClient(mlflow_uri)
    assert client.get_run(parent_id).info.status == "KILLED"
    run = trial_runs(mlflow_uri, parent_id)[0]
    assert run.info.status == "KILLED" and "mmfusion.error" not in run.data.tags and run.data.tags["mmfusion.stopped_by"] == signal.Signals(signum).name
    assert len(client.get_metric_history(run.info.run_id, "val_loss")) < 200  # stopped mid-fit

    if signum != signal.SIGINT:
        return
    again = subprocess.run([*cmd, "trainer.max_epochs=1"], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    study = optuna.load_study(study_name=name, storage=storage)
    assert [t.state for t in study.trials] == [TrialState.FAIL, TrialState.COMPLETE] and study.user_attrs[PARENT_ATTR] == parent_id
    assert client.get_run(parent_id).info.status == "FINISHED" and len(parent_runs(mlflow_uri, name)) == 1
