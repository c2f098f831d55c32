"""Files written so that a reader never sees half of one, and a set of files all or none."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable

from volguard.errors import VolguardError


def write_files(files: Iterable[tuple[str, str]]) -> None:
    """Write each (path, text): all are staged as temporary files first, then renamed in place.

    If any cannot be staged, none is written and the error names the path.
    """
    staged: list[tuple[str, str]] = []
    try:
        for path, text in files:
            if os.path.isdir(path):
                raise VolguardError(f"cannot write {path}: it is a directory")
            staged.append((_stage(path, text), path))
        for i, (tmp, path) in enumerate(staged):
            try:
                os.replace(tmp, path)
            except OSError as e:
                staged = staged[i:]
                raise VolguardError(f"cannot write {path}: {e.strerror or e}") from None
        staged = []
    finally:
        for tmp, _ in staged:
            if os.path.exists(tmp):
                os.unlink(tmp)


def _stage(path: str, text: str) -> str:
    directory = os.path.dirname(os.path.abspath(path))
    try:
        fd, tmp = tempfile.mkstemp(prefix=".volguard-", dir=directory)
    except OSError as e:
        raise VolguardError(f"cannot write {path}: {e.strerror or e}") from None
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)
    except OSError as e:
        os.unlink(tmp)
        raise VolguardError(f"cannot write {path}: {e.strerror or e}") from None
    return tmp
