"""The `zoo:` section: which variants x seeds `mmfusion zoo` trains (never part of a run's config)."""

from __future__ import annotations

import itertools
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from mmfusion.config.base import Seed, Strict
from mmfusion.config.legacy import FLAT_KEYS, upgrade_model
from mmfusion.config.sections import ModelConfig


ZOO_METRICS = ["test_accuracy", "test_f1_macro", "test_auroc", "test_attribution_auroc", "test_faithfulness"]


def _fusion_name(name: str) -> str:
    from mmfusion.fusion import resolve_fusion

    resolve_fusion(name)  # raises, naming the variants and presets
    return name


class ZooVariant(BaseModel):
    """One zoo entry: a fusion (a variant or a preset), shared `model.*` overrides as flat keys, its own options under
    `fusion_options`, an optional grid over them (`fusion_options.<name>` for an option), an optional label.

    `moe-mlp-hard` (a preset) is one member labelled `moe-mlp-hard`; `{fusion: moe, fusion_options: {router: mlp},
    grid: {fusion_options.routing: [soft, hard]}, label: "moe-mlp-{routing}"}` is two; the label is a template over the
    member's model keys and options (default: the preset name, else `moe(router=mlp,routing=soft)`). The older form
    with flat option keys (`{fusion: moe, router: mlp, grid: {routing: [soft, hard]}}`) is mapped by legacy.py.
    """

    model_config = ConfigDict(extra="allow")
    fusion: str
    label: str | None = None
    grid: dict[str, list[Any]] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _check(self) -> "ZooVariant":
        _fusion_name(self.fusion)
        shared = [k for k in ModelConfig.model_fields if k not in ("fusion", "fusion_preset", "fusion_options")]
        allowed = [*shared, "fusion_options", *FLAT_KEYS]
        for key in self.model_extra or {}:
            if key not in allowed:
                raise ValueError(f"unknown model key {key!r} in a zoo variant; allowed: label, grid, fusion, fusion_options, {', '.join(shared)}")
        for key, values in self.grid.items():
            if key not in allowed[: len(shared)] + list(FLAT_KEYS) and not key.startswith("fusion_options."):
                raise ValueError(f"unknown model key {key!r} in a zoo grid; allowed: fusion_options.<option>, {', '.join(shared)}")
            if not values:
                raise ValueError(f"grid key {key!r} has no values")
            if key in (self.model_extra or {}):
                raise ValueError(f"model key {key!r} is both fixed and in the grid")
        self.members()  # checks the label template
        return self

    def members(self) -> list[tuple[str, dict[str, Any]]]:
        """-> [(label, model overrides)], one per grid combination; the overrides name the fusion and all its given
        options (`fusion_options`), so they replace those of the base config."""
        fixed = {"fusion": self.fusion, **(self.model_extra or {})}
        out = []
        for combo in itertools.product(*self.grid.values()):
            model = {**fixed, **{k: v for k, v in zip(self.grid, combo) if not k.startswith("fusion_options.")}}
            options = {**(model.get("fusion_options") or {}), **{k.split(".", 1)[1]: v for k, v in zip(self.grid, combo) if k.startswith("fusion_options.")}}
            model.pop("fusion_options", None)
            shown = {**{k: v for k, v in model.items() if k != "fusion"}, **options}
            try:
                label = self.label.format(**{**model, **options}) if self.label else self.fusion + (f"({','.join(f'{k}={v}' for k, v in shown.items())})" if shown else "")
            except (KeyError, IndexError, ValueError) as err:
                raise ValueError(f"label {self.label!r} is not a template over the model keys ({err})") from None
            out.append((label, {**upgrade_model({**model, "fusion_options": options}), "fusion_preset": None}))
        return out


class ZooConfig(Strict):
    """`python -m mmfusion zoo`: every variant x every seed on the same data, split, encoders and budget."""

    variants: list[ZooVariant] = Field(default_factory=list)  # a name or a mapping; empty: every registered fusion
    seeds: list[Seed] = Field(default_factory=lambda: [0, 1, 2], min_length=1)  # model/training seeds; paired by seed
    vary_data: bool = False  # true: each seed also draws its own data and split (still the same for every variant)
    metrics: list[str] = Field(default_factory=lambda: list(ZOO_METRICS), min_length=1)
    baseline: str | None = "concat"  # the label that paired tests compare against; null: no tests

    @field_validator("variants", mode="before")
    @classmethod
    def _names(cls, value: Any) -> Any:
        return [{"fusion": v} if isinstance(v, str) else v for v in value] if isinstance(value, list) else value

    @model_validator(mode="after")
    def _check(self) -> "ZooConfig":
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"zoo.seeds has duplicates: {self.seeds}")
        labels = [label for label, _ in self.members()]
        twice = sorted({x for x in labels if labels.count(x) > 1})
        if twice:
            raise ValueError(f"variants need distinct labels; repeated: {', '.join(twice)} (set `label`, with {{key}} placeholders for a grid)")
        if self.baseline is not None and self.baseline not in labels:
            raise ValueError(f"baseline {self.baseline!r} is not a variant's label ({', '.join(labels)}); null: no paired tests")
        return self

    def members(self) -> list[tuple[str, dict[str, Any]]]:
        """-> [(label, model overrides)] for every member, in order."""
        from mmfusion.fusion import list_fusions

        variants = self.variants or [ZooVariant(fusion=name) for name in list_fusions()]
        return [m for v in variants for m in v.members()]
