"""volguard's settings-level rules as Django system checks.

`manage.py check --deploy` lints the project's fly.toml against Django's own
``MEDIA_ROOT`` and reports each unwaived finding as a `CheckMessage`: VG103
(an error) becomes ``volguard.E103``, VG110 (a warning) ``volguard.W110``,
VG113 (info: MEDIA_ROOT unknown) ``volguard.I113`` (the letter is the level of
the id in the catalogue, the digits the VG id's). Every VG id has one catalogued
severity, so each Django id means one condition at one level. A problem of
volguard's own (an unknown media group, a malformed waiver comment, a setting of
the wrong type) becomes one ``volguard.E001`` error instead of an exception, so
``check`` still reports everything else.

Settings read:

- ``VOLGUARD_FLY_TOML``: the fly.toml to lint. Default ``fly.toml``; a relative
  path is taken relative to ``BASE_DIR`` when the settings define it, else to the
  current directory. When it is not set and the default fly.toml does not exist, the
  check reports nothing: a project may install ``volguard.django`` only for the
  missing-file audit (``check_missing_files``), with no fly.toml beside it. A
  ``VOLGUARD_FLY_TOML`` that names a missing file is still ``volguard.E100``.
- ``MEDIA_ROOT``: the media root to check. When empty, fly.toml's ``[env]
  MEDIA_ROOT`` is used, as by ``volguard lint``.
- ``VOLGUARD_MEDIA_GROUPS``: the process groups that handle media (default: all).
- ``VOLGUARD_MEDIA_STORAGE``: ``"volume"``, ``"object"`` or ``"auto"`` (the default), as
  volguard's ``media_storage``. With ``"auto"`` the check asks this Django where its default
  storage writes (for volguard's FallbackStorage: its primary): a ``FileSystemStorage`` is
  the volume, anything else object storage, and then the volume checks for media are
  skipped and ``volguard.I115`` says so. This process's own storage is the truth the check
  can see; the Machines' may differ mid-cutover (``volguard verify-volume``: VG313).

Silence an id the Django way: ``SILENCED_SYSTEM_CHECKS = ["volguard.W110"]``.
"""

from __future__ import annotations

import os
from typing import Any

from django.conf import settings
from django.core.checks import CheckMessage, Error, Info, Tags, Warning, register

from volguard.catalogue import CHECKS
from volguard.config import MEDIA_STORAGES, Settings
from volguard.errors import ConfigError, VolguardError
from volguard.findings import Finding, Severity
from volguard.lint import lint

#: Django id of a problem of volguard's own (it could not run), not a finding.
TOOL_ERROR_ID = "volguard.E001"

_LEVELS: dict[Severity, tuple[type[CheckMessage], str]] = {
    Severity.ERROR: (Error, "E"),
    Severity.WARNING: (Warning, "W"),
    Severity.INFO: (Info, "I"),
}


@register(Tags.files, "volguard", deploy=True)
def check_fly_toml(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """Lint the project's fly.toml and MEDIA_ROOT with volguard's static rules.

    Like Django's security checks, this is about the project, not one app, so
    ``app_configs`` does not narrow it.
    """
    fly_toml: str | None = None
    try:
        fly_toml = fly_toml_path()
        if not getattr(settings, "VOLGUARD_FLY_TOML", None) and not os.path.lexists(fly_toml):
            return []  # volguard.django installed for the audit only: nothing to lint
        return lint_messages(fly_toml, media_root(), media_groups(), media_storage())
    except VolguardError as e:
        return [
            Error(
                str(e),
                hint="volguard could not run its checks: fix VOLGUARD_FLY_TOML, "
                "VOLGUARD_MEDIA_GROUPS, MEDIA_ROOT or the volguard comment in fly.toml.",
                obj=fly_toml,
                id=TOOL_ERROR_ID,
            )
        ]


def lint_messages(
    fly_toml: str,
    media_root: str | None = None,
    media_groups: Any = None,
    media_storage: str | None = None,
) -> list[CheckMessage]:
    """Run `volguard.lint.lint` on ``fly_toml``; one CheckMessage per unwaived finding.

    Raises `VolguardError` when volguard itself cannot run (see `check_fly_toml`).
    """
    config = Settings.load(
        None,
        fly_toml=fly_toml,
        media_root=media_root,
        media_groups=media_groups,
        media_storage=media_storage,
    )
    report = lint(config)
    return [to_check_message(f, fly_toml) for f in report.sorted_findings() if not f.waived]


def to_check_message(finding: Finding, obj: Any) -> CheckMessage:
    """A volguard `Finding` as a Django `CheckMessage` (``VG103`` → ``volguard.E103``)."""
    cls, _ = _LEVELS[_level(finding.id, finding.severity)]
    return cls(
        _with_location(finding),
        hint=finding.hint or None,
        obj=obj,
        id=django_check_id(finding.id, finding.severity),
    )


def django_check_id(check_id: str, severity: Severity | None = None) -> str:
    """The Django id of a VG id: ``volguard.`` + its catalogued level's letter + its digits.

    The level comes from the catalogue, so one VG id always gives one Django id;
    ``severity`` only serves an id outside the catalogue.
    """
    _, letter = _LEVELS[_level(check_id, severity)]
    return f"volguard.{letter}{check_id.removeprefix('VG')}"


def _level(check_id: str, severity: Severity | None) -> Severity:
    check = CHECKS.get(check_id)
    if check is not None:
        return check.severity
    return severity or Severity.ERROR


# -- reading Django's settings ----------------------------------------------------------


def fly_toml_path() -> str:
    """``VOLGUARD_FLY_TOML`` (default ``fly.toml``), relative paths resolved against BASE_DIR."""
    value = getattr(settings, "VOLGUARD_FLY_TOML", None) or "fly.toml"
    path = _path_setting("VOLGUARD_FLY_TOML", value)
    base_dir = getattr(settings, "BASE_DIR", None)
    if base_dir and not os.path.isabs(path):
        path = os.path.join(_path_setting("BASE_DIR", base_dir), path)
    return path


def media_root() -> str | None:
    """Django's MEDIA_ROOT, or None when empty (volguard then reads fly.toml [env])."""
    value = getattr(settings, "MEDIA_ROOT", None)
    return _path_setting("MEDIA_ROOT", value) if value else None


def media_groups() -> list[str] | None:
    """``VOLGUARD_MEDIA_GROUPS``: a list of process group names, or None for every group."""
    value = getattr(settings, "VOLGUARD_MEDIA_GROUPS", None)
    if value is None:
        return None
    if isinstance(value, list | tuple) and all(isinstance(n, str) for n in value):
        return list(value)
    raise ConfigError(f"VOLGUARD_MEDIA_GROUPS must be a list of process group names, not {value!r}")


def media_storage() -> str:
    """``VOLGUARD_MEDIA_STORAGE``; for ``"auto"`` (the default), where this Django's default
    storage writes: ``"volume"`` (a FileSystemStorage) or ``"object"``."""
    value = getattr(settings, "VOLGUARD_MEDIA_STORAGE", None) or "auto"
    if value not in MEDIA_STORAGES:
        raise ConfigError(
            f"VOLGUARD_MEDIA_STORAGE must be one of {', '.join(MEDIA_STORAGES)}, not {value!r}"
        )
    if value != "auto":
        return value
    from django.core.files.storage import FileSystemStorage, default_storage

    try:
        # FallbackStorage reads the volume as a fallback, but writes to its primary
        writes_to = (
            default_storage.primary
            if hasattr(default_storage, "primary_alias")
            else default_storage
        )
        on_volume = isinstance(writes_to, FileSystemStorage)
    except Exception:  # a storage that cannot be built: Django says why elsewhere
        return "auto"  # unknown: the volume checks stay
    return "volume" if on_volume else "object"


def _path_setting(name: str, value: Any) -> str:
    if isinstance(value, str | os.PathLike):
        path = os.fspath(value)
        if isinstance(path, str):
            return path
    raise ConfigError(f"{name} must be a path (str or pathlib.Path), not {value!r}")


def _with_location(finding: Finding) -> str:
    """``fly.toml:31:3: message``, unless the message already starts with that place."""
    where = str(finding.location)
    if where == "-" or finding.message.startswith(f"{where} "):
        return finding.message
    return f"{where}: {finding.message}"
