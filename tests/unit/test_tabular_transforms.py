"""Numeric transforms (standard, log, quantile), rare categories, balanced class weights, balanced accuracy."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from mmfusion.config import OptimConfig, load_config
from mmfusion.data.tabular import TabularPreprocessor
from mmfusion.errors import ConfigError, DataError
from mmfusion.modeling.metrics import classification_metrics
from mmfusion.modeling.module import class_weights


def skewed(n: int = 400, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    counts = np.floor(rng.lognormal(1.0, 2.0, n))  # heavy-tailed counts, like "positive feedback"
    counts[:5] = np.nan
    return pd.DataFrame({"count": counts, "shop": rng.choice(["a", "b", "c", "rare"], n, p=[0.5, 0.3, 0.195, 0.005]),
                         "text": "", "label": rng.choice(["no", "yes"], n, p=[0.8, 0.2]), "id": [f"r{i}" for i in range(n)]})


def fit(frame: pd.DataFrame, transform: str, **kw) -> TabularPreprocessor:
    return TabularPreprocessor.fit(frame, ["count"], ["shop"], "text", "label", "id", transform, **kw)


@pytest.mark.parametrize("transform", ["standard", "log", "quantile"])
def test_every_transform_standardises_train_and_keeps_order(transform):
    frame = skewed()
    pre = fit(frame, transform)
    numeric, _ = pre.transform(frame)
    x, missing = numeric[:, 0], numeric[:, 1]
    real = missing == 0
    assert np.isclose(x[real].mean(), 0.0, atol=1e-5) and np.isclose(x[real].std(ddof=1), 1.0, atol=1e-3)
    assert (x[~real] == 0).all() and missing[:5].tolist() == [1.0] * 5
    order = np.argsort(frame["count"].to_numpy()[real], kind="stable")
    assert (np.diff(x[real][order]) >= -1e-6).all()  # monotone: a larger count never scores lower


def test_log_and_quantile_tame_a_heavy_tail():
    frame = skewed()
    top = {t: fit(frame, t).transform(frame)[0][:, 0].max() for t in ("standard", "log", "quantile")}
    assert top["standard"] > 8 and top["log"] < top["standard"] / 2 and top["quantile"] < 4


def test_log_is_signed():
    frame = pd.DataFrame({"count": [-100.0, -1.0, 0.0, 1.0, 100.0], "shop": "a", "text": "", "label": ["a", "b"] * 2 + ["a"], "id": list("vwxyz")})
    x = fit(frame, "log").transform(frame)[0][:, 0]
    assert np.allclose(x, -x[::-1]) and x[2] == pytest.approx(0.0, abs=1e-6)


def test_quantile_knots_survive_json_and_clamp_outside_the_training_range(tmp_path):
    frame = skewed()
    pre = fit(frame, "quantile")
    pre.save(tmp_path / "p.json")
    loaded = TabularPreprocessor.load(tmp_path / "p.json")
    new = pd.DataFrame({"count": [-1e9, 3.0, 1e12], "shop": ["a", "zzz", "b"], "text": "", "label": "no", "id": ["n1", "n2", "n3"]})
    np.testing.assert_array_equal(loaded.transform(new)[0], pre.transform(new)[0])
    x = pre.transform(new)[0][:, 0]
    lo, hi = pre.transform(frame)[0][:, 0][5:].min(), pre.transform(frame)[0][:, 0][5:].max()
    assert x[0] == pytest.approx(lo, abs=1e-5) and x[2] == pytest.approx(hi, abs=1e-5)  # flat beyond the knots
    assert len(pre.quantiles["count"][0]) <= 1000


def test_quantile_on_a_constant_column_is_a_data_error():
    frame = skewed().assign(count=7.0)
    with pytest.raises(DataError, match="numeric column 'count': a quantile transform needs at least two distinct values"):
        fit(frame, "quantile")


def test_unknown_transform_and_inconsistent_file(tmp_path):
    with pytest.raises(DataError, match="unknown numeric transform 'boxcox'; allowed: standard, log, quantile"):
        fit(skewed(), "boxcox")
    pre = fit(skewed(), "quantile")
    pre.quantiles = {}
    pre.save(tmp_path / "p.json")
    with pytest.raises(DataError, match="not a valid preprocessing.json"):
        TabularPreprocessor.load(tmp_path / "p.json")


def test_an_old_preprocessing_file_is_standard(tmp_path):
    pre = fit(skewed(), "standard")
    state = __import__("json").loads(pre.to_json())
    for key in ("numeric_transform", "quantiles", "class_counts"):
        state.pop(key)
    (tmp_path / "old.json").write_text(__import__("json").dumps(state))
    old = TabularPreprocessor.load(tmp_path / "old.json")
    assert old.numeric_transform == "standard" and old.class_counts == []
    np.testing.assert_array_equal(old.transform(skewed())[0], pre.transform(skewed())[0])


def test_rare_categories_map_to_the_unknown_index():
    frame = skewed()
    n_rare = int((frame["shop"] == "rare").sum())
    assert 0 < n_rare < 10
    kept, cut = fit(frame, "standard"), fit(frame, "standard", min_category_count=10)
    assert "rare" in kept.categorical["shop"] and cut.categorical["shop"] == ["a", "b", "c"]
    codes = cut.transform(frame)[1][:, 0]
    assert (codes[(frame["shop"] == "rare").to_numpy()] == 0).all() and (codes[(frame["shop"] == "a").to_numpy()] > 0).all()


def test_balanced_class_weights_from_the_training_counts():
    pre = fit(skewed(), "standard")
    n_no, n_yes = pre.class_counts
    assert pre.classes == ["no", "yes"] and n_no + n_yes == 400 and n_no > 2 * n_yes
    w = class_weights(OptimConfig(class_weights="balanced"), pre.class_counts)
    assert w == pytest.approx([400 / (2 * n_no), 400 / (2 * n_yes)])
    assert class_weights(OptimConfig(class_weights=[1.0, 3.0]), pre.class_counts) == [1.0, 3.0]
    assert class_weights(OptimConfig(), pre.class_counts) is None
    with pytest.raises(ConfigError, match="balanced needs the training split's class counts"):
        class_weights(OptimConfig(class_weights="balanced"), [])


def test_balanced_accuracy_is_the_mean_recall():
    labels = torch.tensor([0] * 8 + [1] * 2)
    probs = torch.tensor([[0.9, 0.1]] * 10)  # always the majority class
    m = classification_metrics(probs, labels)
    assert m["accuracy"] == pytest.approx(0.8) and m["balanced_accuracy"] == pytest.approx(0.5)


def two_columns(n: int = 1500, seed: int = 0) -> pd.DataFrame:
    """`count` heavy-tailed with the label following its log; `height` normal with the label following it linearly."""
    rng = np.random.default_rng(seed)
    count = np.floor(rng.lognormal(1.0, 2.0, n))
    height = rng.normal(170.0, 10.0, n)
    logit = 1.5 * (np.log1p(count) - np.log1p(count).mean()) + 0.15 * (height - 170.0)
    label = np.where(rng.random(n) < 1 / (1 + np.exp(-logit)), "yes", "no")
    return pd.DataFrame({"count": count, "height": height, "shop": "a", "text": "", "label": label, "id": [f"r{i}" for i in range(n)]})


def test_auto_picks_log_for_a_heavy_tail_and_standard_for_a_normal_column():
    pre = TabularPreprocessor.fit(two_columns(), ["count", "height"], [], "text", "label", "id", "auto")
    assert pre.transforms == {"count": "log", "height": "standard"}
    assert pre.numeric_transform == "auto" and pre.quantiles == {}
    noise = two_columns().assign(label=np.random.default_rng(1).choice(["no", "yes"], 1500))  # no signal: the simplest
    assert TabularPreprocessor.fit(noise, ["count", "height"], [], "text", "label", "id", "auto").transforms == {"count": "standard", "height": "standard"}


def test_auto_is_repeatable_and_its_choice_survives_json(tmp_path):
    frame = two_columns()
    pre = TabularPreprocessor.fit(frame, ["count", "height"], [], "text", "label", "id", "auto")
    again = TabularPreprocessor.fit(frame, ["count", "height"], [], "text", "label", "id", "auto")
    assert again.transforms == pre.transforms
    pre.save(tmp_path / "p.json")
    loaded = TabularPreprocessor.load(tmp_path / "p.json")
    assert loaded.transforms == pre.transforms
    np.testing.assert_array_equal(loaded.transform(frame)[0], pre.transform(frame)[0])


def test_per_column_transforms_override_the_default_and_are_checked():
    frame = two_columns()
    pre = TabularPreprocessor.fit(frame, ["count", "height"], [], "text", "label", "id", "standard", transforms={"count": "quantile"})
    assert pre.transforms == {"count": "quantile", "height": "standard"} and set(pre.quantiles) == {"count"}
    explicit = TabularPreprocessor.fit(frame, ["count", "height"], [], "text", "label", "id", "auto", transforms={"count": "standard"})
    assert explicit.transforms["count"] == "standard"  # an explicit choice is never re-chosen
    with pytest.raises(DataError, match=r"data.numeric_transforms names column\(s\) \['age'\] that are not numeric columns"):
        TabularPreprocessor.fit(frame, ["count"], [], "text", "label", "id", "auto", transforms={"age": "log"})


def test_a_file_from_before_per_column_transforms_still_loads(tmp_path):
    pre = fit(skewed(), "log")
    state = json.loads(pre.to_json())
    del state["transforms"]
    (tmp_path / "old.json").write_text(json.dumps(state))
    old = TabularPreprocessor.load(tmp_path / "old.json")
    assert old.transform_of("count") == "log"
    np.testing.assert_array_equal(old.transform(skewed())[0], pre.transform(skewed())[0])


def test_an_auto_run_logs_each_columns_choice_and_its_config_rebuilds_it_without_choosing(mlflow_uri, tiny_overrides, monkeypatch):
    from mmfusion.data import tabular
    from mmfusion.data.datamodule import prepare_data
    from mmfusion.encoders import load_tokenizer
    from mmfusion.jobs.train import train
    from mmfusion.tracking.runs import config_of_run

    import mlflow

    result = train(load_config(None, [*tiny_overrides, "data.numeric_transform=auto", "tracking.log_model=false", "export.onnx=false"]))
    chosen = result.data.preprocessor.transforms
    assert chosen and set(chosen.values()) <= {"standard", "log", "quantile"}
    recorded = config_of_run(result.run_id)
    assert recorded.data.numeric_transform == "auto" and recorded.data.numeric_transforms == chosen
    params = mlflow.get_run(result.run_id).data.params
    assert {c: params[f"data.numeric_transforms.{c}"] for c in chosen} == chosen  # params, too
    monkeypatch.setattr(tabular, "choose_transform", lambda *a: pytest.fail("a rebuild must not choose again"))
    rebuilt = prepare_data(recorded.data, recorded.seed, load_tokenizer(recorded.model.text_encoder))
    assert rebuilt.preprocessor.transforms == chosen
    np.testing.assert_array_equal(rebuilt.splits["train"].numeric, result.data.splits["train"].numeric)
