"""The `study:` section: the Optuna study `mmfusion tune` runs (never part of a trial's config)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from mmfusion.config.base import Strict
from mmfusion.config.legacy import FLAT_KEYS, to_flat


STUDY_METRICS = ("val_loss", "val_accuracy", "val_f1_macro", "val_balanced_accuracy", "val_auroc", "val_attribution_auroc", "val_faithfulness")
Choice = str | bool | int | float | None


class ParamSpec(Strict):
    """One search-space entry, keyed by a dotted config key: `optim.lr: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}`.

    `when: {model.fusion: [moe, moe_topk]}` samples it only when an earlier categorical parameter took one of those values.
    A variant's option is `model.fusion_options.<name>`; the flat keys of older studies (`model.router`, ...) keep
    their names (Optuna's parameter names) and are mapped per trial (config/legacy.py).
    """

    type: Literal["categorical", "int", "float"]
    choices: list[Choice] | None = None
    low: float | None = None
    high: float | None = None
    step: float | None = None
    log: bool = False
    when: dict[str, Choice | list[Choice]] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _check(self) -> "ParamSpec":
        if self.type == "categorical":
            if not self.choices:
                raise ValueError("a categorical parameter needs a non-empty `choices` list")
            if self.low is not None or self.high is not None or self.step is not None or self.log:
                raise ValueError("a categorical parameter takes `choices` only (no low/high/step/log)")
            return self
        if self.choices is not None or self.low is None or self.high is None:
            raise ValueError(f"an {self.type} parameter needs `low` and `high` (and no `choices`)")
        if self.low > self.high:
            raise ValueError(f"low ({self.low}) is above high ({self.high})")
        if self.log and (self.low <= 0 or self.step is not None):
            raise ValueError("a log-scale parameter needs low > 0 and no step")
        if self.step is not None and self.step <= 0:
            raise ValueError("step must be positive")
        if self.type == "int" and any(v is not None and v != int(v) for v in (self.low, self.high, self.step)):
            raise ValueError("an int parameter needs whole-number low/high/step")
        return self

    def bounds(self) -> list[Choice]:
        """The values whose validity stands for the whole range: the choices, or low and high."""
        if self.type == "categorical":
            return list(self.choices or [])
        return [int(self.low), int(self.high)] if self.type == "int" else [self.low, self.high]


class SamplerConfig(Strict):
    name: Literal["tpe", "random"] = "tpe"
    seed: int | None = None  # null: the config's top-level `seed`
    n_startup_trials: int = Field(10, ge=0)  # tpe: random trials before the model of good/bad trials is used


class PrunerConfig(Strict):
    name: Literal["median", "hyperband", "none"] = "median"
    n_startup_trials: int = Field(5, ge=0)  # median: trials that are never pruned
    n_warmup_steps: int = Field(0, ge=0)  # median: epochs of each trial before it may be pruned
    min_resource: int = Field(1, ge=1)  # hyperband: epochs every trial gets
    reduction_factor: int = Field(3, ge=2)  # hyperband


class StudyConfig(Strict):
    """`python -m mmfusion tune`: an Optuna study whose trials are `train` runs of the rest of the config."""

    study_name: str = Field("mmfusion", min_length=1)
    storage: str | None = None  # SQLAlchemy URL; null: sqlite:///optuna.db here. postgresql://... for several workers
    n_trials: int | None = Field(None, ge=1)  # the study ends with exactly this many complete + pruned trials
    timeout: float | None = Field(None, gt=0)  # seconds, per `tune` invocation
    metric: Literal[STUDY_METRICS] = "val_f1_macro"  # reported every epoch (pruning); its last value is the objective
    direction: Literal["maximize", "minimize"] | None = None  # null: minimize val_loss, maximize the others
    sampler: SamplerConfig = SamplerConfig()
    pruner: PrunerConfig = PrunerConfig()
    search_space: dict[str, ParamSpec] = Field(min_length=1)
    heartbeat_interval: int = Field(5, ge=1)  # seconds; a trial silent for grace_period (its worker died) is failed ...
    grace_period: int | None = Field(None, ge=1)  # ... and retried; null: 4 x heartbeat_interval
    max_retry: int = Field(2, ge=0)  # retries of a trial whose worker died
    max_failed_trials: int = Field(3, ge=1)  # this many failed trials in a row (one worker) end the study with an error
    # lean trials (default): no train-split prediction pass, plots, ONNX export or model packaging per trial (the parent
    # run logs them once, for the best trial, at the end), and the prepared data and frozen-encoder embeddings reused
    # across the trials of one process; the trial values are the same either way. false: every trial a full `train` run
    lean_trials: bool = True

    @model_validator(mode="after")
    def _check(self) -> "StudyConfig":
        if self.n_trials is None and self.timeout is None:
            raise ValueError("study needs n_trials, timeout or both (otherwise it never ends)")
        if self.direction is None:
            self.direction = "minimize" if self.metric == "val_loss" else "maximize"
        elif (self.direction == "maximize") == (self.metric == "val_loss"):
            raise ValueError(f"study.direction {self.direction!r} makes no sense for {self.metric} (lower is better only for val_loss)")
        earlier: dict[str, ParamSpec] = {}
        for name, spec in self.search_space.items():
            for cond, wanted in spec.when.items():
                parent = earlier.get(cond)
                if parent is None or parent.type != "categorical":
                    raise ValueError(f"search_space.{name}: `when` refers to {cond!r}, which must be a categorical parameter listed before it")
                bad = [w for w in (wanted if isinstance(wanted, list) else [wanted]) if w not in parent.choices]
                if bad:
                    raise ValueError(f"search_space.{name}: `when` value(s) {bad} are not choices of {cond} ({parent.choices})")
            earlier[name] = spec
        return self


def apply_params(raw: dict, params: dict) -> dict:
    """A config dump (new form) with sampled {dotted key: value} set. A sampled `model.fusion` starts from that
    variant's (or preset's) own options; `model.fusion_options.<name>` sets one; old flat keys go through legacy.py."""
    import copy

    raw = copy.deepcopy(raw)
    model = raw.setdefault("model", {})
    if "model.fusion" in params:
        model.update(fusion=params["model.fusion"], fusion_preset=None, fusion_options={})
    if any(k.split(".", 1)[1] in FLAT_KEYS for k in params if k.startswith("model.")):
        raw["model"] = model = to_flat(model)
    for name, value in params.items():
        *parents, leaf = name.split(".")
        if name == "model.fusion":
            continue
        node = raw
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return raw
