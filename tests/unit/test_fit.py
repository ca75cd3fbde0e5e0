"""The training core (`mmfusion.training.fit`) without MLflow or environment variables, and the explicit job file that
replaced the environment-variable modes of the workers."""

from __future__ import annotations

import ast
import os
import re
from pathlib import Path

import mlflow
import pytest

from mmfusion.config import load_config
from mmfusion.data.datamodule import prepare_data
from mmfusion.encoders import load_tokenizer
from mmfusion.jobs.launch import Job, read_result, write_result
from mmfusion.tracking import predictions
from mmfusion.training.fit import fit

PACKAGE = Path(__file__).resolve().parents[2] / "mmfusion"


def test_fit_trains_without_mlflow_and_leaves_the_environment_alone(mlflow_uri, tiny_overrides, tmp_path):
    cfg = load_config(None, [*tiny_overrides, "model.fusion=gate"])
    tokenizer = load_tokenizer(cfg.model.text_encoder)
    data = prepare_data(cfg.data, cfg.seed, tokenizer)
    before = dict(os.environ)
    result = fit(cfg, data, logger=False, checkpoint_dir=tmp_path / "ckpt", pad_id=tokenizer.pad_token_id)
    # the one change is Lightning's own: Trainer(deterministic=True) sets cuBLAS's reproducibility workspace
    lightning = {"CUBLAS_WORKSPACE_CONFIG": ":4096:8"}
    assert {k: v for k, v in os.environ.items() if before.get(k) != v} == {k: v for k, v in lightning.items() if before.get(k) != v}
    assert set(before) <= set(os.environ)
    assert mlflow.active_run() is None and not (tmp_path / "mlflow.db").exists()  # no run, not even a store
    assert (tmp_path / "ckpt" / "last.ckpt").is_file()

    assert result.is_global_zero and set(result.outputs) == {"train", "val", "test"}
    test = result.outputs["test"]
    assert sorted(test["index"].tolist()) == list(range(len(data.splits["test"].ids)))  # every test sample once
    accuracy = (test["probs"].argmax(1) == test["label"]).float().mean().item()
    assert accuracy == pytest.approx(result.metrics["test_accuracy"], abs=1e-6)
    assert result.model is result.module.model and not result.model.training  # the full model, in eval mode
    assert result.cost_metrics["n_params"] == sum(p.numel() for p in result.model.parameters())
    assert result.train_seconds > 0.0
    table = predictions.table(test, data, "test")
    assert list(table.columns[:3]) == ["id", "label", "pred"] and len(table) == len(data.splits["test"].ids)


def test_fit_needs_a_checkpoint_dir_when_checkpoints_are_on(tiny_overrides):
    cfg = load_config(None, tiny_overrides)
    with pytest.raises(ValueError, match="checkpoint_dir"):
        fit(cfg, data=None)


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_the_training_core_imports_no_mlflow_and_no_jobs():
    found = {p.name: sorted(n for n in _imports(p) if n.split(".")[0] == "mlflow" or n.startswith(("mmfusion.jobs", "mmfusion.tracking")))
             for p in (PACKAGE / "training").glob("*.py")}
    assert "fit.py" in found
    assert {k: v for k, v in found.items() if v} == {}
    assert not re.search(r"\bos\.environ\b", (PACKAGE / "training" / "fit.py").read_text())


def test_no_library_code_reads_mmfusion_environment_variables():
    hits = [f"{p.relative_to(PACKAGE.parent)}:{i}" for p in PACKAGE.rglob("*.py") for i, line in enumerate(p.read_text().splitlines(), 1) if "MMFUSION_" in line]
    assert hits == []


def test_job_file_and_result_round_trip(tmp_path):
    job = Job(str(tmp_path / "config.yaml"), "abc123", "sqlite:///x.db", str(tmp_path), resume=True, trial={"study": "s", "trial_number": 3})
    assert Job.read(job.write(tmp_path / "job.json")) == job
    import pandas as pd

    write_result(tmp_path, {"test_accuracy": 0.75}, pd.DataFrame({"id": [3, 1], "pred": ["a", "b"]}))
    metrics, test = read_result(tmp_path)
    assert metrics == {"test_accuracy": 0.75} and test["id"].tolist() == [3, 1] and test["pred"].tolist() == ["a", "b"]


def test_a_trial_spec_names_the_trial_by_number_through_public_storage_apis(tmp_path):
    import optuna

    from mmfusion.config import PrunerConfig, StudyConfig
    from mmfusion.jobs.tune.storage import trial_callbacks, trial_spec

    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    study = optuna.create_study(study_name="s", storage=url)
    other = optuna.create_study(study_name="other", storage=url)  # trial ids are global: another study's come first
    for _ in range(2):
        other.ask()
    asked = [study.ask() for _ in range(3)]
    sc = StudyConfig.model_construct(study_name="s", metric="val_loss", pruner=PrunerConfig(name="median"))
    spec = trial_spec(url, sc, 1, 5)
    assert "trial_id" not in spec and spec["trial_number"] == 1
    [callback] = trial_callbacks(spec)
    assert callback._trial.number == 1 and callback._trial.study.study_name == "s"
    callback._trial.report(0.5, step=0)  # reports land on that trial
    assert study.trials[1].intermediate_values == {0: 0.5} and not asked[2].study.trials[2].intermediate_values
