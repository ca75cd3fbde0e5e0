"""`tune`: Optuna studies of tiny-BERT trials, read back from the Optuna storage and from MLflow."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid

import mlflow
import optuna
import pytest
from optuna.trial import TrialState

from mmfusion import cli
from mmfusion.config import load_config
from mmfusion.jobs.tune import PARENT_ATTR, engine_url, run_study, sample_params

SPACE = "study.search_space={model.fusion: {type: categorical, choices: [concat, moe, moe_topk]}, model.router: {type: categorical, choices: [linear, mlp], when: {model.fusion: [moe, moe_topk]}}, model.n_experts: {type: int, low: 2, high: 4, step: 2, when: {model.fusion: moe_topk}}, optim.lr: {type: float, low: 1.0e-3, high: 3.0e-2, log: true}}"


@pytest.fixture
def study_overrides(tiny_overrides) -> list[str]:
    """Tiny frozen-encoder trials of 2 epochs, nothing a study does not compare (model files, ONNX, checkpoints)."""
    return [*tiny_overrides, "trainer.max_epochs=2", "model.freeze_text_encoder=true", "tracking.log_model=false", "export.onnx=false",
            "trainer.checkpoints=false", "tracking.experiment=tune", "study.metric=val_loss", "study.heartbeat_interval=1", "study.grace_period=3", SPACE]


def trial_runs(uri: str, parent_id: str) -> dict[int, mlflow.entities.Run]:
    client = mlflow.MlflowClient(uri)
    exp = client.get_run(parent_id).info.experiment_id
    runs = [r for r in client.search_runs([exp], f"tags.`mlflow.parentRunId` = '{parent_id}'") if "mmfusion.retrain_of" not in r.data.tags]  # trials only
    numbers = [int(r.data.tags["mmfusion.trial_number"]) for r in runs]
    assert len(numbers) == len(set(numbers)), numbers  # one run per trial
    return dict(zip(numbers, runs))


def parent_runs(uri: str, study_name: str) -> list[mlflow.entities.Run]:
    return mlflow.MlflowClient(uri).search_runs([e.experiment_id for e in mlflow.MlflowClient(uri).search_experiments()], f"tags.`mmfusion.role` = 'study' and tags.`mmfusion.study` = '{study_name}'")


def test_conditional_parameters_are_sampled_only_for_their_variant(study_overrides):
    space = load_config(None, [*study_overrides, "study.n_trials=1"]).study.search_space
    # FixedTrial raises for any parameter it is asked for but was not given: what is not listed was not sampled
    assert sample_params(optuna.trial.FixedTrial({"model.fusion": "concat", "optim.lr": 0.01}), space) == {"model.fusion": "concat", "optim.lr": 0.01}
    topk = {"model.fusion": "moe_topk", "model.router": "mlp", "model.n_experts": 4, "optim.lr": 0.01}
    assert sample_params(optuna.trial.FixedTrial(topk), space) == topk
    assert "model.n_experts" not in sample_params(optuna.trial.FixedTrial({"model.fusion": "moe", "model.router": "linear", "optim.lr": 0.01}), space)


@pytest.mark.parametrize(
    "override, message",
    [
        ("study.search_space={model.fusion: {type: categorical, choices: [concat, moee]}}", "study.search_space.model.fusion: 'moee' is not a valid value"),
        ("study.search_space={model.fusoin: {type: categorical, choices: [concat]}}", "'model.fusoin' is not a config value"),
        ("study.search_space={optim.lr: {type: float, low: 0.1, high: 0.01}}", "low (0.1) is above high (0.01)"),
        ("study.search_space={model.router: {type: categorical, choices: [mlp], when: {model.fusion: moe}}}", "`when` refers to 'model.fusion'"),
        ("study.pruner.name=asha", "study.pruner.name"),
        ("study.n_trials=null", "study needs n_trials, timeout or both"),
    ],
)
def test_config_errors_end_the_study_before_any_trial(mlflow_uri, study_overrides, tmp_path, capsys, override, message):
    code = cli.main(["tune", *study_overrides, "study.n_trials=2", override])
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err, err
    assert not (tmp_path / "optuna.db").exists() and not (tmp_path / "mlflow.db").exists()  # no study, no run


def test_nested_runs_pruning_and_a_failing_trial(mlflow_uri, study_overrides):
    space = "study.search_space={optim.lr: {type: categorical, choices: [0.03, 1.0e-7]}, model.fusion_dim: {type: categorical, choices: [16, 30]}}"
    cfg = load_config(None, [*study_overrides, space, "model.fusion=attention", "study.study_name=s1", "study.n_trials=3", "study.pruner.n_startup_trials=1"])
    study = optuna.create_study(study_name="s1", storage="sqlite:///optuna.db", direction="minimize")
    # a learning trial, one that cannot learn (pruned after its first epoch), one whose combination is invalid
    # (fusion_dim 30 with 4 attention heads: the trial fails, the study goes on), and another that cannot learn
    for lr, dim in [(0.03, 16), (1e-7, 16), (0.03, 30), (1e-7, 16)]:
        study.enqueue_trial({"optim.lr": lr, "model.fusion_dim": dim})
    result = run_study(cfg)

    trials = result.study.trials
    assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL, TrialState.PRUNED]
    assert result.study.user_attrs[PARENT_ATTR] == result.parent_run_id
    client = mlflow.MlflowClient(mlflow_uri)
    parent = client.get_run(result.parent_run_id)
    assert parent.info.status == "FINISHED" and [r.info.run_id for r in parent_runs(mlflow_uri, "s1")] == [result.parent_run_id]
    runs = trial_runs(mlflow_uri, result.parent_run_id)
    assert sorted(runs) == [0, 1, 2, 3]
    assert [runs[n].info.status for n in range(4)] == ["FINISHED", "KILLED", "FAILED", "KILLED"]
    for n, run in runs.items():
        assert run.data.tags["mmfusion.study"] == "s1" and trials[n].user_attrs["mlflow_run_id"] == run.info.run_id
        assert float(run.data.params["optim.lr"]) == trials[n].params["optim.lr"]  # params as sampled
    # every epoch, then the restored best epoch (trainer.restore_best) if it was not the last one
    val_loss = [m.value for m in sorted(client.get_metric_history(runs[0].info.run_id, "val_loss"), key=lambda m: (m.step, m.timestamp))]
    if val_loss[0] < val_loss[1]:
        assert len(val_loss) == 3 and val_loss[2] == pytest.approx(val_loss[0])
    else:
        assert len(val_loss) == 2
    assert len(client.get_metric_history(runs[1].info.run_id, "val_loss")) == 1  # stopped after the first epoch
    assert "pruned at epoch 0" in runs[1].data.tags["mmfusion.pruned"] and "mmfusion.error" not in runs[1].data.tags
    assert "divisible by model.fusion_options.heads" in runs[2].data.tags["mmfusion.error"]
    assert runs[0].data.metrics["val_loss"] == pytest.approx(trials[0].value)
    assert {"test_accuracy", "train_seconds"} <= set(runs[0].data.metrics)  # a complete trial is a complete train run
    assert {"config.yaml", "predictions"} <= {a.path for a in client.list_artifacts(runs[0].info.run_id)}

    assert parent.data.metrics["best_value"] == pytest.approx(trials[0].value) and parent.data.metrics["n_pruned"] == 2
    assert parent.data.tags["mmfusion.best_run_id"] == runs[0].info.run_id and parent.data.tags["best.optim.lr"] == "0.03"
    assert runs[0].info.run_id in parent.data.tags["mlflow.note.content"]
    artifacts = {a.path for a in client.list_artifacts(result.parent_run_id)} | {a.path for a in client.list_artifacts(result.parent_run_id, "plots")}
    assert {"best_trial.json", "plots/optimization_history.png", "plots/parallel_coordinates.png"} <= artifacts


def test_embedding_cache_gives_the_same_trial_values(mlflow_uri, study_overrides, tmp_path):
    """Seeded TPE: both studies sample the same parameters, so their values must agree with and without the cache."""
    common = [*study_overrides, "study.n_trials=2", "study.pruner.name=none"]
    plain = run_study(load_config(None, [*common, "study.study_name=plain"]))
    cached = run_study(load_config(None, [*common, "study.study_name=cached", f"data.cache_dir={tmp_path / 'cache'}"]))
    assert len(list((tmp_path / "cache").glob("*.safetensors"))) == 3  # encoded once (train, val, test), read by the 2nd trial
    assert [t.params for t in cached.study.trials] == [t.params for t in plain.study.trials]
    assert [t.state for t in cached.study.trials] == [TrialState.COMPLETE] * 2
    for a, b in zip(plain.study.trials, cached.study.trials):
        assert b.value == pytest.approx(a.value, abs=1e-6)
        assert b.intermediate_values == pytest.approx(a.intermediate_values, abs=1e-6)
    plots = {a.path for a in mlflow.MlflowClient(mlflow_uri).list_artifacts(cached.parent_run_id, "plots")}
    assert {"plots/optimization_history.png", "plots/param_importances.png", "plots/parallel_coordinates.png", "plots/router_weights.png"} <= plots  # the study's, the best lean trial's


def test_lean_trials_give_the_same_values_and_the_best_trials_outputs_are_logged_once(mlflow_uri, study_overrides, tmp_path):
    """The same seeded study, full trials then lean ones: the same values per trial and epoch, the same metric names;
    lean trial runs have no plots, the parent has the best trial's (from the model kept in memory); where the model
    was not kept, the best config is trained once more, nested under the parent, with the same value."""
    from mmfusion.jobs.tune.best import log_best_outputs
    from mmfusion.tracking.contract import Tag

    common = [*study_overrides, "study.n_trials=3", "study.pruner.name=none", "study.sampler={name: random, seed: 3}", f"data.cache_dir={tmp_path / 'cache'}",
              "study.search_space={model.fusion: {type: categorical, choices: [concat, gate]}, data.max_chunks: {type: categorical, choices: [2, 4]}, optim.lr: {type: float, low: 1.0e-3, high: 3.0e-2, log: true}}"]
    full = run_study(load_config(None, [*common, "study.study_name=full", "study.lean_trials=false"]))
    lean = run_study(load_config(None, [*common, "study.study_name=lean"]))
    assert [t.params for t in lean.study.trials] == [t.params for t in full.study.trials]
    assert len({t.params["data.max_chunks"] for t in lean.study.trials}) == 2  # a data parameter: the memo must miss
    for a, b in zip(full.study.trials, lean.study.trials):
        assert b.state == a.state == TrialState.COMPLETE
        assert b.value == a.value and b.intermediate_values == a.intermediate_values  # identical, not close
    client = mlflow.MlflowClient(mlflow_uri)
    full_runs, lean_runs = trial_runs(mlflow_uri, full.parent_run_id), trial_runs(mlflow_uri, lean.parent_run_id)
    for n in range(3):
        f, g = full_runs[n], lean_runs[n]
        assert set(g.data.metrics) == set(f.data.metrics)  # what compare and the report read
        assert {k: v for k, v in g.data.metrics.items() if k.startswith(("val_", "test_"))} == {k: v for k, v in f.data.metrics.items() if k.startswith(("val_", "test_"))}
        assert g.data.tags[Tag.LEAN] == "true" and Tag.LEAN not in f.data.tags
        assert {a.path for a in client.list_artifacts(g.info.run_id)} == {a.path for a in client.list_artifacts(f.info.run_id)} - {"plots"}
    parent = client.get_run(lean.parent_run_id)
    best_run = lean.study.best_trial.user_attrs["mlflow_run_id"]
    assert parent.data.tags[Tag.BEST_OUTPUTS] == lean.parent_run_id and parent.data.tags[Tag.BEST_OUTPUTS_OF] == best_run
    plots = {a.path for a in client.list_artifacts(lean.parent_run_id, "plots")}
    full_best_plots = {a.path for a in client.list_artifacts(full.study.best_trial.user_attrs["mlflow_run_id"], "plots")}
    assert full_best_plots and full_best_plots <= plots  # the best trial's plots, beside the study's own
    assert "plots/router_weights.png" in full_best_plots

    client.delete_tag(lean.parent_run_id, Tag.BEST_OUTPUTS_OF)  # as if the best trial had run in another worker
    retrain_id = log_best_outputs(client, lean.study, lean.parent_run_id, None, mlflow_uri)
    retrain = client.get_run(retrain_id)
    assert retrain.data.tags[Tag.RETRAIN_OF] == best_run and retrain.data.tags["mlflow.parentRunId"] == lean.parent_run_id
    assert retrain.data.metrics["val_loss"] == pytest.approx(lean.study.best_value, abs=1e-6)
    assert "plots/router_weights.png" in {a.path for a in client.list_artifacts(retrain_id, "plots")}
    assert client.get_run(lean.parent_run_id).data.tags[Tag.BEST_OUTPUTS] == retrain_id
    assert sorted(trial_runs(mlflow_uri, lean.parent_run_id)) == [0, 1, 2]  # the retrain is no trial


@pytest.mark.slow
def test_pruning_reaches_the_workers_of_a_multi_process_fsdp_trial(mlflow_uri, study_overrides):
    fsdp = ["trainer.strategy=fsdp", "trainer.devices=2", "trainer.accelerator=cpu"]
    cfg = load_config(None, [*study_overrides, *fsdp, "study.study_name=fsdp", "study.n_trials=2", "study.pruner.n_startup_trials=1",
                             "study.search_space={optim.lr: {type: categorical, choices: [1.0e-7]}}"])
    study = optuna.create_study(study_name="fsdp", storage="sqlite:///optuna.db", direction="minimize")
    dist = {"optim.lr": optuna.distributions.CategoricalDistribution([1e-7])}  # a made-up excellent trial to compare with
    study.add_trial(optuna.create_trial(params={"optim.lr": 1e-7}, distributions=dist, value=0.01, intermediate_values={0: 0.01, 1: 0.01}))
    trial = run_study(cfg).study.trials[1]
    assert trial.state == TrialState.PRUNED and list(trial.intermediate_values) == [0]  # rank 0 reported epoch 0, then all stopped
    client = mlflow.MlflowClient(mlflow_uri)
    run = client.get_run(trial.user_attrs["mlflow_run_id"])
    assert run.info.status == "KILLED" and run.data.tags["mmfusion.world_size"] == "2"
    assert len(client.get_metric_history(run.info.run_id, "val_loss")) == 1


def _wait_for(predicate, proc: subprocess.Popen, timeout: float, what: str):
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if proc.poll() is not None:
            raise AssertionError(f"tune exited ({proc.returncode}) before {what}: {proc.stdout.read()[-3000:]}")
        try:
            found = predicate()
        except Exception:  # the storage or the MLflow store may not exist yet
            found = None
        if found:
            return found
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.slow
def test_sigkill_mid_trial_then_the_same_command_resumes(mlflow_uri, study_overrides, tmp_path):
    # full trials: a lean one can end before the poll sees its run RUNNING (the kill must land inside a trial)
    cmd = [sys.executable, "-m", "mmfusion", "tune", *study_overrides, "study.study_name=crash", "study.n_trials=2", "study.pruner.name=none", "study.lean_trials=false", "trainer.max_epochs=6"]
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"

    def running_trial_with_a_run():
        study = optuna.load_study(study_name="crash", storage=storage)
        if count_states(study)[TrialState.COMPLETE] < 1 or PARENT_ATTR not in study.user_attrs:
            return None
        running = [t.number for t in study.get_trials(states=(TrialState.RUNNING,))]
        runs = trial_runs(mlflow_uri, study.user_attrs[PARENT_ATTR]) if running else {}
        return running[0] if running and running[0] in runs and runs[running[0]].info.status == "RUNNING" else None

    proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        killed = _wait_for(running_trial_with_a_run, proc, 240, "a trial's run was RUNNING after one trial completed")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    before = optuna.load_study(study_name="crash", storage=storage)
    parent_id = before.user_attrs[PARENT_ATTR]
    first = trial_runs(mlflow_uri, parent_id)[0].info.run_id

    again = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "best trial #" in again.stdout

    study = optuna.load_study(study_name="crash", storage=storage)
    states = count_states(study)
    assert states[TrialState.COMPLETE] + states[TrialState.PRUNED] == 2 and states[TrialState.FAIL] == 1
    assert study.trials[killed].state == TrialState.FAIL
    retry = [t for t in study.trials if t.system_attrs.get("failed_trial") == killed]
    assert len(retry) == 1 and retry[0].state == TrialState.COMPLETE and retry[0].params == study.trials[killed].params
    assert study.user_attrs[PARENT_ATTR] == parent_id and len(parent_runs(mlflow_uri, "crash")) == 1  # the same parent run
    runs = trial_runs(mlflow_uri, parent_id)
    assert runs[0].info.run_id == first and runs[0].info.status == "FINISHED"  # the completed trial was not run again
    assert runs[killed].info.status == "FAILED" and "no heartbeat" in runs[killed].data.tags["mmfusion.error"]
    assert runs[retry[0].number].info.status == "FINISHED"
    assert mlflow.MlflowClient(mlflow_uri).get_run(parent_id).info.status == "FINISHED"


def count_states(study: optuna.Study) -> dict[TrialState, int]:
    return {s: len(study.get_trials(deepcopy=False, states=(s,))) for s in TrialState}


@pytest.fixture
def postgres_storage():
    """A fresh database on the server CI starts (.ci/run); skipped without one."""
    url = os.environ.get("MMFUSION_TEST_POSTGRES_URL")
    if not url:
        pytest.skip("MMFUSION_TEST_POSTGRES_URL is not set (.ci/run starts PostgreSQL and sets it)")
    import psycopg2
    from sqlalchemy.engine import make_url

    name = f"mmfusion_test_{uuid.uuid4().hex[:10]}"
    admin = psycopg2.connect(url)
    admin.autocommit = True
    admin.cursor().execute(f"CREATE DATABASE {name}")
    yield make_url(url).set(database=name).render_as_string(hide_password=False)
    admin.cursor().execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    admin.close()


@pytest.mark.slow
def test_two_workers_share_a_study_on_postgresql(mlflow_uri, study_overrides, tmp_path, postgres_storage):
    cmd = [sys.executable, "-m", "mmfusion", "tune", *study_overrides, "study.study_name=pair", "study.n_trials=4", f"study.storage={postgres_storage}",
           "study.grace_period=10", "study.pruner.name=none"]
    mlflow.set_tracking_uri(mlflow_uri)
    mlflow.set_experiment("tune")  # the MLflow store exists before two processes open it at once
    workers = [subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for _ in range(2)]
    outputs = [w.communicate(timeout=400)[0] for w in workers]
    assert [w.returncode for w in workers] == [0, 0], "\n".join(o[-3000:] for o in outputs)

    study = optuna.load_study(study_name="pair", storage=engine_url(postgres_storage))
    numbers = [t.number for t in study.trials]
    assert numbers == list(range(len(numbers)))  # no duplicates, no gaps
    assert count_states(study)[TrialState.COMPLETE] == 4
    assert all("finished with value" in o for o in outputs)  # both workers ran trials of the one study
    parents = parent_runs(mlflow_uri, "pair")
    assert [p.info.run_id for p in parents] == [study.user_attrs[PARENT_ATTR]]
    runs = trial_runs(mlflow_uri, parents[0].info.run_id)
    assert {n for n, t in enumerate(study.trials) if t.state == TrialState.COMPLETE} <= set(runs)
    assert all(f"best trial #{study.best_trial.number}" in o for o in outputs)  # both waited for the study to end
