"""`zoo --register NAME`: the best member, trained again with its model, gets a name in the registry."""

from __future__ import annotations

import mlflow
import pandas as pd
import pytest

from mmfusion.cli import main
from mmfusion.data import synthetic
from mmfusion.tracking.contract import Tag
from mmfusion.tracking.registry import resolve_run


@pytest.fixture
def rows(tmp_path) -> str:
    path = tmp_path / "rows.csv"
    synthetic.make_synthetic(synthetic.SyntheticSpec(n_samples=20), seed=3).head(8).to_csv(path, index=False)
    return str(path)


def test_zoo_register_trains_the_best_member_again_with_its_model(mlflow_uri, tiny_bert, tmp_path, rows):
    """Zoo members log no model; --register trains the best one's config once more with it, and registers that."""
    cfg = tmp_path / "zoo.yaml"
    cfg.write_text("zoo: {variants: [concat, gate], seeds: [0], baseline: concat, metrics: [test_accuracy]}\n")
    tiny = [f"model.text_encoder={tiny_bert}", "data.synthetic.n_samples=80", "data.max_chunks=2", "data.chunk_len=16", "model.fusion_dim=8",
            "trainer.max_epochs=1", "trainer.enable_progress_bar=false", "data.cache_dir=null", "tracking.log_model=false", "export.onnx=false",
            "tracking.experiment=zoo-register"]
    assert main(["zoo", "--config", str(cfg), "--no-compare", "--register", "zoo-best", "--alias", "champion", *tiny]) == 0
    run_id = resolve_run("models:/zoo-best@champion")
    run = mlflow.get_run(run_id)
    original = mlflow.get_run(run.data.tags[Tag.RETRAIN_OF])
    assert original.data.tags[Tag.ZOO_PARENT] == run.data.tags["mlflow.parentRunId"]  # nested under the same zoo
    assert run.data.metrics["test_accuracy"] == pytest.approx(original.data.metrics["test_accuracy"], abs=1e-6)  # the same model
    assert main(["predict", "--model", "models:/zoo-best@best", "--input", rows, "--output", str(tmp_path / "p.csv"), "--onnx"]) == 0
    assert len(pd.read_csv(tmp_path / "p.csv")) == 8
