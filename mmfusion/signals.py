"""Ctrl-C and SIGTERM as one exception, and the memory of which signal arrived.

Lightning catches `KeyboardInterrupt` inside `fit`, shuts down and calls `sys.exit(1)`, so the code around `fit` sees
`SystemExit`, not the interrupt. `stop_on_signals()` therefore records the signal before raising `Interrupted`, and
`received()` tells the owner of a run (`tracking.mlflow_run`, a study) that the job was stopped, whatever exception
reached it: the run ends KILLED, not FAILED.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from typing import Iterator

from mmfusion.errors import Interrupted

_received: int | None = None


def received() -> int | None:
    """The signal number that stopped this process's job (SIGINT/SIGTERM), or None."""
    return _received


def reset() -> None:
    global _received
    _received = None


def _raise(signum: int, frame) -> None:
    global _received
    if _received is None:
        _received = signum
    raise Interrupted(signum)


@contextlib.contextmanager
def stop_on_signals(signums: tuple[int, ...] = (signal.SIGINT, signal.SIGTERM)) -> Iterator[None]:
    """Within the block, SIGINT and SIGTERM raise `Interrupted` in the main thread (elsewhere: no change)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.signal(s, _raise) for s in signums}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def interrupted_error(err: BaseException) -> Interrupted | None:
    """The `Interrupted` that `err` stands for: itself, a plain KeyboardInterrupt, or Lightning's `SystemExit` after a
    recorded signal. None when `err` is an ordinary failure."""
    if isinstance(err, Interrupted):
        return err
    if isinstance(err, KeyboardInterrupt):
        return Interrupted(signal.SIGINT)
    if _received is not None:
        return Interrupted(_received)
    return None
