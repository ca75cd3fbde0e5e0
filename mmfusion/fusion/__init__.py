"""The fusion zoo. Importing this package registers every variant (one module each)."""

from mmfusion.fusion import ablations, attention, concat, gate, moe, moe_topk, moe_topk_hard  # noqa: F401  (registration)
from mmfusion.fusion.base import (
    FUSIONS, PRESETS, Fusion, FusionOptions, FusionOutput, Preset, create_fusion, list_fusions, list_presets, register_fusion, resolve_fusion,
    unregister_fusion,
)

__all__ = [
    "FUSIONS", "PRESETS", "Fusion", "FusionOptions", "FusionOutput", "Preset", "create_fusion", "list_fusions", "list_presets", "register_fusion",
    "resolve_fusion", "unregister_fusion",
]
