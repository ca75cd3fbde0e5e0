"""Data lineage in MLflow: every run logs its train/val/test inputs (`mlflow.log_input`), so the run's Datasets tab
and a query show which table (or which synthetic draw) it used, and `reproduce` / `compare` read the digests back.

A split's digest is the sha256 (16 hex) of its used columns' values in order, the same rule as the run's overall
`mmfusion.data_fingerprint`; the source is the table's path, or `synthetic(seed=…, n=…)` for the embedded generator.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import mlflow
from mlflow.data.code_dataset_source import CodeDatasetSource

from mmfusion.config import Config
from mmfusion.data.datamodule import PreparedData, fingerprint, used_columns

CONTEXTS = {"train": "training", "val": "validation", "test": "test"}
GENERIC_STEMS = {"train", "training", "data", "table", "dataset", "all"}


def data_name(cfg: Config) -> str:
    """A short name for the data a config trains on: `synthetic`, else the table's file name (its folder's name when
    the file is called train.csv or the like: data/clothing/train.csv -> clothing)."""
    if cfg.data.source == "synthetic":
        return "synthetic"
    path = Path(cfg.data.path or "table")
    return path.parent.name if path.stem.lower() in GENERIC_STEMS and path.parent.name else path.stem


def split_source(cfg: Config, split: str, seed: int) -> str:
    if cfg.data.source == "synthetic":
        return f"synthetic(seed={seed}, n={cfg.data.synthetic.n_samples})"
    path = cfg.data.test_path if split == "test" and cfg.data.test_path else cfg.data.path
    return str(Path(path).resolve())


def split_digests(data: PreparedData) -> dict[str, str]:
    used = used_columns(data.columns)
    return {split: fingerprint([s.frame], used) for split, s in data.splits.items()}


def log_inputs(cfg: Config, data: PreparedData) -> None:
    """Into the active run: one dataset per split, context training / validation / test."""
    seed = cfg.data.split_seed if cfg.data.split_seed is not None else cfg.seed
    name = data_name(cfg)
    used = [c for c in used_columns(data.columns) if c != data.columns["id"]]  # the id is no feature
    for split, digest in split_digests(data).items():
        source = split_source(cfg, split, seed)
        src = CodeDatasetSource({"mmfusion.source": source}) if cfg.data.source == "synthetic" else source
        with warnings.catch_warnings():  # MLflow registers its local-file source twice and says so for every path;
            warnings.filterwarnings("ignore", message=".*can be interpreted in multiple ways.*")
            # its schema hint about integer columns is advice for a served model's signature, not for a logged dataset
            warnings.filterwarnings("ignore", message=".*Inferred schema contains integer column.*")
            dataset = mlflow.data.from_pandas(data.splits[split].frame[used], source=src, targets=data.columns["label"], name=f"{name}-{split}", digest=digest)
            mlflow.log_input(dataset, context=CONTEXTS[split])  # the schema (and its hint) is inferred here


def recorded_digests(run) -> dict[str, tuple[str, str]]:
    """A run's logged inputs: {split: (dataset name, digest)}; empty for runs logged before lineage existed."""
    by_context = {v: k for k, v in CONTEXTS.items()}
    out = {}
    for item in (run.inputs.dataset_inputs if run.inputs else []):
        context = next((t.value for t in item.tags if t.key == "mlflow.data.context"), None)
        if context in by_context:
            out[by_context[context]] = (item.dataset.name, item.dataset.digest)
    return out


def changed_splits(run, data: PreparedData) -> list[str]:
    """What differs between the data a run logged and `data` now: one phrase per split, naming both digests."""
    now = split_digests(data)
    return [f"{split} ({name}): logged digest {digest}, now {now.get(split, 'missing')}"
            for split, (name, digest) in sorted(recorded_digests(run).items()) if now.get(split) != digest]
