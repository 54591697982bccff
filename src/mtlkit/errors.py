"""User-facing errors: the CLI prints them as one line and exits non-zero, no traceback."""

import sys


class MtlkitError(Exception):
    """Base class of every error a user can fix (bad config, bad data, bad arguments)."""


class ConfigError(MtlkitError):
    """A config file, key or value is wrong."""


class DataError(MtlkitError):
    """A dataset folder or file is missing or malformed; the message names the file."""


class TrainingError(MtlkitError):
    """Training cannot go on (non-finite loss, unsupported combination, ...)."""


class OutputError(MtlkitError):
    """An output file or folder cannot be written (read-only, full disk, a file in the way)."""


def warn(message: str) -> None:
    """Print a one-line ``mtlkit: warning: ...`` to stderr (something was skipped or looks wrong)."""
    print(f"mtlkit: warning: {message}", file=sys.stderr)
