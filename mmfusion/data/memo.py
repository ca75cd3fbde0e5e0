"""An in-process memo of prepared data, frozen-encoder chunk embeddings and the pretrained text backbone, for the
trials of one study process.

`prepared_data` returns the same tokenized splits and fitted preprocessing for the same data config, seed and tokenizer
(a trial whose parameters change any `data.*` value, C or T included, misses); `attach_embeddings` gives a memoized
split the embeddings of the same encoder without reading the disk cache or encoding again. Every call gets its own
`PreparedData` and `Split` objects (shallow copies: the token lists, arrays and tables are shared and never written),
so what one trial attaches never leaks into the next one's data. Only the latest few entries are kept.
`text_backbone` reads the pretrained weights from disk once and hands each trial its own deep copy (a trial may
re-configure or train it).
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections import OrderedDict
from dataclasses import dataclass, field, replace

import torch

from mmfusion.config import DataConfig
from mmfusion.data.datamodule import PreparedData, prepare_data
from mmfusion.data.embedding_cache import attach_chunk_embeddings
from mmfusion.encoders.text import TextEncoder, load_text_backbone

MAX_ENTRIES = 4  # data variants a study samples at once (e.g. two max_chunks values); older ones are dropped


@dataclass
class _Entry:
    data: PreparedData  # as prepared: no embeddings attached
    embeddings: dict[str, dict[str, list[torch.Tensor]]] = field(default_factory=dict)  # encoder name -> split -> per sample


_entries: OrderedDict[str, _Entry] = OrderedDict()
_backbones: dict[str, torch.nn.Module] = {}  # encoder name -> the pretrained backbone as loaded (never handed out)


def data_key(cfg: DataConfig, seed: int, tokenizer_name: str) -> str:
    """Everything the prepared data is a function of: the whole data config (source, columns, C, T, split, ...), the
    seed and the tokenizer."""
    raw = json.dumps({"data": cfg.model_dump(mode="json"), "seed": seed, "tokenizer": tokenizer_name}, sort_keys=True)
    return hashlib.sha256(raw.encode()).hexdigest()


def _copy(data: PreparedData) -> PreparedData:
    return replace(data, splits={name: replace(split, chunk_embeddings=None) for name, split in data.splits.items()}, columns=dict(data.columns))


def prepared_data(cfg: DataConfig, seed: int, tokenizer, tokenizer_name: str) -> PreparedData:
    """`prepare_data(cfg, seed, tokenizer)`, prepared once per key in this process."""
    key = data_key(cfg, seed, tokenizer_name)
    entry = _entries.get(key)
    if entry is None:
        entry = _entries[key] = _Entry(prepare_data(cfg, seed, tokenizer))
        while len(_entries) > MAX_ENTRIES:
            _entries.popitem(last=False)
    _entries.move_to_end(key)
    return _copy(entry.data)


def _owner(data: PreparedData) -> _Entry | None:
    """The entry whose splits `data`'s are copies of (the same token lists), if any."""
    for entry in _entries.values():
        if entry.data.splits.keys() == data.splits.keys() and all(entry.data.splits[n].chunks is s.chunks for n, s in data.splits.items()):
            return entry
    return None


def attach_embeddings(data: PreparedData, encoder: TextEncoder, encoder_name: str, max_chunks: int, chunk_len: int, cache_dir: str | None) -> dict[str, int]:
    """`embedding_cache.attach_chunk_embeddings`, answered from the memo for data from `prepared_data` whose
    embeddings by `encoder_name` were attached before. -> {"hits": n, "misses": n[, "memo": n]}."""
    entry = _owner(data)
    known = entry.embeddings.get(encoder_name) if entry is not None else None
    if known is not None:
        for name, split in data.splits.items():
            split.chunk_embeddings = known[name]
        return {"hits": 0, "misses": 0, "memo": len(known)}
    stats = attach_chunk_embeddings(data, encoder, encoder_name, max_chunks, chunk_len, cache_dir)
    if entry is not None:
        entry.embeddings[encoder_name] = {name: split.chunk_embeddings for name, split in data.splits.items()}
    return stats


def text_backbone(name: str) -> torch.nn.Module:
    """`load_text_backbone(name)`, read from disk once per process (the latest encoder only): a deep copy each call."""
    if name not in _backbones:
        _backbones.clear()
        _backbones[name] = load_text_backbone(name)
    return copy.deepcopy(_backbones[name])


def clear() -> None:
    """Forget everything (tests; a long-lived process between studies)."""
    _entries.clear()
    _backbones.clear()
