"""Typed experiment configuration, validated when loaded.

    base.py      Strict (the pydantic base), shared value types
    sections.py  data, model, optim, trainer, tracking, export
    zoo.py       the `zoo:` section          study.py  the `study:` section
    schema.py    Config (all sections) and the search-space check
    loading.py   YAML + `extends:` + `key=value` overrides -> Config; the resolved dict / YAML a run logs
"""

from mmfusion.config.base import DEFAULT_TEXT_ENCODER, Seed, Strict
from mmfusion.config.loading import apply_overrides, build_config, flatten, load_config, parse_override, resolved_dict, to_yaml
from mmfusion.config.schema import Config
from mmfusion.config.sections import DataConfig, ExportConfig, ModelConfig, OptimConfig, SyntheticConfig, TrackingConfig, TrainerConfig
from mmfusion.config.study import STUDY_METRICS, ParamSpec, PrunerConfig, SamplerConfig, StudyConfig
from mmfusion.config.zoo import ZOO_METRICS, ZooConfig, ZooVariant

__all__ = [
    "DEFAULT_TEXT_ENCODER", "STUDY_METRICS", "ZOO_METRICS", "Config", "DataConfig", "ExportConfig", "ModelConfig", "OptimConfig", "ParamSpec",
    "PrunerConfig", "SamplerConfig", "Seed", "Strict", "StudyConfig", "SyntheticConfig", "TrackingConfig", "TrainerConfig", "ZooConfig",
    "ZooVariant", "apply_overrides", "build_config", "flatten", "load_config", "parse_override", "resolved_dict", "to_yaml",
]
