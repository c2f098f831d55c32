"""Every exception volguard raises across a module boundary, in one tree.

Each means "volguard itself could not do its job" (exit code 1 unless it says otherwise):
problems *found* in the user's deployment are findings, never exceptions. Callers catch by
meaning, the base catches all::

    VolguardError                 the base; its message is one line, shown as is
    ├── UsageError                a bad flag or flag value
    ├── ConfigError               volguard's own configuration (invoke.yaml, a waiver)
    ├── SizeError                 a size in fly.toml that is not one (also a ValueError)
    ├── FlyAPIError               the Fly Machines API answered with an error
    │   ├── FlyAuthError          401/403: the token is missing, wrong or lacks access
    │   ├── FlyNotFound           404: no such app, Machine or volume
    │   └── FlyUnavailable        timeouts, 5xx after retries, answers of the wrong shape
    ├── SnapshotTimeout           a snapshot did not show up in the volume's list in time
    ├── TemporaryResourceError    a fork, restore or temporary Machine (recover) failed
    ├── LockedError               another run of the same app holds its lock
    ├── StepFailed                a runbook step failed or refused (exit 2)
    ├── Unreachable               a Machine cannot be reached over the transport
    ├── ProbeError                the probe ran but its answer is unusable
    ├── RemoteCommandError        manage.py could not run on the Machine, or failed
    ├── DemoError                 ``volguard demo`` cannot run here
    ├── AuditError                the missing-file audit cannot run (Django side)
    ├── StorageIndexError         a storage cannot be listed or checked (Django side)
    ├── RemediationError          ``--fix``/``--delete`` cannot run (Django side)
    ├── MediaMigrationError       ``migrate_media`` cannot run: alias, credentials, refused write
    └── MissingFilesError         ``require_files``: rows whose file is missing (user code)

``MissingFilesError`` is raised in the user's own app code; it is public API importable
from ``volguard.django.helpers`` too. The simulator (``volguard.sim``) is a test tool and
keeps its own errors. Defined here and only here: tests/test_errors.py checks that every
exception class of the product is in this tree.
"""

from __future__ import annotations

from typing import Any


class VolguardError(Exception):
    """Base class. The message is one line, shown to the user as is."""

    exit_code = 1


class UsageError(VolguardError):
    """A bad flag or flag value."""


class ConfigError(VolguardError):
    """volguard's own configuration (invoke.yaml, a waiver) is invalid."""


class SizeError(VolguardError, ValueError):
    """A size (``[[vm]] memory``, ``initial_size``) that is not one; a ValueError too."""


class FlyAPIError(VolguardError):
    """The Machines API could not give an answer. The message is one line, token-free."""

    def __init__(self, message: str, status: int | None = None, fly_error: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.fly_error = fly_error


class FlyAuthError(FlyAPIError):
    """401/403: the token is missing, wrong, or has the wrong scheme."""


class FlyNotFound(FlyAPIError):
    """404: no such app, Machine or volume."""


class FlyUnavailable(FlyAPIError):
    """No usable answer: connection errors, timeouts, 5xx or garbage after the retries."""


class SnapshotTimeout(VolguardError):
    """A snapshot was requested but did not show up in the volume's list in time."""


class TemporaryResourceError(VolguardError):
    """A temporary fork, restored volume or Machine could not be made, started or removed.

    The message carries the API's own words (token-free) and says what was left, if
    anything; ``left`` lists the ids still to destroy (``volguard.fly.temporary.cleanup``)."""

    def __init__(self, message: str, left: list[str] | None = None) -> None:
        super().__init__(message)
        self.left = list(left or ())


class LockedError(VolguardError):
    """Another run of the same app holds the lock."""


class StepFailed(VolguardError):
    """A step failed on purpose (``step.failed(…)`` then raise): the run stops there."""

    exit_code = 2


class Unreachable(VolguardError):
    """The transport could not run anything on the Machine (VG300)."""


class ProbeError(VolguardError):
    """The probe ran but its answer is unusable (no python3, no markers, bad JSON)."""


class RemoteCommandError(VolguardError):
    """manage.py could not run on the Machine, or failed (exit 1): volguard could not work."""


class DemoError(VolguardError):
    """The demo cannot run here (say what is missing) or a step broke."""


class AuditError(VolguardError):
    """The audit cannot run: unknown model, bad filter or setting, unreadable storage."""


class StorageIndexError(VolguardError):
    """The storage could not be read (not "the file is missing"): the audit cannot go on."""


class RemediationError(VolguardError):
    """Remediation cannot run: bad input, or a model without the configured fields."""


class MediaMigrationError(VolguardError):
    """``migrate_media`` cannot run: a bad alias, credentials refused, a store refusing writes."""


#: How many missing rows `MissingFilesError` names in its one-line message.
SHOWN_MISSING = 5


class MissingFilesError(VolguardError):
    """Rows whose file is not in storage, found by ``require_files`` before a job started.

    ``missing`` is the list of ``(pk, name)`` pairs, in queryset order; ``name`` is the
    stored name (``""`` or ``None`` when the field is empty). ``str()`` is one line, safe
    for a log or a task result, however many rows are missing.
    """

    def __init__(self, missing: list[tuple[Any, str | None]], storage: str = "") -> None:
        self.missing = list(missing)
        self.storage = storage
        super().__init__(self._message())

    def _message(self) -> str:
        count = len(self.missing)
        where = f" from storage {self.storage}" if self.storage else ""
        shown = ", ".join(
            f"id {pk} ({name!r})" if name else f"id {pk} (empty file field)"
            for pk, name in self.missing[:SHOWN_MISSING]
        )
        more = f" and {count - SHOWN_MISSING} more" if count > SHOWN_MISSING else ""
        noun = "file" if count == 1 else "files"
        return f"{count} {noun} missing{where}: {shown}{more}"
