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
    assert res["speedup"]["train_cpu"] == pytest.approx(opt["train_samples_per_cpu_s"] / ref["train_samples_per_cpu_s"]) and opt["train_samples_per_cpu_s"] > 0
    onnx = res["onnx"]
    assert {"eager", "onnx_fp32", "onnx_int8", "fused_fp32", "fused_int8", "single_fp32"} == set(onnx["engines"]) and onnx["batch"] == 12
    assert onnx["max_abs_diff_fp32_vs_eager"] < 1e-4  # the exported (packed) model is the optimized model
    assert onnx["engines"]["fused_fp32"]["max_abs_diff_vs_onnx_fp32"] < 1e-4
    assert all(e["latency_ms_median"] > 0 and e["batch_samples_per_s"] > 0 for e in onnx["engines"].values())
    assert onnx["throughput_ratio_onnx_vs_eager"] == pytest.approx(onnx["engines"]["onnx_fp32"]["batch_samples_per_s"] / onnx["engines"]["eager"]["batch_samples_per_s"])
    goals = {g["goal"].split(" (")[0]: g for g in res["goals"]}
    assert [g["goal"] for g in res["goals"]][0].startswith("training throughput") and len(res["goals"]) == 6
    assert not goals["int8 ONNX accuracy within 1 point of fp32 ONNX on >= 1,000 samples"]["met"]  # n=12: never met on too few samples
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


def test_reference_keeps_the_backbones_own_dropout(tiny_data):
    """The optimized path runs the configured text dropout (no attention dropout, FastDropout); the reference path
    is the original design: the backbone's own rates with torch's dropout."""
    from mmfusion.encoders.text import FastDropout

    cfg, data, _ = tiny_data
    backbone = load_text_backbone(cfg.model.text_encoder)
    own = (backbone.config.hidden_dropout_prob, backbone.config.attention_probs_dropout_prob)
    model = build_model(cfg.model, backbone, data.preprocessor.n_numeric_features, data.preprocessor.cardinalities, len(data.preprocessor.classes))
    ref = reference_model(model, dropout=own)
    rates = lambda m: {n: (type(d), d.p) for n, d in m.text_encoder.backbone.named_modules() if isinstance(d, torch.nn.Dropout)}
    attention = [n for n in rates(model) if n.endswith("attention.self.dropout")]
    assert attention and all(rates(model)[n][1] == 0.0 for n in attention)
    assert any(t is FastDropout for t, _ in rates(model).values())
    assert all(t is torch.nn.Dropout and p == (own[1] if n in attention else own[0]) for n, (t, p) in rates(ref).items())


def test_reference_collate_pads_the_chunk_columns(tiny_data):
    cfg, _, items = tiny_data
    items = [dict(it, chunk_column=[1] * len(it["chunks"])) for it in items[:6]]
    batch = reference_collate(items, cfg.data.max_chunks, cfg.data.chunk_len)
    assert batch["chunk_column"].shape == batch["chunk_mask"].shape == (6, cfg.data.max_chunks)
    assert torch.equal(batch["chunk_column"] > 0, batch["chunk_mask"] > 0)


@pytest.mark.parametrize("impl", ["fused", "foreach", "for-loop"])
def test_adamw_implementations_take_the_same_step(tiny_data, impl):
    from mmfusion.modeling.module import build_optimizer

    cfg, data, items = tiny_data
    steps = {}
    for name in ("for-loop", impl):
        torch.manual_seed(0)
        model = build_model(cfg.model.model_copy(update={"text_dropout": 0.0}), load_text_backbone(cfg.model.text_encoder), data.preprocessor.n_numeric_features,
                            data.preprocessor.cardinalities, len(data.preprocessor.classes))
        opt = build_optimizer(model, cfg.optim.model_copy(update={"adamw_impl": name}))
        assert bool(opt.defaults.get("fused")) == (name == "fused")
        batch = collate(items[:8])
        for _ in range(2):
            torch.nn.functional.cross_entropy(_logits_grad(model, batch), batch["label"]).backward()
            opt.step()
            opt.zero_grad()
        steps[name] = {n: p.detach().clone() for n, p in model.named_parameters()}
    for n, p in steps[impl].items():
        torch.testing.assert_close(p, steps["for-loop"][n], atol=1e-6, rtol=1e-5)


def _logits_grad(model, batch):
    return model(**{k: batch[k] for k in MODEL_INPUTS if k in batch}).logits


def test_bench_runs_on_a_table_with_two_text_columns(tiny_overrides, tmp_path, monkeypatch, capsys):
    """`bench` on `data.source=table` with `data.text_columns`: both paths see each chunk's column (the model's
    column vectors), the reference pads the columns with the chunks."""
    import numpy as np
    import pandas as pd

    from mmfusion.cli import main

    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 120)
    frame = pd.DataFrame({"id": [f"r{i}" for i in range(120)], "title": np.where(y == 1, "love it", "send it back"),
                          "body": [f"arrived on day {d}\nsize {s} " + "word " * int(n) for d, s, n in zip(rng.integers(1, 9, 120), rng.integers(1, 5, 120), rng.integers(0, 40, 120))],
                          "age": rng.integers(18, 80, 120), "y": y})
    frame.to_csv(tmp_path / "r.csv", index=False)
    monkeypatch.chdir(tmp_path)
    table = ["data.source=table", f"data.path={tmp_path / 'r.csv'}", "data.text_columns=[title,body]", "data.label_column=y", "data.id_column=id",
             "data.numeric_columns=[age]", "data.categorical_columns=[]"]
    out = tmp_path / "bench.json"
    assert main(["bench", *tiny_overrides, *table, "--train-samples", "16", "--eval-samples", "8", "--no-onnx", "--json", str(out)]) == 0
    assert "title, body" in capsys.readouterr().out
    res = json.loads(out.read_text())
    assert res["text_columns"] == ["title", "body"] and res["paths"]["optimized"]["train_samples_per_s"] > 0
    assert res["paths"]["reference"]["encoded_tokens_per_sample"] == 4 * 32


def test_trainer_threads_sets_the_intra_op_threads():
    from mmfusion.training.hardware import apply_threads

    before = torch.get_num_threads()
    try:
        assert apply_threads(None) == before  # null: torch's default stays
        assert apply_threads(1) == 1 == torch.get_num_threads()
    finally:
        torch.set_num_threads(before)
    assert load_config(None, ["trainer.threads=2"]).trainer.threads == 2


def test_auto_adamw_is_fused_in_fp32_and_foreach_under_mixed_precision(tiny_data):
    """Lightning refuses to clip a fused optimizer's gradients under a mixed-precision plugin (bf16-mixed is the
    default where the CPU has bf16): `auto` must not pick fused there."""
    from mmfusion.modeling.module import build_optimizer

    cfg, data, _ = tiny_data
    model = build_model(cfg.model, load_text_backbone(cfg.model.text_encoder), data.preprocessor.n_numeric_features,
                        data.preprocessor.cardinalities, len(data.preprocessor.classes))
    assert cfg.optim.adamw_impl == "auto"
    assert build_optimizer(model, cfg.optim).defaults.get("fused") is True
    mixed = build_optimizer(model, cfg.optim, mixed_precision=True)
    assert not mixed.defaults.get("fused") and mixed.defaults.get("foreach") is True


def test_the_top_layers_path_starts_from_the_same_weights_and_trains_only_the_top(tiny_data):
    from mmfusion.bench.runner import _copy_partial
    from mmfusion.encoders.partial import encoder_layers

    cfg, data, _ = tiny_data
    model = build_model(cfg.model.model_copy(update={"train_text_layers": "all"}), load_text_backbone(cfg.model.text_encoder),
                        data.preprocessor.n_numeric_features, data.preprocessor.cardinalities, len(data.preprocessor.classes))
    top = _copy_partial(model, cfg, 1, data)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), top.state_dict().values()))
    layers = encoder_layers(top.text_encoder.backbone)
    assert not any(p.requires_grad for p in [*top.text_encoder.backbone.embeddings.parameters(), *layers[:-1].parameters()])
    assert all(p.requires_grad for p in layers[-1].parameters()) and all(p.requires_grad for p in model.parameters())  # the original is untouched
    assert not layers[0].training and layers[-1].training  # the frozen part never drops out


def test_bench_with_a_top_layers_path(tiny_overrides, tmp_path, monkeypatch, capsys):
    from mmfusion.cli import main

    monkeypatch.chdir(tmp_path)
    out = tmp_path / "bench.json"
    assert main(["bench", *tiny_overrides, "--train-samples", "16", "--eval-samples", "8", "--no-onnx", "--text-layers", "1", "--json", str(out)]) == 0
    assert "top-1 layers" in capsys.readouterr().out
    res = json.loads(out.read_text())
    top, ref = res["paths"]["top-1 layers"], res["paths"]["reference"]
    assert res["speedup"]["train_top"] == pytest.approx(top["train_samples_per_s"] / ref["train_samples_per_s"])
    assert top["encoded_tokens_per_sample"] == res["paths"]["optimized"]["encoded_tokens_per_sample"]  # the same packing
    assert [g["goal"].split(",")[0] for g in res["goals"]][2] == "training throughput >= 6x the reference path" and len(res["goals"]) == 4
    for bad in ("-1", "99"):
        assert main(["bench", *tiny_overrides, "--no-onnx", "--text-layers", bad]) == 2
        assert "layers" in capsys.readouterr().err
