"""Search space -> trial config: what each trial samples, and the `train` config it runs."""

from __future__ import annotations

from typing import Any

import optuna

from mmfusion.config import Config, ParamSpec, build_config
from mmfusion.config.study import apply_params

_MISSING = object()


def sample_params(trial: optuna.Trial, space: dict[str, ParamSpec]) -> dict[str, Any]:
    """Suggest every parameter whose `when` holds, in the order of the search space. -> {dotted key: value}."""
    params: dict[str, Any] = {}
    for name, spec in space.items():
        if not all(params.get(k, _MISSING) in (v if isinstance(v, list) else [v]) for k, v in spec.when.items()):
            continue
        if spec.type == "categorical":
            params[name] = trial.suggest_categorical(name, spec.choices)
        elif spec.type == "int":
            params[name] = trial.suggest_int(name, int(spec.low), int(spec.high), step=int(spec.step or 1), log=spec.log)
        else:
            params[name] = trial.suggest_float(name, spec.low, spec.high, step=spec.step, log=spec.log)
    return params


def trial_config(cfg: Config, params: dict[str, Any], number: int) -> Config:
    """The study's base config (without `study`) with the sampled values: what `train` runs and logs."""
    raw = apply_params(cfg.model_dump(mode="json", exclude={"study", "zoo"}), params)
    raw["tracking"]["run_name"] = f"{cfg.study.study_name}-t{number}"
    if raw["tracking"].get("system_metrics") is None:  # trials are many and short: MLflow's system metrics only when asked
        raw["tracking"]["system_metrics"] = False
    return build_config(raw, f"trial {number}'s config")
