"""Progress of long steps (embedding a table, scoring a file, parity batches, zoo members, study trials): a tqdm bar
on a terminal, a few plain lines elsewhere (CI logs, redirected output), nothing at all after `--quiet`.

Output goes to stderr, so a command's results on stdout stay clean. The CLI calls `set_quiet`; library code only
wraps its loops in `progress(...)`.
"""

from __future__ import annotations

import sys
import time
from typing import Iterable, Iterator, TypeVar

T = TypeVar("T")
_state = {"quiet": False}
LINES_WITHOUT_TTY = 10  # at most about this many lines per step when stderr is not a terminal


def set_quiet(quiet: bool) -> None:
    _state["quiet"] = quiet


def is_quiet() -> bool:
    return _state["quiet"]


def progress(items: Iterable[T], desc: str, total: int | None = None, unit: str = "it") -> Iterator[T]:
    """Yield `items`, reporting how far along they are."""
    total = total if total is not None else (len(items) if hasattr(items, "__len__") else None)  # type: ignore[arg-type]
    if _state["quiet"] or total == 0:
        yield from items
        return
    if sys.stderr.isatty():
        from tqdm.auto import tqdm

        yield from tqdm(items, desc=desc, total=total, unit=unit, leave=False, dynamic_ncols=True)
        return
    every = max(1, (total or 0) // LINES_WITHOUT_TTY) if total else 1
    started, done = time.perf_counter(), 0
    for done, item in enumerate(items, 1):
        yield item
        if done % every == 0 or done == total:
            of = f"/{total}" if total else ""
            print(f"{desc}: {done}{of} {unit} ({time.perf_counter() - started:.0f} s)", file=sys.stderr, flush=True)
