"""`Config`, the whole experiment: its sections, plus the zoo/study sections the commands read."""

from __future__ import annotations

from typing import get_args

from pydantic import BaseModel, ValidationError, model_validator

from mmfusion.config.base import Seed, Strict
from mmfusion.config.sections import DataConfig, ExportConfig, ModelConfig, OptimConfig, TrackingConfig, TrainerConfig
from mmfusion.config.legacy import FLAT_KEYS
from mmfusion.config.study import StudyConfig, apply_params
from mmfusion.config.zoo import ZooConfig


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

    A fusion option (`model.fusion_options.<name>`) is checked for every fusion its `when` allows (else the base's).
    Only errors of that key itself count: a combination that breaks a cross-field rule fails that trial, not the study.
    """
    base = cfg.model_dump(mode="json", exclude={"study", "zoo"})
    for name, spec in cfg.study.search_space.items():
        path = name.split(".")
        option = path[:2] == ["model", "fusion_options"] and len(path) == 3
        legacy = path[0] == "model" and len(path) == 2 and path[1] in FLAT_KEYS
        section = _section_model(tuple(path[:-1]))
        if not (option or legacy) and (path[0] in ("study", "zoo") or section is None or path[-1] not in section.model_fields or _section_model(tuple(path))):
            raise ValueError(f"study.search_space: {name!r} is not a config value (e.g. model.fusion, optim.lr, trainer.batch_size)")
        fusions = spec.when.get("model.fusion", [base["model"]["fusion"]]) if option else [None]
        for fusion in fusions if isinstance(fusions, list) else [fusions]:
            for value in spec.bounds():
                params = {"model.fusion": fusion, name: value} if fusion is not None else {name: value}
                try:
                    Config.model_validate(apply_params(base, params))
                except ValidationError as err:
                    own_loc = path[:2] if option else path
                    own = [e for e in err.errors() if [str(p) for p in e["loc"]][: len(own_loc)] == own_loc]
                    if own:
                        raise ValueError(f"study.search_space.{name}: {value!r} is not a valid value ({own[0]['msg'].removeprefix('Value error, ')})") from None
