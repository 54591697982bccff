"""User-facing errors: the CLI prints them as one line and exits non-zero, no traceback."""

import sys
from typing import Any


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


def shorten(value: Any, limit: int = 200) -> str:
    """``repr(value)`` cut to at most ``limit`` characters, for quoting a user's value in an error."""
    text = repr(value) if not isinstance(value, (list, dict, tuple, set)) else _short_container(value, limit)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _short_container(value: Any, limit: int) -> str:
    """The start of a container's repr without formatting all of it (it may be huge)."""
    parts, size = [], 0
    items = value.items() if isinstance(value, dict) else value
    for item in items:
        part = (
            f"{shorten(item[0], limit)}: {shorten(item[1], limit)}" if isinstance(value, dict) else shorten(item, limit)
        )
        parts.append(part)
        size += len(part) + 2
        if size > limit:
            parts.append("...")
            break
    brackets = "()" if isinstance(value, tuple) else "{}" if isinstance(value, (dict, set)) else "[]"
    return brackets[0] + ", ".join(parts) + brackets[1]
