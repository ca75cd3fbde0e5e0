"""`mmfusion bench`: the reference path is the same function on the same weights (bar its unmasked mean), the
memory probe sees allocations, and the command runs end to end at a tiny size."""

from __future__ import annotations

import json
import pytest
import torch

from mmfusion.config import load_config
from mmfusion.data.datamodule import SplitDataset, collate, prepare_data
from mmfusion.encoders import load_text_backbone, load_tokenizer
from mmfusion.fusion import list_fusions
from mmfusion.modeling.module import MODEL_INPUTS
from mmfusion.modeling.classifier import build_model
from mmfusion.bench.reference import reference_collate, reference_model


@pytest.fixture(scope="module")
def tiny_data(tiny_bert):
    cfg = load_config(None, [f"model.text_encoder={tiny_bert}", "data.synthetic.n_samples=200", "data.max_chunks=4", "data.chunk_len=32", "model.fusion_dim=16", "model.tab_hidden=16", "model.tab_dim=16"])
    data = prepare_data(cfg.data, 0, load_tokenizer(tiny_bert))
    ds = SplitDataset(data.splits["val"])
    return cfg, data, [ds[i] for i in range(len(ds))]


def _logits(model, batch):
    with torch.no_grad():
        return model(**{k: batch[k] for k in MODEL_INPUTS if k in batch})


@pytest.mark.parametrize("fusion", list_fusions())
def test_reference_and_optimized_paths_agree_on_the_same_weights(tiny_data, fusion):
    cfg, data, items = tiny_data
    torch.manual_seed(0)
    model = build_model(cfg.model.model_copy(update={"fusion": fusion}), load_text_backbone(cfg.model.text_encoder),
                        data.preprocessor.n_numeric_features, data.preprocessor.cardinalities, len(data.preprocessor.classes)).eval()
    items = items[:24]
    opt_batch = collate(items)
    ref_batch = reference_collate(items, cfg.data.max_chunks, cfg.data.chunk_len)
    assert ref_batch["input_ids"].shape[1:] == (4, 32)  # every dialogue padded to max_chunks x chunk_len
    opt = _logits(model, opt_batch)

    masked = _logits(reference_model(model, chunk_mean="masked").eval(), ref_batch)  # every chunk encoded, eager attention
    torch.testing.assert_close(masked.logits, opt.logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(masked.modality_weights, opt.modality_weights, atol=1e-5, rtol=1e-5)

    # the original design's unmasked chunk mean: the text vector shrinks by n_real / max_chunks, so the logits are
    # the same only for dialogues that fill every chunk (or for fusions that read the chunks, not the mean)
    original = reference_model(model).eval()
    full = ref_batch["chunk_mask"].all(1)
    assert full.any() and (~full).any()
    torch.testing.assert_close(_logits(original, ref_batch).logits[full], opt.logits[full], atol=1e-5, rtol=1e-5)
    with torch.no_grad():
        pooled_ref, _ = original.text_encoder(ref_batch["input_ids"], ref_batch["attention_mask"], ref_batch["chunk_mask"])
        pooled_opt, _ = model.text_encoder(opt_batch["input_ids"], opt_batch["attention_mask"], opt_batch["chunk_mask"])
    share = ref_batch["chunk_mask"].sum(1, keepdim=True) / cfg.data.max_chunks
    torch.testing.assert_close(pooled_ref, pooled_opt * share, atol=1e-5, rtol=1e-5)
    assert model.text_encoder.backbone.config._attn_implementation == "sdpa"  # the copy did not change the original


def test_peak_rss_sees_an_allocation():
    from mmfusion.bench.memory import PeakRSS

    with PeakRSS() as mem:
        block = torch.ones(64, 2**20)  # 256 MiB, touched
        del block
    assert mem.mib is not None and 200 < mem.mib < 1000


def test_bench_runs_end_to_end(tiny_bert, tiny_overrides, tmp_path, monkeypatch, capsys):
    from mmfusion.cli import main

    monkeypatch.chdir(tmp_path)
    out = tmp_path / "bench.json"
    rc = main(["bench", *tiny_overrides, "--train-samples", "24", "--eval-samples", "12", "--latency-samples", "2", "--profile", "--json", str(out)])
    assert rc == 0
    table = capsys.readouterr().out
    assert "reference" in table and "optimized" in table and "onnx_int8" in table and "goals" in table
    res = json.loads(out.read_text())
    ref, opt = res["paths"]["reference"], res["paths"]["optimized"]
    assert ref["encoded_tokens_per_sample"] == 4 * 32  # every dialogue padded to max_chunks x chunk_len
    assert opt["real_tokens_per_sample"] <= opt["encoded_tokens_per_sample"] < ref["encoded_tokens_per_sample"]
    for path in (ref, opt):
        assert path["train_samples_per_s"] > 0 and path["infer_samples_per_s"] > 0 and path["train_peak_mib"] is not None
        assert 0.0 <= path["val_accuracy"] <= 1.0
    assert res["speedup"]["train"] == pytest.approx(opt["train_samples_per_s"] / ref["train_samples_per_s"])
    onnx = res["onnx"]
    assert {"eager", "onnx_fp32", "onnx_int8", "fused_fp32", "fused_int8"} == set(onnx["engines"]) and onnx["batch"] == 12
    assert onnx["max_abs_diff_fp32_vs_eager"] < 1e-4  # the exported model is the optimized model
    assert all(e["latency_ms_median"] > 0 and e["batch_samples_per_s"] > 0 for e in onnx["engines"].values())
    assert [g["goal"] for g in res["goals"]][0].startswith("training throughput") and len(res["goals"]) == 4
    assert res["profile"] and res["onnx"]["profile_onnx"]["onnx_fp32"] and res["cpu"] and res["machine"]


def test_bench_rejects_an_empty_budget(tiny_overrides, capsys):
    from mmfusion.cli import main

    assert main(["bench", *tiny_overrides, "--train-samples", "0"]) == 2
    assert "--train-samples" in capsys.readouterr().err


def test_bench_trains_with_the_optimizer_of_training(tiny_data, monkeypatch):
    """bench steps the optimizer `FusionClassifierModule.configure_optimizers` builds: encoder at encoder_lr, and no
    weight decay on biases and norm weights."""
    from mmfusion.bench import measure
    from mmfusion.modeling import module

    cfg, data, items = tiny_data
    cfg = cfg.model_copy(update={"optim": cfg.optim.model_copy(update={"weight_decay": 0.1, "lr": 1e-3, "encoder_lr": 1e-5})})
    model = build_model(cfg.model.model_copy(update={"train_text_layers": "all"}), load_text_backbone(cfg.model.text_encoder),
                        data.preprocessor.n_numeric_features, data.preprocessor.cardinalities, len(data.preprocessor.classes))
    built = []
    monkeypatch.setattr(measure, "build_optimizer", lambda m, optim: built.append(module.build_optimizer(m, optim)) or built[-1])
    path = measure.BenchPath("optimized", model, collate, [collate(items[:4])], True, False)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    measure.measure_training(path, collate(items[:4]), cfg, epochs=1)
    assert len(built) == 1
    groups = {(g["lr"], g["weight_decay"]) for g in built[0].param_groups}
    assert groups == {(1e-5, 0.1), (1e-5, 0.0), (1e-3, 0.1), (1e-3, 0.0)}
    no_decay = {id(p) for g in built[0].param_groups if g["weight_decay"] == 0.0 for p in g["params"]}
    assert id(model.head.bias) in no_decay and id(model.head.weight) not in no_decay
    assert not torch.equal(before["head.weight"], model.head.weight)  # the step updated the weights
