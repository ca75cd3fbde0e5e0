"""Dialogue -> at most C chunks of at most T tokens, each chunk [CLS] ... [SEP], packed at message boundaries."""

from __future__ import annotations

import json

import pandas as pd


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
