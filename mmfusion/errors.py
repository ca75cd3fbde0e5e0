"""User-facing errors: anything raised as a `UserError` ends the CLI with a one-line message and exit code 2."""


class UserError(Exception):
    """Bad input from the user (config, data, CLI argument). Never a bug in mmfusion."""

    exit_code = 2


class ConfigError(UserError):
    """The configuration is invalid: unknown key, wrong type or bad value."""


class DataError(UserError):
    """The data cannot be used: missing file or column, empty table, a single class, ..."""
