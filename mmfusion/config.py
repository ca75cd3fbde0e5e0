"""Typed experiment configuration: YAML files + dotted `key=value` overrides, validated before anything runs.

The schema's defaults are the base experiment; a YAML file in `experiments/` holds only what differs. The fully
resolved config (`resolved_dict`) is what gets logged, and it alone rebuilds a run.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from mmfusion.errors import ConfigError

DEFAULT_TEXT_ENCODER = "sentence-transformers/all-MiniLM-L6-v2"


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


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
    chunk_len: int = Field(64, ge=8, le=512)
    val_fraction: float = Field(0.15, gt=0.0, lt=1.0)
    test_fraction: float = Field(0.15, ge=0.0, lt=1.0)
    num_workers: int = Field(0, ge=0)
    cache_dir: str | None = ".mmfusion_cache"  # chunk embeddings of a frozen encoder; null disables
    synthetic: SyntheticConfig = SyntheticConfig()

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
    fusion_dim: int = Field(128, ge=2)
    tab_hidden: int = Field(128, ge=2)
    tab_dim: int = Field(64, ge=2)
    category_embed_dim: int = Field(8, ge=1)
    dropout: float = Field(0.1, ge=0.0, lt=1.0)
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
    class_weights: list[float] | None = None


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
    gradient_clip_val: float | None = 1.0
    deterministic: bool = True
    log_every_n_steps: int = Field(10, ge=1)
    enable_progress_bar: bool = True
    output_dir: str = "outputs"


class TrackingConfig(Strict):
    experiment: str = "mmfusion"
    uri: str | None = None  # MLFLOW_TRACKING_URI wins when set; default sqlite:///mlflow.db
    run_name: str | None = None
    log_model: bool = True


class Config(Strict):
    seed: int = 42
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    optim: OptimConfig = OptimConfig()
    trainer: TrainerConfig = TrainerConfig()
    tracking: TrackingConfig = TrackingConfig()


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
    shown = "" if isinstance(got, dict) or got is None else f" (got {got!r})"
    return f"{key or 'config'}: {msg}{shown}"


def _section_model(loc: tuple) -> type[BaseModel] | None:
    model: type[BaseModel] = Config
    for part in loc:
        field = model.model_fields.get(str(part))
        sub = getattr(field, "annotation", None) if field else None
        if not (isinstance(sub, type) and issubclass(sub, BaseModel)):
            return None
        model = sub
    return model


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
    return cfg.model_dump(mode="json")


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
