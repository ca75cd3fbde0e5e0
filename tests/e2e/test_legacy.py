"""Configs and runs from before the variants owned their options (flat `model.router`, ... keys) keep loading and
reproducing: tests/fixtures/legacy_run*/ hold runs logged by that code (see their README.md)."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import pytest
import yaml

from mmfusion.config import build_config, load_config, resolved_dict
from mmfusion.errors import ConfigError
from mmfusion.jobs.reproduce import reproduce

FIXTURES = Path(__file__).parents[1] / "fixtures"
SIZE_METRICS = {"n_params", "n_trainable_params", "n_fusion_params"}
# The fixtures were logged on another machine (that dev box reported AVX-512); on an AVX2-only CPU MKL's kernels round
# differently in the last bits (seen: predictions 7e-8 apart, the same classes): exact on the CPU kind that logged
# them, within this bound across kinds. The old config's translation is what is tested, not the CPU's rounding.
CROSS_CPU = 1e-5


def log_old_run(folder: Path, tiny_bert: str, uri: str, tmp_path: Path) -> str:
    """The fixture as a FINISHED run in the store at `uri`: its config.yaml (tiny BERT path of this session), final
    metrics, predictions/test.csv and tags."""
    client = mlflow.MlflowClient(uri)
    raw = yaml.safe_load((folder / "config.yaml").read_text().replace("__TINY_BERT__", tiny_bert))
    exp = client.create_experiment(raw["tracking"]["experiment"])
    run = client.create_run(exp, tags=json.loads((folder / "tags.json").read_text()))
    for key, value in json.loads((folder / "metrics.json").read_text()).items():
        client.log_metric(run.info.run_id, key, value)
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    client.log_artifact(run.info.run_id, str(tmp_path / "config.yaml"))
    client.log_artifact(run.info.run_id, str(folder / "predictions" / "test.csv"), "predictions")
    client.set_terminated(run.info.run_id, "FINISHED")
    return run.info.run_id


@pytest.mark.slow
def test_a_run_logged_before_the_change_reproduces_exactly(tiny_bert, mlflow_uri, tmp_path):
    original = log_old_run(FIXTURES / "legacy_run", tiny_bert, mlflow_uri, tmp_path)
    rep = reproduce(original, tracking_uri=mlflow_uri)
    assert rep.within(CROSS_CPU), (rep.metrics, rep.predictions)
    assert rep.predictions["rows"] == 18 and rep.predictions["same_preds"]
    checked = set(rep.metrics.loc[rep.metrics["checked"], "metric"])
    assert {"test_loss", "val_loss", "train_loss", "test_accuracy", "n_params"} <= checked
    new = mlflow.MlflowClient(mlflow_uri).get_run(rep.run_id)
    assert new.data.params["model.fusion"] == "moe" and new.data.params["model.fusion_options.routing"] == "hard"
    assert "model.router" not in new.data.params  # logged in the new form


@pytest.mark.slow
def test_an_old_hard_routed_topk_run_reproduces_as_moe_topk_hard(tiny_bert, mlflow_uri, tmp_path):
    """`moe_topk` + `routing: hard` is now `moe_topk_hard`, which has no (unused) noise net: every metric and
    prediction is the same, the parameter counts are smaller by that net."""
    original = log_old_run(FIXTURES / "legacy_run_topk_hard", tiny_bert, mlflow_uri, tmp_path)
    rep = reproduce(original, tracking_uri=mlflow_uri)
    same = rep.metrics[rep.metrics["checked"] & ~rep.metrics["metric"].isin(SIZE_METRICS)]
    assert len(same) >= 10 and (same["abs_diff"] <= CROSS_CPU).all(), same
    assert rep.predictions["same_preds"] and rep.predictions["max_abs_diff"] <= CROSS_CPU
    sizes = rep.metrics.set_index("metric")
    noise_net = 2 * 16 * 4 + 4  # Linear(2 * fusion_dim, n_experts)
    assert sizes.loc["n_fusion_params", "original"] - sizes.loc["n_fusion_params", "reproduced"] == noise_net
    assert mlflow.MlflowClient(mlflow_uri).get_run(rep.run_id).data.params["model.fusion"] == "moe_topk_hard"


def test_flat_keys_map_to_the_variant_options():
    raw = yaml.safe_load((FIXTURES / "legacy_run" / "config.yaml").read_text())
    model = build_config(raw).model
    assert (model.fusion, model.fusion_preset) == ("moe", None)
    assert model.fusion_options == {"router": "mlp", "routing": "hard", "gumbel_temperature": 1.0}  # the rest: unread by moe
    cases = {
        ("model.fusion=moe_topk", "model.routing=hard", "model.top_k=1"): ("moe_topk_hard", {"router": "linear", "n_experts": 4, "load_balance_weight": 0.01, "gumbel_temperature": 1.0}),
        ("model.fusion=moe_topk", "model.routing=soft", "model.n_experts=6"): ("moe_topk", {"router": "linear", "n_experts": 6, "load_balance_weight": 0.01, "top_k": 2}),
        ("model.fusion=attention", "model.attention_heads=2", "model.attention_layers=3"): ("attention", {"layers": 3, "heads": 2}),
        ("model.fusion=concat", "model.router=mlp", "model.attention_heads=3"): ("concat", {}),  # never read by concat
    }
    for overrides, (fusion, options) in cases.items():
        m = load_config(None, list(overrides)).model
        assert (m.fusion, m.fusion_options) == (fusion, options), overrides
    again = build_config(resolved_dict(load_config(None, ["model.fusion=moe_topk", "model.routing=hard"])))
    assert again.model.fusion == "moe_topk_hard"  # the new form reloads as itself


def test_both_forms_of_one_key_is_an_error():
    with pytest.raises(ConfigError, match=r"model.router and model.fusion_options.router are the old and the new form"):
        load_config(None, ["model.fusion=moe", "model.router=mlp", "model.fusion_options.router=linear"])
    assert load_config(None, ["model.fusion=moe", "model.router=mlp", "model.fusion_options.routing=hard"]).model.fusion_options["routing"] == "hard"


def test_old_zoo_variants_and_study_keys_still_work():
    from mmfusion.jobs.tune.space import trial_config
    from mmfusion.jobs.zoo import members

    old = ["zoo.baseline=null", 'zoo.variants=[{fusion: moe_topk, grid: {router: [mlp, linear], routing: [soft, hard]}, label: "t-{router}-{routing}"}]']
    got = {m.label: (m.cfg.model.fusion, m.cfg.model.fusion_options["router"]) for m in members(load_config(None, old), seeds=[0])}
    assert got == {"t-mlp-soft": ("moe_topk", "mlp"), "t-mlp-hard": ("moe_topk_hard", "mlp"), "t-linear-soft": ("moe_topk", "linear"), "t-linear-hard": ("moe_topk_hard", "linear")}
    space = "study.search_space={model.fusion: {type: categorical, choices: [moe, moe_topk]}, model.router: {type: categorical, choices: [linear, mlp]}, model.routing: {type: categorical, choices: [soft, hard]}}"
    cfg = load_config(None, ["study.n_trials=1", space, "model.fusion=moe-mlp-hard"])
    m = trial_config(cfg, {"model.fusion": "moe_topk", "model.router": "mlp", "model.routing": "hard"}, 0).model
    assert (m.fusion, m.fusion_options["router"]) == ("moe_topk_hard", "mlp")
    m = trial_config(cfg, {"model.router": "linear"}, 1).model  # the base's other options stay
    assert (m.fusion, m.fusion_options) == ("moe", {"router": "linear", "routing": "hard", "gumbel_temperature": 1.0})
