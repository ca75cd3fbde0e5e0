"""End to end: `train(cfg)` into a temporary MLflow store, read back and checked."""

from __future__ import annotations


import mlflow
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest

from mmfusion.config import load_config
from mmfusion.serving.logged_models import logged_model_id
from mmfusion.errors import ConfigError
from mmfusion.jobs.train import train


def runs(uri: str) -> pd.DataFrame:
    mlflow.set_tracking_uri(uri)
    return mlflow.search_runs(search_all_experiments=True)


def test_train_logs_a_complete_run(mlflow_uri, tiny_overrides, tmp_path):
    cfg = load_config(None, [*tiny_overrides, "model.fusion=moe", "trainer.max_epochs=2"])
    result = train(cfg)
    client = mlflow.MlflowClient(mlflow_uri)
    run = client.get_run(result.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["model.fusion"] == "moe" and run.data.params["trainer.max_epochs"] == "2"
    assert run.data.tags["mmfusion.fusion"] == "moe"
    assert len(run.data.tags["mmfusion.data_fingerprint"]) == 16 and run.data.tags["mmfusion.git_sha"]
    assert len(client.get_metric_history(result.run_id, "train_loss")) == 2  # one value per epoch
    restored = int(run.data.metrics["restored_epoch"])  # trainer.restore_best: the best epoch re-validated at the end
    for key in ("val_loss", "val_accuracy", "val_f1_macro", "val_auroc", "val_attribution_auroc"):
        history = [m.value for m in sorted(client.get_metric_history(result.run_id, key), key=lambda m: (m.step, m.timestamp))]
        # one value per epoch, then the restored epoch's when it was not the last (the last one's are the weights)
        assert len(history) == (2 if restored == 1 else 3), key
        assert history[-1] == pytest.approx(history[restored], abs=1e-5), key
    for key in ("test_loss", "test_accuracy", "test_f1_macro", "test_auroc"):
        assert 0.0 <= run.data.metrics[key] <= (10.0 if key == "test_loss" else 1.0)
    artifacts = {a.path for a in client.list_artifacts(result.run_id)} | {a.path for a in client.list_artifacts(result.run_id, "plots")} | {a.path for a in client.list_artifacts(result.run_id, "predictions")}
    assert {"config.yaml", "preprocessing.json", "environment.json", "predictions/test.csv", "plots/router_weights.png"} <= artifacts

    preds = pd.read_csv(mlflow.artifacts.download_artifacts(run_id=result.run_id, artifact_path="predictions/test.csv", dst_path=str(tmp_path)))
    assert list(preds.columns) == ["id", "label", "pred", "prob_escalate", "prob_resolved", "w_text", "w_tab", "drop_text", "drop_tab", "faithful", "true_modality"]
    assert preds["faithful"].mean() == pytest.approx(run.data.metrics["test_faithfulness"], abs=1e-6)  # the per-sample check adds up
    assert preds["id"].is_unique and len(preds) == len(result.data.splits["test"].ids)
    np.testing.assert_allclose(preds[["prob_escalate", "prob_resolved"]].sum(1), 1.0, atol=1e-5)
    np.testing.assert_allclose(preds["w_text"] + preds["w_tab"], 1.0, atol=1e-5)
    acc = (preds["label"] == preds["pred"]).mean()
    assert acc == pytest.approx(run.data.metrics["test_accuracy"], abs=1e-6)  # metrics and predictions agree

    # the resolved config alone rebuilds the run's config
    logged = mlflow.artifacts.load_text(f"runs:/{result.run_id}/config.yaml")
    assert load_config_text(logged) == cfg

    # the logged model (pyfunc, safetensors inside, no pickle) scores raw rows like the trained module did
    model_uri = f"models:/{logged_model_id(result.run_id, 'model')}"
    model = mlflow.pyfunc.load_model(model_uri)
    test_rows = result.data.splits["test"].frame
    scored = model.predict(test_rows)
    merged = preds.merge(scored, on="id", suffixes=("", "_served"))
    np.testing.assert_allclose(merged["prob_escalate"], merged["prob_escalate_served"], atol=1e-5)
    np.testing.assert_allclose(merged["w_text"], merged["w_text_served"], atol=1e-5)


def load_config_text(text: str):
    import yaml

    from mmfusion.config import build_config

    return build_config(yaml.safe_load(text))


def test_text_only_table(mlflow_uri, tiny_overrides, tmp_path):
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 90)
    words = np.array(["refund please", "thanks a lot", "where is my parcel"])
    pd.DataFrame({"msg": [f"Buyer: {words[y]}\nSeller: ok" if i % 9 else "" for i, y in enumerate(labels)], "y": [f"c{y}" for y in labels]}).to_csv(tmp_path / "t.csv", index=False)
    cfg = load_config(None, [*tiny_overrides, "data.source=table", f"data.path={tmp_path / 't.csv'}", "data.text_column=msg", "data.label_column=y", "model.fusion=gate"])
    open_before = set(plt.get_fignums())
    result = train(cfg)
    test = result.predictions
    assert result.metrics["test_accuracy"] == pytest.approx((test["label"] == test["pred"]).mean(), abs=1e-6)
    assert set(result.predictions.columns) >= {"prob_c0", "prob_c1", "prob_c2"} and "true_modality" not in result.predictions.columns
    assert runs(mlflow_uri)["status"].tolist() == ["FINISHED"]
    assert set(plt.get_fignums()) <= open_before  # every plot it logged was closed: a zoo or study process trains many


def test_failure_ends_the_run_failed(mlflow_uri, tiny_overrides, monkeypatch):
    def boom(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr("mmfusion.jobs.train.log_outputs", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        train(load_config(None, tiny_overrides))
    df = runs(mlflow_uri)
    assert df["status"].tolist() == ["FAILED"]
    assert "disk full" in df["tags.mmfusion.error"][0]


def test_class_weights_of_the_wrong_length_are_an_error(mlflow_uri, tiny_overrides):
    with pytest.raises(ConfigError, match="class_weights has 3 values but the data has 2 classes"):
        train(load_config(None, [*tiny_overrides, "optim.class_weights=[1,2,3]"]))
    assert len(runs(mlflow_uri)) == 0  # nothing was logged


def test_embedding_cache_gives_identical_results(mlflow_uri, tiny_overrides, tmp_path):
    # a trainable chunk pool after the cache, and modality dropout's draws, must not break run-to-run identity
    frozen = [*tiny_overrides, "model.freeze_text_encoder=true", "model.fusion=attention", "model.chunk_pooling=attention", "model.modality_dropout=0.2"]
    plain = train(load_config(None, frozen))
    cached_cold = train(load_config(None, [*frozen, f"data.cache_dir={tmp_path / 'cache'}"]))
    cached_warm = train(load_config(None, [*frozen, f"data.cache_dir={tmp_path / 'cache'}"]))
    assert len(list((tmp_path / "cache").glob("*.safetensors"))) == 3  # train, val, test
    for other in (cached_cold, cached_warm):
        for key in ("val_loss", "test_loss", "test_accuracy"):
            assert other.metrics[key] == pytest.approx(plain.metrics[key], abs=1e-6), key


def test_last_checkpoint_is_written_after_every_epoch_and_every_n_steps(mlflow_uri, tiny_overrides, tmp_path):
    """Read back on disk while training runs: after epoch k, last.ckpt holds k epochs; with checkpoint_every_n_steps
    it also follows the steps inside an epoch."""
    import lightning as L
    import torch

    seen = []

    class Probe(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            ckpt = next(iter(tmp_path.glob("outputs/*/checkpoints/last.ckpt")), None)
            if ckpt is not None:
                state = torch.load(ckpt, map_location="cpu", weights_only=True)
                seen.append((trainer.global_step, trainer.num_training_batches, state["global_step"], state["epoch"]))

    train(load_config(None, [*tiny_overrides, "trainer.max_epochs=3", "trainer.batch_size=8", "trainer.checkpoint_every_n_steps=3", "export.onnx=false", "tracking.log_model=false"]), callbacks=[Probe()])
    n = seen[0][1]  # optimizer steps per epoch
    assert n > 3 and len(seen) == 3 * n - 3  # every batch after the first save (at step 3) saw a checkpoint
    for step, _, saved_step, saved_epoch in seen:
        assert saved_step == max(step // 3 * 3, step // n * n), (step, saved_step)  # the newest save, never older
        if step % n == 0:
            assert saved_epoch == step // n - 1  # an epoch starts from the previous epoch's checkpoint
