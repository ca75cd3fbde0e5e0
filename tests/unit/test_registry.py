"""The model registry: a run's model registered under a name with aliases; `predict --model models:/NAME@ALIAS`
scores like `predict --run-id`, with PyTorch and with ONNX Runtime; bad names and URIs are one error line."""

from __future__ import annotations

import mlflow
import pandas as pd
import pytest

from mmfusion.cli import main
from mmfusion.config import load_config
from mmfusion.data import synthetic
from mmfusion.errors import UserError
from mmfusion.tracking.contract import Tag
from mmfusion.tracking.registry import register, resolve_run
from mmfusion.jobs.train import train


@pytest.fixture(scope="module")
def two_runs(mlflow_module_uri, tiny_bert) -> tuple[str, str]:
    tiny = [f"model.text_encoder={tiny_bert}", "data.synthetic.n_samples=120", "data.max_chunks=4", "data.chunk_len=32", "model.fusion_dim=16",
            "model.tab_hidden=16", "model.tab_dim=16", "trainer.max_epochs=1", "trainer.batch_size=16", "trainer.enable_progress_bar=false",
            "trainer.precision=32-true", "data.cache_dir=null", "tracking.experiment=registry"]
    a = train(load_config(None, [*tiny, "seed=1"])).run_id
    b = train(load_config(None, [*tiny, "seed=2", "export.onnx=false"])).run_id
    return a, b


@pytest.fixture
def rows(tmp_path) -> str:
    path = tmp_path / "rows.csv"
    synthetic.make_synthetic(synthetic.SyntheticSpec(n_samples=20), seed=3).head(8).to_csv(path, index=False)
    return str(path)


def test_register_moves_aliases_and_records_the_onnx_sibling(two_runs):
    a, b = two_runs
    v1 = register(a, "clf", ("best", "champion"))
    client = mlflow.MlflowClient()
    assert str(v1.version) == "1" and v1.run_id == a and v1.tags[Tag.ONNX_MODEL_ID].startswith("m-")
    assert resolve_run("models:/clf@best") == resolve_run("models:/clf@champion") == resolve_run("models:/clf/1") == a
    v2 = register(b, "clf")  # no ONNX export in this run: the tag says so
    assert str(v2.version) == "2" and v2.tags[Tag.ONNX_MODEL_ID] == "none"
    assert resolve_run("models:/clf@best") == b and resolve_run("models:/clf@champion") == a  # only @best moved
    loaded = mlflow.pyfunc.load_model("models:/clf@champion")  # a real model behind the name
    assert loaded.metadata.run_id == a and client.get_registered_model("clf").aliases == {"best": 2, "champion": 1}


@pytest.mark.parametrize("onnx", [False, True], ids=["pytorch", "onnx"])
def test_predict_by_name_scores_like_predict_by_run(two_runs, rows, tmp_path, onnx):
    a, _ = two_runs
    register(a, f"served-{onnx}", ("best",))
    flag = ["--onnx"] if onnx else []
    assert main(["predict", "--run-id", a, "--input", rows, "--output", str(tmp_path / "by_run.csv"), *flag]) == 0
    assert main(["predict", "--model", f"models:/served-{onnx}@best", "--input", rows, "--output", str(tmp_path / "by_name.csv"), *flag]) == 0
    by_run, by_name = pd.read_csv(tmp_path / "by_run.csv"), pd.read_csv(tmp_path / "by_name.csv")
    assert len(by_name) == 8 and {"pred", "w_text", "w_tab"} <= set(by_name.columns)
    pd.testing.assert_frame_equal(by_run, by_name)


@pytest.mark.parametrize("uri, message", [
    ("runs:/abc/model", "is not a registered model URI: models:/NAME@ALIAS or models:/NAME/VERSION"),
    ("models:/nobody@best", "no registered model 'nobody'"),
    ("models:/known@nope", "registered model 'known' has no alias 'nope'; aliases: best; versions: 1"),
    ("models:/known/7", "registered model 'known' has no version 7"),
])
def test_bad_model_uris_are_one_error_line(two_runs, rows, capsys, uri, message):
    register(two_runs[0], "known", ("best",)) if "known" not in {m.name for m in mlflow.MlflowClient().search_registered_models()} else None
    assert main(["predict", "--model", uri, "--input", rows]) == 2
    err = capsys.readouterr().err
    assert err.count("error:") == 1 and message in err and "Traceback" not in err


def test_bad_names_and_a_run_without_a_model(two_runs, mlflow_module_uri, tiny_bert):
    with pytest.raises(UserError, match="must be non-empty, without '/'"):
        register(two_runs[0], "a/b")
    with pytest.raises(UserError, match="alias 'v3' must start with a letter"):
        register(two_runs[0], "ok", ("v3",))
    cfg = load_config(None, [f"model.text_encoder={tiny_bert}", "data.synthetic.n_samples=60", "data.max_chunks=2", "data.chunk_len=16", "trainer.max_epochs=1",
                             "trainer.enable_progress_bar=false", "data.cache_dir=null", "tracking.log_model=false", "export.onnx=false", "tracking.experiment=registry"])
    bare = train(cfg).run_id
    with pytest.raises(UserError, match=f"run {bare} logged no model to register"):
        register(bare, "bare")


def test_train_registers_as_asked(two_runs, tiny_bert):
    cfg = load_config(None, [f"model.text_encoder={tiny_bert}", "data.synthetic.n_samples=60", "data.max_chunks=2", "data.chunk_len=16", "trainer.max_epochs=1",
                             "trainer.enable_progress_bar=false", "data.cache_dir=null", "export.onnx=false", "tracking.experiment=registry", "tracking.register_as=from-train"])
    run_id = train(cfg).run_id
    assert resolve_run("models:/from-train@best") == run_id
    with pytest.raises(Exception, match="tracking.register_as needs tracking.log_model=true"):
        load_config(None, ["tracking.register_as=x", "tracking.log_model=false"])


def test_best_member_by_metric(two_runs):
    from mmfusion.jobs.register import best_member

    a, b = two_runs
    client = mlflow.MlflowClient()
    client.log_metric(a, "probe_loss", 0.1)
    client.log_metric(b, "probe_loss", 0.2)
    assert best_member([a, b], "probe_loss", mlflow.get_tracking_uri()) == a  # lower is better for a loss
    va, vb = (client.get_run(r).data.metrics["test_accuracy"] for r in (a, b))
    assert best_member([a, b], "test_accuracy", mlflow.get_tracking_uri()) == (a if va >= vb else b)
