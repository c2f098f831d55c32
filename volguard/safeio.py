"""Files written so that a reader never sees half of one, a set of files all or none, and
files that must never replace anything (exports of user data: new, owner-only); and
volguard's own files read back without ever waiting on what sits in their place."""

from __future__ import annotations

import contextlib
import errno
import os
import stat
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


def write_new(path: str, text: str, *, mode: int = 0o600) -> None:
    """Write ``text`` as a new file at ``path``, readable by its owner only (``mode``).

    Never replaces anything: the text is staged in a temporary file beside ``path`` (created
    ``0600`` by `tempfile.mkstemp`, fsync'd), then hard-linked into place, which fails when
    anything (a file, a link, a FIFO, a directory) already is at ``path``: that is a
    `FileExistsError`. A reader never sees half of the file. Missing directories are made
    owner-only (``0700``). Where a filesystem has no hard links, the file is created with
    ``O_EXCL`` and written in place.
    """
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, mode=0o700, exist_ok=True)
    if os.path.lexists(path):
        raise _exists(path)
    fd, tmp = tempfile.mkstemp(prefix=".volguard-", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fchmod(fh.fileno(), mode)
            os.fsync(fh.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:
            raise _exists(path) from None
        except OSError as e:
            if e.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK):
                raise
            _write_exclusive(path, text, mode)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    _fsync_directory(directory)


def _write_exclusive(path: str, text: str, mode: int) -> None:
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(path, flags, mode)
    except FileExistsError:
        raise _exists(path) from None
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())


def _fsync_directory(directory: str) -> None:
    """Make the new name durable too (a crash after the write keeps the file)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _exists(path: str) -> FileExistsError:
    return FileExistsError(errno.EEXIST, "already exists (never overwritten)", path)


def read_regular(path: str, *, limit: int = 16 * 2**20) -> bytes:
    """The bytes of ``path``, a regular file of at most ``limit`` bytes.

    A FIFO, directory or device in its place is refused at once (ValueError), never waited
    on: the open does not block (O_NONBLOCK) and the type is checked on the open descriptor,
    so nothing can be swapped in between. A symbolic link is not followed.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ValueError("not a regular file (a FIFO, directory or device)")
        with os.fdopen(os.dup(fd), "rb") as fh:
            data = fh.read(limit + 1)
    finally:
        os.close(fd)
    if len(data) > limit:
        raise ValueError(f"larger than {limit // 2**20} MiB")
    return data
