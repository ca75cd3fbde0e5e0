"""The `zoo:` section: which variants x seeds `mmfusion zoo` trains (never part of a run's config)."""

from __future__ import annotations

import itertools
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from mmfusion.config.base import Seed, Strict
from mmfusion.config.sections import ModelConfig


ZOO_METRICS = ["test_accuracy", "test_f1_macro", "test_auroc", "test_attribution_auroc", "test_faithfulness"]


def _fusion_name(name: str) -> str:
    from mmfusion.fusion import list_fusions

    if name not in list_fusions():
        raise ValueError(f"unknown fusion {name!r}; allowed: {', '.join(list_fusions())}")
    return name


class ZooVariant(BaseModel):
    """One zoo entry: a fusion, `model.*` overrides as flat keys, an optional grid of them, an optional label.

    `{fusion: moe, router: mlp, grid: {routing: [soft, hard]}, label: "moe-mlp-{routing}"}` is two members; the label
    is a template over the member's model keys (default: `moe(router=mlp,routing=soft)`).
    """

    model_config = ConfigDict(extra="allow")
    fusion: str
    label: str | None = None
    grid: dict[str, list[Any]] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _check(self) -> "ZooVariant":
        _fusion_name(self.fusion)
        allowed = [k for k in ModelConfig.model_fields if k != "fusion"]
        for key in [*(self.model_extra or {}), *self.grid]:
            if key not in allowed:
                raise ValueError(f"unknown model key {key!r} in a zoo variant; allowed: label, grid, fusion, {', '.join(allowed)}")
        for key, values in self.grid.items():
            if not values:
                raise ValueError(f"grid key {key!r} has no values")
            if key in (self.model_extra or {}):
                raise ValueError(f"model key {key!r} is both fixed and in the grid")
        self.members()  # checks the label template
        return self

    def members(self) -> list[tuple[str, dict[str, Any]]]:
        """-> [(label, model overrides)], one per grid combination."""
        fixed = {"fusion": self.fusion, **(self.model_extra or {})}
        out = []
        for combo in itertools.product(*self.grid.values()):
            model = {**fixed, **dict(zip(self.grid, combo))}
            shown = ",".join(f"{k}={v}" for k, v in model.items() if k != "fusion")
            try:
                label = self.label.format(**model) if self.label else self.fusion + (f"({shown})" if shown else "")
            except (KeyError, IndexError, ValueError) as err:
                raise ValueError(f"label {self.label!r} is not a template over the model keys ({err})") from None
            out.append((label, model))
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
