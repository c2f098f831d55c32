"""Storage-safe helpers for an app's own code: check files exist, work on copies, say so.

The incident's worker failed with ``[Errno 2] No such file or directory`` because it read
``data_file.file.path`` (a local path that only exists on FileSystemStorage, and only on
the Machine that holds the volume) and found out a file was gone halfway through a batch.
These helpers make the safe way the easy way:

- `local_copy` gives code that needs a real path (a parser, a subprocess) a temporary
  copy read through the storage API, so it works on any storage and never leaks the copy;
- `require_files` is a preflight for batch jobs: it names every missing file before the
  job starts, instead of failing on the first one after doing half the work.

Django is imported inside the functions, so ``import volguard.django.helpers`` works
without Django (volguard's Django support is an optional extra).
"""

from __future__ import annotations

import errno
import os
import re
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

# Public API of this module (raised in the app's own code); defined in the one error tree.
from volguard.errors import MissingFilesError

if TYPE_CHECKING:
    from django.core.files.storage import Storage
    from django.db.models import QuerySet
    from django.db.models.fields.files import FieldFile

#: Read size when copying a file out of storage: large enough to be fast on S3, small
#: enough that a multi-gigabyte upload never sits in memory.
CHUNK_SIZE = 1024 * 1024

# A suffix we are willing to put in a temporary file name: tools that sniff the type by
# extension (pandas, libmagic-less parsers) need it; anything stranger is dropped.
_SAFE_SUFFIX = re.compile(r"\.[A-Za-z0-9_-]{1,16}")


@contextmanager
def local_copy(fieldfile: FieldFile, *, chunk_size: int = CHUNK_SIZE) -> Iterator[Path]:
    """Yield a temporary local path holding ``fieldfile``'s bytes, for any storage.

    Use it wherever code needs a path on disk. ``fieldfile.path`` only works on
    FileSystemStorage and only where that filesystem is mounted; this reads through
    ``fieldfile.open("rb")`` instead, so the same code runs on a volume, on S3, or in a
    test's in-memory storage. The copy is streamed in ``chunk_size`` pieces (bounded
    memory), keeps the original extension, and is removed when the block exits — also when
    it raises. The field file is closed before the block runs, so no storage handle (an
    S3 connection, say) stays open during long processing.

    Raises FileNotFoundError, naming the storage, when the file is not in storage or the
    field is empty: callers handle "the user must re-upload" apart from other failures.
    """
    name = fieldfile.name
    if not name:
        raise FileNotFoundError(
            errno.ENOENT,
            f"{_field_label(fieldfile)} has no file (empty file field) in storage "
            f"{describe_storage(fieldfile.storage)}",
        )
    try:
        fieldfile.open("rb")
    except FileNotFoundError as e:
        raise _missing_from_storage(fieldfile) from e

    path: Path | None = None
    try:
        try:
            # Errors creating or writing the copy (a full /tmp) propagate as they are:
            # only a read from storage may say "missing", or users get asked to re-upload
            # for a problem on our side.
            with tempfile.NamedTemporaryFile(
                prefix="volguard-", suffix=_temp_suffix(name), delete=False
            ) as tmp:
                path = Path(tmp.name)
                for chunk in _read_chunks(fieldfile, chunk_size):
                    tmp.write(chunk)
        finally:
            fieldfile.close()
        yield path
    finally:
        if path is not None:
            path.unlink(missing_ok=True)


def require_files(queryset: QuerySet, field: str = "file") -> int:
    """Check that every row of ``queryset`` has its ``field`` file in storage.

    Call it before a batch job starts: the job then either has all its inputs or fails at
    once with `MissingFilesError` naming every missing row (ids and names), instead of
    dying on the first missing file with half the batch done. A row whose field is empty
    counts as missing, and so does a name that is not valid in the storage (one that
    escapes the storage root is never followed).

    On FileSystemStorage each directory is listed once with ``os.scandir`` rather than
    one ``exists()`` per row (a user's files share a few dated directories); memory grows
    with the directories the rows touch. Other storages get one ``storage.exists()`` per
    row, which is right for the handful of files a job works on; auditing a whole table
    is ``manage.py check_missing_files``'s job.

    Returns the number of rows checked.
    """
    from django.core.files.storage import FileSystemStorage
    from django.db.models import FileField

    model_field = queryset.model._meta.get_field(field)
    if not isinstance(model_field, FileField):
        raise TypeError(
            f"{queryset.model._meta.label}.{field} is a {type(model_field).__name__}, "
            "not a FileField"
        )
    storage = model_field.storage
    exists = (
        _DirectoryListings(storage).exists
        if isinstance(storage, FileSystemStorage)
        else storage.exists
    )

    missing: list[tuple[Any, str | None]] = []
    checked = 0
    for pk, name in queryset.values_list("pk", field).iterator(chunk_size=2000):
        checked += 1
        if not name or not _exists_safely(exists, name):
            missing.append((pk, name))
    if missing:
        raise MissingFilesError(missing, describe_storage(storage))
    return checked


def describe_storage(storage: Storage) -> str:
    """The storage class and where it points (root directory or bucket), for messages.

    "missing from storage" alone does not help during an incident; the root it looked in
    tells at once whether MEDIA_ROOT or the bucket is the wrong one.
    """
    label = storage.__class__.__name__  # not type(): default_storage is a LazyObject
    bucket = getattr(storage, "bucket_name", None)
    location = getattr(storage, "location", None)
    where = "/".join(str(p) for p in (bucket, location) if p)
    return f"{label} ({where})" if where else label


# -- helpers ------------------------------------------------------------------------------


class _DirectoryListings:
    """``exists(name)`` for a FileSystemStorage, listing each directory once."""

    def __init__(self, storage: Any) -> None:
        self._storage = storage
        self._files: dict[str, frozenset[str]] = {}

    def exists(self, name: str) -> bool:
        # storage.path() is the storage's own safe join: SuspiciousFileOperation for a
        # name that escapes the root, so we never look outside it.
        directory, base = os.path.split(self._storage.path(name))
        files = self._files.get(directory)
        if files is None:
            files = self._files[directory] = self._list(directory)
        return base in files

    @staticmethod
    def _list(directory: str) -> frozenset[str]:
        try:
            with os.scandir(directory) as entries:
                return frozenset(e.name for e in entries if e.is_file())
        except (FileNotFoundError, NotADirectoryError):
            return frozenset()


def _exists_safely(exists: Any, name: str) -> bool:
    """``exists(name)``, with names the storage rejects (escaping the root, NUL) as absent."""
    from django.core.exceptions import SuspiciousOperation

    try:
        return bool(exists(name))
    except (SuspiciousOperation, ValueError):
        return False


def _read_chunks(fieldfile: FieldFile, chunk_size: int) -> Iterator[bytes]:
    """``fieldfile.chunks()``; a storage that notices a missing file only on the first read
    (S3) raises the same FileNotFoundError as one that notices on open."""
    chunks = fieldfile.chunks(chunk_size)
    while True:
        try:
            chunk = next(chunks)
        except StopIteration:
            return
        except FileNotFoundError as e:
            raise _missing_from_storage(fieldfile) from e
        yield chunk


def _missing_from_storage(fieldfile: FieldFile) -> FileNotFoundError:
    return FileNotFoundError(
        errno.ENOENT,
        f"{fieldfile.name!r} is missing from storage {describe_storage(fieldfile.storage)}",
        fieldfile.name,
    )


def _temp_suffix(name: str) -> str:
    suffix = os.path.splitext(name)[1]
    return suffix if _SAFE_SUFFIX.fullmatch(suffix) else ""


def _field_label(fieldfile: FieldFile) -> str:
    field = getattr(fieldfile, "field", None)
    instance = getattr(fieldfile, "instance", None)
    if field is None or getattr(field, "model", None) is None:
        return "the file field"
    pk = getattr(instance, "pk", None)
    return f"{field.model._meta.label}.{field.name} of row {pk}"
