"""Data lineage: each split is an MLflow dataset input of the run (name, source, digest); a changed table shows up
as the split whose digest moved, naming both digests."""

from __future__ import annotations

import warnings

import mlflow
import pandas as pd
import pytest

from mmfusion.config import load_config
from mmfusion.data import synthetic
from mmfusion.data.datamodule import prepare_data
from mmfusion.encoders import load_tokenizer
from mmfusion.tracking.lineage import changed_splits, data_name, log_inputs, recorded_digests


@pytest.fixture(scope="module")
def tokenizer(tiny_bert):
    return load_tokenizer(tiny_bert)


def table_cfg(path, extra=()):
    return load_config(None, ["data.source=table", f"data.path={path}", "data.id_column=id", f"data.numeric_columns={synthetic.NUMERIC_COLUMNS}",
                              f"data.categorical_columns={synthetic.CATEGORICAL_COLUMNS}", "data.max_chunks=2", "data.chunk_len=16", *extra])


@pytest.mark.parametrize("path, name", [("data/clothing/train.csv", "clothing"), ("x/reviews.parquet", "reviews"), ("train.csv", "train")])
def test_data_name(path, name):
    assert data_name(table_cfg(path)) == name
    assert data_name(load_config(None)) == "synthetic"


def test_each_split_is_a_logged_input_and_a_change_names_both_digests(mlflow_uri, tokenizer, tmp_path):
    path = tmp_path / "shop" / "train.csv"
    path.parent.mkdir()
    table = synthetic.make_synthetic(synthetic.SyntheticSpec(n_samples=80), seed=0)
    table["n_prior_orders"] = table["n_prior_orders"].fillna(0).round().astype(int)  # an integer column, as real tables have
    table.to_csv(path, index=False)
    cfg = table_cfg(path)
    data = prepare_data(cfg.data, cfg.seed, tokenizer)
    with mlflow.start_run() as run, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        log_inputs(cfg, data)
    assert not [w for w in caught if "Inferred schema" in str(w.message)]  # MLflow's signature hint, not for a dataset
    run = mlflow.get_run(run.info.run_id)
    logged = recorded_digests(run)
    assert set(logged) == {"train", "val", "test"} and logged["train"][0] == "shop-train"
    assert len({d for _, d in logged.values()}) == 3  # three different row sets
    sources = {i.dataset.source for i in run.inputs.dataset_inputs}
    assert all(str(path.resolve()) in s for s in sources)
    assert changed_splits(run, data) == []

    test_row = data.splits["test"].frame["id"].iloc[0]
    table.loc[table["id"] == test_row, "order_value"] = 12345.0  # one test row edited
    table.to_csv(path, index=False)
    now = prepare_data(cfg.data, cfg.seed, tokenizer)
    (change,) = changed_splits(run, now)
    assert change.startswith("test (shop-test): logged digest " + logged["test"][1] + ", now ") and logged["test"][1] not in change.split("now ")[1]


def test_synthetic_source_names_seed_and_size(mlflow_uri, tokenizer):
    cfg = load_config(None, ["data.synthetic.n_samples=60", "data.max_chunks=2", "data.chunk_len=16", "seed=3"])
    data = prepare_data(cfg.data, cfg.seed, tokenizer)
    with mlflow.start_run() as run:
        log_inputs(cfg, data)
    inputs = mlflow.get_run(run.info.run_id).inputs.dataset_inputs
    assert len(inputs) == 3 and all("synthetic(seed=3, n=60)" in i.dataset.source for i in inputs)
    assert pd.Series([i.dataset.name for i in inputs]).str.startswith("synthetic-").all()


def test_a_training_run_is_named_logs_its_inputs_and_system_metrics(mlflow_uri, tiny_overrides):
    from mlflow.system_metrics import set_system_metrics_samples_before_logging, set_system_metrics_sampling_interval

    from mmfusion.jobs.train import train

    set_system_metrics_sampling_interval(0.5)
    set_system_metrics_samples_before_logging(1)
    try:
        result = train(load_config(None, [*tiny_overrides, "seed=5", "model.fusion=moe-mlp-hard", "trainer.max_epochs=2"]))
    finally:
        set_system_metrics_sampling_interval(None)
        set_system_metrics_samples_before_logging(None)
    run = mlflow.get_run(result.run_id)
    assert run.info.run_name == "moe-mlp-hard-synthetic-s5"
    assert set(recorded_digests(run)) == {"train", "val", "test"}
    assert any(k.startswith("system/") for k in run.data.metrics), sorted(run.data.metrics)


def test_study_trials_are_named_and_skip_system_metrics_unless_asked():
    from mmfusion.jobs.tune.space import trial_config

    study = {"study": {"study_name": "s", "n_trials": 2, "search_space": {"optim.lr": {"type": "float", "low": 1e-4, "high": 1e-2}}}}
    cfg = load_config(None).model_copy(update={"study": load_config(None, [f"study={__import__('json').dumps(study['study'])}"]).study})
    trial = trial_config(cfg, {"optim.lr": 1e-3}, 4)
    assert trial.tracking.run_name == "s-t4" and trial.tracking.system_metrics is False
    asked = cfg.model_copy(update={"tracking": cfg.tracking.model_copy(update={"system_metrics": True})})
    assert trial_config(asked, {"optim.lr": 1e-3}, 4).tracking.system_metrics is True
