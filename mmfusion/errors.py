"""User-facing errors and interruptions.

- `UserError`: bad input; the CLI prints one `error:` line and exits 2.
- `Interrupted`: the job was stopped by SIGINT or SIGTERM (a `KeyboardInterrupt`, so every `except KeyboardInterrupt`
  sees it); runs it was writing end KILLED and the CLI exits 128 + the signal number with one line.
"""

from __future__ import annotations

import signal


class UserError(Exception):
    """Bad input from the user (config, data, CLI argument). Never a bug in mmfusion."""

    exit_code = 2


class ConfigError(UserError):
    """The configuration is invalid: unknown key, wrong type or bad value."""


class DataError(UserError):
    """The data cannot be used: missing file or column, empty table, a single class, ..."""


class Interrupted(KeyboardInterrupt):
    """Stopped by a signal. `signum` is SIGINT for Ctrl-C, SIGTERM for `kill`."""

    def __init__(self, signum: int = signal.SIGINT) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = int(signum)

    @property
    def exit_code(self) -> int:
        return 128 + self.signum
