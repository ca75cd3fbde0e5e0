"""The zoo: its config schema, and a 2-variant x 2-seed zoo with the tiny BERT, nested under one parent run."""

from __future__ import annotations

from pathlib import Path

import mlflow
import pandas as pd
import pytest
import yaml

from mmfusion.cli import main
from mmfusion.commands.zoo import parse_seeds
from mmfusion.config import load_config
from mmfusion.errors import ConfigError
from mmfusion.fusion import list_fusions
from mmfusion.jobs.zoo import members

ROOT = Path(__file__).resolve().parents[2]


def test_zoo_yaml_has_every_registered_variant():
    ms = members(load_config(ROOT / "experiments" / "zoo.yaml"))
    assert sorted({m.label for m in ms}) == list_fusions()
    assert len(ms) == 3 * len(list_fusions())
    assert {m.cfg.data.split_seed for m in ms} == {7}  # one data set and split for all
    assert {m.cfg.seed for m in ms} == {0, 1, 2} and all(m.cfg.zoo is None for m in ms)


def test_attribution_yaml_is_the_weighted_variants_by_router_and_routing():
    ms = members(load_config(ROOT / "experiments" / "attribution.yaml"), seeds=[0])
    by_label = {m.label: m.cfg.model for m in ms}
    assert {"gate", "attention", "concat"} <= set(by_label)
    for fusion in ("moe", "moe_topk"):
        for router in ("linear", "mlp"):
            for routing in ("soft", "hard"):
                model = by_label[f"{fusion}-{router}-{routing}"]  # a preset: its label is its name
                variant = "moe_topk_hard" if (fusion, routing) == ("moe_topk", "hard") else fusion
                assert (model.fusion, model.fusion_preset, model.fusion_options["router"]) == (variant, f"{fusion}-{router}-{routing}", router)
                assert model.fusion_options.get("routing", routing) == routing


def test_variant_options_grid_labels_and_vary_data():
    cfg = load_config(None, ["seed=5", "zoo.vary_data=true", "zoo.baseline=null",
                             'zoo.variants=[{fusion: moe, router: mlp, grid: {routing: [soft, hard]}}, {fusion: gate, dropout: 0.3, label: g3}]'])
    ms = members(cfg, seeds=[1, 2])
    assert [(m.label, m.seed) for m in ms] == [("moe(router=mlp,routing=soft)", 1), ("moe(router=mlp,routing=soft)", 2),
                                               ("moe(router=mlp,routing=hard)", 1), ("moe(router=mlp,routing=hard)", 2), ("g3", 1), ("g3", 2)]
    assert ms[2].cfg.model.fusion_options["routing"] == "hard" and ms[4].cfg.model.dropout == 0.3 and ms[0].cfg.model.dropout == 0.1
    assert [m.cfg.data.split_seed for m in ms[:2]] == [1, 2]  # vary_data: each seed its own data, shared by variants
    assert members(cfg, only=["g3"], seeds=[0])[0].label == "g3"
    with pytest.raises(ConfigError, match="unknown label"):
        members(cfg, only=["nope"])


@pytest.mark.parametrize("override, message", [
    ("zoo.variants=[{fusion: moe, routr: mlp}]", "unknown model key 'routr'"),
    ("zoo.variants=[{fusion: nope}]", "unknown fusion 'nope'"),
    ("zoo.variants=[concat, {fusion: moe, grid: {router: [linear, mlp]}, label: m}]", "distinct labels"),
    ("zoo.variants=[gate]", "baseline 'concat' is not a variant's label"),
    ("zoo.seeds=[1, 1]", "duplicates"),
])
def test_bad_zoo_sections_name_the_problem(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, [override])


def test_seeds_option():
    assert parse_seeds("3") == [0, 1, 2] and parse_seeds("4,9") == [4, 9] and parse_seeds(None) is None
    for bad in ("x", "1,1", "0"):
        with pytest.raises(ConfigError, match="--seeds"):
            parse_seeds(bad)


def test_two_variants_two_seeds_with_tiny_bert(mlflow_uri, tiny_overrides, tmp_path, capsys):
    zoo = {"zoo": {"variants": ["concat", {"fusion": "moe", "router": "mlp", "routing": "hard", "label": "moe-mlp-hard"}],
                   "seeds": [10, 11, 12], "metrics": ["test_accuracy", "test_attribution_auroc"]}}
    path = tmp_path / "zoo.yaml"
    path.write_text(yaml.safe_dump(zoo))
    out = tmp_path / "cmp"
    cheap = [*tiny_overrides, "tracking.log_model=false", "export.onnx=false", "model.freeze_text_encoder=true", f"data.cache_dir={tmp_path / 'cache'}"]
    assert main(["zoo", "--config", str(path), "--seeds", "2", "--out", str(out), *cheap]) == 0
    printed = capsys.readouterr().out
    assert "2 variant(s) x 2 seed(s) = 4 runs" in printed and "| moe-mlp-hard | 2 |" in printed

    client = mlflow.MlflowClient(mlflow_uri)
    runs = mlflow.search_runs(search_all_experiments=True)
    parent = runs[runs["tags.mmfusion.kind"] == "zoo"]
    assert len(parent) == 1 and parent["status"].iloc[0] == "FINISHED"
    parent_id = parent["run_id"].iloc[0]
    children = runs[runs["tags.mlflow.parentRunId"] == parent_id]
    assert len(children) == 4 and (children["status"] == "FINISHED").all()
    assert len(list((tmp_path / "cache").glob("*.safetensors"))) == 3  # one data set: the members share the cache
    assert sorted(zip(children["tags.mmfusion.zoo.label"], children["params.seed"])) == [("concat", "0"), ("concat", "1"), ("moe-mlp-hard", "0"), ("moe-mlp-hard", "1")]
    assert children["tags.mmfusion.data_fingerprint"].nunique() == 1  # same data for every member ...
    assert set(children["params.data.split_seed"]) == {"42"}  # ... the base config's seed pins it
    assert set(children[children["tags.mmfusion.zoo.label"] == "moe-mlp-hard"]["params.model.fusion_options.routing"]) == {"hard"}
    for key in ("n_params", "n_trainable_params", "n_fusion_params", "train_samples_per_second"):
        assert (children[f"metrics.{key}"] > 0).all(), key
    assert (children.groupby("tags.mmfusion.zoo.label")["metrics.n_fusion_params"].nunique() == 1).all()
    test_ids = [pd.read_csv(mlflow.artifacts.download_artifacts(run_id=r, artifact_path="predictions/test.csv", dst_path=str(tmp_path / r)))["id"].tolist() for r in children["run_id"]]
    assert all(ids == test_ids[0] for ids in test_ids)  # ... and the same test split

    summary = pd.read_csv(out / "summary.csv").set_index("variant")
    assert summary.loc["concat", "n_runs"] == 2 and summary.loc["moe-mlp-hard", "test_accuracy_n"] == 2
    concat = children[children["tags.mmfusion.zoo.label"] == "concat"]["metrics.test_accuracy"]
    assert summary.loc["concat", "test_accuracy_mean"] == pytest.approx(concat.mean())
    tests = pd.read_csv(out / "tests.csv")
    assert set(tests["metric"]) == {"test_accuracy", "test_attribution_auroc"} and (tests["n_pairs"] == 2).all()
    assert {"metrics.png", "w_text.png", "comparison.md"} <= {p.name for p in out.iterdir()}
    logged = {a.path for a in client.list_artifacts(parent_id, "comparison")}
    assert {"comparison/comparison.md", "comparison/metrics.png", "comparison/w_text.png"} <= logged
    assert yaml.safe_load(mlflow.artifacts.load_text(f"runs:/{parent_id}/zoo.yaml"))["zoo"]["seeds"] == [10, 11, 12]

    # resume: every member is already finished, so nothing is trained again
    assert main(["zoo", "--config", str(path), "--seeds", "2", "--resume", parent_id, "--no-compare", *cheap]) == 0
    assert printed.count("kept") == 0 and capsys.readouterr().out.count("kept") == 4
    assert len(mlflow.search_runs(search_all_experiments=True)) == 5
