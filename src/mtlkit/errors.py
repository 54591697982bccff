"""User-facing errors: the CLI prints them as one line and exits non-zero, no traceback."""


class MtlkitError(Exception):
    """Base class of every error a user can fix (bad config, bad data, bad arguments)."""


class ConfigError(MtlkitError):
    """A config file, key or value is wrong."""


class DataError(MtlkitError):
    """A dataset folder or file is missing or malformed; the message names the file."""


class TrainingError(MtlkitError):
    """Training cannot go on (non-finite loss, unsupported combination, ...)."""
