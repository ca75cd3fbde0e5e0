"""The config contract: defaults, YAML + dotted overrides, validation errors that name the key, and the CLI's handling."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from mmfusion.config import Config, build_config, flatten, load_config, resolved_dict, to_yaml
from mmfusion.errors import ConfigError, UserError
from mmfusion.fusion import list_fusions

ROOT = Path(__file__).resolve().parents[2]
EXPERIMENTS = sorted((ROOT / "experiments").rglob("*.yaml"))  # experiments/real/ too
QUICKSTART = ROOT / "experiments" / "quickstart.yaml"


def write_yaml(path: Path, data) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


# ---- loading -------------------------------------------------------------------------------------------------


def test_defaults_load():
    cfg = load_config(None)
    assert cfg == Config()
    assert cfg.data.source == "synthetic" and cfg.model.fusion == "concat"
    assert cfg.trainer.max_epochs == 3 and cfg.seed == 42


def test_yaml_file_and_overrides(tmp_path):
    path = write_yaml(tmp_path / "exp.yaml", {"seed": 3, "model": {"fusion": "gate"}, "data": {"test_path": "x.csv"}})
    cfg = load_config(path, ["data.numeric_columns=[a,b]", "trainer.max_epochs=2", "data.test_path=null"])
    assert cfg.seed == 3 and cfg.model.fusion == "gate"  # from the file
    assert cfg.data.numeric_columns == ["a", "b"]  # YAML list
    assert cfg.trainer.max_epochs == 2 and isinstance(cfg.trainer.max_epochs, int)  # YAML int
    assert cfg.data.test_path is None  # YAML null overrides the file's value
    assert cfg.model.dropout == Config().model.dropout  # untouched keys keep their defaults


def test_override_beats_file_and_later_override_wins(tmp_path):
    path = write_yaml(tmp_path / "exp.yaml", {"model": {"fusion": "gate"}})
    assert load_config(path, ["model.fusion=moe"]).model.fusion == "moe"
    assert load_config(None, ["model.fusion=gate", "model.fusion=attention"]).model.fusion == "attention"


def test_nested_section_override(tmp_path):
    path = write_yaml(tmp_path / "exp.yaml", {"data": {"synthetic": {"n_samples": 500, "n_classes": 3}}})
    cfg = load_config(path, ["data.synthetic.n_samples=200", "data.synthetic.frac_both=0.25"])
    assert cfg.data.synthetic.n_samples == 200
    assert cfg.data.synthetic.n_classes == 3  # sibling from the file kept
    assert cfg.data.synthetic.frac_both == 0.25


@pytest.mark.parametrize("path", EXPERIMENTS, ids=lambda p: str(p.relative_to(ROOT / "experiments")))
def test_every_experiment_loads(path):
    cfg = load_config(path)
    assert build_config(resolved_dict(cfg)) == cfg and cfg != Config()  # its resolved form rebuilds it; it changes something
    assert load_config(path, ["trainer.max_epochs=1"]).trainer.max_epochs == 1


def test_there_are_experiments():
    assert QUICKSTART in EXPERIMENTS


def test_extends_merges_sections_and_replaces_lists(tmp_path):
    write_yaml(tmp_path / "base.yaml", {"seed": 3, "model": {"fusion": "gate", "dropout": 0.2}, "data": {"numeric_columns": ["a", "b"]}})
    (tmp_path / "sub").mkdir()
    child = write_yaml(tmp_path / "sub" / "child.yaml", {"extends": "../base.yaml", "model": {"dropout": 0.3}, "data": {"numeric_columns": ["c"]}})
    cfg = load_config(child, ["seed=5"])
    assert cfg.model.fusion == "gate" and cfg.model.dropout == 0.3  # merged key by key, the child wins
    assert cfg.data.numeric_columns == ["c"]  # a list is replaced, not appended to
    assert cfg.seed == 5  # overrides beat both files


def test_extends_several_parents_in_order(tmp_path):
    write_yaml(tmp_path / "a.yaml", {"seed": 1, "trainer": {"max_epochs": 4}})
    write_yaml(tmp_path / "b.yaml", {"seed": 2})
    cfg = load_config(write_yaml(tmp_path / "c.yaml", {"extends": ["a.yaml", "b.yaml"]}))
    assert cfg.seed == 2 and cfg.trainer.max_epochs == 4


def test_extends_missing_parent_names_both_files(tmp_path):
    child = write_yaml(tmp_path / "child.yaml", {"extends": "nope.yaml"})
    with pytest.raises(ConfigError, match=r"nope\.yaml.*does not exist \(extended by .*child\.yaml"):
        load_config(child)


def test_extends_cycle_is_an_error(tmp_path):
    write_yaml(tmp_path / "a.yaml", {"extends": "b.yaml"})
    write_yaml(tmp_path / "b.yaml", {"extends": "a.yaml"})
    with pytest.raises(ConfigError, match="extends itself"):
        load_config(tmp_path / "a.yaml")


@pytest.mark.parametrize("bad", [3, [], [""], {"x": 1}])
def test_extends_must_name_files(tmp_path, bad):
    with pytest.raises(ConfigError, match="`extends` must be a file name"):
        load_config(write_yaml(tmp_path / "c.yaml", {"extends": bad}))


def test_recipe_is_a_delta_of_the_attribution_benchmark():
    """attribution_recipe.yaml holds only what differs; its members train what the benchmark's data and budget say."""
    recipe, bench = load_config(ROOT / "experiments" / "attribution_recipe.yaml"), load_config(ROOT / "experiments" / "attribution.yaml")
    assert "extends" in (ROOT / "experiments" / "attribution_recipe.yaml").read_text()
    assert (recipe.seed, recipe.data, recipe.trainer, recipe.optim, recipe.export) == (bench.seed, bench.data, bench.trainer, bench.optim, bench.export)
    assert recipe.tracking.experiment == "attribution-recipe" and len(recipe.zoo.members()) == 4


def test_resolved_dict_rebuilds_the_config(tmp_path):
    cfg = load_config(QUICKSTART, ["model.fusion=gate"])
    again = load_config(write_yaml(tmp_path / "resolved.yaml", resolved_dict(cfg)))
    assert again == cfg
    assert yaml.safe_load(to_yaml(cfg)) == resolved_dict(cfg)


def test_flatten_gives_dotted_keys():
    flat = flatten(resolved_dict(load_config(QUICKSTART)))
    assert flat["model.fusion"] == "moe"
    assert flat["data.synthetic.n_samples"] == 4000
    assert flat["model.chunk_pooling"] == "attention" and flat["model.modality_dropout"] == 0.15
    assert flat["seed"] == 7
    assert not any(isinstance(v, dict) for v in flat.values())
    assert flatten({"a": {"b": 1, "c": {"d": [1, 2]}}, "e": None}) == {"a.b": 1, "a.c.d": [1, 2], "e": None}


# ---- errors --------------------------------------------------------------------------------------------------


def config_error(overrides: list[str], path=None) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(path, overrides)
    assert isinstance(info.value, UserError) and info.value.exit_code == 2
    return str(info.value)


def test_unknown_key_lists_allowed():
    msg = config_error(["data.foo=1"])
    assert "data.foo" in msg
    for key in ("source", "path", "text_column", "max_chunks", "synthetic"):
        assert key in msg


def test_unknown_nested_and_top_level_keys():
    msg = config_error(["data.synthetic.foo=1"])
    assert "data.synthetic.foo" in msg and "n_samples" in msg
    msg = config_error(["bad.key=1"])
    assert "bad" in msg and "trainer" in msg and "model" in msg


def test_wrong_type():
    msg = config_error(["trainer.max_epochs=abc"])
    assert "trainer.max_epochs" in msg and "integer" in msg and "abc" in msg


def test_bad_literal_names_allowed_values():
    msg = config_error(["data.source=sql"])
    assert "data.source" in msg and "'synthetic'" in msg and "'table'" in msg and "sql" in msg


def test_unknown_fusion_lists_registered():
    msg = config_error(["model.fusion=nope"])
    assert "model.fusion" in msg and "nope" in msg
    for name in list_fusions():
        assert name in msg
    assert "moe" in list_fusions()


@pytest.mark.parametrize("override", ["model.fusion", "=gate", "  =1"])
def test_malformed_override(override):
    msg = config_error([override])
    assert "key=value" in msg and repr(override) in msg


def test_override_into_a_value_is_rejected():
    msg = config_error(["seed.x=1"])
    assert "seed" in msg


def test_missing_config_file(tmp_path):
    missing = tmp_path / "nope.yaml"
    msg = config_error([], missing)
    assert str(missing) in msg and "does not exist" in msg


@pytest.mark.parametrize("text", ["- a\n- b\n", "just a string\n", "42\n"])
def test_yaml_not_a_mapping(tmp_path, text):
    path = tmp_path / "list.yaml"
    path.write_text(text)
    msg = config_error([], path)
    assert str(path) in msg and "mapping" in msg


def test_invalid_yaml(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("model: {fusion: [\n")
    msg = config_error([], path)
    assert str(path) in msg and "YAML" in msg


def test_empty_yaml_is_the_defaults(tmp_path):
    path = tmp_path / "empty.yaml"
    path.write_text("")
    assert load_config(path) == Config()


def test_table_source_needs_path():
    msg = config_error(["data.source=table"])
    assert "data.path" in msg
    assert load_config(None, ["data.source=table", "data.path=x.csv"]).data.path == "x.csv"


def test_odd_n_experts():
    msg = config_error(["model.fusion=moe_topk", "model.fusion_options.n_experts=3"])
    assert "model.fusion_options: n_experts of fusion 'moe_topk'" in msg and "even" in msg
    assert load_config(None, ["model.fusion=moe_topk", "model.fusion_options.n_experts=6"]).model.fusion_options["n_experts"] == 6


def test_variant_options_are_checked_only_for_their_variant():
    # attention's heads must divide fusion_dim; other variants have no heads to check
    assert load_config(None, ["model.fusion=concat", "model.fusion_dim=30"]).model.fusion_dim == 30
    msg = config_error(["model.fusion=attention", "model.fusion_dim=30"])
    assert msg.endswith("model.fusion_dim (30) must be divisible by model.fusion_options.heads (4)")
    assert load_config(None, ["model.fusion=attention", "model.fusion_dim=30", "model.fusion_options.heads=3"]).model.fusion_options == {"layers": 1, "heads": 3}
    msg = config_error(["model.fusion=moe", "model.fusion_options.rooter=mlp"])
    assert "'rooter' is not an option of fusion 'moe'; its options: router (default 'linear'), routing (default 'soft'), gumbel_temperature" in msg
    msg = config_error(["model.fusion=moe", "model.fusion_options.routing=sometimes"])
    assert "routing of fusion 'moe': Input should be 'soft' or 'hard' (got 'sometimes')" in msg


def test_a_preset_resolves_to_its_variant_and_options_and_rebuilds():
    cfg = load_config(None, ["model.fusion=moe-mlp-hard", "model.fusion_options.gumbel_temperature=0.5"])
    assert (cfg.model.fusion, cfg.model.fusion_preset) == ("moe", "moe-mlp-hard")
    assert cfg.model.fusion_options == {"router": "mlp", "routing": "hard", "gumbel_temperature": 0.5}  # preset, then overrides
    again = build_config(resolved_dict(cfg))
    assert again == cfg and resolved_dict(cfg)["model"]["fusion_preset"] == "moe-mlp-hard"
    assert "not a preset of fusion 'gate'" in config_error(["model.fusion=gate", "model.fusion_preset=moe-mlp-hard"])
    # a new model.fusion starts from its own options, not those of the file's fusion
    assert load_config(QUICKSTART, ["model.fusion=moe_topk"]).model.fusion_options["router"] == "linear"


def test_several_problems_all_reported():
    msg = config_error(["trainer.max_epochs=abc", "data.foo=1"])
    assert "trainer.max_epochs" in msg and "data.foo" in msg


def test_error_names_the_file(tmp_path):
    path = write_yaml(tmp_path / "exp.yaml", {"trainer": {"max_epochs": "abc"}})
    assert str(path) in config_error([], path)


def test_a_logged_config_that_predates_an_option_rebuilds_with_the_old_behaviour():
    """A run logged before trainer.restore_best & co. existed is rebuilt as it trained (last epoch kept, backbone
    dropout, one packed batch, torch's AdamW), while a config that states them keeps what it states."""
    from mmfusion.config import build_config, resolved_dict
    from mmfusion.config.legacy import BEFORE_THE_OPTION, fill_logged

    today = resolved_dict(build_config({}))
    old = {sec: ({k: v for k, v in body.items() if f"{sec}.{k}" not in BEFORE_THE_OPTION} if isinstance(body, dict) else body) for sec, body in today.items()}
    rebuilt = build_config(fill_logged(old))
    assert rebuilt.trainer.restore_best is False and rebuilt.model.pack_groups == 1 and rebuilt.model.fast_dropout is False
    assert rebuilt.model.text_attention_dropout is None and rebuilt.optim.adamw_impl == "for-loop"
    assert build_config(fill_logged(today)) == build_config(today)  # a current run is rebuilt as logged
