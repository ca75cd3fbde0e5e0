"""The fusion zoo. Importing this package registers every variant (one module each)."""

from mmfusion.fusion import ablations, attention, concat, gate, moe, moe_topk  # noqa: F401  (registration)
from mmfusion.fusion.base import FUSIONS, Fusion, FusionOutput, create_fusion, list_fusions, register_fusion

__all__ = ["FUSIONS", "Fusion", "FusionOutput", "create_fusion", "list_fusions", "register_fusion"]
