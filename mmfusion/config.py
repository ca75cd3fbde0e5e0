"""Typed experiment configuration: YAML files + dotted `key=value` overrides, validated before anything runs.

The schema's defaults are the base experiment; a YAML file in `experiments/` holds only what differs. The fully
resolved config (`resolved_dict`) is what gets logged, and it alone rebuilds a run.
"""

from __future__ import annotations

import copy
import itertools
import re
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from mmfusion.errors import ConfigError

DEFAULT_TEXT_ENCODER = "sentence-transformers/all-MiniLM-L6-v2"


class Strict(BaseModel):
    # allow_inf_nan=False: an `inf` or `nan` (YAML .inf, or the string "inf") is never a valid number here
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


SEED_MAX = 2**32  # numpy's and Lightning's seeds are 32-bit unsigned
Seed = Annotated[int, Field(ge=0, lt=SEED_MAX)]
PositiveFloat = Annotated[float, Field(gt=0.0, allow_inf_nan=False)]
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _folder(value: str | None) -> str | None:
    """A config value naming a folder to write into: a file in its place is an error now, not mid-job."""
    from mmfusion.paths import dir_problem

    problem = dir_problem(value, writable=False) if value else None
    if problem:
        raise ValueError(problem)
    return value


class SyntheticConfig(Strict):
    n_samples: int = Field(2000, ge=20)
    n_classes: int = Field(2, ge=2, le=4)
    frac_both: float = Field(0.0, ge=0.0, le=1.0)
    text_signal: float = Field(1.0, ge=0.0, le=1.0)
    tab_signal: float = Field(2.0, ge=0.0)
    label_noise: float = Field(0.0, ge=0.0, le=1.0)
    missing_rate: float = Field(0.05, ge=0.0, lt=1.0)


class DataConfig(Strict):
    source: Literal["synthetic", "table"] = "synthetic"
    path: str | None = None
    test_path: str | None = None
    text_column: str = "dialogue"
    numeric_columns: list[str] | None = None  # None: the synthetic set's columns; [] for a table means none
    categorical_columns: list[str] | None = None
    label_column: str = "label"
    id_column: str | None = None
    max_chunks: int = Field(8, ge=1)
    chunk_len: int = Field(64, ge=8, le=512)  # also at most the text encoder's positions (checked when it loads)
    val_fraction: float = Field(0.15, gt=0.0, lt=1.0)
    test_fraction: float = Field(0.15, ge=0.0, lt=1.0)
    num_workers: int = Field(0, ge=0)
    bucket_by_length: bool = True  # train batches of similar-length dialogues (less padding to encode)
    split_seed: Seed | None = None  # seed of the synthetic data and the train/val/test split; null: the run's `seed`
    cache_dir: str | None = ".mmfusion_cache"  # chunk embeddings of a frozen encoder; null disables
    synthetic: SyntheticConfig = SyntheticConfig()

    @field_validator("cache_dir")
    @classmethod
    def _cache_folder(cls, value: str | None) -> str | None:
        return _folder(value)

    @model_validator(mode="after")
    def _check(self) -> "DataConfig":
        if self.source == "table" and not self.path:
            raise ValueError("data.path is required when data.source is 'table'")
        if self.val_fraction + self.test_fraction >= 0.9:
            raise ValueError("data.val_fraction + data.test_fraction must leave at least 10% for training")
        return self


class ModelConfig(Strict):
    fusion: str = "concat"
    text_encoder: str = DEFAULT_TEXT_ENCODER  # a Hugging Face name or a local path
    freeze_text_encoder: bool = False
    chunk_pooling: Literal["mean", "attention"] = "mean"  # how chunk embeddings make h_text; mean: the original design
    fusion_dim: int = Field(128, ge=2)
    tab_hidden: int = Field(128, ge=2)
    tab_dim: int = Field(64, ge=2)
    category_embed_dim: int = Field(8, ge=1)
    dropout: float = Field(0.1, ge=0.0, lt=1.0)
    modality_dropout: float = Field(0.0, ge=0.0, le=0.5)  # per training sample: P(text removed) = P(table removed)
    router: Literal["linear", "mlp"] = "linear"
    routing: Literal["soft", "hard"] = "soft"
    gumbel_temperature: float = Field(1.0, gt=0.0)
    n_experts: int = Field(4, ge=2)
    top_k: int = Field(2, ge=1)
    load_balance_weight: float = Field(0.01, ge=0.0)
    attention_layers: int = Field(1, ge=1)
    attention_heads: int = Field(4, ge=1)

    @field_validator("fusion")
    @classmethod
    def _known_fusion(cls, name: str) -> str:
        from mmfusion.fusion import list_fusions

        if name not in list_fusions():
            raise ValueError(f"unknown fusion {name!r}; allowed: {', '.join(list_fusions())}")
        return name

    @model_validator(mode="after")
    def _check(self) -> "ModelConfig":
        if self.n_experts % 2:
            raise ValueError("model.n_experts must be even (half the experts read text, half the table)")
        if self.fusion_dim % self.attention_heads:
            raise ValueError("model.fusion_dim must be divisible by model.attention_heads")
        return self


class OptimConfig(Strict):
    lr: float = Field(1e-3, gt=0.0)  # fusion, tabular encoder and head
    encoder_lr: float = Field(3e-5, gt=0.0)  # the pretrained text encoder
    weight_decay: float = Field(0.01, ge=0.0)
    schedule: Literal["linear", "constant"] = "linear"
    warmup_fraction: float = Field(0.1, ge=0.0, lt=1.0)
    class_weights: list[PositiveFloat] | None = None  # one per class (sorted class names), each finite and > 0


class TrainerConfig(Strict):
    max_epochs: int = Field(3, ge=1)
    max_steps: int = Field(-1, ge=-1)
    batch_size: int = Field(32, ge=1)
    eval_batch_size: int = Field(64, ge=1)
    precision: Literal["auto", "32-true", "bf16-mixed", "16-mixed"] = "auto"
    accelerator: Literal["auto", "cpu", "gpu", "cuda", "mps"] = "auto"
    devices: int | Literal["auto"] = 1
    strategy: Literal["auto", "ddp", "fsdp"] = "auto"
    num_nodes: int = Field(1, ge=1)
    gradient_clip_val: float | None = Field(1.0, gt=0.0)
    deterministic: bool = True
    log_every_n_steps: int = Field(10, ge=1)
    enable_progress_bar: bool = True
    output_dir: str = "outputs"  # checkpoints and job files, under <output_dir>/<run_id>/
    checkpoints: bool = True  # (sharded under fsdp) each epoch and at the end; `train --resume RUN_ID` continues
    checkpoint_every_n_steps: int | None = Field(None, ge=1)  # also every N optimizer steps; a resume from mid-epoch is not exact (the epoch restarts its data order)
    compile: bool = False  # torch.compile the text encoder; measured slower on CPU after a 2-3 min compile (results/bench.md)

    @field_validator("output_dir")
    @classmethod
    def _output_folder(cls, value: str) -> str:
        return _folder(value)

    @field_validator("devices")
    @classmethod
    def _devices(cls, value: int | str) -> int | str:
        if isinstance(value, int) and value < 1:
            raise ValueError("must be a number of devices (at least 1) or 'auto'")
        return value


class TrackingConfig(Strict):
    experiment: str = Field("mmfusion", min_length=1)
    uri: str | None = None  # MLFLOW_TRACKING_URI wins when set; default sqlite:///mlflow.db
    run_name: str | None = None
    log_model: bool = True

    @field_validator("experiment", "run_name")
    @classmethod
    def _printable(cls, value: str | None) -> str | None:
        if value is not None and (_CONTROL.search(value) or not value.strip()):
            raise ValueError("must be non-empty, without control characters (newlines, tabs, ...)")
        return value


class ExportConfig(Strict):
    onnx: bool = True  # every run exports to ONNX and proves parity with PyTorch
    quantize: bool = False  # also an int8 dynamically quantized model, with its own accuracy figures
    tolerance: float = Field(1e-4, gt=0.0)  # max |ONNX - PyTorch| (probabilities and weights, fp32)


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


STUDY_METRICS = ("val_loss", "val_accuracy", "val_f1_macro", "val_auroc", "val_attribution_auroc", "val_faithfulness")
Choice = str | bool | int | float | None


class ParamSpec(Strict):
    """One search-space entry, keyed by a dotted config key: `optim.lr: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}`.

    `when: {model.fusion: [moe, moe_topk]}` samples it only when an earlier categorical parameter took one of those values.
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


class Config(Strict):
    seed: Seed = 42
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    optim: OptimConfig = OptimConfig()
    trainer: TrainerConfig = TrainerConfig()
    tracking: TrackingConfig = TrackingConfig()
    export: ExportConfig = ExportConfig()
    zoo: ZooConfig | None = None  # read by `mmfusion zoo` only; never part of a trained run's config
    study: StudyConfig | None = None  # read by `mmfusion tune` only; never part of a trial's config

    @model_validator(mode="after")
    def _check_study(self) -> "Config":
        if self.study is not None:
            _check_search_space(self)
        return self


# ---- loading ---------------------------------------------------------------------------------------------------


def parse_override(text: str) -> tuple[list[str], Any]:
    """`a.b.c=value` -> (["a", "b", "c"], value parsed as YAML)."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {text!r} is not of the form key=value (e.g. model.fusion=gate)")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as err:
        raise ConfigError(f"override {text!r}: value is not valid YAML ({err.problem})") from None
    return key.strip().split("."), value


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    out = copy.deepcopy(raw)
    for text in overrides:
        path, value = parse_override(text)
        node = out
        for i, part in enumerate(path[:-1]):
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"override {text!r}: {'.'.join(path[: i + 1])} is a value, not a section")
            node = child
        node[path[-1]] = value
    return out


def _describe(err: dict) -> str:
    key = ".".join(str(p) for p in err["loc"] if not str(p).startswith("function-"))
    if err["type"] == "extra_forbidden":
        section = _section_model(err["loc"][:-1])
        allowed = ", ".join(section.model_fields) if section else "?"
        where = ".".join(str(p) for p in err["loc"][:-1]) or "the top level"
        return f"unknown key {key!r}; allowed keys in {where}: {allowed}"
    msg = err["msg"].removeprefix("Value error, ")
    got = err.get("input")
    shown = "" if isinstance(got, (dict, BaseModel)) or got is None else f" (got {got!r})"
    return f"{key or 'config'}: {msg}{shown}"


def _section_model(loc: tuple) -> type[BaseModel] | None:
    model: type[BaseModel] = Config
    for part in loc:
        field = model.model_fields.get(str(part))
        sub = getattr(field, "annotation", None) if field else None
        sub = next((a for a in get_args(sub) if isinstance(a, type) and issubclass(a, BaseModel)), sub)  # X | None
        if not (isinstance(sub, type) and issubclass(sub, BaseModel)):
            return None
        model = sub
    return model


def _check_search_space(cfg: "Config") -> None:
    """Each search-space key must be a config value and each choice (or low/high) valid for it on its own.

    Only errors of that key itself count: a combination that breaks a cross-field rule fails that trial, not the study.
    """
    base = cfg.model_dump(mode="json", exclude={"study", "zoo"})
    for name, spec in cfg.study.search_space.items():
        path = name.split(".")
        section = _section_model(tuple(path[:-1]))
        if path[0] in ("study", "zoo") or section is None or path[-1] not in section.model_fields or _section_model(tuple(path)):
            raise ValueError(f"study.search_space: {name!r} is not a config value (e.g. model.fusion, optim.lr, trainer.batch_size)")
        for value in spec.bounds():
            raw = copy.deepcopy(base)
            node = raw
            for part in path[:-1]:
                node = node[part]
            node[path[-1]] = value
            try:
                Config.model_validate(raw)
            except ValidationError as err:
                own = [e for e in err.errors() if [str(p) for p in e["loc"]][: len(path)] == path]
                if own:
                    raise ValueError(f"study.search_space.{name}: {value!r} is not a valid value ({own[0]['msg'].removeprefix('Value error, ')})") from None


def build_config(raw: dict, source: str = "config") -> Config:
    try:
        return Config.model_validate(raw)
    except ValidationError as err:
        problems = "; ".join(_describe(e) for e in err.errors())
        raise ConfigError(f"invalid {source}: {problems}") from None


def load_config(path: str | Path | None, overrides: list[str] = ()) -> Config:
    """Read a YAML experiment (or start from the defaults), apply overrides, validate."""
    raw: dict = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {str(path)!r} does not exist")
        try:
            raw = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as err:
            raise ConfigError(f"config file {str(path)!r} is not valid YAML: {err}") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"config file {str(path)!r} must hold a mapping of sections, got {type(raw).__name__}")
    return build_config(apply_overrides(raw, list(overrides)), str(path or "config"))


def resolved_dict(cfg: Config) -> dict:
    return cfg.model_dump(mode="json", exclude={k for k in ("zoo", "study") if getattr(cfg, k) is None})


def to_yaml(cfg: Config) -> str:
    return yaml.safe_dump(resolved_dict(cfg), sort_keys=False)


def flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1}: the MLflow params of a run."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out
