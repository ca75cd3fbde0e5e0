"""Tabular preprocessing fitted on the training split only, saved as JSON with the run.

numeric     -> transformed (`numeric_transform`), then standardised with the training mean/std; NaN -> 0, plus one
               missing-flag column per feature. Transforms: `standard` (none), `log` (sign(x)·log1p|x|: skewed counts),
               `quantile` (quantile-normal: the training quantiles as knots, mapped to standard-normal scores, piecewise
               linear in between and flat beyond; stored as knots, so numpy alone applies it in every serving path).
               `auto` picks one of these per column on the training split (`choose_transform`); `transforms`
               holds each column's transform, explicit (data.numeric_transforms) or chosen
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


NUMERIC_TRANSFORMS = ("standard", "log", "quantile")  # in order of simplicity: `auto` prefers the earlier one on a tie
AUTO = "auto"
AUTO_FOLDS = 5
AUTO_MIN_GAIN = 0.002  # a transform must beat the simpler one's cross-validated log-loss by this (nats) to be chosen
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


def choose_transform(values: np.ndarray, labels: np.ndarray) -> str:
    """The transform of one numeric column that best predicts the label on its own, on the training rows only.

    Per transform: a logistic regression on the transformed, standardised value plus its missing flag, scored by
    stratified 5-fold cross-validated log-loss (fixed folds: the same rows give the same choice). A transform replaces
    a simpler one only when it lowers the log-loss by at least AUTO_MIN_GAIN; a column without signal stays
    `standard`. Quantile is a candidate only with two or more distinct values.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score

    _, counts = np.unique(labels, return_counts=True)
    folds = min(AUTO_FOLDS, int(counts.min())) if counts.size >= 2 else 0
    real = values[~np.isnan(values)]
    if folds < 2 or real.size == 0 or real.min() == real.max():
        return "standard"
    missing = np.isnan(values)
    best, best_loss = "standard", np.inf
    for name in NUMERIC_TRANSFORMS:
        shaped = _signed_log(values) if name == "log" else values
        if name == "quantile":
            knots, scores = _quantile_knots(values, "")
            shaped = np.interp(values, knots, scores)
        x = np.where(missing, np.nan, shaped)
        x = np.where(missing, 0.0, (x - np.nanmean(x)) / (np.nanstd(x) or 1.0))  # (N,)
        features = np.stack([x, missing.astype(np.float64)], axis=1)  # (N, 2)
        cv = StratifiedKFold(folds, shuffle=True, random_state=0)
        loss = -cross_val_score(LogisticRegression(C=1.0, max_iter=200), features, labels, cv=cv, scoring="neg_log_loss").mean()
        if loss < best_loss - AUTO_MIN_GAIN:
            best, best_loss = name, loss
    return best


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
    numeric_transform: str = "standard"  # as configured: one of NUMERIC_TRANSFORMS or "auto" (older files: standard)
    quantiles: dict[str, tuple[list[float], list[float]]] = field(default_factory=dict)  # column -> (x knots, z knots)
    class_counts: list[int] = field(default_factory=list)  # training rows per class (empty in older files)
    text_columns: list[str] = field(default_factory=list)  # several text columns; empty: [text_column]
    transforms: dict[str, str] = field(default_factory=dict)  # column -> its transform (older files: numeric_transform)

    @classmethod
    def fit(cls, frame: pd.DataFrame, numeric: list[str], categorical: list[str], text_column: str, label_column: str, id_column: str | None,
            numeric_transform: str = "standard", min_category_count: int = 1, text_columns: list[str] | None = None,
            transforms: dict[str, str] | None = None) -> "TabularPreprocessor":
        """`transforms`: per-column transforms that take precedence over `numeric_transform` ("auto": chosen per column
        by `choose_transform` on these rows and their labels)."""
        given = dict(transforms or {})
        if numeric_transform not in (*NUMERIC_TRANSFORMS, AUTO):
            raise DataError(f"unknown numeric transform {numeric_transform!r}; allowed: {', '.join(NUMERIC_TRANSFORMS)}, {AUTO}")
        bad = {c: t for c, t in given.items() if t not in NUMERIC_TRANSFORMS}
        if bad:
            raise DataError(f"data.numeric_transforms: {bad} is not a transform; allowed per column: {', '.join(NUMERIC_TRANSFORMS)}")
        unknown = sorted(set(given) - set(numeric))
        if unknown:
            raise DataError(f"data.numeric_transforms names column(s) {unknown} that are not numeric columns; numeric columns: {list(numeric)}")
        pre = cls({}, {}, [], text_column, label_column, id_column, numeric_transform)
        pre.text_columns = list(text_columns) if text_columns and len(text_columns) > 1 else []
        labels = frame[label_column].astype(str).to_numpy()
        for col in numeric:
            raw = pd.to_numeric(frame[col], errors="coerce").to_numpy(dtype=np.float64)
            pre.transforms[col] = given.get(col) or (choose_transform(raw, labels) if numeric_transform == AUTO else numeric_transform)
            if pre.transforms[col] == "quantile":
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

    def transform_of(self, col: str) -> str:
        return self.transforms.get(col, self.numeric_transform)

    def _shape(self, col: str, x: np.ndarray) -> np.ndarray:
        """The transform before standardising (NaN stays NaN)."""
        name = self.transform_of(col)
        if name == "log":
            return _signed_log(x)
        if name == "quantile":
            knots, scores = self.quantiles[col]
            return np.where(np.isnan(x), np.nan, np.interp(x, knots, scores))
        return x

    def scores(self, col: str, x: np.ndarray) -> np.ndarray:
        """Raw values of numeric column `col` -> what the model sees: transformed, then standardised (NaN stays NaN)."""
        mean, std = self.numeric[col]
        return (self._shape(col, x) - mean) / std

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
        for col in self.numeric:
            x = pd.to_numeric(frame[col], errors="coerce").to_numpy(dtype=np.float64)
            missing = np.isnan(x)
            values.append(np.where(missing, 0.0, self.scores(col, x)))
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
            chosen = {c: pre.transform_of(c) for c in pre.numeric}
            if pre.numeric_transform not in (*NUMERIC_TRANSFORMS, AUTO) or set(pre.transforms) - set(pre.numeric) or set(chosen.values()) - set(NUMERIC_TRANSFORMS):
                raise ValueError(f"numeric transforms {chosen} (numeric_transform {pre.numeric_transform!r}) are not all of {', '.join(NUMERIC_TRANSFORMS)}")
            if set(pre.quantiles) != {c for c, t in chosen.items() if t == "quantile"}:
                raise ValueError(f"numeric transforms {chosen} do not fit the quantile knots of {sorted(pre.quantiles)}")
            return pre
        except (OSError, ValueError, TypeError, KeyError) as err:
            raise DataError(f"{source or path}: not a valid preprocessing.json ({type(err).__name__}: {err})") from None
