"""`reproduce`: a logged run trained again from MLflow's records gives the same metrics and predictions, bit for bit on
CPU; changed data is a clear error; code and library differences are warnings; it works against an `mlflow server`."""

from __future__ import annotations

import os

import mlflow
import numpy as np
import pandas as pd
import pytest
import yaml

from mmfusion.cli import main
from mmfusion.data import synthetic
from mmfusion.jobs.reproduce import check_environment, reproduce
from mmfusion.tracking.session import git_sha, library_versions


@pytest.fixture
def cheap(tiny_overrides, request) -> list[str]:
    return [*tiny_overrides, "tracking.log_model=false", "export.onnx=false", f"tracking.experiment={request.node.name[:60]}"]


def run_ids(uri: str, experiment: str) -> list[str]:
    mlflow.set_tracking_uri(uri)
    return mlflow.search_runs(experiment_names=[experiment[:60]])["run_id"].tolist()


def test_reproduce_gives_identical_metrics_and_predictions(mlflow_module_uri, cheap, tmp_path, capsys, request):
    mlflow_uri, name = mlflow_module_uri, request.node.name
    # hard routing samples Gumbel noise and the encoder trains with dropout: randomness that must replay exactly
    config = tmp_path / "exp.yaml"
    config.write_text(yaml.safe_dump({"seed": 3, "model": {"fusion": "moe", "router": "mlp", "routing": "hard"}, "trainer": {"max_epochs": 2}}))
    assert main(["train", "--config", str(config), *cheap]) == 0
    (original,) = run_ids(mlflow_uri, name)
    config.unlink()  # the file the run started from is gone: MLflow's record is enough

    capsys.readouterr()
    assert main(["reproduce", "--run-id", original, "--tolerance", "0"]) == 0
    printed = capsys.readouterr().out
    assert "largest metric difference: 0" in printed and "reproduced within 0: yes" in printed
    client = mlflow.MlflowClient(mlflow_uri)
    (new,) = set(run_ids(mlflow_uri, name)) - {original}
    a, b = client.get_run(original), client.get_run(new)
    assert b.data.tags["mmfusion.reproduces"] == original and b.info.status == "FINISHED"
    assert b.data.params == a.data.params  # the same resolved config
    for key in ("val_loss", "test_loss", "test_accuracy", "test_auroc", "test_attribution_auroc", "test_faithfulness", "train_loss", "n_params"):
        assert b.data.metrics[key] == a.data.metrics[key], key  # exactly equal, not approximately
    preds = [pd.read_csv(mlflow.artifacts.download_artifacts(run_id=r, artifact_path="predictions/test.csv", dst_path=str(tmp_path / r))) for r in (original, new)]
    pd.testing.assert_frame_equal(preds[0], preds[1], check_exact=True)
    report = mlflow.artifacts.load_dict(f"runs:/{new}/reproduction.json")
    assert report["original"] == original and report["max_metric_diff"] == 0.0 and report["predictions"]["max_abs_diff"] == 0.0


def test_changed_data_is_a_clear_error_unless_allowed(mlflow_module_uri, cheap, tmp_path, capsys, request):
    mlflow_uri, name = mlflow_module_uri, request.node.name
    table = synthetic.make_synthetic(synthetic.SyntheticSpec(n_samples=120), seed=0)
    path = tmp_path / "data.csv"
    table.to_csv(path, index=False)
    data = ["data.source=table", f"data.path={path}", "data.id_column=id", f"data.numeric_columns={synthetic.NUMERIC_COLUMNS}", "model.freeze_text_encoder=true"]
    assert main(["train", *cheap, *data]) == 0
    (original,) = run_ids(mlflow_uri, name)

    table.loc[0, "label"] = "resolved" if table.loc[0, "label"] == "escalate" else "escalate"  # one label edited
    table.to_csv(path, index=False)
    capsys.readouterr()
    assert main(["reproduce", "--run-id", original]) == 2
    err = capsys.readouterr().err
    assert "error: the data changed since run " + original in err and str(path) in err and "--allow-data-change" in err
    assert "Traceback" not in err and run_ids(mlflow_uri, name) == [original]  # nothing was trained or logged

    assert main(["reproduce", "--run-id", original, "--allow-data-change"]) == 1  # trained on other data: not reproduced
    out = capsys.readouterr()
    assert "warning: the data changed" in out.out
    new = mlflow.search_runs(search_all_experiments=True, filter_string=f"tags.`mmfusion.reproduces` = '{original}'")
    assert len(new) == 1 and new["tags.mmfusion.data_fingerprint"].iloc[0] != mlflow.get_run(original).data.tags["mmfusion.data_fingerprint"]


def test_code_and_library_differences_are_warnings(mlflow_module_uri):
    client = mlflow.MlflowClient(mlflow_module_uri)
    run = client.create_run(client.create_experiment("e"), tags={"mmfusion.git_sha": "0123abc"})
    client.log_dict(run.info.run_id, {**library_versions(), "torch": "0.0.1", "gone-lib": "1.0"}, "environment.json")
    warnings = check_environment(client, client.get_run(run.info.run_id))
    assert any("0123abc" in w and git_sha() in w for w in warnings)
    libs = next(w for w in warnings if w.startswith("library versions differ"))
    assert f"torch 0.0.1 -> {library_versions()['torch']}" in libs and "gone-lib 1.0 -> not checked" in libs
    assert "numpy" not in libs  # unchanged libraries are not listed


def test_unknown_run_is_exit_2(mlflow_module_uri, capsys):
    assert main(["reproduce", "--run-id", "0123456789abcdef0123456789abcdef"]) == 2
    assert "run '0123456789abcdef0123456789abcdef' not found in the tracking store" in capsys.readouterr().err


def test_reproduce_against_a_tracking_server(mlflow_server, cheap, tmp_path):
    from mmfusion.config import load_config
    from mmfusion.jobs.train import train

    original = train(load_config(None, [*cheap, "model.fusion=gate", "model.freeze_text_encoder=true"])).run_id
    rep = reproduce(original)
    assert rep.within(0.0) and rep.max_metric_diff == 0.0 and rep.predictions["same_preds"]
    url, artifacts, work = mlflow_server
    client = mlflow.MlflowClient(url)
    new = client.get_run(rep.run_id)
    assert new.data.tags["mmfusion.reproduces"] == original and new.info.artifact_uri.startswith("mlflow-artifacts:")
    assert any(artifacts.rglob("reproduction.json"))  # stored by the server, not locally
    assert not (work / "mlflow.db").exists() and not (work / "mlruns").exists()
    assert os.environ["MLFLOW_TRACKING_URI"] == url
    assert np.isfinite(new.data.metrics["test_accuracy"])
