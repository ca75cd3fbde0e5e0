"""The one interface every fusion variant implements, and the registry that holds them.

A variant is one file: a class registered with its own options and named presets,

    @register_fusion("moe", options=MoeOptions, presets={"moe-mlp-hard": {"router": "mlp", "routing": "hard"}})
    class MoEFusion(Fusion): ...

built as `Variant(text_dim, tab_dim, cfg)` (its validated options in `self.options`) and called as
`variant(h_text, h_tab, chunks, chunk_mask) -> FusionOutput`:

    h_text      (B, Dt)     masked mean of the chunk embeddings (zeros for a sample with no text)
    h_tab       (B, Da)     tabular embedding (zeros when the data has no tabular columns)
    chunks      (B, C, Dt)  per-chunk text embeddings (zeros at padding chunks)
    chunk_mask  (B, C)      1 for real chunks, 0 for padding

and returns the fused vector (B, F) with its per-sample modality weights (B, 2) = [w_text, w_tab], each row
summing to 1, so inspection, export and comparison treat every variant the same way. The optional hooks
(`reads`, `expert_modalities`, `diagnostics`, `export_copy`) are what shared layers ask of a variant.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, ClassVar, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from pydantic import BaseModel, ConfigDict

from mmfusion.fusion.registry import Registry

if TYPE_CHECKING:
    from mmfusion.config import ModelConfig


class FusionOutput(NamedTuple):
    fused: torch.Tensor  # (B, F)
    modality_weights: torch.Tensor  # (B, 2): [w_text, w_tab]
    aux_loss: torch.Tensor  # () added to the training loss (load balancing); 0 for most variants
    expert_weights: torch.Tensor | None = None  # (B, E) for mixture-of-experts variants


class FusionOptions(BaseModel):
    """A variant's own options (`model.fusion_options`), validated only when that variant is chosen. Strict like
    the config sections (mmfusion.config.base.Strict; not imported here: the config package validates through this)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    def check(self, model: "ModelConfig") -> None:
        """Rules across an option and the shared model keys (e.g. fusion_dim); raise ValueError naming both."""


class Fusion(nn.Module):
    """Base class: subclasses implement `forward`; `out_dim` is the fused width (model.fusion_dim)."""

    name: ClassVar[str]
    Options: ClassVar[type[FusionOptions]] = FusionOptions
    presets: ClassVar[dict[str, dict[str, Any]]] = {}
    reads: ClassVar[tuple[str, ...]] = ("text", "tab")  # the modalities it reads; an unread one's encoder is frozen
    out_dim: int

    def __init__(self, text_dim: int, tab_dim: int, cfg: "ModelConfig") -> None:
        super().__init__()
        self.text_dim, self.tab_dim, self.out_dim = text_dim, tab_dim, cfg.fusion_dim
        # cfg's options when cfg chose this variant; otherwise this variant's defaults
        self.options = self.Options.model_validate(cfg.fusion_options if cfg.fusion == self.name else {})

    def forward(
        self, h_text: torch.Tensor, h_tab: torch.Tensor, chunks: torch.Tensor, chunk_mask: torch.Tensor
    ) -> FusionOutput:
        raise NotImplementedError

    @classmethod
    def expert_modalities(cls, options: FusionOptions) -> list[str] | None:
        """For a mixture of experts: the modality ("text" / "tab") each expert reads, in expert_weights order."""
        return None

    def diagnostics(self, h_text: torch.Tensor, h_tab: torch.Tensor, chunks: torch.Tensor, chunk_mask: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per-sample internals worth plotting, name -> (B, D) (e.g. gate's per-dimension gate). None by default."""
        return {}

    def export_copy(self) -> "Fusion":
        """A module computing the same function that the ONNX exporters trace cleanly. The exporter calls it on a deep
        copy of the model, so a variant may change itself in place and return self."""
        return self


FUSIONS: Registry[type[Fusion]] = Registry("fusion")


@dataclass(frozen=True)
class Preset:
    name: str
    variant: str
    options: dict[str, Any]


PRESETS: dict[str, Preset] = {}


def register_fusion(name: str, options: type[FusionOptions] = FusionOptions, presets: dict[str, dict[str, Any]] | None = None) -> Callable[[type[Fusion]], type[Fusion]]:
    """Register a variant under `name` with its options model and its presets (name -> option values)."""

    def decorator(cls: type[Fusion]) -> type[Fusion]:
        taken = [p for p in (presets or {}) if p in PRESETS or p in FUSIONS or p == name]
        if name in PRESETS or taken:
            raise ValueError(f"fusion name(s) {', '.join(taken or [name])} registered twice (as a variant or a preset)")
        for preset, values in (presets or {}).items():
            options.model_validate(values)  # a preset must be valid options
        cls.name, cls.Options, cls.presets = name, options, dict(presets or {})
        FUSIONS.register(name)(cls)
        for preset, values in (presets or {}).items():
            PRESETS[preset] = Preset(preset, name, dict(values))
        return cls

    return decorator


def unregister_fusion(name: str) -> None:
    """Remove a variant and its presets (tests that register throwaway variants clean up with this)."""
    FUSIONS._builders.pop(name, None)
    for preset in [p for p, v in PRESETS.items() if v.variant == name]:
        del PRESETS[preset]


def list_fusions(pattern: str = "*") -> list[str]:
    return FUSIONS.names(pattern)


def list_presets() -> list[str]:
    return sorted(PRESETS)


def resolve_fusion(name: str) -> tuple[str, str | None]:
    """A variant or preset name -> (variant, preset or None); ValueError naming the allowed names."""
    if name in FUSIONS:
        return name, None
    if name in PRESETS:
        return PRESETS[name].variant, name
    raise ValueError(f"unknown fusion {name!r}; variants: {', '.join(list_fusions())}; presets: {', '.join(list_presets())}")


def create_fusion(name: str, text_dim: int, tab_dim: int, cfg: "ModelConfig") -> Fusion:
    return FUSIONS.get(name)(text_dim, tab_dim, cfg)


# ---- building blocks shared by several variants ----------------------------------------------------------------


def projection(in_dim: int, out_dim: int, dropout: float) -> nn.Sequential:
    """Linear -> GELU -> Dropout: maps one modality into the fusion space."""
    return nn.Sequential(nn.Linear(in_dim, out_dim), nn.GELU(), nn.Dropout(dropout))


def router_net(kind: str, in_dim: int, n_out: int, hidden: int) -> nn.Module:
    """`linear` (the original design's router) or `mlp` (Linear -> GELU -> Linear), producing routing logits."""
    if kind == "linear":
        return nn.Linear(in_dim, n_out)
    return nn.Sequential(nn.Linear(in_dim, hidden), nn.GELU(), nn.Linear(hidden, n_out))


def two_way(w_text: torch.Tensor) -> torch.Tensor:
    """(B,) text weight -> (B, 2) [w_text, w_tab]."""
    return torch.stack([w_text, 1.0 - w_text], dim=-1)


def bar_absent_text(logits: torch.Tensor, chunk_mask: torch.Tensor, text_experts: int) -> torch.Tensor:
    """Router logits (B, E) whose first `text_experts` experts read the text: a sample without a single real chunk
    cannot be routed to them (its text expert would only see zeros), so its w_text is 0."""
    no_text = (chunk_mask.sum(dim=-1) == 0).unsqueeze(-1)  # (B, 1)
    is_text = torch.arange(logits.shape[-1], device=logits.device) < text_experts  # (E,)
    return logits.masked_fill(no_text & is_text, -1e4)


def route(logits: torch.Tensor, routing: str, temperature: float, training: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Turn router logits (B, E) into (mixing weights, reported weights), both (B, E).

    soft: both are softmax(logits).
    hard: mixing is top-1 one-hot (straight-through Gumbel while training, argmax at evaluation) so each expert
          must carry the sample alone; the reported weights are softmax(logits), the router's belief.
    """
    probs = logits.softmax(dim=-1)
    if routing == "soft":
        return probs, probs
    if training:
        return F.gumbel_softmax(logits, tau=temperature, hard=True, dim=-1), probs
    hard = F.one_hot(logits.argmax(dim=-1), logits.shape[-1]).to(probs.dtype)
    return hard, probs
