"""Which text column a sample leaned on: the share of its pooled text (h_text) that came from each column's chunks.

With joint column pooling (the default) and `model.chunk_pooling=attention` a sample's share of column k is the
attention weight its chunks of column k received (the weights over its real chunks sum to 1); with joint mean pooling
every chunk weighs the same, so the shares are only each column's fraction of the chunks. With
`model.column_pooling=separate` h_text = sum_k W_k v_k + b, one term per column (encoders/columns.py): column k's
share is the size of its term, |W_k v_k| / sum_j |W_j v_j| (an empty cell: 0). `w_text · share` is the column's part of the whole fused prediction's
modality weight. A run with several text columns logs these per sample (`text_columns/<split>.csv`); `inspect`
summarises them.
"""

from __future__ import annotations

import tempfile
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import mlflow
import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from mmfusion.data.datamodule import SplitDataset, collate
from mmfusion.modeling.module import MODEL_INPUTS
from mmfusion.tracking.contract import Artifact

if TYPE_CHECKING:
    from mmfusion.data.datamodule import PreparedData, Split
    from mmfusion.modeling.classifier import MultimodalClassifier

SHARE_PREFIX = "share_"  # share_<text column> in the logged table


def chunk_weights(model: "MultimodalClassifier", batch: dict) -> torch.Tensor:
    """-> (B, C): the weight of each chunk in its sample's h_text under joint pooling (0 at padding; each row sums
    to 1, or 0 without text)."""
    mask = batch["chunk_mask"] > 0  # (B, C)
    captured: list[torch.Tensor] = []
    pool = model.chunk_pool
    hook = pool.score.register_forward_hook(lambda _m, _i, out: captured.append(out)) if pool is not None else None
    try:
        model.encode(*(batch.get(k) for k in MODEL_INPUTS))
    finally:
        if hook is not None:
            hook.remove()
    if captured:  # AttentionChunkPool's scores (B, C, 1): its softmax over the real chunks
        return captured[-1].squeeze(-1).float().masked_fill(~mask, -1e4).softmax(-1) * mask
    return mask.float() / mask.sum(1, keepdim=True).clamp_min(1)


def batch_shares(model: "MultimodalClassifier", batch: dict, n_columns: int) -> torch.Tensor:
    """-> (B, K): each text column's share of its sample's h_text (each row sums to 1, or 0 without text)."""
    if model.column_pool is not None:
        _, chunks, _ = model.encode(*(batch.get(k) for k in MODEL_INPUTS))  # chunks with their column vectors added
        terms = model.column_pool.terms(model.pool_columns(chunks, batch["chunk_mask"], batch["chunk_column"]))  # (B, K, H)
        size = terms.float().norm(dim=-1)  # (B, K)
        return size / size.sum(1, keepdim=True).clamp_min(1e-12)
    w = chunk_weights(model, batch)  # (B, C)
    source = F.one_hot(batch["chunk_column"].long(), n_columns).float()  # (B, C, K)
    return (w.unsqueeze(-1) * source).sum(1)  # (B, K)


def column_shares(model: "MultimodalClassifier", split: "Split", columns: list[str], pad_id: int = 0, batch_size: int = 64) -> pd.DataFrame:
    """-> id, share_<column>... per sample of `split` (columns in the order their chunks are placed)."""
    was_training = model.training
    model.eval()
    shares = []
    try:
        with torch.inference_mode():
            for batch in DataLoader(SplitDataset(split), batch_size=batch_size, collate_fn=partial(collate, pad_id=pad_id)):
                shares.append(batch_shares(model, batch, len(columns)))  # (B, K)
    finally:
        model.train(was_training)
    table = pd.DataFrame(torch.cat(shares).numpy(), columns=[SHARE_PREFIX + c for c in columns])
    table.insert(0, "id", split.ids)
    return table


def log_column_shares(model: "MultimodalClassifier", data: "PreparedData", pad_id: int, batch_size: int = 64) -> list[str]:
    """With several text columns: log each evaluated split's per-sample shares to the active run. -> artifact paths."""
    columns = data.preprocessor.texts
    if len(columns) < 2:
        return []
    logged = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / Artifact.TEXT_COLUMNS_DIR
        folder.mkdir()
        for split in ("test", "val"):
            if len(data.splits[split].ids):
                column_shares(model, data.splits[split], columns, pad_id, batch_size).to_csv(folder / f"{split}.csv", index=False)
                logged.append(f"{Artifact.TEXT_COLUMNS_DIR}/{split}.csv")
        mlflow.log_artifacts(str(folder), Artifact.TEXT_COLUMNS_DIR)
    return logged


def share_columns(frame: pd.DataFrame) -> list[str]:
    return [c for c in frame.columns if c.startswith(SHARE_PREFIX)]


def column_summary(frame: pd.DataFrame) -> pd.DataFrame:
    """Predictions joined with shares -> per true class (and `all`): n, mean share of each column, the fraction of
    samples whose largest share is that column, and each column's mean w_text · share."""
    cols = share_columns(frame)
    names = [c.removeprefix(SHARE_PREFIX) for c in cols]
    has_text = frame[cols].sum(1) > 0
    lead = pd.Series(np.array(names, dtype=object)[frame[cols].to_numpy().argmax(1)], index=frame.index).where(has_text)
    rows = []
    for label, part in [("all", frame), *frame.groupby(frame["label"].astype(str))]:
        row = {"label": label, "n": len(part)}
        for col, name in zip(cols, names):
            row[f"{name} share"] = part[col].mean()
        for name in names:
            row[f"leans on {name}"] = (lead.loc[part.index] == name).mean()
        for col, name in zip(cols, names):
            row[f"w_text·{name}"] = (part["w_text"] * part[col]).mean()
        rows.append(row)
    return pd.DataFrame(rows)


def describe_shares(frame: pd.DataFrame) -> pd.Series:
    """Per row: 'Title 0.31, Review Text 0.69' (empty without shares)."""
    cols = share_columns(frame)
    return frame[cols].apply(lambda r: ", ".join(f"{c.removeprefix(SHARE_PREFIX)} {v:.2f}" for c, v in r.items()), axis=1) if cols else pd.Series("", index=frame.index)
