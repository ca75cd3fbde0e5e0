"""Loading an experiment: YAML files (`extends:` another file) + dotted `key=value` overrides, validated before
anything runs; and the resolved form that runs log.

The schema's defaults are the base experiment; a YAML file in `experiments/` holds only what differs (from the defaults
or from the file it `extends`). The fully resolved config (`resolved_dict`) is what gets logged, and it alone rebuilds
a run."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from mmfusion.config.schema import Config, _section_model
from mmfusion.errors import ConfigError


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


FUSION_OWN = ("fusion_preset", "fusion_options")  # belong to the chosen fusion: a new `model.fusion` drops them


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    """Dotted overrides in order. `model.fusion=X` starts from X's own options (or its preset's): options set before
    it, in the file or in earlier overrides, are dropped; `model.fusion_options.<name>=...` after it apply."""
    out = copy.deepcopy(raw)
    for text in overrides:
        path, value = parse_override(text)
        if path == ["model", "fusion"] and isinstance(out.get("model"), dict):
            for key in FUSION_OWN:
                out["model"].pop(key, None)
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
    if key and msg.startswith(key + "."):  # the message names the exact key already
        return f"{msg}{shown}"
    return f"{key or 'config'}: {msg}{shown}"


def build_config(raw: dict, source: str = "config") -> Config:
    try:
        return Config.model_validate(raw)
    except ValidationError as err:
        problems = "; ".join(_describe(e) for e in err.errors())
        raise ConfigError(f"invalid {source}: {problems}") from None


def merge(base: dict, delta: dict, _path: tuple = ()) -> dict:
    """`delta` over `base`: mappings merge key by key, anything else (values, lists) is replaced; a model section
    that names its `fusion` replaces the base's fusion options (they belong to the base's fusion)."""
    out = copy.deepcopy(base)
    if _path == ("model",) and "fusion" in delta:
        for key in FUSION_OWN:
            if key not in delta:
                out.pop(key, None)
    for key, value in delta.items():
        out[key] = merge(out[key], value, (*_path, key)) if isinstance(value, dict) and isinstance(out.get(key), dict) else copy.deepcopy(value)
    return out


def read_yaml(path: str | Path, _chain: tuple[Path, ...] = ()) -> dict:
    """One experiment file as a raw mapping, with its `extends:` parents merged under it (paths relative to the file)."""
    path = Path(path)
    if not path.is_file():
        via = f" (extended by {str(_chain[-1])!r})" if _chain else ""
        raise ConfigError(f"config file {str(path)!r} does not exist{via}")
    if path.resolve() in _chain:
        raise ConfigError(f"config file {str(path)!r} extends itself: {' -> '.join(str(p) for p in (*_chain, path))}")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"config file {str(path)!r} is not valid YAML: {err}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"config file {str(path)!r} must hold a mapping of sections, got {type(raw).__name__}")
    parents = raw.pop("extends", None)
    if parents is None:
        return raw
    if isinstance(parents, str):
        parents = [parents]
    if not (isinstance(parents, list) and parents and all(isinstance(x, str) and x for x in parents)):
        raise ConfigError(f"config file {str(path)!r}: `extends` must be a file name or a list of them, got {parents!r}")
    base: dict = {}
    for parent in parents:  # later parents win over earlier ones, the file itself over all
        base = merge(base, read_yaml(path.parent / parent, (*_chain, path.resolve())))
    return merge(base, raw)


def load_config(path: str | Path | None, overrides: list[str] = ()) -> Config:
    """Read a YAML experiment (and the files it `extends`), or start from the defaults; apply overrides; validate."""
    raw = read_yaml(path) if path is not None else {}
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
