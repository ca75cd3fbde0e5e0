"""Scoring a table file into a predictions CSV piece by piece, so memory stays flat whatever the file's size.

    read_pieces(src)                   the first piece (checks the file early) and the rest, read as needed
    predict_file(predictor, src, dst)  read `src` in pieces, score each (in length-sorted batches), append to `dst`
    length_order(chunks)               the rows of a piece by token count: batches of similar rows pad little

Both predictors (`serving.bundle.Predictor`, PyTorch; `serving.onnx_scorer.OnnxPredictor`, ONNX Runtime) have
`check_columns(frame, source)` and `predict(frame, batch_size, show_progress)`; this module needs nothing else.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Iterator, Protocol

import numpy as np
import pandas as pd

from mmfusion.data.table import read_table_pieces
from mmfusion.progress import progress

PIECE_ROWS = 4096  # rows read, chunked and held at once: a few MiB of tokens


class RowPredictor(Protocol):
    def check_columns(self, frame: pd.DataFrame, source: str) -> None: ...

    def predict(self, frame: pd.DataFrame, batch_size: int = 64, show_progress: bool = True) -> pd.DataFrame: ...


def length_order(chunks: list[list[list[int]]]) -> np.ndarray:
    """Row positions sorted by (chunks, tokens): consecutive rows then pad to similar sizes. Stable."""
    sizes = np.array([(len(c), sum(map(len, c))) for c in chunks], dtype=np.int64).reshape(-1, 2)
    return np.lexsort((sizes[:, 1], sizes[:, 0])) if len(sizes) else np.zeros(0, np.int64)


def read_pieces(src: str | Path, piece_rows: int = PIECE_ROWS) -> tuple[pd.DataFrame, Iterator[pd.DataFrame], int | None]:
    """-> (the first piece, the pieces after it, how many pieces in all where known): reading the first piece checks
    that the file exists, has a known type and is not empty, before anything is downloaded or loaded."""
    pieces = read_table_pieces(src, piece_rows)
    return next(pieces), pieces, _parquet_pieces(Path(src), piece_rows)


def predict_file(predictor: RowPredictor, src: str | Path, dst: str | Path, *, batch_size: int = 64, piece_rows: int = PIECE_ROWS, engine: str = "",
                 pieces: tuple[pd.DataFrame, Iterator[pd.DataFrame], int | None] | None = None) -> int:
    """Score every row of `src` (CSV/TSV/Parquet) into the CSV `dst`, one piece of `piece_rows` rows at a time; -> rows
    written. Rows keep their input order. `dst` appears only when every row is scored (a bad row further down the
    file leaves no half-written output). `pieces`: what `read_pieces(src)` returned, when the caller read it first."""
    src, dst = Path(src), Path(dst)
    first, rest, total = pieces or read_pieces(src, piece_rows)
    partial = dst.with_name(dst.name + ".partial")
    written = 0
    try:
        with open(partial, "w", newline="") as out:
            desc = f"scoring {src.name}{f' ({engine})' if engine else ''}, {piece_rows} rows a piece"
            for piece in progress(itertools.chain([first], rest), desc, total=total, unit="pieces"):
                predictor.check_columns(piece, str(src))
                scored = predictor.predict(piece, batch_size, show_progress=False)
                scored.to_csv(out, header=written == 0, index=False)
                written += len(scored)
        partial.replace(dst)
    finally:
        partial.unlink(missing_ok=True)
    return written


def _parquet_pieces(src: Path, piece_rows: int) -> int | None:
    """How many pieces a Parquet file gives (its footer says how many rows); None for text files (unknown)."""
    if src.suffix.lower() not in (".parquet", ".pq"):
        return None
    try:
        import pyarrow.parquet as pq

        return -(-pq.ParquetFile(src).metadata.num_rows // piece_rows)
    except Exception:  # noqa: BLE001 - reading it properly reports the problem
        return None
