"""The hidden states entering the first trained layer (`model.train_text_layers: K`), computed once per split.

The frozen lower part (embeddings + the first L-K layers) runs in eval mode, so its output is a fixed function of the
tokens: keyed like the embedding cache (encoder, the layer, C, T, the split's token ids) plus the storage dtype.
Stored as safetensors, real tokens only (a sample is its chunks' tokens, concatenated: (n_tokens, H)), in float16:
half the size of float32, and the states of MiniLM-like encoders are far inside its range (checked: a state that
does not fit is an error, never a silent inf). The attention masks need no storage: a chunk's real tokens are its
first len(chunk) positions.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from mmfusion.data.datamodule import PreparedData, Split, collate
from mmfusion.data.embedding_cache import cache_key, read_cached, write_cached
from mmfusion.encoders.partial import lower_hidden
from mmfusion.errors import ConfigError
from mmfusion.progress import progress

STORAGE = torch.float16


def layer_cache_key(encoder_name: str, n_lower: int, max_chunks: int, chunk_len: int, split: Split, hidden: int) -> str:
    """The embedding cache's key, for the hidden states entering layer `n_lower` in `STORAGE`."""
    return "layers-" + cache_key(f"{encoder_name}|entering-layer={n_lower}|{STORAGE}", max_chunks, chunk_len, split, hidden)


@torch.inference_mode()
def encode_split_hidden(split: Split, backbone: nn.Module, n_lower: int, batch_size: int = 64, desc: str = "encoding lower layers") -> list[torch.Tensor]:
    """Per sample (n_tokens, H) states entering layer `n_lower` at its real tokens, in `STORAGE`; samples are batched
    by length so little padding is encoded."""
    order = sorted(range(len(split.chunks)), key=lambda i: sum(map(len, split.chunks[i])))
    out: list[torch.Tensor | None] = [None] * len(order)
    was_training = backbone.training
    backbone.eval()
    try:
        for start in progress(range(0, len(order), batch_size), desc, unit="batches"):
            idx = order[start : start + batch_size]
            b = collate([{"chunks": split.chunks[i], "numeric": split.numeric[i], "categorical": split.categorical[i], "label": 0, "modality": 0, "index": i} for i in idx])
            n, c, t = b["input_ids"].shape
            real = b["chunk_mask"].reshape(-1).nonzero().squeeze(-1)
            if not real.numel():  # a batch of samples without text
                for i in idx:
                    out[i] = torch.zeros(0, backbone.config.hidden_size)
                continue
            hidden = lower_hidden(backbone, b["input_ids"].reshape(n * c, t)[real], b["attention_mask"].reshape(n * c, t)[real], n_lower).float()
            row_of = {int(r): k for k, r in enumerate(real)}  # flat chunk index -> row of `hidden`
            for row, i in enumerate(idx):
                parts = [hidden[row_of[row * c + j], : len(ch)] for j, ch in enumerate(split.chunks[i])]
                out[i] = torch.cat(parts) if parts else hidden.new_zeros(0, hidden.shape[-1])
    finally:
        backbone.train(was_training)
    stored = [h.to(STORAGE) for h in out]  # type: ignore[union-attr]
    if not all(torch.isfinite(h).all() for h in stored):
        raise ConfigError(f"model.train_text_layers: the hidden states entering layer {n_lower} overflow {STORAGE}; this encoder allows 0 or all only")
    return stored


def attach_layer_hidden(data: PreparedData, backbone: nn.Module, encoder_name: str, n_lower: int, max_chunks: int, chunk_len: int,
                        cache_dir: str | None) -> dict[str, int]:
    """Fill `split.text_hidden` for every split, from the cache where present. -> {"hits": n, "misses": n}."""
    stats = {"hits": 0, "misses": 0}
    size = backbone.config.hidden_size
    for name, split in data.splits.items():
        counts = [sum(map(len, chunks)) for chunks in split.chunks]  # real tokens per sample
        path = Path(cache_dir) / f"{layer_cache_key(encoder_name, n_lower, max_chunks, chunk_len, split, size)}.safetensors" if cache_dir else None
        cached = read_cached(path, "hidden") if path is not None and path.is_file() else None
        if cached is not None and cached[1] == counts:  # the key covers the tokens; this only guards a foreign file
            split.text_hidden = cached[0]
            stats["hits"] += 1
            continue
        split.text_hidden = encode_split_hidden(split, backbone, n_lower, desc=f"encoding the {name} split up to layer {n_lower} (frozen, cached after)")
        stats["misses"] += 1
        if path is not None:  # each sample's states are (its real tokens, H): the stored counts are `counts`
            write_cached(path, "hidden", split.text_hidden, torch.zeros(0, size, dtype=STORAGE))
    return stats
