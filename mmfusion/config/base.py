"""The strict pydantic base of every config section, and the value types several sections share."""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

DEFAULT_TEXT_ENCODER = "sentence-transformers/all-MiniLM-L6-v2"


class Strict(BaseModel):
    # allow_inf_nan=False: an `inf` or `nan` (YAML .inf, or the string "inf") is never a valid number here
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


SEED_MAX = 2**32  # numpy's and Lightning's seeds are 32-bit unsigned
Seed = Annotated[int, Field(ge=0, lt=SEED_MAX)]
PositiveFloat = Annotated[float, Field(gt=0.0, allow_inf_nan=False)]
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _folder(value: str | None) -> str | None:
    """A config value naming a folder to write into: a file in its place is an error now, not mid-job."""
    from mmfusion.paths import dir_problem

    problem = dir_problem(value, writable=False) if value else None
    if problem:
        raise ValueError(problem)
    return value
