"""Files written so that a reader never sees half of one."""

from __future__ import annotations

import os
import tempfile

from volguard.errors import VolguardError


def write_atomic(path: str, text: str) -> None:
    """Write ``text`` to ``path`` via a temporary file in the same directory and a rename."""
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
        os.replace(tmp, path)
    except OSError as e:
        os.unlink(tmp)
        raise VolguardError(f"cannot write {path}: {e.strerror or e}") from None
