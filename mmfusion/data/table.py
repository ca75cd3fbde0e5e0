"""Reading user tables (CSV, TSV, Parquet) and checking them against the config, with errors that name the problem."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np
import pandas as pd

from mmfusion.errors import DataError

READERS = {".csv": lambda p: pd.read_csv(p), ".tsv": lambda p: pd.read_csv(p, sep="\t"), ".parquet": pd.read_parquet, ".pq": pd.read_parquet}


def read_table(path: str | Path) -> pd.DataFrame:
    path = Path(path)
    reader = READERS.get(path.suffix.lower())
    if reader is None:
        raise DataError(f"{path}: unsupported file type {path.suffix!r}; allowed: {', '.join(READERS)}")
    if not path.is_file():
        raise DataError(f"{path}: file does not exist")
    try:
        frame = reader(path)
    except Exception as err:  # pandas/pyarrow raise many types for unreadable files
        raise DataError(f"{path}: cannot read as {path.suffix.lstrip('.').upper()} ({type(err).__name__}: {err})") from None
    if frame.empty:
        raise DataError(f"{path}: the table is empty")
    return frame


def check_columns(frame: pd.DataFrame, columns: list[str], source: str) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise DataError(f"{source}: missing column(s) {', '.join(map(repr, missing))}; the table has: {', '.join(map(str, frame.columns))}")


def check_numeric(frame: pd.DataFrame, columns: list[str], source: str) -> None:
    """Numeric columns hold numbers or blanks (missing). inf/-inf is an error, not "missing": it usually means a
    broken upstream computation, and standardising it would turn the whole feature into NaN (a NaN loss)."""
    for col in columns:
        if not pd.api.types.is_numeric_dtype(frame[col]):
            bad = frame[col][pd.to_numeric(frame[col], errors="coerce").isna() & frame[col].notna()]
            if len(bad):
                raise DataError(f"{source}: numeric column {col!r} holds non-numeric values (e.g. {bad.iloc[0]!r}); list it under data.categorical_columns instead")
        values = pd.to_numeric(frame[col], errors="coerce").to_numpy(dtype=float, na_value=np.nan)
        infinite = int(np.isinf(values).sum())
        if infinite:
            raise DataError(f"{source}: numeric column {col!r} holds non-finite values (inf/-inf) in {infinite} row(s); leave the cell empty for a missing value")


def check_labels(labels: pd.Series, source: str, column: str) -> None:
    if labels.isna().any():
        raise DataError(f"{source}: label column {column!r} has {int(labels.isna().sum())} missing value(s)")
    if labels.nunique() < 2:
        raise DataError(f"{source}: label column {column!r} has a single class ({labels.iloc[0]!r}); at least 2 are needed")


def read_table_pieces(path: str | Path, rows: int) -> Iterator[pd.DataFrame]:
    """The table in pieces of at most `rows` rows, read as they are needed (CSV/TSV: pandas chunksize; Parquet:
    pyarrow record batches), so memory does not grow with the file. Same errors as `read_table`."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in READERS:
        raise DataError(f"{path}: unsupported file type {path.suffix!r}; allowed: {', '.join(READERS)}")
    if not path.is_file():
        raise DataError(f"{path}: file does not exist")
    try:
        if suffix in (".csv", ".tsv"):
            pieces: Iterator[pd.DataFrame] = iter(pd.read_csv(path, sep="\t" if suffix == ".tsv" else ",", chunksize=rows))
        else:
            import pyarrow.parquet as pq

            pieces = (batch.to_pandas() for batch in pq.ParquetFile(path).iter_batches(batch_size=rows))
        first = next(pieces, None)
    except Exception as err:  # pandas/pyarrow raise many types for unreadable files
        raise DataError(f"{path}: cannot read as {suffix.lstrip('.').upper()} ({type(err).__name__}: {err})") from None
    if first is None or first.empty:
        raise DataError(f"{path}: the table is empty")
    yield first
    while True:
        try:
            piece = next(pieces, None)
        except Exception as err:  # noqa: BLE001 - a malformed line further down the file
            raise DataError(f"{path}: cannot read as {suffix.lstrip('.').upper()} ({type(err).__name__}: {err})") from None
        if piece is None:
            return
        yield piece
