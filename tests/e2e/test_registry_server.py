"""The model registry against an `mlflow server` (SQLite backend, proxied artifacts) on loopback: `train ...
tracking.register_as=NAME` registers the run's model there, `predict --model models:/NAME@best` scores with PyTorch and
with ONNX Runtime alike, and every artifact is stored by the server, none in the working directory."""

from __future__ import annotations


import mlflow
import pandas as pd
import pytest

from mmfusion.cli import main
from mmfusion.config import load_config
from mmfusion.data import synthetic
from mmfusion.jobs.train import train
from mmfusion.tracking.contract import Tag
from mmfusion.tracking.registry import resolve_run

pytestmark = pytest.mark.slow


def test_register_and_predict_by_name_against_a_tracking_server(mlflow_server, tiny_overrides, tmp_path):
    url, artifacts, work = mlflow_server
    run_id = train(load_config(None, [*tiny_overrides, "tracking.log_model=true", "export.onnx=true", "tracking.register_as=served",
                                      "tracking.experiment=registry-server"])).run_id

    client = mlflow.MlflowClient(url)
    assert resolve_run("models:/served@best") == run_id
    version = client.get_model_version_by_alias("served", "best")
    assert version.version == "1" and version.run_id == run_id and version.tags[Tag.ONNX_MODEL_ID].startswith("m-")  # the ONNX sibling is recorded
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.info.artifact_uri.startswith("mlflow-artifacts:")

    rows, out = tmp_path / "rows.csv", tmp_path / "out"
    out.mkdir()
    synthetic.make_synthetic(synthetic.SyntheticSpec(n_samples=20), seed=3).head(8).to_csv(rows, index=False)
    assert main(["predict", "--model", "models:/served@best", "--input", str(rows), "--output", str(out / "torch.csv")]) == 0
    assert main(["predict", "--model", "models:/served@best", "--input", str(rows), "--output", str(out / "onnx.csv"), "--onnx"]) == 0
    torch_pred, onnx_pred = pd.read_csv(out / "torch.csv"), pd.read_csv(out / "onnx.csv")
    assert len(torch_pred) == len(onnx_pred) == 8 and list(torch_pred.columns) == list(onnx_pred.columns)
    assert (torch_pred["pred"].astype(str) == onnx_pred["pred"].astype(str)).all()
    probs = [c for c in torch_pred.columns if c.startswith("prob")]
    assert probs and {"w_text", "w_tab"} <= set(torch_pred.columns)
    for column in [*probs, "w_text", "w_tab"]:
        assert (torch_pred[column] - onnx_pred[column]).abs().max() <= 1e-4, column

    # the server stored the run's files and both logged models; the working directory holds only the run's local
    # job folder (trainer.output_dir: checkpoints, run.json), no store, no artifact and no model
    stored = {p.name for p in artifacts.rglob("*") if p.is_file()}
    assert {"MLmodel", "config.yaml"} <= stored and any(name.endswith(".onnx") for name in stored)
    assert sum(1 for _ in artifacts.rglob("MLmodel")) >= 2  # the pyfunc bundle and its ONNX sibling
    assert [p.name for p in work.iterdir()] == ["outputs"] and [p.name for p in (work / "outputs").iterdir()] == [run_id]
    local = {p.relative_to(work / "outputs" / run_id).parts[0] for p in (work / "outputs" / run_id).rglob("*") if p.is_file()}
    assert local <= {"checkpoints", "run.json"}, local  # run.json: run id + URI for `train --resume`
    assert not any(p.name in {"MLmodel", "config.yaml", "mlflow.db"} or p.suffix == ".onnx" for p in work.rglob("*"))
