"""A health check that proves the media root is on the volume and writable, for Fly's HTTP checks.

When a Fly volume is not mounted, ``/data/media`` is a plain directory on the Machine's
root filesystem: uploads "work" until the next deploy wipes them. A process that is up
and serving is therefore not enough; the check must prove, on every Machine, that the
media root is where the files will survive. Three layers, one judgement:

- `check_media` (pure-ish: a path and an expectation in, a `MediaHealth` out, no Django)
  runs four checks and times each one:

  ``exists``  the root resolves (symlinks followed, as the app follows them) to a directory;
  ``mount``   `volguard.django.filesystem.mount_problem`: on a separate filesystem, or under
              the expected mount point, when ``VOLGUARD_EXPECT_MOUNT`` (on by default on Fly)
              says it must be;
  ``write``   a real write: a uniquely named hidden file created inside the root with
              ``O_CREAT|O_EXCL|O_NOFOLLOW`` (mode 0600) relative to a descriptor of the
              directory itself, a few bytes written, fsync'ed, read back and compared, and
              always unlinked (``finally``), so it never follows a symlink and never leaves a
              file behind, error or not;
  ``space``   free space and inodes; under ``min_free`` (5 %) is a *warning*, never a failure
              (a nearly full volume still works; the alert belongs to monitoring).

  Any ``OSError`` becomes a failed check with a one-line message; it never raises.

- `media_health`, a Django function view (GET and HEAD only, no auth, CSRF-exempt because
  it changes nothing, ``never_cache``): ``{"status": "ok"|"fail", "media_root": …,
  "checks": {…}}`` with 200 or 503. It never raises: a broken setting is a 503 too, and
  only ``OSError`` and volguard's own messages reach the body (other exceptions are named
  by class and logged), so nothing from settings or the environment leaks. Include
  ``volguard.django.urls`` to serve it at ``…/media``.

- `MediaVolumeHealthCheck`, for django-health-check, running the same check. It is built
  on first access (module ``__getattr__``), so importing this module never needs the
  library. With django-health-check 4.x it is a ``health_check.HealthCheck`` dataclass to
  list in ``HealthCheckView.as_view(checks=[...])``; with 3.x it is a
  ``BaseHealthCheckBackend`` that `HealthCheckConfig` (an INSTALLED_APPS entry,
  ``"volguard.django.health.HealthCheckConfig"``) registers with ``plugin_dir``.

See docs/health.md for the wiring, fly.toml and the JSON shape.
"""

from __future__ import annotations

import logging
import os
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from django.apps import AppConfig
from django.core.exceptions import ImproperlyConfigured
from django.http import HttpRequest, JsonResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_http_methods

from volguard.django import filesystem

logger = logging.getLogger("volguard.health")

#: Hidden, and recognisable if a killed process ever left one behind.
PROBE_PREFIX = ".volguard-health-"
#: Below this fraction of free blocks or inodes, the space check warns.
MIN_FREE = 0.05
#: Longest error text put in a response (one line).
MAX_MESSAGE = 300

OK, FAIL, WARN, SKIPPED = "ok", "fail", "warn", "skipped"
_O_PATH = getattr(os, "O_PATH", os.O_RDONLY)  # Linux; elsewhere a read-only descriptor


@dataclass(frozen=True)
class Problem:
    """Something wrong with the media root: a failure, or a warning that does not fail."""

    check: str  # "config", "exists", "mount", "write" or "space"
    message: str
    warning: bool = False

    def __str__(self) -> str:
        return self.message


@dataclass
class CheckResult:
    """One check's outcome: `status` is ok, fail, warn or skipped; `ms` how long it took."""

    status: str
    ms: float = 0.0
    message: str | None = None
    details: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"status": self.status, "ms": round(self.ms, 3)}
        if self.message:
            out["error" if self.status == FAIL else "message"] = self.message
        out.update(self.details)
        return out


@dataclass
class MediaHealth:
    """What `check_media` found: the checks by name, in the order they ran."""

    media_root: str
    checks: dict[str, CheckResult] = field(default_factory=dict)

    @property
    def problems(self) -> list[Problem]:
        """Failures and warnings, in check order."""
        return [
            Problem(name, r.message or name, warning=r.status == WARN)
            for name, r in self.checks.items()
            if r.status in (FAIL, WARN)
        ]

    @property
    def failures(self) -> list[Problem]:
        return [p for p in self.problems if not p.warning]

    @property
    def ok(self) -> bool:
        return not self.failures

    @property
    def status(self) -> str:
        return OK if self.ok else FAIL

    @property
    def ms(self) -> float:
        return sum(r.ms for r in self.checks.values())

    def as_dict(self) -> dict[str, Any]:
        """The JSON body of `media_health`."""
        return {
            "status": self.status,
            "media_root": self.media_root,
            "checks": {name: r.as_dict() for name, r in self.checks.items()},
        }


# -- the check --------------------------------------------------------------------------


def check_media(root: str, expected: str | bool, *, min_free: float = MIN_FREE) -> MediaHealth:
    """Check that ``root`` exists, is where ``expected`` says, is writable and has space.

    ``expected`` is `volguard.django.filesystem.expected_mount`'s answer (``True``, ``False``
    or a mount point path). Never raises ``OSError``: each becomes a failed check.
    """
    report = MediaHealth(os.fspath(root))
    real = os.path.realpath(root) if root else ""
    exists = _timed(report, "exists", lambda: _check_exists(root, real))
    _timed(report, "mount", lambda: _check_mount(root, expected))
    if exists.status == OK:
        _timed(report, "write", lambda: _check_write(real))
        _timed(report, "space", lambda: _check_space(real, min_free))
    else:
        report.checks["write"] = CheckResult(SKIPPED, message="no directory to write to")
        report.checks["space"] = CheckResult(SKIPPED, message="no directory to measure")
    return report


def _timed(report: MediaHealth, name: str, run: Callable[[], CheckResult]) -> CheckResult:
    start = time.perf_counter()
    try:
        result = run()
    except OSError as e:
        result = CheckResult(FAIL, message=_os_error(e))
    result.ms = (time.perf_counter() - start) * 1000
    report.checks[name] = result
    return result


def _check_exists(root: str, real: str) -> CheckResult:
    if not root:
        return CheckResult(FAIL, message="no media root configured (MEDIA_ROOT is empty)")
    details: dict[str, Any] = {"path": real}
    if os.path.isdir(real):
        return CheckResult(OK, details=details)
    if os.path.lexists(real):
        return CheckResult(FAIL, message=f"{_show(root)} is not a directory", details=details)
    link = " (a dangling symlink)" if os.path.islink(root) else ""
    return CheckResult(FAIL, message=f"{_show(root)} does not exist{link}", details=details)


def _check_mount(root: str, expected: str | bool) -> CheckResult:
    details: dict[str, Any] = {"expected": expected}
    if not root:
        return CheckResult(SKIPPED, details=details)
    where = filesystem.placement(root)
    details["mount_point"] = where.mount_point
    details["separate_filesystem"] = where.separate
    problem = filesystem.mount_problem(root, expected)
    if problem:
        return CheckResult(FAIL, message=_one_line(problem), details=details)
    return CheckResult(OK, details=details)


def _check_write(directory: str) -> CheckResult:
    """Create, write, fsync, read back and remove a unique hidden file in ``directory``.

    Every step is relative to a descriptor of the directory itself, so the file lands in
    the directory that was checked even if a path component is swapped meanwhile.
    ``O_EXCL`` refuses any existing name (a symlink included, dangling or not) and
    ``O_NOFOLLOW`` refuses to open one, so the probe never writes through a symlink.
    """
    name = f"{PROBE_PREFIX}{secrets.token_hex(8)}"
    payload = f"volguard health {name}\n".encode()
    try:  # O_PATH: no read permission on the directory is needed, only search and write
        dir_fd = os.open(directory, _O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as e:
        return CheckResult(FAIL, message=f"cannot open {_show(directory)}: {_os_error(e)}")
    try:
        created, removed = False, True
        try:
            fd = os.open(
                name,
                os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                0o600,
                dir_fd=dir_fd,
            )
            created = True
            try:
                _write_all(fd, payload)
                os.fsync(fd)
            finally:
                os.close(fd)
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
            try:
                back = os.read(fd, len(payload) + 1)
            finally:
                os.close(fd)
        except OSError as e:
            return CheckResult(FAIL, message=f"cannot write in {_show(directory)}: {_os_error(e)}")
        finally:
            if created:
                removed = _unlink(name, dir_fd)
        if not removed:
            return CheckResult(FAIL, message=f"cannot remove the write probe in {_show(directory)}")
        if back != payload:
            return CheckResult(
                FAIL, message=f"read back different bytes than written in {_show(directory)}"
            )
        return CheckResult(OK)
    finally:
        os.close(dir_fd)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _unlink(name: str, dir_fd: int) -> bool:
    try:
        os.unlink(name, dir_fd=dir_fd)
    except FileNotFoundError:
        return True
    except OSError as e:
        logger.error("volguard health: cannot remove write probe %s: %s", name, _os_error(e))
        return False
    return True


def _check_space(directory: str, min_free: float) -> CheckResult:
    vfs = os.statvfs(directory)
    details: dict[str, Any] = {}
    low: list[str] = []
    if vfs.f_blocks:
        ratio = vfs.f_bavail / vfs.f_blocks
        details["free_percent"] = round(ratio * 100, 1)
        details["free_bytes"] = vfs.f_bavail * vfs.f_frsize
        if ratio < min_free:
            low.append(f"{ratio:.1%} of space free")
    if vfs.f_files:  # 0 on filesystems without an inode limit
        ratio = vfs.f_favail / vfs.f_files
        details["free_inodes_percent"] = round(ratio * 100, 1)
        if ratio < min_free:
            low.append(f"{ratio:.1%} of inodes free")
    if low:
        message = f"{_show(directory)} is nearly full: {', '.join(low)}"
        return CheckResult(WARN, message=message, details=details)
    return CheckResult(OK, details=details)


# -- reading Django's settings ----------------------------------------------------------


def media_root_for(storage: str | None = None) -> str:
    """The directory to check: ``MEDIA_ROOT``, or the location of storage alias ``storage``.

    Raises ``ValueError`` for a storage that is not a ``FileSystemStorage`` (S3, memory).
    """
    from django.conf import settings

    if storage is None:
        value = getattr(settings, "MEDIA_ROOT", "") or ""
        return os.path.abspath(os.fspath(value)) if value else ""
    from django.core.files.storage import FileSystemStorage, storages

    store = storages[storage]
    if not isinstance(store, FileSystemStorage):
        raise ValueError(
            f"storage {storage!r} ({type(store).__name__}) has no local directory to check"
        )
    return os.path.abspath(store.location)


def configured_health(storage: str | None = None, *, min_free: float = MIN_FREE) -> MediaHealth:
    """`check_media` for the running project: its media root and ``VOLGUARD_EXPECT_MOUNT``.

    A setting volguard cannot use becomes a failed ``config`` check, not an exception.
    """
    root = ""
    try:
        root = media_root_for(storage)
        expected = filesystem.configured_expectation()
    except (ValueError, LookupError, ImproperlyConfigured) as e:  # a setting, a storage alias
        report = MediaHealth(root)
        report.checks["config"] = CheckResult(FAIL, message=_one_line(str(e)))
        return report
    except Exception as e:  # InvalidStorageError and other settings trouble
        logger.exception("volguard health: cannot read the settings")
        report = MediaHealth(root)
        report.checks["config"] = CheckResult(FAIL, message=_describe(e))
        return report
    return check_media(root, expected, min_free=min_free)


# -- the view ---------------------------------------------------------------------------


@csrf_exempt  # it changes nothing; a POST gets 405, not a CSRF 403
@require_http_methods(["GET", "HEAD"])
@never_cache
def media_health(
    request: HttpRequest, storage: str | None = None, min_free: float = MIN_FREE
) -> JsonResponse:
    """``GET``/``HEAD``: 200 ``{"status": "ok", …}`` or 503 ``{"status": "fail", …}``.

    ``storage`` (a ``STORAGES`` alias, from the URL pattern's kwargs) checks that
    storage's directory instead of ``MEDIA_ROOT``. Never raises.
    """
    try:
        report = configured_health(storage, min_free=min_free)
        body = report.as_dict()
    except Exception as e:  # a health check must answer, whatever happened
        logger.exception("volguard health check failed unexpectedly")
        body = {
            "status": FAIL,
            "media_root": "",
            "checks": {"health": {"status": FAIL, "error": _describe(e)}},
        }
    if body["status"] != OK:
        failed = {n: c.get("error") for n, c in body["checks"].items() if c["status"] == FAIL}
        logger.warning("volguard health: media root %s failed: %s", body["media_root"], failed)
    return JsonResponse(body, status=200 if body["status"] == OK else 503)


# -- django-health-check ----------------------------------------------------------------


def _health_check_class() -> type:
    """`MediaVolumeHealthCheck` for the installed django-health-check (4.x or 3.x)."""
    try:
        from health_check.exceptions import ServiceUnavailable
    except ImportError as e:
        raise ImportError(
            "volguard.django.health.MediaVolumeHealthCheck needs django-health-check "
            "(pip install django-health-check)"
        ) from e
    try:
        from health_check.base import HealthCheck  # 4.x
    except ImportError:
        HealthCheck = None

    def failures(storage: str | None, min_free: float) -> list[str]:
        report = configured_health(storage, min_free=min_free)
        for warning in (p for p in report.problems if p.warning):
            logger.warning("volguard health: %s", warning)
        return [f"{p.check}: {p}" for p in report.failures]

    if HealthCheck is not None:
        import dataclasses

        @dataclasses.dataclass
        class MediaVolumeHealthCheck(HealthCheck):
            """The media root is on the volume and writable (`volguard.django.health`).

            Args:
                storage: a ``STORAGES`` alias whose directory to check; ``None``: MEDIA_ROOT.
                min_free: free fraction under which space is logged as low (never fails).
            """

            storage: str | None = None
            min_free: float = dataclasses.field(default=MIN_FREE, repr=False)

            def run(self) -> None:
                errors = failures(self.storage, self.min_free)
                if errors:
                    raise ServiceUnavailable("; ".join(errors))

        return _named(MediaVolumeHealthCheck)

    try:  # 3.24, the bridge to 4.x
        from health_check.backends import HealthCheck as Base

        old = False
    except ImportError:  # 3.x before it
        from health_check.backends import BaseHealthCheckBackend as Base

        old = True

    class MediaVolumeHealthCheckBackend(Base):
        """The media root is on the volume and writable (`volguard.django.health`)."""

        critical_service = True
        storage: str | None = None
        min_free: float = MIN_FREE

        def check_status(self, *args: Any, **kwargs: Any) -> None:
            for error in failures(self.storage, self.min_free):
                self.add_error(ServiceUnavailable(error))

        def __repr__(self) -> str:
            return "MediaVolume" + (f"[{self.storage}]" if self.storage else "")

    if old:  # their views name a backend by identifier(); 3.24 warns when it exists
        MediaVolumeHealthCheckBackend.identifier = MediaVolumeHealthCheckBackend.__repr__

    return _named(MediaVolumeHealthCheckBackend)


def _named(cls: type) -> type:
    """Name a class built in a function as if it were defined at module level (reprs)."""
    cls.__name__ = cls.__qualname__ = "MediaVolumeHealthCheck"
    return cls


_lazy: dict[str, type] = {}


def __getattr__(name: str) -> Any:
    if name == "MediaVolumeHealthCheck":
        if name not in _lazy:
            _lazy[name] = _health_check_class()
        return _lazy[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class HealthCheckConfig(AppConfig):
    """django-health-check 3.x: ``INSTALLED_APPS += ["volguard.django.health.HealthCheckConfig"]``.

    Registers `MediaVolumeHealthCheck` with ``health_check.plugins.plugin_dir``. Harmless
    with 4.x, which has no registry (list the check in ``HealthCheckView`` instead).
    """

    name = "volguard.django.health"
    label = "volguard_health"
    verbose_name = "volguard media health check"

    def ready(self) -> None:
        try:
            from health_check.plugins import plugin_dir
        except ImportError:
            return
        plugin_dir.register(__getattr__("MediaVolumeHealthCheck"))


# -- messages ---------------------------------------------------------------------------


def _os_error(e: OSError) -> str:
    text = f"[Errno {e.errno}] {e.strerror}" if e.errno is not None else str(e)
    return _one_line(text or type(e).__name__)


def _describe(e: BaseException) -> str:
    """An exception for the response: OSError in full, anything else by class only."""
    if isinstance(e, OSError):
        return _os_error(e)
    return f"{type(e).__name__} (details in the server log)"


def _show(path: str) -> str:
    return _one_line(os.fspath(path))


def _one_line(text: str) -> str:
    line = " ".join(str(text).split())
    return line if len(line) <= MAX_MESSAGE else line[: MAX_MESSAGE - 1] + "…"
