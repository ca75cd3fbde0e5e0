"""Tabular preprocessing fitted on the training split only, saved as JSON with the run.

numeric     -> standardised with the training mean/std, NaN -> 0, plus one missing-flag column per feature
categorical -> index into the training vocabulary; 0 is reserved for missing and unseen categories
labels      -> index into the sorted training classes
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from mmfusion.errors import DataError


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

    @classmethod
    def fit(cls, frame: pd.DataFrame, numeric: list[str], categorical: list[str], text_column: str, label_column: str, id_column: str | None) -> "TabularPreprocessor":
        stats = {}
        for col in numeric:
            values = pd.to_numeric(frame[col], errors="coerce").astype(float)
            mean, std = values.mean(), values.std()
            stats[col] = (0.0 if np.isnan(mean) else float(mean), 1.0 if not std or np.isnan(std) else float(std))
        vocab = {col: sorted(frame[col].dropna().map(_category).unique().tolist()) for col in categorical}
        classes = sorted(frame[label_column].astype(str).unique().tolist())
        return cls(stats, vocab, classes, text_column, label_column, id_column)

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
            values.append(np.where(missing, 0.0, (x - mean) / std))
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
            return cls(**state)
        except (OSError, ValueError, TypeError, KeyError) as err:
            raise DataError(f"{source or path}: not a valid preprocessing.json ({type(err).__name__}: {err})") from None
