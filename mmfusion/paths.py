"""Output paths checked before any work starts: a file where a folder is expected (or the reverse) is one error line
naming the path, not an OS error half-way through a job."""

from __future__ import annotations

import os
from pathlib import Path

from mmfusion.errors import UserError


def _existing_ancestor(path: Path) -> Path:
    for parent in path.parents:
        if parent.exists():
            return parent
    return Path(".")


def dir_problem(path: str | Path, writable: bool = True) -> str | None:
    """Why `path` cannot be used as a folder to write into (it or a parent is a file, or it is not writable); None if
    it can. `writable=False` checks the shape only (for config values that may be read on another machine)."""
    p = Path(path).expanduser()
    if p.exists():
        if not p.is_dir():
            return f"{p} is a file, not a folder"
        if writable and not os.access(p, os.W_OK | os.X_OK):
            return f"folder {p} is not writable"
        return None
    parent = _existing_ancestor(p)
    if not parent.is_dir():
        return f"{parent} is a file, so the folder {p} cannot be created"
    if writable and not os.access(parent, os.W_OK | os.X_OK):
        return f"cannot create the folder {p}: {parent} is not writable"
    return None


def file_problem(path: str | Path) -> str | None:
    """Why a file cannot be written at `path` (it is a folder, or its folder cannot be made); None if it can."""
    p = Path(path).expanduser()
    if p.is_dir():
        return f"{p} is a folder, not a file"
    if p.exists() and not os.access(p, os.W_OK):
        return f"{p} is not writable"
    return dir_problem(p.parent)


def check_output_dir(path: str | Path, what: str) -> Path:
    """`path` if a folder can be written there, else UserError naming `what` (e.g. '--out') and the path."""
    problem = dir_problem(path)
    if problem:
        raise UserError(f"{what}: {problem}")
    return Path(path)


def check_output_file(path: str | Path, what: str) -> Path:
    problem = file_problem(path)
    if problem:
        raise UserError(f"{what}: {problem}")
    return Path(path)
