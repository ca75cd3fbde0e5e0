"""Partial fine-tuning (`model.train_text_layers: K`): a BERT-like backbone split into a frozen lower part
(embeddings + the first L-K layers) and the K top layers that train.

The lower part's output (the hidden states entering layer L-K) is a fixed function of the tokens, so it is computed
once (`mmfusion.data.layer_cache`) and training runs only the top K layers on it. Run from tokens, the whole
backbone gives the same result (eval mode): that is what export and serving use.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from mmfusion.encoders.text import encode_real_chunks, mean_over_tokens
from mmfusion.errors import ConfigError


def encoder_layers(backbone: nn.Module) -> nn.ModuleList:
    """The repeated blocks of a BERT-like encoder (`backbone.encoder.layer`)."""
    layers = getattr(getattr(backbone, "encoder", None), "layer", None)
    if not isinstance(layers, nn.ModuleList):
        raise ConfigError(f"model.train_text_layers: the text encoder {type(backbone).__name__} has no BERT-like encoder.layer list; use 0 or all")
    return layers


def n_text_layers(encoder_name: str) -> int:
    """The layer count of `encoder_name` from its config alone (no weights loaded)."""
    from transformers import AutoConfig

    from mmfusion.encoders.text import resolve_encoder

    path = resolve_encoder(encoder_name)
    try:
        config = AutoConfig.from_pretrained(path, local_files_only=Path(path).exists())
    except (OSError, ValueError) as err:
        raise ConfigError(f"model.text_encoder: cannot load config {encoder_name!r} ({str(err).splitlines()[0]})") from None
    return int(config.num_hidden_layers)


def check_text_layers(layers: int | str, n_layers: int, encoder_name: str) -> None:
    """`model.train_text_layers` against the encoder's layer count (a config alone cannot know it)."""
    if isinstance(layers, int) and layers > n_layers:
        raise ConfigError(f"model.train_text_layers: {layers}, but the text encoder {encoder_name!r} has {n_layers} layers; "
                          f"allowed: 0 (frozen) to {n_layers}, or all")


def check_encoder_layers(layers: int | str, encoder_name: str) -> None:
    """Before a run starts: `model.train_text_layers` fits the encoder (reads only the encoder's config)."""
    if isinstance(layers, int) and layers > 0:
        check_text_layers(layers, n_text_layers(encoder_name), encoder_name)


def frozen_lower(backbone: nn.Module, n_lower: int) -> list[nn.Module]:
    """Freeze the embeddings and the first `n_lower` layers (no gradient) -> those modules (kept in eval mode)."""
    parts = [backbone.embeddings, *encoder_layers(backbone)[:n_lower]]
    for part in parts:
        part.requires_grad_(False)
    return parts


def _layer_mask(backbone: nn.Module, hidden: torch.Tensor, attention_mask: torch.Tensor):
    """The mask the layers take, built as the backbone builds it for its attention implementation."""
    from transformers.masking_utils import create_bidirectional_mask

    return create_bidirectional_mask(config=backbone.config, inputs_embeds=hidden, attention_mask=attention_mask)


def run_layers(backbone: nn.Module, hidden: torch.Tensor, attention_mask: torch.Tensor, start: int, stop: int | None = None) -> torch.Tensor:
    """(N, T, H) hidden states entering layer `start`, (N, T) mask -> the states leaving layer `stop` (default: last)."""
    mask = _layer_mask(backbone, hidden, attention_mask)
    for layer in encoder_layers(backbone)[start:stop]:
        out = layer(hidden, mask)
        hidden = out[0] if isinstance(out, tuple) else out  # older transformers return a tuple
    return hidden


def lower_hidden(backbone: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor, n_lower: int) -> torch.Tensor:
    """(N, T) tokens -> (N, T, H): the hidden states entering layer `n_lower` (what the layer cache stores)."""
    hidden = backbone.embeddings(input_ids=input_ids)
    return run_layers(backbone, hidden, attention_mask, 0, n_lower)


def top_chunk_embeddings(backbone: nn.Module, hidden: torch.Tensor, attention_mask: torch.Tensor, n_lower: int) -> torch.Tensor:
    """(N, T, H) states entering layer `n_lower` + (N, T) mask -> (N, H): the top layers, then the mean over real
    tokens (as `TextEncoder.encode` pools the full backbone's output)."""
    return mean_over_tokens(run_layers(backbone, hidden, attention_mask, n_lower), attention_mask)


def cached_chunks(backbone: nn.Module, hidden: torch.Tensor, attention_mask: torch.Tensor, chunk_mask: torch.Tensor, n_lower: int) -> torch.Tensor:
    """Cached lower states (B, C, T, H) + tokens' mask (B, C, T) + chunk mask (B, C) -> (B, C, H) chunk embeddings,
    zeros at padding chunks; only the real chunks run through the top layers (packed, trimmed to the longest)."""
    b, c, t, h = hidden.shape
    flat, att = hidden.reshape(b * c, t, h), attention_mask.reshape(b * c, t)
    out = encode_real_chunks(att, chunk_mask, lambda rows, longest: top_chunk_embeddings(backbone, flat[rows, :longest], att[rows, :longest], n_lower), h, 1)
    return out.reshape(b, c, h)  # one group: the real chunks in their order, trimmed to the longest
