"""`model.train_text_layers: K`: the top K encoder layers train on cached hidden states of the frozen lower part."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file
from transformers import BertConfig, BertModel

from mmfusion.config import ModelConfig, load_config
from mmfusion.config.loading import build_config, resolved_dict
from mmfusion.data.datamodule import PreparedData, Split, SplitDataset, collate
from mmfusion.data.embedding_cache import cache_key
from mmfusion.data.layer_cache import STORAGE, attach_layer_hidden, layer_cache_key
from mmfusion.encoders.partial import encoder_layers
from mmfusion.errors import ConfigError
from mmfusion.modeling.classifier import build_model
from mmfusion.modeling.module import MODEL_INPUTS

N_LAYERS = 3
SAMPLES = [
    [[101, 2023, 2003, 102], [101, 2062, 102]],
    [[101, 7592, 2088, 2003, 1037, 3231, 102]],
    [],  # no text at all
    [[101, 2204, 102], [101, 2919, 2000, 2022, 102], [101, 2115, 102]],
]


def backbone() -> BertModel:
    torch.manual_seed(0)
    config = BertConfig(vocab_size=8000, hidden_size=32, num_hidden_layers=N_LAYERS, num_attention_heads=2, intermediate_size=64, max_position_embeddings=64)
    return BertModel(config, add_pooling_layer=False)


def split(chunks=SAMPLES, numeric: float = 0.0) -> Split:
    n = len(chunks)
    return Split(pd.DataFrame({"x": range(n)}), [f"r{i}" for i in range(n)], chunks, np.full((n, 4), numeric, np.float32),
                 np.zeros((n, 2), np.int64), np.zeros(n, np.int64), np.full(n, -1))


def model_with_cache(layers, tmp_path, samples=SAMPLES, fusion: str = "concat"):
    """-> (model in eval mode, batch with the cached states, PreparedData)."""
    model = build_model(ModelConfig(train_text_layers=layers, fusion=fusion, fusion_dim=8), backbone(), 4, [3, 3], 2).eval()
    data = PreparedData({"train": split(samples)}, None, "fp", False)  # type: ignore[arg-type]
    attach_layer_hidden(data, model.text_encoder.backbone, "tiny", model.text_lower, 4, 32, str(tmp_path))
    ds = SplitDataset(data.splits["train"])
    return model, collate([ds[i] for i in range(len(ds))]), data


def inputs(batch: dict, cached: bool = True) -> dict:
    return {k: batch[k] for k in MODEL_INPUTS if k in batch and (cached or k != "text_hidden")}


@pytest.mark.parametrize("layers", [1, 2, N_LAYERS])
def test_top_layers_on_cached_states_equal_the_whole_backbone_from_tokens(layers, tmp_path):
    model, batch, _ = model_with_cache(layers, tmp_path)
    assert model.text_lower == N_LAYERS - layers and batch["text_hidden"].shape[:3] == batch["input_ids"].shape
    with torch.inference_mode():
        cached = model(**inputs(batch))
        from_tokens = model(**inputs(batch, cached=False))  # embeddings and every layer, as export and serving run it
        h_cached, chunks_cached, _ = model.encode(*(batch.get(k) for k in MODEL_INPUTS))
        h_tokens, chunks_tokens, _ = model.encode(*(batch.get(k) for k in MODEL_INPUTS if k != "text_hidden"))
    # the states are stored in float16: equal to its rounding (training itself runs in bf16 autocast, coarser still)
    torch.testing.assert_close(chunks_cached, chunks_tokens, atol=5e-3, rtol=5e-3)
    torch.testing.assert_close(cached.logits, from_tokens.logits, atol=5e-3, rtol=5e-3)
    assert torch.all(h_cached[2] == 0) and torch.all(h_tokens[2] == 0)  # no text: zeros, not NaN
    assert torch.all(chunks_cached[1, 1:] == 0)  # padding chunks stay zeros


def test_float32_states_give_the_same_chunks_exactly(tmp_path):
    """Without the storage rounding the split is exact: lower layers + top layers == the whole backbone."""
    from mmfusion.encoders.partial import cached_chunks, lower_hidden

    model, batch, _ = model_with_cache(1, tmp_path)
    bb = model.text_encoder.backbone
    b, c, t = batch["input_ids"].shape
    with torch.inference_mode():
        hidden = lower_hidden(bb, batch["input_ids"].reshape(b * c, t), batch["attention_mask"].reshape(b * c, t), model.text_lower).reshape(b, c, t, -1)
        _, whole = model.text_encoder(batch["input_ids"], batch["attention_mask"], batch["chunk_mask"])
        split_path = cached_chunks(bb, hidden, batch["attention_mask"], batch["chunk_mask"], model.text_lower)
    torch.testing.assert_close(split_path, whole, atol=1e-5, rtol=1e-5)


def test_gradients_reach_only_the_top_layers_and_the_lower_part_never_drops_out(tmp_path):
    model, batch, _ = model_with_cache(1, tmp_path)
    model.train()
    bb = model.text_encoder.backbone
    layers = encoder_layers(bb)
    assert not bb.embeddings.training and not any(layer.training for layer in layers[:-1]) and layers[-1].training
    model(**inputs(batch)).logits.sum().backward()
    lower = [p for m in (bb.embeddings, *layers[:-1]) for p in m.parameters()]
    assert lower and all(not p.requires_grad and p.grad is None for p in lower)
    top = list(layers[-1].parameters())
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in top) and any(p.grad.abs().sum() > 0 for p in top)
    rest = [p for n, p in model.named_parameters() if not n.startswith("text_encoder.") and p.requires_grad]
    assert rest and all(p.grad is not None for p in rest)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    full = build_model(ModelConfig(fusion_dim=8), backbone(), 4, [3, 3], 2)
    assert trainable == sum(p.numel() for p in full.parameters()) - sum(p.numel() for p in lower)


def test_dropout_of_the_top_layers_follows_the_encoder_config(tmp_path):
    """In training mode the trained layer applies its dropout (two passes differ); the cached part is fixed."""
    model, batch, _ = model_with_cache(1, tmp_path)
    model.train()
    a, b = model(**inputs(batch)).logits, model(**inputs(batch)).logits
    assert not torch.allclose(a, b)


def test_layer_cache_hit_miss_and_what_it_stores(tmp_path):
    model, _, data = model_with_cache(2, tmp_path)
    bb, s = model.text_encoder.backbone, data.splits["train"]
    [file] = list(tmp_path.glob("layers-*.safetensors"))
    stored = load_file(str(file))
    real_tokens = sum(len(ch) for sample in SAMPLES for ch in sample)
    assert stored["hidden"].shape == (real_tokens, 32) and stored["hidden"].dtype == STORAGE  # real tokens only
    assert stored["counts"].tolist() == [sum(map(len, sample)) for sample in SAMPLES]
    again = PreparedData({"train": split(numeric=3.0)}, None, "fp", False)  # another numeric column: the same states
    assert attach_layer_hidden(again, bb, "tiny", 1, 4, 32, str(tmp_path)) == {"hits": 1, "misses": 0}
    assert all(torch.equal(x, y) for x, y in zip(again.splits["train"].text_hidden, s.text_hidden))
    for encoder, n_lower, c, t, chunks in [("other", 1, 4, 32, SAMPLES), ("tiny", 2, 4, 32, SAMPLES), ("tiny", 1, 5, 32, SAMPLES),
                                           ("tiny", 1, 4, 64, SAMPLES), ("tiny", 1, 4, 32, SAMPLES[::-1])]:
        other = PreparedData({"train": split(chunks)}, None, "fp", False)
        assert attach_layer_hidden(other, bb, encoder, n_lower, c, t, str(tmp_path)) == {"hits": 0, "misses": 1}
    assert layer_cache_key("tiny", 1, 4, 32, s, 32) != cache_key("tiny", 4, 32, s, 32)  # never the chunk embeddings' file
    assert attach_layer_hidden(PreparedData({"train": split()}, None, "fp", False), bb, "tiny", 1, 4, 32, None) == {"hits": 0, "misses": 1}
    no_text = PreparedData({"train": split([[], []])}, None, "fp", False)  # a batch without any text
    attach_layer_hidden(no_text, bb, "tiny", 1, 4, 32, str(tmp_path))
    assert [h.shape for h in no_text.splits["train"].text_hidden] == [(0, 32), (0, 32)]


def test_onnx_export_of_k1_starts_from_tokens_and_matches(tmp_path):
    from mmfusion.export.onnx import export_onnx
    from mmfusion.serving.onnx_scorer import OnnxScorer

    model, batch, _ = model_with_cache(1, tmp_path, fusion="gate")
    path = export_onnx(model, batch, tmp_path / "model.onnx")
    got = OnnxScorer(path)({k: v for k, v in batch.items() if k != "text_hidden"})
    with torch.inference_mode():
        want = model(**inputs(batch, cached=False)).logits.softmax(-1).numpy()
        cached = model(**inputs(batch)).logits.softmax(-1).numpy()
    np.testing.assert_allclose(got["probs"], want, atol=1e-5)  # the exported graph holds the lower layers too
    np.testing.assert_allclose(got["probs"], cached, atol=5e-3)


def test_config_spellings_and_their_contradictions():
    assert load_config(None, []).model.train_text_layers == "all"
    assert load_config(None, ["model.freeze_text_encoder=true"]).model.train_text_layers == 0  # the legacy spelling
    assert load_config(None, ["model.freeze_text_encoder=false"]).model.train_text_layers == "all"
    assert load_config(None, ["model.freeze_text_encoder=true", "model.train_text_layers=0"]).model.train_text_layers == 0
    cfg = load_config(None, ["model.train_text_layers=2"])
    dumped = resolved_dict(cfg)
    assert dumped["model"]["train_text_layers"] == 2 and "freeze_text_encoder" not in dumped["model"]
    assert build_config(dumped) == cfg  # the logged config rebuilds the run
    for bad, words in [(["model.train_text_layers=-1"], "'all'"), (["model.train_text_layers=top"], "'all'"), (["model.train_text_layers=1.5"], "'all'"),
                       (["model.train_text_layers=true"], "'all'"), (["model.freeze_text_encoder=true", "model.train_text_layers=1"], "contradicts"),
                       (["model.freeze_text_encoder=false", "model.train_text_layers=0"], "contradicts")]:
        with pytest.raises(ConfigError, match=words) as err:
            load_config(None, bad)
        assert "model.train_text_layers" in str(err.value) and "\n" not in str(err.value)


def test_more_layers_than_the_encoder_has_is_an_error():
    with pytest.raises(ConfigError, match=rf"model.train_text_layers: {N_LAYERS + 1}, but .* has {N_LAYERS} layers; allowed: 0 \(frozen\) to {N_LAYERS}, or all"):
        build_model(ModelConfig(train_text_layers=N_LAYERS + 1, fusion_dim=8), backbone(), 4, [3, 3], 2)
