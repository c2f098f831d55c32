"""Running the example Django app (example/) on a simulated Machine, as the app user.

A simulated Machine sees the host's filesystem (only its mounts are its own), so the app
user can run the repository's example app — if it can reach a Python with Django. The
repository's venv interpreter may live under ``/root`` (pyenv), which the app user cannot
read; then the system Python of the same version runs it, with the venv's site-packages
and the repository on ``PYTHONPATH``.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import sysconfig
from pathlib import Path

from volguard.sim.local_fleet import system_python

REPO = Path(__file__).resolve().parents[2]
MANAGE = REPO / "example" / "manage.py"


class ExampleAppError(RuntimeError):
    """The app user cannot run the example app here (says why)."""


def world_can(path: Path, *, execute: bool) -> bool:
    """Whether a user who is neither owner nor group (the app user) can read (and run)
    ``path``: every directory on the way, and the target, through its symlinks."""
    for target in (path, Path(os.path.realpath(path))):
        for parent in target.parents:
            if not os.stat(parent).st_mode & stat.S_IXOTH:
                return False
    mode = os.stat(path).st_mode
    need = stat.S_IROTH | (stat.S_IXOTH if execute else 0)
    return mode & need == need


def app_python() -> tuple[str, dict[str, str]]:
    """The python the app user runs Django with, and the environment it needs for it."""
    paths = sysconfig.get_paths()
    purelib, platlib = paths["purelib"], paths["platlib"]
    readable = all(world_can(Path(p), execute=True) for p in (REPO, MANAGE.parent, purelib))
    if readable and world_can(Path(sys.executable), execute=True):
        return sys.executable, {}
    system = system_python()
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    if readable and system and world_can(Path(system), execute=True):
        done = subprocess.run(
            [system, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
            capture_output=True,
            text=True,
            check=False,
        )
        if done.stdout.strip() == version:
            path = os.pathsep.join(dict.fromkeys([purelib, platlib, str(REPO)]))
            return system, {"PYTHONPATH": path}
    raise ExampleAppError(
        f"the app user can run neither {sys.executable} nor a python {version} with Django"
    )
