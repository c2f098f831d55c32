"""Exceptions meaning "volguard itself could not do its job" (exit code 1).

Problems *found* in the user's deployment are findings, never exceptions.
"""


class VolguardError(Exception):
    """Base class. The message is one line, shown to the user as is."""

    exit_code = 1


class UsageError(VolguardError):
    """A bad flag or flag value."""


class ConfigError(VolguardError):
    """volguard's own configuration (invoke.yaml, a waiver) is invalid."""
