"""Chunk embeddings of a frozen text encoder, computed once and shared by every trial and process of a study.

Keyed by encoder, tokenizer settings and the token ids of the split; stored as safetensors (no pickle), written atomically.
Results are identical to encoding on the fly: a frozen encoder runs in eval mode, so its output is deterministic.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from mmfusion.data.datamodule import PreparedData, Split, collate
from mmfusion.encoders.text import TextEncoder
from mmfusion.progress import progress


def cache_key(encoder_name: str, max_chunks: int, chunk_len: int, split: Split, hidden: int) -> str:
    """Encoder, tokenizer settings and the split's token ids themselves: what the embeddings are a function of. So a
    change of label, numeric or categorical columns (e.g. the same table with and without a column) reuses the cache,
    and any change of text, tokenizer or row order does not."""
    h = hashlib.sha256(f"{encoder_name}|C={max_chunks}|T={chunk_len}|H={hidden}".encode())
    for chunks in split.chunks:
        h.update(b"|".join(b",".join(str(t).encode() for t in ch) for ch in chunks) + b"\n")
    return h.hexdigest()[:24]


@torch.inference_mode()
def encode_split(split: Split, encoder: TextEncoder, batch_size: int = 64, desc: str = "embedding texts") -> list[torch.Tensor]:
    """Per sample (n_chunks, H) embeddings; samples are batched by length so little padding is encoded."""
    order = sorted(range(len(split.chunks)), key=lambda i: sum(map(len, split.chunks[i])))
    out: list[torch.Tensor | None] = [None] * len(order)
    encoder.eval()
    for start in progress(range(0, len(order), batch_size), desc, unit="batches"):
        idx = order[start : start + batch_size]
        items = [{"chunks": split.chunks[i], "numeric": split.numeric[i], "categorical": split.categorical[i], "label": 0, "modality": 0, "index": i} for i in idx]
        b = collate(items)
        chunks = encoder.encode_chunks(b["input_ids"], b["attention_mask"], b["chunk_mask"]).float()
        for row, i in enumerate(idx):
            out[i] = chunks[row, : len(split.chunks[i])].clone()
    return out  # type: ignore[return-value]


def attach_chunk_embeddings(data: PreparedData, encoder: TextEncoder, encoder_name: str, max_chunks: int, chunk_len: int, cache_dir: str | None) -> dict[str, int]:
    """Fill `split.chunk_embeddings` for every split, from the cache where present. -> {"hits": n, "misses": n}."""
    stats = {"hits": 0, "misses": 0}
    for name, split in data.splits.items():
        key = cache_key(encoder_name, max_chunks, chunk_len, split, encoder.hidden_size)
        path = Path(cache_dir) / f"{key}.safetensors" if cache_dir else None
        cached = read_cached(path, "embeddings") if path is not None and path.is_file() else None
        if cached is not None:
            split.chunk_embeddings = cached[0]
            stats["hits"] += 1
            continue
        split.chunk_embeddings = encode_split(split, encoder, desc=f"embedding the {name} split (frozen encoder, cached after)")
        stats["misses"] += 1
        if path is not None:
            write_cached(path, "embeddings", split.chunk_embeddings, torch.zeros(0, encoder.hidden_size))
    return stats


def read_cached(path: Path, key: str) -> tuple[list[torch.Tensor], list[int]] | None:
    """A cache file -> (the per-sample tensors stored under `key`, their lengths); None for a file that is not
    consistent (a foreign or damaged one), which the caller re-encodes and overwrites."""
    stored = load_file(str(path))
    if key not in stored or "counts" not in stored:
        return None
    counts = stored["counts"].tolist()
    if sum(counts) != len(stored[key]):
        return None
    return list(torch.split(stored[key], counts)), counts


def write_cached(path: Path, key: str, per_sample: list[torch.Tensor], empty: torch.Tensor) -> None:
    """Per-sample tensors -> one safetensors file (`key`: them concatenated, or `empty` if none; `counts`: their
    lengths), written atomically: concurrent trials never read a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    flat = torch.cat(per_sample) if per_sample else empty
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    os.close(fd)
    save_file({key: flat.contiguous(), "counts": torch.tensor([len(x) for x in per_sample], dtype=torch.long)}, tmp)
    os.replace(tmp, path)
