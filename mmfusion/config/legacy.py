"""Configs written before fusion variants owned their options: the flat model keys, mapped to the new form on load.

Before, 8 model keys were global flags read by one or two variants. Each now lives in `model.fusion_options` of the
variant that reads it (the others never read it, so it is dropped), and `moe_topk` with `routing: hard` (a different
algorithm under the same name) is the variant `moe_topk_hard`:

    old key (model.*)     moe                   moe_topk               moe_topk_hard (moe_topk + hard)   attention
    router                router                router                 router                            -
    routing               routing               soft: stays moe_topk   hard: selects this variant        -
    gumbel_temperature    gumbel_temperature    -                      gumbel_temperature                -
    n_experts             -                     n_experts              n_experts                         -
    top_k                 -                     top_k                  - (hard routing is top-1)         -
    load_balance_weight   -                     load_balance_weight    load_balance_weight               -
    attention_layers      -                     -                      -                                 layers
    attention_heads       -                     -                      -                                 heads

Applied wherever a model section is validated (experiment files, `key=value` overrides, a logged run's config.yaml,
zoo variants `{fusion: moe, router: mlp, routing: hard}` and their grids, study trials sampling `model.router`...).
Setting a key in both forms (`model.router` and `model.fusion_options.router`) is an error.

`model.freeze_text_encoder` (a bool) became `model.train_text_layers`: true = 0 (frozen), false = all (full
fine-tuning). Both given: they must agree (true with 0, false with all), else it is an error naming both. Study search spaces keep
their old keys (Optuna's parameter names, so old studies resume); each trial's config is mapped as above.
"""

from __future__ import annotations

from typing import Any

FLAT_KEYS = ("router", "routing", "gumbel_temperature", "n_experts", "top_k", "load_balance_weight", "attention_layers", "attention_heads")
OPTION_NAMES: dict[str, dict[str, str]] = {  # variant -> {old flat key: its option}
    "moe": {"router": "router", "routing": "routing", "gumbel_temperature": "gumbel_temperature"},
    "moe_topk": {"router": "router", "n_experts": "n_experts", "top_k": "top_k", "load_balance_weight": "load_balance_weight"},
    "moe_topk_hard": {"router": "router", "n_experts": "n_experts", "gumbel_temperature": "gumbel_temperature", "load_balance_weight": "load_balance_weight"},
    "attention": {"attention_layers": "layers", "attention_heads": "heads"},
}


def _variant(name: Any) -> Any:
    from mmfusion.fusion import PRESETS

    return PRESETS[name].variant if isinstance(name, str) and name in PRESETS else name


def _upgrade_freeze(model: dict[str, Any]) -> dict[str, Any]:
    if "freeze_text_encoder" not in model:
        return model
    out = {k: v for k, v in model.items() if k != "freeze_text_encoder"}
    frozen = model["freeze_text_encoder"]
    if not isinstance(frozen, bool):
        raise ValueError(f"model.freeze_text_encoder (the old spelling of model.train_text_layers) must be true or false, got {frozen!r}")
    layers = 0 if frozen else "all"
    if "train_text_layers" in out and out["train_text_layers"] != layers:
        raise ValueError(f"model.freeze_text_encoder={str(frozen).lower()} (the old spelling of model.train_text_layers={layers}) contradicts "
                         f"model.train_text_layers={out['train_text_layers']!r}: keep model.train_text_layers only")
    out["train_text_layers"] = layers
    return out


def upgrade_model(model: dict[str, Any]) -> dict[str, Any]:
    """A model section with flat keys -> the same section in the new form (unchanged when it has none)."""
    model = _upgrade_freeze(model)
    flat = {k: model[k] for k in FLAT_KEYS if k in model}
    if not flat:
        return model
    out = {k: v for k, v in model.items() if k not in FLAT_KEYS}
    fusion = out.get("fusion", "concat")
    if _variant(fusion) == "moe_topk" and flat.get("routing") == "hard":
        out["fusion"] = fusion = "moe_topk_hard"
    names = OPTION_NAMES.get(_variant(fusion), {})
    given = out.get("fusion_options") or {}
    if not isinstance(given, dict):
        return out  # validation names the problem
    mapped = {names[k]: v for k, v in flat.items() if k in names}
    both = [f"model.{k} and model.fusion_options.{names[k]}" for k in flat if k in names and names[k] in given]
    if both:
        raise ValueError(f"{'; '.join(both)} are the old and the new form of the same option: keep model.fusion_options only")
    out["fusion_options"] = {**mapped, **given}
    return out


def to_flat(model: dict[str, Any]) -> dict[str, Any]:
    """The inverse, for study trials that sample old keys: the section's options as flat keys where they have one."""
    variant = _variant(model.get("fusion", "concat"))
    names = {new: old for old, new in OPTION_NAMES.get(variant, {}).items()}
    options = dict(model.get("fusion_options") or {})
    out = {k: v for k, v in model.items() if k not in ("fusion_options", "fusion_preset")}
    out["fusion"] = "moe_topk" if variant == "moe_topk_hard" else variant
    if variant == "moe_topk_hard":
        out["routing"] = "hard"
    out.update({names[k]: options.pop(k) for k in list(options) if k in names})
    if options:
        out["fusion_options"] = options
    return out


# Options added after runs were logged, with the value that gives the behaviour those runs trained with. A logged
# config.yaml is fully resolved, so a key it lacks means the run predates the option: without this, rebuilding it
# (`reproduce`, `train --resume`) would silently train with today's defaults instead.
BEFORE_THE_OPTION: dict[str, Any] = {
    "trainer.restore_best": False,  # the last epoch's weights were kept
    "model.pack_groups": 1,  # one packed encoder batch (same result to float rounding)
    "model.text_attention_dropout": None,  # the backbone's own attention dropout
    "model.fast_dropout": False,  # torch's dropout
    "optim.adamw_impl": "for-loop",  # torch's default AdamW on CPU
}


def fill_logged(raw: dict[str, Any]) -> dict[str, Any]:
    """A logged run's config with the options it predates set to the behaviour it trained with."""
    out = {k: dict(v) if isinstance(v, dict) else v for k, v in raw.items()}
    for key, value in BEFORE_THE_OPTION.items():
        section, name = key.split(".")
        if isinstance(out.get(section), dict) and name not in out[section]:
            out[section][name] = value
    return out
