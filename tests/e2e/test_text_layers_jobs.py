"""`model.train_text_layers: K` for real: a resumed job, an FSDP job (2 gloo processes), its ONNX export, its PyTorch
bundle (predict) and `reproduce`, all from the layer cache while training and from tokens when serving."""

from __future__ import annotations

import lightning as L
import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
from transformers import AutoModel

from mmfusion.config import load_config
from mmfusion.data.datamodule import prepare_data
from mmfusion.encoders import load_tokenizer
from mmfusion.encoders.partial import encoder_layers
from mmfusion.jobs.reproduce import reproduce
from mmfusion.jobs.train import train
from mmfusion.serving.logged_models import logged_model_id
from mmfusion.training.fit import fit

FSDP = ["trainer.strategy=fsdp", "trainer.devices=2", "trainer.accelerator=cpu"]


def test_a_resumed_job_rereads_the_cache_and_ends_where_an_uninterrupted_one_does(tiny_overrides, tmp_path):
    """The checkpoint holds the trained weights; the cache is reread. 1 epoch + resume to 2 == 2 epochs."""
    args = [*tiny_overrides, "model.train_text_layers=1", f"data.cache_dir={tmp_path / 'cache'}", "trainer.precision=32-true", "model.fusion=gate",
            "optim.schedule=constant", "optim.warmup_fraction=0"]  # a schedule that does not depend on max_epochs

    def run(epochs: int, folder: str, resume=None):
        cfg = load_config(None, [*args, f"trainer.max_epochs={epochs}"])
        L.seed_everything(cfg.seed, workers=True, verbose=False)
        tokenizer = load_tokenizer(cfg.model.text_encoder)
        data = prepare_data(cfg.data, cfg.seed, tokenizer)
        return fit(cfg, data, checkpoint_dir=tmp_path / folder, resume_from=resume, pad_id=tokenizer.pad_token_id)

    reference = run(2, "a")
    files = sorted((tmp_path / "cache").iterdir())
    assert len(files) == 3 and all(f.name.startswith("layers-") for f in files)  # one per split, built once
    run(1, "b")
    resumed = run(2, "c", resume=tmp_path / "b" / "last.ckpt")
    assert sorted((tmp_path / "cache").iterdir()) == files  # reread, not rebuilt
    state = torch.load(tmp_path / "b" / "last.ckpt", weights_only=True)["state_dict"]
    top = f"model.text_encoder.backbone.encoder.layer.{len(encoder_layers(reference.model.text_encoder.backbone)) - 1}.output.dense.weight"
    assert top in state
    for key in ("test_accuracy", "test_auroc", "test_loss", "val_loss"):
        assert resumed.metrics[key] == pytest.approx(reference.metrics[key], abs=1e-6), key
    torch.testing.assert_close(resumed.outputs["test"]["probs"], reference.outputs["test"]["probs"], atol=1e-6, rtol=1e-6)


def test_fsdp_job_trains_only_the_top_layer_and_serves_from_tokens(mlflow_uri, tiny_overrides, tiny_bert, tmp_path):
    job = [*tiny_overrides, "data.synthetic.n_samples=203", "trainer.max_epochs=2", "model.fusion=moe_topk", "model.chunk_pooling=attention",
           "model.train_text_layers=1", f"data.cache_dir={tmp_path / 'cache'}", "optim.encoder_lr=1e-3", *FSDP]
    result = train(load_config(None, job))
    client = mlflow.MlflowClient(mlflow_uri)
    run = client.get_run(result.run_id)
    assert run.info.status == "FINISHED" and run.data.tags["mmfusion.world_size"] == "2"
    config = mlflow.artifacts.load_text(f"runs:/{result.run_id}/config.yaml")
    assert "train_text_layers: 1" in config and "freeze_text_encoder" not in config
    # the gathered weights: the top layer trained, the embeddings and the lower layer as pretrained
    served = mlflow.pyfunc.load_model(f"models:/{logged_model_id(result.run_id, 'model')}")
    trained = served.unwrap_python_model().predictor.model.text_encoder.backbone
    pretrained = AutoModel.from_pretrained(tiny_bert)
    same = lambda a, b: all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters()))  # noqa: E731
    assert same(trained.embeddings, pretrained.embeddings) and same(encoder_layers(trained)[0], encoder_layers(pretrained)[0])
    assert not same(encoder_layers(trained)[-1], encoder_layers(pretrained)[-1])
    # predict (the PyTorch bundle, from tokens through the whole backbone) == the run's own predictions (from the cache)
    logged = pd.read_csv(mlflow.artifacts.download_artifacts(run_id=result.run_id, artifact_path="predictions/test.csv", dst_path=str(tmp_path)))
    scored = served.predict(result.data.splits["test"].frame)
    np.testing.assert_allclose(scored["prob_escalate"], logged["prob_escalate"], atol=2e-3)  # float16 storage of the states
    parity = mlflow.artifacts.load_dict(f"runs:/{result.run_id}/onnx/onnx_parity.json")
    assert parity["passed"] and parity["max_abs_diff"] <= 1e-4  # the graph starts from tokens and holds every layer


def test_reproduce_rebuilds_a_partly_fine_tuned_run(mlflow_uri, tiny_overrides, tmp_path):
    """The logged config (train_text_layers: 1) rebuilds the run; the cache is reread (or rebuilt): the same run again."""
    job = [*tiny_overrides, "model.train_text_layers=1", "trainer.max_epochs=2", "export.onnx=false", "tracking.system_metrics=false",
           f"data.cache_dir={tmp_path / 'cache'}"]
    original = train(load_config(None, job)).run_id
    rep = reproduce(original)
    assert rep.within(0.0) and rep.predictions["same_preds"] and rep.predictions["max_abs_diff"] == 0.0
