"""From config to batches: load (synthetic or table), split, fit preprocessing on train, chunk, collate.

Every sample carries its dataset index so distributed evaluation can drop the duplicates a padded sampler adds.
"""

from __future__ import annotations

import hashlib
from functools import partial
from dataclasses import dataclass, field

import lightning as L
import numpy as np
import pandas as pd
import torch
from sklearn.model_selection import train_test_split
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from mmfusion.config import DataConfig
from mmfusion.data import synthetic
from mmfusion.data.chunking import DialogueChunker, check_chunk_len
from mmfusion.data.sampler import EpochShuffle, bucketed_loader
from mmfusion.data.table import check_columns, check_labels, check_numeric, read_table
from mmfusion.data.tabular import TabularPreprocessor
from mmfusion.errors import DataError

from mmfusion.tracking.contract import MODALITY_CODES, UNKNOWN_MODALITY
SPLITS = ("train", "val", "test")


@dataclass
class Split:
    frame: pd.DataFrame  # the rows as loaded (reset index)
    ids: list[str]
    chunks: list[list[list[int]]]  # per sample, per chunk, token ids
    numeric: np.ndarray  # (N, 2 * Nn) float32
    categorical: np.ndarray  # (N, Nc) int64
    labels: np.ndarray  # (N,) int64
    modality: np.ndarray  # (N,) int64, MODALITY_CODES or -1
    chunk_columns: list[list[int]] | None = None  # per sample, per chunk: index into the text columns (None: all 0)
    chunk_embeddings: list[torch.Tensor] | None = None  # per sample (n_chunks, H), from a frozen encoder
    text_hidden: list[torch.Tensor] | None = None  # per sample (n_tokens, H): states entering the first trained layer


@dataclass
class PreparedData:
    splits: dict[str, Split]
    preprocessor: TabularPreprocessor
    fingerprint: str
    has_modality: bool
    columns: dict = field(default_factory=dict)


def _resolve_columns(cfg: DataConfig) -> dict:
    synth = cfg.source == "synthetic"
    return {
        "text": synthetic.TEXT_COLUMN if synth else (cfg.text_columns or [cfg.text_column])[0],
        "texts": [synthetic.TEXT_COLUMN] if synth else list(cfg.text_columns or [cfg.text_column]),
        "numeric": list(cfg.numeric_columns if cfg.numeric_columns is not None else (synthetic.NUMERIC_COLUMNS if synth else [])),
        "categorical": list(cfg.categorical_columns if cfg.categorical_columns is not None else (synthetic.CATEGORICAL_COLUMNS if synth else [])),
        "label": synthetic.LABEL_COLUMN if synth else cfg.label_column,
        "id": synthetic.ID_COLUMN if synth else cfg.id_column,
    }


def load_frames(cfg: DataConfig, seed: int) -> tuple[pd.DataFrame, pd.DataFrame | None, dict]:
    """-> (main table, separate test table or None, resolved column names), all checked."""
    cols = _resolve_columns(cfg)
    if cfg.source == "synthetic":
        frame = synthetic.make_synthetic(synthetic.SyntheticSpec(**cfg.synthetic.model_dump()), seed=seed)
        test = None
    else:
        frame = read_table(cfg.path)
        test = read_table(cfg.test_path) if cfg.test_path else None
    needed = [*cols["texts"], cols["label"], *cols["numeric"], *cols["categorical"]] + ([cols["id"]] if cols["id"] else [])
    overlap = set(cols["numeric"]) & set(cols["categorical"])
    if overlap:
        raise DataError(f"column(s) {sorted(overlap)} are listed as both numeric and categorical")
    for table, source in ((frame, cfg.path or "synthetic data"), (test, cfg.test_path)):
        if table is not None:
            check_columns(table, needed, source)
            check_numeric(table, cols["numeric"], source)
            check_labels(table[cols["label"]], source, cols["label"]) if table is frame else None
            if cols["id"] and table[cols["id"]].duplicated().any():
                raise DataError(f"{source}: id column {cols['id']!r} has duplicate values")
    return frame, test, cols


def used_columns(cols: dict) -> list[str]:
    """The columns a run reads, in the order the fingerprint (and each split's digest) hashes them."""
    return [c for c in (*cols["texts"], cols["label"], *cols["numeric"], *cols["categorical"], cols["id"]) if c]


def fingerprint(frames: list[pd.DataFrame | None], columns: list[str]) -> str:
    """A hash of the data actually used: the used columns' values, in order."""
    h = hashlib.sha256()
    for frame in frames:
        if frame is not None:
            h.update(pd.util.hash_pandas_object(frame[columns].astype(str), index=False).to_numpy().tobytes())
        h.update(b"|")
    return h.hexdigest()[:16]


def split_frame(frame: pd.DataFrame, label: str, val_fraction: float, test_fraction: float, seed: int) -> dict[str, pd.DataFrame]:
    def cut(df: pd.DataFrame, fraction: float, salt: int) -> tuple[pd.DataFrame, pd.DataFrame]:
        counts = df[label].value_counts()
        stratify = df[label] if counts.min() >= 2 and fraction * len(df) >= len(counts) else None
        return train_test_split(df, test_size=fraction, random_state=seed + salt, stratify=stratify)

    rest, test = cut(frame, test_fraction, 0) if test_fraction > 0 else (frame, frame.iloc[:0])
    train, val = cut(rest, val_fraction / (1.0 - test_fraction), 1)
    return {"train": train, "val": val, "test": test}


def prepare_data(cfg: DataConfig, seed: int, tokenizer) -> PreparedData:
    """`seed` (the run's) draws the synthetic data and the split unless `cfg.split_seed` pins them (zoo members)."""
    seed = cfg.split_seed if cfg.split_seed is not None else seed
    check_chunk_len(tokenizer, cfg.chunk_len)
    frame, test_frame, cols = load_frames(cfg, seed)
    frame = frame.reset_index(drop=True)
    if cols["id"] is None:  # ids are row numbers in the source table(s)
        frame = frame.assign(id=[f"row{i}" for i in range(len(frame))])
        if test_frame is not None:
            test_frame = test_frame.assign(id=[f"test_row{i}" for i in range(len(test_frame))])
        cols["id"] = "id"
    parts = split_frame(frame, cols["label"], cfg.val_fraction, 0.0 if test_frame is not None else cfg.test_fraction, seed)
    if test_frame is not None:
        parts["test"] = test_frame
    if len(parts["train"]) == 0 or len(parts["val"]) == 0:
        raise DataError(f"{cfg.path or 'synthetic data'}: too few rows ({len(frame)}) to split into train/val/test")
    pre = TabularPreprocessor.fit(parts["train"], cols["numeric"], cols["categorical"], cols["text"], cols["label"], cols["id"], cfg.numeric_transform, cfg.min_category_count, cols["texts"],
                              cfg.numeric_transforms)
    chunker = DialogueChunker(tokenizer, cfg.max_chunks, cfg.chunk_len)
    has_modality = synthetic.MODALITY_COLUMN in frame.columns
    splits = {}
    for name, part in parts.items():
        part = part.reset_index(drop=True)
        numeric, categorical = pre.transform(part)
        chunks, chunk_columns = chunker.chunk_columns(part, cols["texts"])
        modality = part[synthetic.MODALITY_COLUMN].map(MODALITY_CODES).fillna(UNKNOWN_MODALITY).to_numpy(np.int64) if has_modality else np.full(len(part), UNKNOWN_MODALITY)
        splits[name] = Split(
            frame=part,
            ids=part[cols["id"]].astype(str).tolist(),
            chunks=chunks,
            chunk_columns=chunk_columns,
            numeric=numeric,
            categorical=categorical,
            labels=pre.encode_labels(part[cols["label"]], cfg.test_path if name == "test" and cfg.test_path else cfg.path or "synthetic data"),
            modality=modality,
        )
    return PreparedData(splits, pre, fingerprint([frame, test_frame], used_columns(cols)), has_modality, cols)


class SplitDataset(Dataset):
    def __init__(self, split: Split) -> None:
        self.split = split

    def __len__(self) -> int:
        return len(self.split.ids)

    def __getitem__(self, i: int) -> dict:
        s = self.split
        item = {"index": i, "chunks": s.chunks[i], "numeric": s.numeric[i], "categorical": s.categorical[i], "label": s.labels[i], "modality": s.modality[i]}
        if s.chunk_columns is not None:
            item["chunk_column"] = s.chunk_columns[i]
        if s.chunk_embeddings is not None:
            item["chunk_embeddings"] = s.chunk_embeddings[i]
        if s.text_hidden is not None:
            item["text_hidden"] = s.text_hidden[i]
        return item


def collate(items: list[dict], pad_id: int = 0) -> dict[str, torch.Tensor]:
    """Pad chunks only to the batch's most chunks (at least 1) and tokens to its longest chunk."""
    b = len(items)
    c = max(1, max(len(it["chunks"]) for it in items))
    t = max([len(ch) for it in items for ch in it["chunks"]] or [2])
    input_ids = torch.full((b, c, t), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((b, c, t), dtype=torch.long)
    chunk_mask = torch.zeros((b, c), dtype=torch.long)
    chunk_column = torch.zeros((b, c), dtype=torch.long)  # 0 at padding chunks (masked out anyway)
    for i, it in enumerate(items):
        for j, ch in enumerate(it["chunks"]):
            input_ids[i, j, : len(ch)] = torch.tensor(ch)
            attention_mask[i, j, : len(ch)] = 1
            chunk_mask[i, j] = 1
        columns = (it.get("chunk_column") or [])[: len(it["chunks"])]  # a blanked dialogue keeps no chunk sources
        if columns:
            chunk_column[i, : len(columns)] = torch.tensor(columns)
    batch = {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "chunk_mask": chunk_mask,
        "chunk_column": chunk_column,
        "numeric": torch.from_numpy(np.stack([it["numeric"] for it in items])),
        "categorical": torch.from_numpy(np.stack([it["categorical"] for it in items])),
        "label": torch.tensor([int(it["label"]) for it in items]),
        "modality": torch.tensor([int(it["modality"]) for it in items]),
        "index": torch.tensor([it["index"] for it in items]),
    }
    if "chunk_embeddings" in items[0]:
        emb = torch.zeros(b, c, items[0]["chunk_embeddings"].shape[-1])
        for i, it in enumerate(items):
            emb[i, : len(it["chunk_embeddings"])] = it["chunk_embeddings"]
        batch["chunk_embeddings"] = emb
    if "text_hidden" in items[0]:
        batch["text_hidden"] = _pad_hidden(items, c, t)
    return batch


def _pad_hidden(items: list[dict], c: int, t: int) -> torch.Tensor:
    """Per sample (n_tokens, H) cached states, its chunks' tokens concatenated -> (B, C, T, H) float32, zeros at padding."""
    out = torch.zeros(len(items), c, t, items[0]["text_hidden"].shape[-1])
    for i, it in enumerate(items):
        if sum(map(len, it["chunks"])) != len(it["text_hidden"]):
            continue  # a blanked dialogue (no chunks) keeps no states
        for j, part in enumerate(torch.split(it["text_hidden"], [len(ch) for ch in it["chunks"]])):
            out[i, j, : len(part)] = part
    return out


class MultimodalDataModule(L.LightningDataModule):
    def __init__(self, data: PreparedData, batch_size: int, eval_batch_size: int, num_workers: int, seed: int, pad_id: int, bucket_by_length: bool = False) -> None:
        super().__init__()
        self.data, self.batch_size, self.eval_batch_size = data, batch_size, eval_batch_size
        self.num_workers, self.seed, self.pad_id = num_workers, seed, pad_id
        self.bucket_by_length = bucket_by_length

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        return DataLoader(
            SplitDataset(self.data.splits[split]),
            batch_size=self.batch_size if shuffle else self.eval_batch_size,
            sampler=EpochShuffle(len(self.data.splits[split].ids), self.seed) if shuffle else None,
            collate_fn=partial(collate, pad_id=self.pad_id),
            num_workers=self.num_workers,
        )

    def eval_loader(self, split: str) -> DataLoader:
        """Any split in evaluation order. Under torch.distributed the sampler pads (every rank runs the same number of
        batches, which FSDP's collectives need); the evaluation drops the padded duplicates by index."""
        loader = self._loader(split, shuffle=False)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            sampler = DistributedSampler(loader.dataset, shuffle=False, drop_last=False)
            loader = DataLoader(loader.dataset, batch_size=self.eval_batch_size, sampler=sampler, collate_fn=loader.collate_fn, num_workers=self.num_workers)
        return loader

    def train_dataloader(self) -> DataLoader:
        if self.bucket_by_length:
            return bucketed_loader(SplitDataset(self.data.splits["train"]), self.batch_size, self.seed, partial(collate, pad_id=self.pad_id), self.num_workers)
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)
