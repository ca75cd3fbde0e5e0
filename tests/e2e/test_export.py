"""ONNX export: numeric parity with PyTorch for every fusion variant (the packed pair, and the single graph of older
runs), tamper detection, and scoring from a run's artifacts with onnxruntime alone (`predict --onnx`) against the
PyTorch predictions the run logged."""

from __future__ import annotations

import copy
import functools
import json
import subprocess
import sys
from pathlib import Path

import mlflow
import mmfusion.export
import numpy as np
import onnx
import pandas as pd
import pytest
import torch

from mmfusion.cli import main as cli
from mmfusion.config import load_config
from mmfusion.data.datamodule import prepare_data
from mmfusion.encoders import load_text_backbone, load_tokenizer
from mmfusion.errors import DataError
from mmfusion.export import ParityError, check_parity, export_onnx, export_packed, parity_batches, quantize_onnx
from mmfusion.serving.logged_models import logged_model_id
from mmfusion.serving.onnx_scorer import OnnxPredictor, OnnxScorer, PackedScorer, download_onnx
from mmfusion.tracking.artifacts import ArtifactError
from mmfusion.fusion import list_fusions
from mmfusion.modeling.classifier import build_model
from mmfusion.jobs.train import train


@pytest.fixture(scope="module")
def tiny_data(tiny_bert):
    cfg = load_config(None, [f"model.text_encoder={tiny_bert}", "data.synthetic.n_samples=80", "data.max_chunks=4", "data.chunk_len=24", "model.fusion_dim=16", "model.tab_hidden=16", "model.tab_dim=16"])
    tokenizer = load_tokenizer(tiny_bert)
    return cfg, prepare_data(cfg.data, cfg.seed, tokenizer), tokenizer


@functools.lru_cache(maxsize=1)
def _backbone(path: str):
    return load_text_backbone(path)  # loaded once; every model gets a copy


def _model(cfg, data, fusion: str, **model_overrides):
    torch.manual_seed(0)
    mcfg = type(cfg.model).model_validate({**cfg.model.model_dump(), "fusion": fusion, "fusion_preset": None, "fusion_options": {}, **model_overrides})
    pre = data.preprocessor
    return build_model(mcfg, copy.deepcopy(_backbone(cfg.model.text_encoder)), pre.n_numeric_features, pre.cardinalities, len(pre.classes))


@pytest.mark.parametrize("fusion", [*list_fusions(), "moe-mlp-hard", "moe_topk-mlp-hard", "moe-mlp-hard:attention"])
def test_every_fusion_exports_with_parity(fusion, tiny_data, tmp_path):
    cfg, data, tokenizer = tiny_data
    name, pooling = (fusion.split(":") + [""])[:2]
    model = _model(cfg, data, name, **({"chunk_pooling": pooling} if pooling else {}))
    batches = parity_batches(data.splits["test"], tokenizer.pad_token_id, batch_size=8)
    scorer = PackedScorer(*export_packed(model, batches[0], tmp_path))
    assert model.training  # the export works on a copy: the trained model is left as it was
    report = check_parity(model, scorer, batches, tolerance=1e-4)
    assert report["passed"] and report["max_abs_diff"] <= 1e-4
    assert report["batch_of_one_checked"] and report["padded_chunks_checked"] > 0 and report["samples_without_text_checked"] >= 2
    assert report["samples_checked"] == sum(len(b["chunk_mask"]) for b in batches)
    out = scorer(batches[0])
    np.testing.assert_allclose(out["probs"].sum(1), 1.0, atol=1e-5)
    np.testing.assert_allclose(out["modality_weights"].sum(1), 1.0, atol=1e-5)
    assert ("expert_weights" in out) == (type(model.fusion).expert_modalities(model.fusion.options) is not None)


@pytest.mark.parametrize("fusion", ["gate", "moe_topk"])
def test_the_single_graph_export_of_older_runs_keeps_parity(fusion, tiny_data, tmp_path):
    cfg, data, tokenizer = tiny_data
    model = _model(cfg, data, fusion)
    batches = parity_batches(data.splits["test"], tokenizer.pad_token_id, batch_size=8)
    assert check_parity(model, OnnxScorer(export_onnx(model, batches[0], tmp_path / "m.onnx")), batches)["passed"]


def test_export_from_a_batch_of_one_keeps_axes_dynamic(tiny_data, tmp_path):
    cfg, data, tokenizer = tiny_data
    model = _model(cfg, data, "attention")
    one = parity_batches(data.splits["test"], tokenizer.pad_token_id)[3]  # one sample, no text: a single padding chunk
    assert one["chunk_mask"].shape == (1, 1)
    scorer = PackedScorer(*export_packed(model, one, tmp_path))
    assert [i.shape for i in scorer.encoder.session.get_inputs()] == [["chunks", "tokens"]] * 2
    assert [i.shape[:1] for i in scorer.head.session.get_inputs()] == [["batch"]] * 4
    assert scorer.head.session.get_inputs()[0].shape[:2] == ["batch", "chunks"]
    check_parity(model, scorer, parity_batches(data.splits["val"], tokenizer.pad_token_id))
    single = OnnxScorer(export_onnx(model, one, tmp_path / "m.onnx"))  # the single graph too
    assert single.session.get_inputs()[0].shape == ["batch", "chunks", "tokens"]


def test_table_without_tabular_columns_exports(tiny_bert, tmp_path):
    rng = np.random.default_rng(0)
    texts = ["Buyer: where is my parcel\nSeller: on its way", "Buyer: thanks, all good", ""]
    pd.DataFrame({"dialogue": [texts[i % 3] for i in range(40)], "label": rng.integers(0, 2, 40)}).to_csv(tmp_path / "t.csv", index=False)
    cfg = load_config(None, [f"model.text_encoder={tiny_bert}", "data.source=table", f"data.path={tmp_path / 't.csv'}", "model.fusion_dim=16", "model.tab_dim=16", "model.tab_hidden=16", "data.chunk_len=16"])
    tokenizer = load_tokenizer(tiny_bert)
    data = prepare_data(cfg.data, cfg.seed, tokenizer)
    assert data.splits["test"].numeric.shape[1] == 0 and data.splits["test"].categorical.shape[1] == 0
    model = _model(cfg, data, "gate")
    batches = parity_batches(data.splits["test"], tokenizer.pad_token_id)
    report = check_parity(model, PackedScorer(*export_packed(model, batches[0], tmp_path)), batches)
    assert report["passed"] and report["samples_without_text_checked"] >= 2


@pytest.fixture(scope="module")
def concat_export(tiny_data, tmp_path_factory):
    cfg, data, tokenizer = tiny_data
    model = _model(cfg, data, "concat")
    batches = parity_batches(data.splits["test"], tokenizer.pad_token_id)
    return model, batches, export_packed(model, batches[0], tmp_path_factory.mktemp("concat"))


def test_tampered_weights_fail_parity_loudly(concat_export, tmp_path):
    model, batches, files = concat_export
    proto = onnx.load(str(files.head))
    head_bias = next(t for t in proto.graph.initializer if t.name.endswith("head.bias"))
    values = onnx.numpy_helper.to_array(head_bias).copy()
    values[0] += 0.5
    head_bias.CopyFrom(onnx.numpy_helper.from_array(values, head_bias.name))
    onnx.save(proto, str(tmp_path / "tampered.onnx"))
    with pytest.raises(ParityError, match="does not match PyTorch") as err:
        check_parity(model, PackedScorer(files.encoder, tmp_path / "tampered.onnx"), batches)
    assert err.value.report["passed"] is False and err.value.report["max_abs_diff_probs"] > 1e-2


def test_quantized_model_stays_close(concat_export, tmp_path):
    _, batches, files = concat_export
    q = quantize_onnx(files.encoder, tmp_path / "q.onnx")
    assert q.stat().st_size < files.encoder.stat().st_size / 2
    fp32, int8 = PackedScorer(*files)(batches[0]), PackedScorer(q, files.head)(batches[0])
    assert set(int8) == set(fp32)
    assert np.abs(int8["probs"] - fp32["probs"]).max() < 0.1  # approximate, not equal: its figures are logged


def test_quantization_is_per_channel_on_weight_matmuls_only(concat_export, tmp_path):
    _, _, files = concat_export
    def graph(path):
        proto = onnx.load(str(path))
        return proto.graph, {t.name: t for t in proto.graph.initializer}
    fp32_graph, fp32_init = graph(files.encoder)
    fp32_matmuls = [n for n in fp32_graph.node if n.op_type == "MatMul"]
    by_weight = [n for n in fp32_matmuls if any(i in fp32_init for i in n.input)]
    assert 0 < len(by_weight) < len(fp32_matmuls)  # attention's Q.K and A.V multiply two activations
    shipped, init = graph(quantize_onnx(files.encoder, tmp_path / "q.onnx"))
    ops = [n.op_type for n in shipped.node]
    assert ops.count("MatMulInteger") == len(by_weight) and ops.count("MatMul") == len(fp32_matmuls) - len(by_weight)
    zero_points = [init[n.input[3]] for n in shipped.node if n.op_type == "MatMulInteger" and n.input[3] in init]  # B's
    assert zero_points and all(len(z.dims) == 1 and z.dims[0] > 1 for z in zero_points)  # one per output channel
    every = [n.op_type for n in graph(quantize_onnx(files.encoder, tmp_path / "all.onnx", extra_options={"MatMulConstBOnly": False}))[0].node]
    assert every.count("MatMul") < ops.count("MatMul")  # an option given still merges into the defaults


def test_scorer_rejects_preprocessing_of_another_width(concat_export):
    _, batches, files = concat_export
    with pytest.raises(ArtifactError, match="'numeric' has 9 values on axis 1 but the model expects 10"):
        PackedScorer(*files)({**batches[0], "numeric": batches[0]["numeric"][:, :9]})


def test_log_onnx_fails_loudly_and_records_the_failed_parity(tiny_data, mlflow_uri, monkeypatch):
    cfg, data, tokenizer = tiny_data
    model = _model(cfg, data, "gate")
    exact_copy = mmfusion.export.onnx._export_copy

    def broken_exporter(m):  # an exporter bug: the exported graph computes something slightly different
        exported = exact_copy(m)
        with torch.no_grad():
            exported.head.bias[0] += 0.05  # one class: softmax ignores a shift of all logits
        return exported

    monkeypatch.setattr(mmfusion.export.onnx, "_export_copy", broken_exporter)
    with mlflow.start_run() as run, pytest.raises(ParityError, match="tolerance 0.0001"):
        mmfusion.export.log_onnx(cfg, model, data, tokenizer)
    report = json.loads(mlflow.artifacts.load_text(f"runs:/{run.info.run_id}/onnx/onnx_parity.json"))
    assert report["passed"] is False and report["max_abs_diff_probs"] > 1e-4
    assert mlflow.get_run(run.info.run_id).data.metrics["onnx_max_abs_diff"] == report["max_abs_diff"]
    assert logged_model_id(run.info.run_id, "model_onnx") is None  # nothing unproven is shipped


# ---- a run, read back from a temporary MLflow store ---------------------------------------------------------------


@pytest.fixture(scope="module")
def onnx_run(tiny_bert, mlflow_module_uri):
    overrides = [f"model.text_encoder={tiny_bert}", "data.synthetic.n_samples=100", "data.max_chunks=4", "data.chunk_len=24", "model.fusion_dim=16", "model.tab_hidden=16",
                 "model.tab_dim=16", "trainer.max_epochs=1", "trainer.batch_size=16", "trainer.enable_progress_bar=false", "trainer.precision=32-true", "data.cache_dir=null",
                 "model.fusion=moe_topk", "export.quantize=true"]
    return train(load_config(None, overrides)), Path.cwd()  # the module store's folder


def test_train_logs_onnx_with_parity(onnx_run, tmp_path):
    result, _ = onnx_run
    client = mlflow.MlflowClient()
    run = client.get_run(result.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.metrics["onnx_max_abs_diff"] <= 1e-4
    assert 0.0 <= run.data.metrics["onnx_int8_agreement"] <= 1.0 and "onnx_int8_accuracy" in run.data.metrics
    parity = json.loads(mlflow.artifacts.load_text(f"runs:/{result.run_id}/onnx/onnx_parity.json"))
    assert parity["passed"] and parity["batch_of_one_checked"] and parity["max_abs_diff_expert_weights"] <= 1e-4
    files = {a.path for a in client.list_artifacts(result.run_id, "onnx")} | {a.path for a in client.list_artifacts(result.run_id, "onnx/tokenizer")}
    assert {"onnx/onnx_parity.json", "onnx/onnx_int8.json", "onnx/preprocessing.json", "onnx/onnx_meta.json", "onnx/tokenizer/tokenizer.json"} <= files
    # the MLflow ONNX flavour over the chunk encoder (signature with dynamic axes; it scores its own input example),
    # the head graph beside it; onnx_meta.json holds both graphs' sha256
    model_id = logged_model_id(result.run_id, "model_onnx")
    info = mlflow.models.get_model_info(f"models:/{model_id}")
    inputs = {s.name: s.shape for s in info.signature.inputs.inputs}
    assert inputs == {"input_ids": (-1, -1), "attention_mask": (-1, -1)}
    assert {s.name for s in info.signature.outputs.inputs} == {"chunk_embeddings"}
    local = Path(mlflow.artifacts.download_artifacts(f"models:/{model_id}", dst_path=str(tmp_path)))
    pyfunc = mlflow.pyfunc.load_model(str(local))
    example = mlflow.models.Model.load(str(local)).load_input_example(str(local))
    out = pyfunc.predict({k: np.asarray(v) for k, v in example.items()})
    assert out["chunk_embeddings"].shape == (len(example["input_ids"]), 32)
    head = OnnxScorer(local / "extra_files" / "head.onnx")
    assert {"probs", "modality_weights", "expert_weights"} == set(head.output_names) and head.inputs["numeric"].shape == ["batch", 10]
    meta = json.loads(mlflow.artifacts.load_text(f"runs:/{result.run_id}/onnx/onnx_meta.json"))
    assert meta["format"] == "packed" and {"model_sha256", "head_sha256", "int8_model_sha256"} <= set(meta)


def test_predict_onnx_without_torch_matches_the_run(onnx_run, tmp_path):
    result, tmp = onnx_run
    test_rows = result.data.splits["test"].frame
    test_rows.to_csv(tmp_path / "rows.csv", index=False)
    # torch made unimportable: the ONNX path needs onnxruntime, numpy, pandas, tokenizers and the artifacts only
    code = f"import sys; sys.modules['torch'] = None; from mmfusion.cli import main; sys.exit(main({['predict', '--run-id', result.run_id, '--input', str(tmp_path / 'rows.csv'), '--onnx', '--output', str(tmp_path / 'onnx.csv')]!r}))"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert cli(["predict", "--run-id", result.run_id, "--input", str(tmp_path / "rows.csv"), "--output", str(tmp_path / "torch.csv")]) == 0
    logged = result.predictions
    for name in ("onnx.csv", "torch.csv"):
        scored = pd.read_csv(tmp_path / name, dtype={"id": str})
        merged = logged.merge(scored, on="id", suffixes=("", "_scored"))
        assert len(merged) == len(logged) == len(test_rows)
        for col in ("prob_escalate", "w_text", *(["expert_0"] if name == "onnx.csv" else [])):  # the bundle writes no expert columns
            np.testing.assert_allclose(merged[col], merged[f"{col}_scored"], atol=1e-5, err_msg=f"{name}: {col}")
        assert (merged["pred"] == merged["pred_scored"]).all()
    # the int8 model (export.quantize=true): close to, not equal to, the fp32 model
    assert cli(["predict", "--run-id", result.run_id, "--input", str(tmp_path / "rows.csv"), "--onnx", "--int8", "--output", str(tmp_path / "int8.csv")]) == 0
    int8 = logged.merge(pd.read_csv(tmp_path / "int8.csv", dtype={"id": str}), on="id", suffixes=("", "_int8"))
    assert len(int8) == len(logged) and np.abs(int8["prob_escalate"] - int8["prob_escalate_int8"]).max() < 0.1


def test_predict_bad_input_names_the_column(onnx_run, tmp_path, capsys):
    result, _ = onnx_run
    result.data.splits["test"].frame.drop(columns=["refund_ratio"]).to_csv(tmp_path / "bad.csv", index=False)
    for extra in (["--onnx"], []):
        assert cli(["predict", "--run-id", result.run_id, "--input", str(tmp_path / "bad.csv"), *extra]) == 2
        assert "missing column(s) 'refund_ratio'" in capsys.readouterr().err


def test_tampered_or_mismatched_artifacts_are_detected(onnx_run, tmp_path):
    result, _ = onnx_run
    model_path, artifacts = download_onnx(result.run_id, tmp_path)
    OnnxPredictor(model_path, artifacts)  # the untouched files belong together
    original = model_path.read_bytes()
    proto = onnx.load(str(model_path))
    proto.graph.initializer[0].raw_data = bytes(len(proto.graph.initializer[0].raw_data))  # zero one weight tensor
    onnx.save(proto, str(model_path))
    with pytest.raises(ArtifactError, match="the ONNX file was modified"):
        OnnxPredictor(model_path, artifacts)
    model_path.write_bytes(original)
    pre = json.loads((artifacts / "preprocessing.json").read_text())
    pre["numeric"]["order_value"][0] += 1.0  # another run's scaling
    (artifacts / "preprocessing.json").write_text(json.dumps(pre))
    with pytest.raises(ArtifactError, match="does not match the preprocessing the ONNX model was exported with"):
        OnnxPredictor(model_path, artifacts)
    assert issubclass(ArtifactError, DataError)  # the CLI reports it as exit code 2


def test_export_command_on_a_logged_run(onnx_run, tmp_path, capsys):
    result, _ = onnx_run
    before = logged_model_id(result.run_id, "model_onnx")
    assert cli(["export", "--run-id", result.run_id]) == 0
    assert "max |ONNX - PyTorch|" in capsys.readouterr().out
    run = mlflow.get_run(result.run_id)
    assert run.info.status == "FINISHED"  # the run was resumed and given back as it was
    after = logged_model_id(result.run_id, "model_onnx")
    assert after != before  # a new ONNX model, and predict --onnx uses it with the re-logged onnx/ files
    model_path, artifacts = download_onnx(result.run_id, tmp_path)
    OnnxPredictor(model_path, artifacts)
    assert cli(["export", "--run-id", "no-such-run"]) == 2
