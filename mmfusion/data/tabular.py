"""Tabular preprocessing fitted on the training split only, saved as JSON with the run.

numeric     -> transformed (`numeric_transform`), then standardised with the training mean/std; NaN -> 0, plus one
               missing-flag column per feature. Transforms: `standard` (none), `log` (sign(x)·log1p|x|: skewed counts),
               `quantile` (quantile-normal: the training quantiles as knots, mapped to standard-normal scores, piecewise
               linear in between and flat beyond; stored as knots, so numpy alone applies it in every serving path)
categorical -> index into the training vocabulary; 0 is reserved for missing, unseen and (`min_category_count`) rare
               categories
labels      -> index into the sorted training classes; `class_counts` = training rows per class
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from mmfusion.errors import DataError


NUMERIC_TRANSFORMS = ("standard", "log", "quantile")
N_QUANTILES = 1000  # at most this many knots per column (fewer when the column has fewer distinct values)


def _signed_log(x: np.ndarray) -> np.ndarray:
    return np.sign(x) * np.log1p(np.abs(x))


def _quantile_knots(values: np.ndarray, column: str) -> tuple[list[float], list[float]]:
    """Training values -> (x knots, standard-normal scores): the empirical CDF at its quantiles, through Φ⁻¹."""
    from scipy.special import ndtri  # at fit time only; applying the knots needs numpy alone

    x = values[~np.isnan(values)]
    if x.size == 0 or x.min() == x.max():
        raise DataError(f"numeric column {column!r}: a quantile transform needs at least two distinct values in the training split (it is constant or empty); use data.numeric_transform=standard or drop the column")
    knots = np.unique(np.quantile(x, np.linspace(0.0, 1.0, min(N_QUANTILES, np.unique(x).size))))
    cdf = np.searchsorted(np.sort(x), knots, side="right") / x.size  # P(X <= knot) on train
    cdf = (cdf * x.size - 0.5) / x.size  # mid-rank: the largest knot maps below 1, so its score is finite
    return knots.tolist(), ndtri(np.clip(cdf, 0.5 / x.size, 1 - 0.5 / x.size)).tolist()


def _category(value) -> str:
    """A category's vocabulary key: integer codes read as floats (a column with a missing cell) keep their int form."""
    return str(int(value)) if isinstance(value, float) and value.is_integer() else str(value)


@dataclass
class TabularPreprocessor:
    numeric: dict[str, tuple[float, float]] = field(default_factory=dict)  # column -> (mean, std)
    categorical: dict[str, list[str]] = field(default_factory=dict)  # column -> vocabulary (index 1..)
    classes: list[str] = field(default_factory=list)
    text_column: str = "dialogue"
    label_column: str = "label"
    id_column: str | None = None
    numeric_transform: str = "standard"  # one of NUMERIC_TRANSFORMS (files written before it existed: standard)
    quantiles: dict[str, tuple[list[float], list[float]]] = field(default_factory=dict)  # column -> (x knots, z knots)
    class_counts: list[int] = field(default_factory=list)  # training rows per class (empty in older files)
    text_columns: list[str] = field(default_factory=list)  # several text columns; empty: [text_column]

    @classmethod
    def fit(cls, frame: pd.DataFrame, numeric: list[str], categorical: list[str], text_column: str, label_column: str, id_column: str | None,
            numeric_transform: str = "standard", min_category_count: int = 1, text_columns: list[str] | None = None) -> "TabularPreprocessor":
        if numeric_transform not in NUMERIC_TRANSFORMS:
            raise DataError(f"unknown numeric transform {numeric_transform!r}; allowed: {', '.join(NUMERIC_TRANSFORMS)}")
        pre = cls({}, {}, [], text_column, label_column, id_column, numeric_transform)
        pre.text_columns = list(text_columns) if text_columns and len(text_columns) > 1 else []
        for col in numeric:
            raw = pd.to_numeric(frame[col], errors="coerce").to_numpy(dtype=np.float64)
            if numeric_transform == "quantile":
                pre.quantiles[col] = _quantile_knots(raw, col)
            values = pd.Series(pre._shape(col, raw))
            mean, std = values.mean(), values.std()
            pre.numeric[col] = (0.0 if np.isnan(mean) else float(mean), 1.0 if not std or np.isnan(std) else float(std))
        for col in categorical:
            counts = frame[col].dropna().map(_category).value_counts()
            pre.categorical[col] = sorted(counts.index[counts >= min_category_count].tolist())
        labels = frame[label_column].astype(str)
        pre.classes = sorted(labels.unique().tolist())
        pre.class_counts = [int(n) for n in labels.value_counts().reindex(pre.classes).to_numpy()]
        return pre

    def _shape(self, col: str, x: np.ndarray) -> np.ndarray:
        """The transform before standardising (NaN stays NaN)."""
        if self.numeric_transform == "log":
            return _signed_log(x)
        if self.numeric_transform == "quantile":
            knots, scores = self.quantiles[col]
            return np.where(np.isnan(x), np.nan, np.interp(x, knots, scores))
        return x

    @property
    def texts(self) -> list[str]:
        """The text columns, in the order their chunks are placed."""
        return self.text_columns or [self.text_column]

    @property
    def n_numeric_features(self) -> int:
        return 2 * len(self.numeric)

    @property
    def cardinalities(self) -> list[int]:
        return [len(v) + 1 for v in self.categorical.values()]

    def transform(self, frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        """-> numeric (N, 2 * Nn) float32, categorical (N, Nc) int64."""
        n = len(frame)
        values, flags = [], []
        for col, (mean, std) in self.numeric.items():
            x = pd.to_numeric(frame[col], errors="coerce").to_numpy(dtype=np.float64)
            missing = np.isnan(x)
            values.append(np.where(missing, 0.0, (self._shape(col, x) - mean) / std))
            flags.append(missing.astype(np.float64))
        numeric = np.stack(values + flags, axis=1).astype(np.float32) if values else np.zeros((n, 0), np.float32)
        cats = []
        for col, vocab in self.categorical.items():
            index = {v: i + 1 for i, v in enumerate(vocab)}
            cats.append(frame[col].map(lambda v: index.get(_category(v), 0) if pd.notna(v) else 0).to_numpy(np.int64))
        categorical = np.stack(cats, axis=1) if cats else np.zeros((n, 0), np.int64)
        return numeric, categorical

    def encode_labels(self, labels: pd.Series, source: str) -> np.ndarray:
        index = {c: i for i, c in enumerate(self.classes)}
        as_str = labels.astype(str)
        unknown = sorted(set(as_str) - set(index))
        if unknown:
            raise DataError(f"{source}: label(s) {unknown[:5]} in column {self.label_column!r} do not occur in the training split; known: {self.classes}")
        return as_str.map(index).to_numpy(np.int64)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.to_json())

    @classmethod
    def load(cls, path: str | Path, source: str | None = None) -> "TabularPreprocessor":
        """`source` names the file's owner in errors (e.g. "run 3f2a..."; default: the path)."""
        try:
            state = json.loads(Path(path).read_text())
            state["numeric"] = {k: tuple(v) for k, v in state["numeric"].items()}
            state["quantiles"] = {k: (list(x), list(z)) for k, (x, z) in state.get("quantiles", {}).items()}
            pre = cls(**state)
            if pre.numeric_transform not in NUMERIC_TRANSFORMS or set(pre.quantiles) != (set(pre.numeric) if pre.numeric_transform == "quantile" else set()):
                raise ValueError(f"numeric_transform {pre.numeric_transform!r} does not fit its quantile knots")
            return pre
        except (OSError, ValueError, TypeError, KeyError) as err:
            raise DataError(f"{source or path}: not a valid preprocessing.json ({type(err).__name__}: {err})") from None
