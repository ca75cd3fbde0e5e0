"""Dialogue -> at most C chunks of at most T tokens, each chunk [CLS] ... [SEP], packed at message boundaries."""

from __future__ import annotations

import json

import pandas as pd

from mmfusion.errors import ConfigError

_NO_LIMIT = 10**6  # transformers' model_max_length when a tokenizer records none is ~1e30


def split_messages(text) -> list[str]:
    """A dialogue is newline-separated messages or a JSON list of messages; missing text has none."""
    if text is None or (isinstance(text, float) and pd.isna(text)):
        return []
    if isinstance(text, (list, tuple)):
        return [str(m) for m in text if str(m).strip()]
    text = str(text)
    if text.lstrip().startswith("["):
        try:
            messages = json.loads(text)
            if isinstance(messages, list):
                return [str(m) for m in messages if str(m).strip()]
        except json.JSONDecodeError:
            pass
    return [line for line in text.split("\n") if line.strip()]


def max_positions(tokenizer) -> int | None:
    """The most tokens the text encoder takes in one chunk: its `max_position_embeddings` (from the encoder's
    config next to the tokenizer) and the tokenizer's `model_max_length`, whichever is smaller; None if neither says."""
    limits = []
    length = getattr(tokenizer, "model_max_length", None)
    if isinstance(length, int) and 0 < length < _NO_LIMIT:
        limits.append(length)
    try:
        from transformers import AutoConfig

        positions = getattr(AutoConfig.from_pretrained(tokenizer.name_or_path), "max_position_embeddings", None)
    except Exception:  # a tokenizer without an encoder config beside it: only model_max_length can tell
        positions = None
    if isinstance(positions, int) and positions > 0:
        limits.append(positions)
    return min(limits) if limits else None


def check_chunk_len(tokenizer, chunk_len: int) -> None:
    limit = max_positions(tokenizer)
    if limit is not None and chunk_len > limit:
        raise ConfigError(f"data.chunk_len: {chunk_len} is more than the text encoder's maximum of {limit} positions ({tokenizer.name_or_path}); use data.chunk_len<={limit}")


class DialogueChunker:
    """Greedy packing: messages fill a chunk until the next one does not fit; a long message spans chunks."""

    def __init__(self, tokenizer, max_chunks: int, chunk_len: int) -> None:
        self.tokenizer, self.max_chunks, self.chunk_len = tokenizer, max_chunks, chunk_len
        self.cls_id, self.sep_id = tokenizer.cls_token_id, tokenizer.sep_token_id
        if self.cls_id is None or self.sep_id is None:  # e.g. RoBERTa-style: use bos/eos
            self.cls_id, self.sep_id = tokenizer.bos_token_id, tokenizer.eos_token_id

    def __call__(self, texts: list) -> list[list[list[int]]]:
        messages = [split_messages(t) for t in texts]
        flat = [m for ms in messages for m in ms]
        ids = self.tokenizer(flat, add_special_tokens=False)["input_ids"] if flat else []
        out, pos = [], 0
        for ms in messages:
            out.append(self._pack(ids[pos : pos + len(ms)]))
            pos += len(ms)
        return out

    def chunk_columns(self, frame: pd.DataFrame, columns: list[str]) -> tuple[list[list[list[int]]], list[list[int]]]:
        """Several text columns -> per row its chunks (each column's chunks in column order, at most `max_chunks` in
        all) and each chunk's column index. An empty cell gives no chunks."""
        per_column = [self(frame[c].tolist()) for c in columns]
        chunks, sources = [], []
        for row in zip(*per_column):
            flat = [(k, ch) for k, col_chunks in enumerate(row) for ch in col_chunks][: self.max_chunks]
            chunks.append([ch for _, ch in flat])
            sources.append([k for k, _ in flat])
        return chunks, sources

    def _pack(self, message_ids: list[list[int]]) -> list[list[int]]:
        room = self.chunk_len - 2
        chunks: list[list[int]] = []
        current: list[int] = []
        for tokens in message_ids:
            if current and len(current) + len(tokens) > room:
                chunks.append(current)
                current = []
            while len(tokens) > room:  # a message longer than a chunk spans several
                if current:
                    chunks.append(current)
                    current = []
                chunks.append(tokens[:room])
                tokens = tokens[room:]
            current = current + tokens
            if len(chunks) >= self.max_chunks:
                break
        if current:
            chunks.append(current)
        return [[self.cls_id, *c, self.sep_id] for c in chunks[: self.max_chunks]]
