"""Which stored names exist: one enumeration of a storage instead of one request per row.

The ad-hoc scripts that look for missing files call ``storage.exists(name)`` once per row:
one ``stat`` per row on a volume, one HTTP ``HEAD`` per row on S3. On a table of millions of
rows that is the whole cost of an audit. An index answers the same question from listings:

- `DirectoryIndex` (FileSystemStorage, strategy ``listdir``): each directory a row points
  into is listed once with ``os.scandir``, on first use, into its file names. Only
  those directories, not a walk of the whole tree: the media root may also hold directories
  no audited row points into (other models, caches, a huge unrelated upload directory), and
  a walk would list them and hold their names for nothing. Restricted to what the rows
  touch, this costs at most what one walk of the tree costs, and no recursion is involved,
  so no depth limit applies. Memory: the names of the directories the rows touch, each
  directory's as a compact dict (name to None), which the garbage collector does not walk:
  about 120 bytes per file name.
- `S3PrefixIndex` (django-storages ``S3Storage``/``S3Boto3Storage``, strategy ``s3-list``):
  a paginated ``list_objects_v2`` of the rows' common key prefix (the storage's location
  plus the longest prefix the audited names share), 1,000 keys per request, through the
  storage's own boto3 client. Memory: the listed keys, capped by ``max_keys``.
- `PerRowIndex` (strategy ``exists``): one check per row: ``os.stat`` on a volume,
  ``storage.exists()`` (a ``HEAD`` on S3) elsewhere. Storages that cannot list use it always.

`build_index` chooses (``strategy="auto"``), from the number of rows to audit and a cheap
estimate of what a listing would cost, so that auditing one user's ten files never lists a
million objects:

- FileSystemStorage: per-row checks when the rows are at most ``per_row_max`` (default
  1,000: that many ``stat`` calls take milliseconds whatever the volume holds, whereas one
  flat directory the rows share may hold millions of entries); directory listings above.
- S3: list the rows' common prefix while the listing stays cheaper than per-row ``HEAD``
  requests: at most ``rows - 1`` list requests and ``max_keys`` keys. When that budget runs
  out before the listing ends, the listing is abandoned and each row gets a ``HEAD``; the
  requests spent are then at most about twice what the cheaper strategy would have cost. A
  single row is always one ``HEAD``.
- anything else: per-row ``storage.exists()``.

Every index counts the requests it makes (``requests``: directories listed, list pages, or
per-row checks), so an audit can report what it cost. Every strategy answers the same
question the same way: a name exists when it is a file (following symlinks) on a volume, or
a key on S3. Errors other than "not found" (a permission denied, an S3 403, a network
failure) raise `StorageIndexError`: an unreadable storage must never read as "every file is
missing".

What a valid stored name is lives here too (`invalid_name_reason`, VG402): no index ever
resolves an invalid name, so nothing outside the storage root is looked at. Names given to
``exists`` must be valid, except for an index that ``accepts_any_name`` (`DirectoryIndex`):
it validates each directory part once, before listing it, instead of each name once per
row, so the audit validates in full only the names that were not found.
"""

from __future__ import annotations

import os
import posixpath
import re
import stat
import sys
from collections.abc import Callable, Container
from typing import TYPE_CHECKING, Any, Literal

from volguard.django.helpers import describe_storage
from volguard.errors import StorageIndexError

if TYPE_CHECKING:
    from django.core.files.storage import Storage

#: Rows up to which a volume is checked with one ``stat`` per row rather than listings.
PER_ROW_MAX = 1000

#: Most keys an automatic S3 listing holds in memory (about 200 MB of key strings) before
#: it gives up and checks row by row.
S3_MAX_KEYS = 2_000_000

#: S3's key limit, and a sane one for any storage.
MAX_NAME_BYTES = 1024
#: NAME_MAX of Linux filesystems: a longer path component cannot exist on a volume.
MAX_COMPONENT_BYTES = 255

_SEPARATORS = re.compile(r"[/\\]")
_DRIVE = re.compile(r"[A-Za-z]:[/\\]")

Strategy = Literal["auto", "exists", "list"]
STRATEGIES: tuple[str, ...] = ("auto", "exists", "list")

StorageKind = Literal["filesystem", "s3", "other"]


class NameIndex:
    """Answers ``exists(name)`` for one storage, counting the requests it makes.

    ``exists`` expects a valid name (see `invalid_name_reason`), unless the index says
    ``accepts_any_name``: then it may be given any name, never looks outside the storage
    root for it, and answers False for a name that cannot be valid, so that a caller can
    validate only the names not found (the audit's fast path).
    """

    strategy = ""
    accepts_any_name = False

    def __init__(self, storage: Storage) -> None:
        self.storage = storage
        self.requests = 0
        #: One line for a report: what was listed, or why this strategy was chosen.
        self.detail = ""

    def exists(self, name: str) -> bool:
        raise NotImplementedError

    def is_empty(self, name: str) -> bool:
        """Whether ``name``, which `exists` found, holds 0 bytes (VG405).

        Known from what `exists` already read (a ``stat``, a listing's sizes); False when
        that read gave no size (``storage.exists()`` elsewhere than on a volume).
        """
        return False


class PerRowIndex(NameIndex):
    """One check per name: ``os.stat`` on a volume, ``storage.exists()`` elsewhere.

    ``gone_directories``: on a volume, a name that is not there costs one more ``stat``,
    of its directory, the first time; when the directory is gone too (an empty or
    unmounted volume), the other names in it are answered without a call. For one quick
    pass over many names (a directory created after it was seen gone is not seen).
    """

    strategy = "exists"

    def __init__(self, storage: Storage, *, gone_directories: bool = False) -> None:
        super().__init__(storage)
        self._filesystem = storage_kind(storage) == "filesystem"
        self._path = _path_of(storage) if self._filesystem else None
        self._directories = gone_directories
        self._gone: set[str] = set()  # directories found absent
        self._seen: set[str] = set()  # directories found present
        self._empty: set[str] = set()  # names found holding 0 bytes

    def exists(self, name: str) -> bool:
        if self._path is not None:
            directory = name.rpartition("/")[0]
            if directory in self._gone:
                return False
            self.requests += 1
            found = _stat(self._path(name))
            if found is not None and stat.S_ISREG(found.st_mode):
                if not found.st_size:
                    self._empty.add(name)
                return True
            if self._directories and directory and directory not in self._seen:
                self.requests += 1
                if _is_dir(self._path(directory)):
                    self._seen.add(directory)
                else:
                    self._gone.add(directory)
            return False
        self.requests += 1
        try:
            return bool(self.storage.exists(name))
        except Exception as e:  # botocore's ClientError, a network error, …
            raise StorageIndexError(
                f"cannot check {name!r} in {describe_storage(self.storage)}: {e}"
            ) from e

    def is_empty(self, name: str) -> bool:
        return name in self._empty


class DirectoryIndex(NameIndex):
    """FileSystemStorage: list each directory the names point into once, on first use.

    A directory part is validated once, before its first listing, rather than every name
    once per row: one that is absolute, contains ``..`` or NUL, or has an over-long
    component is never listed, and no name in it exists (``accepts_any_name``). A name
    found in a listing has a valid directory and a base name that a filesystem holds; only
    its length and backslashes are left for the caller to check.
    """

    strategy = "listdir"
    accepts_any_name = True

    def __init__(self, storage: Storage, *, sizes: bool = False) -> None:
        super().__init__(storage)
        #: Whether each listed file is also stat'ed for its size (VG405). A listing holds
        #: names only; a stat per file costs about seven times the listing itself, so it is
        #: asked for (``--sizes``), not a default.
        self.sizes = sizes
        self._root = os.fspath(storage.location)  # type: ignore[attr-defined]
        self._prefix = os.path.join(self._root, "")
        # Each listing is a dict of name to None rather than a frozenset: as fast to look
        # up, half the memory (a compact dict of strings), and not tracked by the garbage
        # collector, which then never walks the million names of a large audit.
        self._listings: dict[str, dict[str, None]] = {}
        #: The longest file name of each listing; _BACKSLASH when one holds a backslash.
        self._longest: dict[str, int] = {}
        #: The files of each listing that hold 0 bytes (only directories that have any).
        self._empty: dict[str, set[str]] = {}
        self.detail = "0 directories listed"

    def exists(self, name: str) -> bool:
        directory, sep, base = name.rpartition("/")
        files = self._listings.get(directory)
        if files is None:
            files = self._listings[directory] = self._list(directory)
        return base in files and (bool(directory) or not sep)  # "/x" is not in the root

    def is_empty(self, name: str) -> bool:
        directory, _, base = name.rpartition("/")
        empty = self._empty.get(directory)
        return empty is not None and base in empty

    def _files_in(self, directory: str) -> Container[str]:
        """The names of the files in ``directory`` (a name's part before its last ``/``),
        listed on first use; empty for an invalid directory, which is never listed.

        ``base in _files_in(directory)`` is ``exists(name)`` for a name ``directory/base``
        with a non-empty ``directory``.
        """
        files = self._listings.get(directory)
        if files is None:
            files = self._listings[directory] = self._list(directory)
        return files

    def _plain_files(self, directory: str, max_length: int) -> Container[str]:
        """The files of ``directory`` whose full name (``directory/name``) is at most
        ``max_length`` characters and holds no backslash, for the audit's fast path: a
        name found there exists and is valid (its directory was validated before listing).

        None in the storage root (``""``: ``/x`` splits there too) or in a directory that
        holds a backslash; the listing itself (no copy) when every file qualifies. A file of
        0 bytes never qualifies: the caller reports it (`is_empty`).
        """
        if not directory or "\\" in directory:
            return _NO_NAMES
        files = self._files_in(directory)
        room = max_length - len(directory) - 1
        empty = self._empty.get(directory, _NO_NAMES)
        if self._longest.get(directory, 0) > room or empty:
            return dict.fromkeys(
                f for f in files if len(f) <= room and "\\" not in f and f not in empty
            )
        return files

    def _list(self, directory: str) -> dict[str, None]:
        if directory and invalid_name_reason(
            f"{directory}/x", max_component_bytes=MAX_COMPONENT_BYTES
        ):
            return {}  # never resolved: it could point outside the root
        # os.path.join(root, directory), for a directory that is valid, so not absolute.
        path = self._prefix + directory if directory else self._root
        self.requests += 1
        self.detail = f"{self.requests} directories listed" + (" with sizes" if self.sizes else "")
        try:
            with os.scandir(path) as entries:
                names = [e.name for e in entries if e.is_file()]
            # The sizes, for VG405: one stat per listed file (the listing itself has none).
            empty = {n for n in names if not _size(path, n)} if self.sizes else None
        except (FileNotFoundError, NotADirectoryError):
            return {}
        except OSError as e:
            raise StorageIndexError(f"cannot list directory {path}: {e.strerror or e}") from e
        if empty:
            self._empty[directory] = empty
        if names:
            longest = max(map(len, names))
            self._longest[directory] = _BACKSLASH if "\\" in "".join(names) else longest
        return dict.fromkeys(names)


_NO_NAMES: frozenset[str] = frozenset()
#: Longer than any name: marks a listing holding a backslash (see `_plain_files`).
_BACKSLASH = sys.maxsize


class S3PrefixIndex(NameIndex):
    """django-storages S3: the keys under one prefix, from a paginated ``list_objects_v2``.

    A name whose key does not start with the listed prefix (the prefix is a hint computed
    from the database, see `volguard.django.missing_files`) is checked with a ``HEAD`` instead, so
    an inexact hint costs requests, never correctness.
    """

    strategy = "s3-list"

    def __init__(self, storage: Storage, prefix: str = "") -> None:
        super().__init__(storage)
        self.key_prefix = s3_key_prefix(storage, prefix)
        self.pages = 0
        self._keys: set[str] = set()
        self._empty_keys: set[str] = set()  # listed with Size 0
        self._fallback = PerRowIndex(storage)

    def load(self, *, max_pages: int | None = None, max_keys: int | None = None) -> bool:
        """List the prefix; False (and nothing kept) when a budget ran out before its end."""
        storage: Any = self.storage
        client = storage.connection.meta.client
        paginator = client.get_paginator("list_objects_v2")
        try:
            for page in paginator.paginate(Bucket=storage.bucket_name, Prefix=self.key_prefix):
                self.pages += 1
                self.requests += 1
                contents = page.get("Contents", ())
                self._keys.update(item["Key"] for item in contents)
                self._empty_keys.update(i["Key"] for i in contents if not i.get("Size", 1))
                if not page.get("IsTruncated"):
                    break
                if (max_pages is not None and self.pages >= max_pages) or (
                    max_keys is not None and len(self._keys) >= max_keys
                ):
                    self._keys, self._empty_keys = set(), set()
                    return False
        except Exception as e:  # botocore's ClientError, a network error, …
            raise StorageIndexError(
                f"cannot list {self.key_prefix!r} in {describe_storage(storage)}: {e}"
            ) from e
        self.detail = (
            f"prefix {self.key_prefix!r}: {len(self._keys)} keys in {self.pages} list requests"
        )
        return True

    def exists(self, name: str) -> bool:
        key = s3_key(self.storage, name)
        if key.startswith(self.key_prefix):
            return key in self._keys
        found = self._fallback.exists(name)
        self.requests += 1
        return found

    def is_empty(self, name: str) -> bool:
        return bool(self._empty_keys) and s3_key(self.storage, name) in self._empty_keys


def build_index(
    storage: Storage,
    *,
    rows: int,
    strategy: Strategy = "auto",
    common_prefix: Callable[[], str] = lambda: "",
    per_row_max: int = PER_ROW_MAX,
    max_keys: int = S3_MAX_KEYS,
    sizes: bool = False,
) -> NameIndex:
    """The index for auditing ``rows`` names in ``storage`` (see the module docstring).

    ``sizes``: a volume's listings stat each file for its size too (`DirectoryIndex`);
    per-row checks and S3 listings always know the sizes of what they find.

    ``common_prefix`` returns a prefix that the audited names share (or ``""``); it is
    only called when an S3 listing is considered, since computing it costs a query.
    ``strategy`` ``"exists"`` or ``"list"`` overrides the automatic choice; ``"list"`` on a
    storage that cannot list raises `StorageIndexError`.
    """
    storage = unwrap(storage)
    kind = storage_kind(storage)
    if strategy == "exists":
        return _chosen(PerRowIndex(storage), "asked for")
    if kind == "filesystem":
        if strategy == "auto" and rows <= per_row_max:
            return _chosen(PerRowIndex(storage), f"{rows} rows <= {per_row_max}")
        return DirectoryIndex(storage, sizes=sizes)
    if kind == "s3":
        if strategy == "auto" and rows <= 1:
            return _chosen(PerRowIndex(storage), f"{rows} row")
        index = S3PrefixIndex(storage, common_prefix())
        if strategy == "list":
            index.load()
            return index
        if index.load(max_pages=rows - 1, max_keys=max_keys):
            return index
        fallback = PerRowIndex(storage)
        fallback.requests = index.requests
        fallback.detail = (
            f"listing of prefix {index.key_prefix!r} abandoned after {index.pages} requests "
            f"(more than per-row checks of {rows} rows would cost)"
        )
        return fallback
    if strategy == "list":
        raise StorageIndexError(
            f"{describe_storage(storage)} cannot be listed: use the auto or exists strategy"
        )
    return _chosen(PerRowIndex(storage), "this storage cannot be listed")


# -- names and facts about a storage ------------------------------------------------------


def invalid_name_reason(
    name: str, *, max_length: int | None = None, max_component_bytes: int | None = None
) -> str | None:
    """Why ``name`` is not a valid stored name (VG402), or None when it is.

    The rules are Django's own (``validate_file_name``: no absolute path, no ``..``
    component) plus what a storage cannot hold: a NUL byte, more characters than the
    field's ``max_length``, more than 1,024 bytes, a component longer than
    ``max_component_bytes`` (255 on a volume), or a name ending in a separator, which names
    a directory. Backslashes count as separators: django-storages turns them into ``/``.
    """
    # Ordered so that a typical name costs a few substring tests and no split.
    if "\x00" in name:
        return "contains a NUL byte"
    if name[:1] in ("/", "\\") or (name[1:2] == ":" and _DRIVE.match(name)):
        return "is an absolute path"
    if ".." in name and ".." in _SEPARATORS.split(name):
        escapes = os.path.normpath(name.replace("\\", "/")).startswith("..")
        return "escapes the storage root ('..')" if escapes else "contains a '..' component"
    length = len(name)
    if max_length is not None and length > max_length:
        return f"is longer than the field's max_length ({length} > {max_length} characters)"
    if length > MAX_NAME_BYTES // 4 and len(name.encode("utf-8", "replace")) > MAX_NAME_BYTES:
        return f"is longer than {MAX_NAME_BYTES} bytes"
    if not name or name == "." or name.endswith(("/", "\\", "/.", "\\.")):
        return "names a directory, not a file"
    if (
        max_component_bytes is not None
        and length > max_component_bytes // 4
        and len(name.encode("utf-8", "replace")) > max_component_bytes
    ):
        for part in _SEPARATORS.split(name):
            if len(part.encode("utf-8", "replace")) > max_component_bytes:
                return f"has a path component longer than {max_component_bytes} bytes"
    return None


def unwrap(storage: Storage) -> Storage:
    """The storage behind a lazy ``default_storage`` (type checks and attributes go direct)."""
    from django.utils.functional import LazyObject, empty

    if isinstance(storage, LazyObject):
        if storage._wrapped is empty:  # type: ignore[attr-defined]
            storage._setup()  # type: ignore[attr-defined]
        return storage._wrapped  # type: ignore[attr-defined]
    return storage


def storage_kind(storage: Storage) -> StorageKind:
    """``filesystem``, ``s3`` (django-storages, when installed) or ``other``."""
    from django.core.files.storage import FileSystemStorage

    storage = unwrap(storage)
    if isinstance(storage, FileSystemStorage):
        return "filesystem"
    try:
        from storages.backends.s3 import S3Storage
    except ImportError:  # django-storages is an optional extra: volguard[s3]
        return "other"
    return "s3" if isinstance(storage, S3Storage) else "other"


def location_of(storage: Storage, name: str) -> str:
    """Where ``name`` lives, for people: a path on a volume, ``s3://bucket/key``, or a URL.

    Only for valid names (an invalid one is never resolved).
    """
    return _locator(storage)(name)


def _locator(storage: Storage) -> Callable[[str], str]:
    """`location_of` for one storage, its kind found once rather than once per name."""
    storage = unwrap(storage)
    kind = storage_kind(storage)
    if kind == "filesystem":
        where = _path_of(storage)
    elif kind == "s3":

        def where(name: str) -> str:
            return f"s3://{storage.bucket_name}/{s3_key(storage, name)}"  # type: ignore[attr-defined]
    else:
        where = storage.url

    def locate(name: str) -> str:
        try:
            return where(name)
        except Exception:  # a storage without paths or URLs: the name is all there is
            return name

    return locate


def _path_of(storage: Storage) -> Callable[[str], str]:
    """``storage.path`` of a FileSystemStorage, for many names.

    Django's ``path`` normalizes each name and checks it stays under the root
    (``safe_join``): a few microseconds. For a name that is already normal (relative, no
    empty, ``.`` or ``..`` component, no trailing ``/``) that is the root joined with the
    name, which this returns directly; any other name, and any storage that overrides
    ``path``, goes through ``storage.path``.
    """
    from django.core.files.storage import FileSystemStorage

    storage = unwrap(storage)
    path: Callable[[str], str] = storage.path
    if os.sep != "/" or type(storage).path is not FileSystemStorage.path:
        return path
    prefix = os.path.join(storage.location, "")  # type: ignore[attr-defined]

    def fast(name: str) -> str:
        if name[:1] in ("", "/", ".") or name[-1:] == "/" or "//" in name or "/." in name:
            return path(name)
        return prefix + name

    return fast


def s3_key(storage: Storage, name: str) -> str:
    """The object key django-storages uses for ``name`` (the same as its ``exists()``)."""
    from storages.utils import clean_name

    return storage._normalize_name(clean_name(name))  # type: ignore[attr-defined]


def s3_key_prefix(storage: Storage, prefix: str) -> str:
    """The key prefix for names starting with ``prefix``, under the storage's location."""
    location = str(getattr(storage, "location", "") or "").strip("/")
    return posixpath.join(location, prefix) if location else prefix


def _chosen(index: NameIndex, why: str) -> NameIndex:
    index.detail = f"per-row checks: {why}"
    return index


def _is_dir(path: str) -> bool:
    """``os.path.isdir``, except that only "not there" is False: other errors raise."""
    mode = _mode(path)
    return mode is not None and stat.S_ISDIR(mode)


def _mode(path: str) -> int | None:
    """``os.stat(path).st_mode``; None when nothing is there (or a file is where a
    directory should be); any other error (EACCES, EIO, …) is a `StorageIndexError`."""
    found = _stat(path)
    return None if found is None else found.st_mode


def _stat(path: str) -> os.stat_result | None:
    """``os.stat(path)``; None when nothing is there (or a file is where a directory should
    be); any other error (EACCES, EIO, …) is a `StorageIndexError`."""
    try:
        return os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as e:
        raise StorageIndexError(f"cannot check {path}: {e.strerror or e}") from e


def _size(directory: str, name: str) -> int:
    """The size of a file just listed in ``directory``; 1 when it went away meanwhile (it
    is then simply not there at the row's check, never reported empty)."""
    try:
        return os.stat(os.path.join(directory, name)).st_size
    except (FileNotFoundError, NotADirectoryError):
        return 1
