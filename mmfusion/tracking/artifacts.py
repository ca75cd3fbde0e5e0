"""Reading runs and their artifacts back from MLflow with one-line errors that name the run and the file.

Every command that reads a run (export, predict, inspect, compare, reproduce, zoo --resume) goes through `get_run`
and wraps what it reads in `reading(f"run {run_id}", file)`: an unknown id, a missing or corrupted artifact (JSON, YAML, CSV,
safetensors, ONNX) is an `ArtifactError` (exit 2), never a traceback.
"""

from __future__ import annotations

import contextlib
import re
from typing import TYPE_CHECKING, Iterator

from mmfusion.errors import DataError, UserError

if TYPE_CHECKING:
    import mlflow

RUN_ID = re.compile(r"^[0-9A-Za-z_-]{1,64}$")  # MLflow ids are 32 hex digits; other stores use [A-Za-z0-9_-]


class ArtifactError(DataError):
    """A run's artifact is missing, unreadable or altered (e.g. a tampered model file, a preprocessing.json from elsewhere)."""


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0][:300]}" if text else type(err).__name__


def check_run_id(run_id: str, what: str = "run id") -> str:
    """A run id as MLflow makes them; anything else (quotes, spaces, ...) is an input error before it reaches a query."""
    if not isinstance(run_id, str) or not RUN_ID.match(run_id):
        raise UserError(f"{what} {run_id!r} is not a run id (letters, digits, '-' and '_' only)")
    return run_id


def get_run(run_id: str, client: "mlflow.MlflowClient | None" = None):
    """The run, or UserError naming the id and the store."""
    import mlflow

    client = client or mlflow.MlflowClient()
    check_run_id(run_id)
    try:
        return client.get_run(run_id)
    except mlflow.exceptions.MlflowException as err:
        raise UserError(f"run {run_id!r} not found in the tracking store {client.tracking_uri} ({_first_line(err)})") from None


@contextlib.contextmanager
def reading(where: str, file: str) -> Iterator[None]:
    """Any failure inside (download, parse, load) -> ArtifactError "<where>: cannot read <file> (...)"; `where` names
    the run ("run 3f2a...") or folder. Keep the block to the reading itself: UserErrors raised inside pass through."""
    try:
        yield
    except UserError:
        raise
    except Exception as err:  # MlflowException, OSError, JSON/YAML/CSV parse errors, safetensors, onnxruntime, ...
        raise ArtifactError(f"{where}: cannot read {file} ({_first_line(err)})") from None
