"""Is MEDIA_ROOT on the volume? The one question the interlock and the health check share.

On Fly a volume is its own filesystem mounted at the ``[mounts] destination`` (``/data``);
when it is not mounted, ``/data/media`` is a plain directory on the Machine's root
filesystem, which is wiped at every deploy. So "the storage root is on a different device
than ``/``" is what "the volume is mounted" looks like from inside the app.

Whether a separate filesystem is *expected* is a setting, because on a laptop MEDIA_ROOT
is just a directory:

``VOLGUARD_EXPECT_MOUNT``
    ``True``: MEDIA_ROOT must be on another filesystem than ``/``; a path (``"/data"``):
    it must lie under that mount point and that path must be a mount point; ``False``:
    no expectation. Default: ``True`` when ``FLY_MACHINE_ID`` is in the environment (Fly
    sets it on every Machine), else ``False``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

SETTING = "VOLGUARD_EXPECT_MOUNT"
#: Set by Fly on every Machine; its presence means "running on Fly".
FLY_MACHINE_ENV = "FLY_MACHINE_ID"


@dataclass(frozen=True)
class Placement:
    """Where a directory lives: its nearest existing ancestor's device and mount point."""

    path: str
    exists: bool
    mount_point: str
    separate: bool  # on another device than "/"


def placement(path: str) -> Placement:
    """The `Placement` of ``path`` (resolved; a missing path is judged by its parent)."""
    real = os.path.realpath(path)
    probe = real
    while not os.path.exists(probe):
        parent = os.path.dirname(probe)
        if parent == probe:
            break
        probe = parent
    mount = probe
    while not os.path.ismount(mount):
        mount = os.path.dirname(mount)
    separate = os.stat(probe).st_dev != os.stat("/").st_dev
    return Placement(real, os.path.isdir(real), mount, separate)


def expected_mount(setting: object = None, environ: dict[str, str] | None = None) -> str | bool:
    """The expectation from ``VOLGUARD_EXPECT_MOUNT`` (``setting``) or, unset, the environment.

    Returns a mount point path, ``True`` (any separate filesystem) or ``False``.
    """
    if setting is None:
        env = os.environ if environ is None else environ
        return bool(env.get(FLY_MACHINE_ENV))
    if isinstance(setting, bool):
        return setting
    if isinstance(setting, str | os.PathLike) and os.fspath(setting):
        return os.fspath(setting)
    raise ValueError(f"{SETTING} must be True, False or a mount point path, not {setting!r}")


def configured_expectation() -> str | bool:
    """`expected_mount` for the running Django project's settings."""
    from django.conf import settings

    return expected_mount(getattr(settings, SETTING, None))


def mount_problem(path: str, expected: str | bool) -> str | None:
    """Why ``path`` is not where ``expected`` says it should be; None when it is (or no rule)."""
    if expected is False:
        return None
    where = placement(path)
    if isinstance(expected, str):
        mount = os.path.realpath(expected)
        inside = where.path == mount or where.path.startswith(mount.rstrip("/") + "/")
        if not inside:
            return f"{path} is not under the volume's mount point {expected}"
        if not os.path.ismount(mount):
            return f"{expected} is not a mount point (volume not mounted?)"
        return None
    if not where.separate:
        return f"{path} is on the root filesystem, not on a volume (volume not mounted?)"
    return None
