"""Copying a Django app's stored files to another storage, verified and resumable: the engine
of ``manage.py migrate_media``.

What is copied: every file a row references, found the way the missing-file audit finds
them (`volguard.django.targets.discover`, rows streamed a fetched chunk at a time by
`volguard.django.queries.row_chunks`), and with ``all_files`` every file under the source
root as well. Each file is read once to take its sha256, then:

- the destination already holds an object of that name: the same bytes (its size, then a
  read-back hash) make it *identical*, recorded verified with no upload; different bytes
  make it a *conflict*, never overwritten — unless the manifest says this run or an earlier
  one wrote that object from an older version of the same source file (the file changed
  since: the object is volguard's own copy, brought up to date);
- otherwise it is uploaded (to S3 with its sha256 in the object's metadata, the content
  type django-storages would give it, and ``If-None-Match: *`` so that the store refuses to
  replace an object someone wrote since the check: a conflict too) and *verified*: read
  back and hashed (``verify="read"``, the default: the one check that trusts nothing), or,
  with ``verify="checksum"``, by the store itself checking each upload's ``Content-MD5``
  (S3 refuses a mismatch with BadDigest; moto's server accepts anything). Never the ETag,
  which is no digest for multipart uploads. On S3, absence is read from listings (the whole
  location's keys as hashes, or one "directory" at a time) rather than a ``HEAD`` per file.

Resumable: every verified object is appended to the manifest (`Manifest`: JSONL, owner-only,
fsync'd), and a re-run skips, with no request at all, each file whose manifest entry has the
file's current size and mtime. A final *delta pass* walks the rows (and files) again and copies
what changed or appeared during the copy; files that changed again during that pass are
reported as still changing.

Memory is bounded whatever the file count: rows and directory entries are streamed, at most
``workers * 4`` copies are in flight, and the only per-file state is the manifest's index (two
small integers per verified name: about 130 bytes each), a set of the names seen in this
pass (one integer each) and the destination's key hashes (at most `WHOLE_MAX_KEYS`).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import mimetypes
import os
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from volguard.django import queries, storage_index
from volguard.django.targets import Target, discover
from volguard.errors import MediaMigrationError, VolguardError

#: Manifest lines carry this version; lines of another version are ignored.
MANIFEST_VERSION = 1
#: The JSON report's version.
REPORT_VERSION = 1
DEFAULT_WORKERS = 8
#: Where volguard keeps its own files on the volume: never copied by ``all_files``.
STATE_DIRECTORY = ".volguard"
#: Bytes read at a time when hashing or reading back.
READ_CHUNK = 1 << 20
#: Files above this size go to S3 as a multipart upload (one PUT holds at most 5 GiB).
MULTIPART_THRESHOLD = 256 << 20
PART_SIZE = 64 << 20
#: Verified entries between two fsyncs of the manifest (and at most FSYNC_SECONDS apart).
#: Each line is written with one ``write`` to an ``O_APPEND`` descriptor as soon as its object
#: is verified, so a killed process loses nothing; the fsync bounds what a power cut loses.
#: Keys of one S3 "directory" held from a listing at most (about 100 bytes each); a larger
#: directory gets one ``HEAD`` per file instead. And how many directories' listings are kept.
LISTING_MAX_KEYS = 20_000
#: Keys of the whole location held as hashes (about 60 bytes each in a set: 60 MB at most).
WHOLE_MAX_KEYS = 1_000_000
LISTINGS_KEPT = 32
FSYNC_EVERY = 200
FSYNC_SECONDS = 1.0


# -- the manifest -----------------------------------------------------------------------------


def _name_key(name: str) -> int:
    return int.from_bytes(
        hashlib.blake2b(name.encode("utf-8", "surrogatepass"), digest_size=16).digest(), "big"
    )


_SHA_BITS = (1 << 64) - 1


def _state(size: int, mtime_ns: int, sha256: str) -> int:
    """One integer: a 64-bit fingerprint of (size, mtime) above the first 64 bits of sha256."""
    fingerprint = hashlib.blake2b(f"{size}:{mtime_ns}".encode(), digest_size=8).digest()
    return (int.from_bytes(fingerprint, "big") << 64) | int(sha256[:16], 16)


class Manifest:
    """The append-only record of verified objects, one JSON line each.

    A line: ``{"v": 1, "to": "<destination>", "name": …, "size": …, "mtime_ns": …,
    "sha256": …, "state": "verified", "at": "<UTC time>"}``; ``"state": "written"`` marks an
    object volguard uploaded while its source changed (not verified, but volguard's own, so
    the next pass may replace it). Lines for another destination, of another version,
    or torn (a kill mid-write) are ignored. The index keeps, per name, a 128-bit hash of the
    name mapped to one integer holding a fingerprint of the source's size and mtime and the
    first 64 bits of the object's sha256 (`_state`): enough to skip an unchanged file and to
    recognise volguard's own earlier copy, in about 130 bytes per name.
    """

    def __init__(self, path: Path, destination: str, *, write: bool) -> None:
        self.path = path
        self.destination = destination
        self._index: dict[int, int] = {}
        self._fd: int | None = None
        self._lock = threading.Lock()
        self._unsynced = 0
        self._synced_at = time.monotonic()
        if write:
            try:
                path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
                self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
                os.fchmod(self._fd, 0o600)  # an existing manifest too: it names every file
            except OSError as e:
                raise MediaMigrationError(
                    f"cannot write the manifest {path}: {e.strerror or e}"
                ) from e
        self._load()
        if self._fd is not None and path.stat().st_size:
            with open(path, "rb") as f:
                f.seek(-1, os.SEEK_END)
                if f.read(1) != b"\n":  # a torn last line must not swallow the next entry
                    os.write(self._fd, b"\n")

    def _load(self) -> None:
        try:
            f = open(self.path, "rb")  # noqa: SIM115 (closed below; the errors differ)
        except FileNotFoundError:
            return
        except OSError as e:
            raise MediaMigrationError(f"cannot read the manifest {self.path}: {e}") from e
        with f:
            for line in f:
                try:
                    entry = json.loads(line)
                    if entry.get("v") != MANIFEST_VERSION or entry.get("to") != self.destination:
                        continue
                    state = _state(int(entry["size"]), int(entry["mtime_ns"]), entry["sha256"])
                    if entry.get("state", "verified") != "verified":
                        state &= _SHA_BITS
                    self._index[_name_key(entry["name"])] = state
                except (ValueError, KeyError, TypeError, AttributeError):
                    continue  # a torn line, or not ours

    def __len__(self) -> int:
        return len(self._index)

    def verified(self, name: str, size: int, mtime_ns: int) -> bool:
        """Whether ``name`` was verified from a source file of this size and mtime."""
        state = self._index.get(_name_key(name))
        return state is not None and state >> 64 == _state(size, mtime_ns, "0" * 16) >> 64 != 0

    def knows(self, name: str) -> bool:
        return _name_key(name) in self._index

    def wrote(self, name: str, sha256: str) -> bool:
        """Whether volguard verified an object of these bytes under ``name`` (any version)."""
        state = self._index.get(_name_key(name))
        return state is not None and state & _SHA_BITS == int(sha256[:16], 16)

    def record(
        self, name: str, size: int, mtime_ns: int, sha256: str, *, verified: bool = True
    ) -> None:
        entry = {
            "v": MANIFEST_VERSION,
            "to": self.destination,
            "name": name,
            "size": size,
            "mtime_ns": mtime_ns,
            "sha256": sha256,
            "state": "verified" if verified else "written",
            "at": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        line = (json.dumps(entry, ensure_ascii=False) + "\n").encode("utf-8", "surrogatepass")
        with self._lock:
            state = _state(size, mtime_ns, sha256)
            self._index[_name_key(name)] = state if verified else state & _SHA_BITS
            if self._fd is None:
                return
            os.write(self._fd, line)
            self._unsynced += 1
            now = time.monotonic()
            if self._unsynced >= FSYNC_EVERY or now - self._synced_at >= FSYNC_SECONDS:
                os.fsync(self._fd)
                self._unsynced, self._synced_at = 0, now

    def close(self) -> None:
        with self._lock:
            if self._fd is not None:
                os.fsync(self._fd)
                os.close(self._fd)
                self._fd = None


def default_manifest_path(source_root: str | None, destination_alias: str) -> Path:
    """``<volume>/.volguard/migrate-media/<alias>.jsonl``: on the volume that holds the files.

    The volume is the mount point holding the source root (``/data`` for
    ``MEDIA_ROOT=/data/media``), so the manifest survives a redeploy with the files and never
    lands among the media; when the root is on the root filesystem (development, tests) it
    goes under the source root itself. A source that is no directory: the working directory.
    """
    base = Path(".")
    if source_root:
        root = Path(os.path.abspath(source_root))
        mount = root
        while not os.path.ismount(mount) and mount != mount.parent:
            mount = mount.parent
        base = root if mount == mount.parent else mount
    return base / STATE_DIRECTORY / "migrate-media" / f"{destination_alias}.jsonl"


# -- the source ---------------------------------------------------------------------------


class Source:
    """The storage files are read from: a directory (FileSystemStorage) or any storage."""

    def __init__(self, storage: Any) -> None:
        self.storage = storage_index.unwrap(storage)
        self.kind = storage_index.storage_kind(self.storage)
        self.root: str | None = (
            os.path.abspath(self.storage.location) if self.kind == "filesystem" else None
        )

    def describe(self) -> str:
        from volguard.django.helpers import describe_storage

        return describe_storage(self.storage)

    def stat(self, name: str) -> tuple[int, int] | None:
        """``(size, mtime_ns)`` of the file, or None when there is none."""
        if self.root is not None:
            try:
                found = os.stat(self.storage.path(name))
            except (FileNotFoundError, NotADirectoryError):
                return None
            except OSError as e:
                raise MediaMigrationError(f"cannot read {name!r}: {e.strerror or e}") from e
            import stat as stat_

            return (found.st_size, found.st_mtime_ns) if stat_.S_ISREG(found.st_mode) else None
        try:
            if not self.storage.exists(name):
                return None
            size = self.storage.size(name)
            try:
                modified = self.storage.get_modified_time(name)
                mtime_ns = int(modified.timestamp() * 1e9)
            except (NotImplementedError, AttributeError):
                mtime_ns = 0
            return size, mtime_ns
        except FileNotFoundError:
            return None
        except Exception as e:
            raise MediaMigrationError(f"cannot read {name!r} from the source: {e}") from e

    def open(self, name: str) -> IO[bytes]:
        if self.root is not None:
            return open(self.storage.path(name), "rb")
        return self.storage.open(name, "rb")

    def walk(self) -> Iterator[str]:
        """Every file under the root, as storage names, volguard's own directory left out."""
        if self.root is not None:
            for directory, dirs, files in os.walk(self.root):
                rel = os.path.relpath(directory, self.root)
                if rel == ".":
                    dirs[:] = [d for d in dirs if d != STATE_DIRECTORY]
                prefix = "" if rel == "." else rel.replace(os.sep, "/") + "/"
                dirs.sort()
                for name in sorted(files):
                    yield prefix + name
            return

        def listed(directory: str) -> Iterator[str]:
            dirs, files = self.storage.listdir(directory)
            prefix = f"{directory}/" if directory else ""
            for name in sorted(files):
                yield prefix + name
            for d in sorted(dirs):
                if not (directory == "" and d == STATE_DIRECTORY):
                    yield from listed(prefix + d)

        yield from listed("")


# -- destinations -------------------------------------------------------------------------


@dataclass(frozen=True)
class Existing:
    """An object already at the destination: its size, and its sha256 metadata if any."""

    size: int
    sha256: str | None


def hash_stream(f: IO[bytes]) -> tuple[str, int]:
    digest = hashlib.sha256()
    size = 0
    while chunk := f.read(READ_CHUNK):
        digest.update(chunk)
        size += len(chunk)
    return digest.hexdigest(), size


class StorageDestination:
    """Any Django storage (FileSystemStorage and others): saved through the storage's API,
    verified by reading the file back. No metadata: the sha256 lives in the manifest only."""

    checked_by_store = False

    def __init__(self, storage: Any) -> None:
        self.storage = storage_index.unwrap(storage)

    def describe(self) -> str:
        from volguard.django.helpers import describe_storage

        return describe_storage(self.storage)

    def preflight(self) -> None:
        pass

    def forget(self) -> None:
        pass

    def head(self, name: str, *, fresh: bool = False) -> Existing | None:
        try:
            if not self.storage.exists(name):
                return None
            return Existing(self.storage.size(name), None)
        except FileNotFoundError:
            return None

    def read_sha256(self, name: str) -> tuple[str, int]:
        with self.storage.open(name, "rb") as f:
            return hash_stream(f)

    def written_sha256(self, name: str, sent: str) -> str:
        """What a later check reads for an object just written: here, its bytes' hash."""
        return self.read_sha256(name)[0]

    def put(
        self,
        name: str,
        source: Callable[[], IO[bytes]],
        size: int,
        sha256: str,
        *,
        if_absent: bool = True,
    ) -> bool:
        """Write the file; False when the name was taken meanwhile. Saving never replaces
        a file here (the storage picks another name), so ``if_absent`` holds always."""
        from django.core.files import File

        with source() as f:
            saved = self.storage.save(name, File(f, name=name))
        if saved == name:
            return True
        # Another writer created the name since it was checked: the storage renamed this
        # copy. Not volguard's to decide which wins: take ours back, report a conflict.
        self.storage.delete(saved)
        return False


class S3Destination:
    """An S3 storage of django-storages, through a boto3 client of its own.

    The client takes the storage's session (its credentials), endpoint, region and
    ``client_config`` (``AWS_S3_CLIENT_CONFIG``), merged with checksums "when required":
    since botocore 1.36 (January 2025) every upload otherwise carries a CRC32 checksum, sent
    as a trailer of an ``aws-chunked`` body (``Content-Encoding: aws-chunked``,
    ``x-amz-content-sha256: STREAMING-UNSIGNED-PAYLOAD-TRAILER``), and every download's
    checksum is validated; S3-compatible stores (Tigris, R2, older MinIO and Ceph) reject such
    bodies or the headers, or return no checksum to validate. With "when_required", uploads
    are plain bodies with a ``Content-Length``, and integrity is this module's own: the
    sha256 in metadata, and the object read back and hashed.
    """

    def __init__(self, storage: Any, *, checked_by_store: bool = False) -> None:
        from botocore.config import Config

        #: ``--verify checksum``: each upload carries ``Content-MD5``, which the store
        #: computes over the bytes it received and refuses on a mismatch (400 BadDigest);
        #: no read-back. Only for stores that check it (AWS S3, MinIO, R2, Ceph do).
        self.checked_by_store = checked_by_store
        self.storage = storage_index.unwrap(storage)
        self.bucket = self.storage.bucket_name
        base = self.storage.client_config or Config()
        config = base.merge(
            Config(
                request_checksum_calculation="when_required",
                response_checksum_validation="when_required",
                max_pool_connections=64,
                retries={"max_attempts": 5, "mode": "standard"},
            )
        )
        try:
            self.client = self.storage._create_session().client(
                "s3",
                region_name=self.storage.region_name,
                use_ssl=self.storage.use_ssl,
                endpoint_url=self.storage.endpoint_url,
                config=config,
                verify=self.storage.verify,
            )
        except Exception as e:
            raise MediaMigrationError(f"cannot set up the S3 client: {_s3_reason(e)}") from e
        self.conditional = True
        self._listings: OrderedDict[str, Future] = OrderedDict()
        self._whole_listing: Future | None = None
        self._listing_lock = threading.Lock()

    def describe(self) -> str:
        return f"s3://{self.bucket}/{storage_index.s3_key_prefix(self.storage, '')}".rstrip("/")

    def key(self, name: str) -> str:
        return storage_index.s3_key(self.storage, name)

    def preflight(self) -> None:
        try:
            self.client.head_bucket(Bucket=self.bucket)
        except Exception as e:
            raise MediaMigrationError(
                f"cannot reach the bucket {self.bucket!r}: {_s3_reason(e)}"
            ) from e

    def forget(self) -> None:
        with self._listing_lock:
            self._listings.clear()
            self._whole_listing = None

    def _whole(self) -> set[int] | None:
        """Hashes of every key under the storage's location, or None when there are more
        than `WHOLE_MAX_KEYS` (then listings per directory are used)."""
        with self._listing_lock:
            entry = self._whole_listing
            owner = entry is None
            if owner:
                entry = self._whole_listing = Future()
        if owner:
            try:
                entry.set_result(self._list_whole())
            except BaseException as e:
                entry.set_exception(e)
                with self._listing_lock:
                    self._whole_listing = None
        return entry.result()

    def _list_whole(self) -> set[int] | None:
        location = storage_index.s3_key_prefix(self.storage, "").strip("/")
        prefix = f"{location}/" if location else ""
        hashes: set[int] = set()
        try:
            pages = self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=prefix
            )
            for page in pages:
                hashes.update(hash(o["Key"]) for o in page.get("Contents", ()))
                if len(hashes) > WHOLE_MAX_KEYS:
                    return None
        except Exception as e:
            raise MediaMigrationError(
                f"cannot list {prefix or 'the bucket'!r} in {self.bucket!r}: {_s3_reason(e)}"
            ) from e
        return hashes

    def head(self, name: str, *, fresh: bool = False) -> Existing | None:
        """The object under ``name``, or None.

        Absence is read from listings (one request per 1,000 keys) instead of one ``HEAD``
        per file: the whole prefix of the storage's location, listed once per pass into a
        set of key hashes (8 bytes of hash each; a collision only costs a ``HEAD``), or,
        when it holds more than `WHOLE_MAX_KEYS`, the object's "directory". A key that is
        listed, or in a directory too large to hold, gets a ``HEAD`` (its sha256 metadata
        is not in listings). ``fresh``: always a ``HEAD``.
        """
        from botocore.exceptions import ClientError

        key = self.key(name)
        if not fresh:
            whole = self._whole()
            if whole is not None:
                if hash(key) not in whole:
                    return None
            else:
                listing = self._listing(key.rpartition("/")[0])
                if listing is not None and key not in listing:
                    return None
        try:
            found = self.client.head_object(Bucket=self.bucket, Key=key)
        except ClientError as e:
            if e.response.get("ResponseMetadata", {}).get("HTTPStatusCode") == 404:
                return None
            raise MediaMigrationError(f"cannot check {name!r}: {_s3_reason(e)}") from e
        return Existing(found["ContentLength"], (found.get("Metadata") or {}).get("sha256"))

    def read_sha256(self, name: str) -> tuple[str, int]:
        try:
            body = self.client.get_object(Bucket=self.bucket, Key=self.key(name))["Body"]
        except Exception as e:
            raise MediaMigrationError(f"cannot read back {name!r}: {_s3_reason(e)}") from e
        with contextlib.closing(body):
            return hash_stream(body)

    def written_sha256(self, name: str, sent: str) -> str:
        """What a later check reads for an object just written: its sha256 metadata."""
        return sent

    def _listing(self, directory: str) -> set[str] | None:
        """The keys directly under ``directory``, listed once per pass (shared by the
        workers that need it: the first lists, the others wait); None when there are more
        than `LISTING_MAX_KEYS`. The last `LISTINGS_KEPT` directories are kept."""
        with self._listing_lock:
            entry = self._listings.get(directory)
            owner = entry is None
            if owner:
                entry = self._listings[directory] = Future()
                while len(self._listings) > LISTINGS_KEPT:
                    self._listings.popitem(last=False)
            else:
                self._listings.move_to_end(directory)
        if owner:
            try:
                entry.set_result(self._list(directory))
            except BaseException as e:
                entry.set_exception(e)
                with self._listing_lock:
                    self._listings.pop(directory, None)
        return entry.result()

    def _list(self, directory: str) -> set[str] | None:
        keys: set[str] = set()
        prefix = f"{directory}/" if directory else ""
        try:
            pages = self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=prefix, Delimiter="/"
            )
            for page in pages:
                keys.update(o["Key"] for o in page.get("Contents", ()))
                if len(keys) > LISTING_MAX_KEYS:
                    return None
        except Exception as e:
            raise MediaMigrationError(
                f"cannot list {prefix or 'the bucket'!r} in {self.bucket!r}: {_s3_reason(e)}"
            ) from e
        return keys

    def put(
        self,
        name: str,
        source: Callable[[], IO[bytes]],
        size: int,
        sha256: str,
        *,
        if_absent: bool = True,
    ) -> bool:
        """Upload; False when ``if_absent`` and the key exists by now.

        ``If-None-Match: *`` makes the store itself refuse to replace an object written
        since the check (S3, Tigris, R2, MinIO honour it); a store that answers that it
        does not implement it gets plain uploads for the rest of the run.
        """
        key = self.key(name)
        params = self._write_parameters(key)
        params["Metadata"] = {**params.get("Metadata", {}), "sha256": sha256}
        if if_absent and self.conditional:
            params["IfNoneMatch"] = "*"
        for attempt in range(2):
            try:
                with source() as f:
                    if size <= MULTIPART_THRESHOLD:
                        # Exactly the bytes hashed: a file growing meanwhile must not send
                        # more than its Content-Length (the stat after the upload catches
                        # the change).
                        body = _Slice(f, 0, size)
                        if self.checked_by_store:
                            params["ContentMD5"] = _content_md5(body)
                        self.client.put_object(
                            Bucket=self.bucket, Key=key, Body=body, ContentLength=size, **params
                        )
                    else:
                        self._multipart(key, f, size, params)
                return True
            except Exception as e:
                code = _error_code(e)
                if code in {"PreconditionFailed", "412", "ConditionalRequestConflict"}:
                    return False
                if "IfNoneMatch" in params and code in {"NotImplemented", "501"}:
                    self.conditional = False
                    del params["IfNoneMatch"]
                    continue
                if code == "BadDigest" and attempt == 0:
                    continue  # the bytes were damaged on the way: once more
                raise MediaMigrationError(f"cannot upload {name!r}: {_s3_reason(e)}") from e
        raise MediaMigrationError(f"cannot upload {name!r}: the store refused it twice")

    def _write_parameters(self, key: str) -> dict[str, Any]:
        """What django-storages' ``_save`` sends: the storage's object parameters (ACL,
        CacheControl, …) and the content type it guesses from the name."""
        getter = getattr(self.storage, "_get_write_parameters", None)
        if getter is not None:
            return dict(getter(key))
        content_type, encoding = mimetypes.guess_type(key)
        params = {"ContentType": content_type or "application/octet-stream"}
        if encoding:
            params["ContentEncoding"] = encoding
        return params

    def _multipart(self, key: str, f: IO[bytes], size: int, params: dict[str, Any]) -> None:
        params = dict(params)
        condition = {"IfNoneMatch": params.pop("IfNoneMatch")} if "IfNoneMatch" in params else {}
        upload = self.client.create_multipart_upload(Bucket=self.bucket, Key=key, **params)
        upload_id = upload["UploadId"]
        parts = []
        try:
            for number, offset in enumerate(range(0, size, PART_SIZE), start=1):
                length = min(PART_SIZE, size - offset)
                part = _Slice(f, offset, length)
                found = self.client.upload_part(
                    Bucket=self.bucket,
                    Key=key,
                    UploadId=upload_id,
                    PartNumber=number,
                    Body=part,
                    ContentLength=length,
                    **({"ContentMD5": _content_md5(part)} if self.checked_by_store else {}),
                )
                parts.append({"PartNumber": number, "ETag": found["ETag"]})
            self.client.complete_multipart_upload(
                Bucket=self.bucket,
                Key=key,
                UploadId=upload_id,
                MultipartUpload={"Parts": parts},
                **condition,
            )
        except BaseException:
            with contextlib.suppress(Exception):
                self.client.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id)
            raise


def _content_md5(body: _Slice) -> str:
    """The ``Content-MD5`` of ``body`` (base64), which the store checks on receipt."""
    digest = hashlib.md5(usedforsecurity=False)
    while chunk := body.read(READ_CHUNK):
        digest.update(chunk)
    body.seek(0)
    return base64.b64encode(digest.digest()).decode("ascii")


class _Slice:
    """``length`` bytes of ``f`` from ``offset``, as a seekable file (botocore rewinds a
    body to retry it) that never holds more than one read in memory."""

    def __init__(self, f: IO[bytes], offset: int, length: int) -> None:
        self._f, self._offset, self._length, self._pos = f, offset, length, 0

    def read(self, n: int = -1) -> bytes:
        left = self._length - self._pos
        n = left if n is None or n < 0 else min(n, left)
        self._f.seek(self._offset + self._pos)
        data = self._f.read(n)
        self._pos += len(data)
        return data

    def seek(self, pos: int, whence: int = 0) -> int:
        base = {0: 0, 1: self._pos, 2: self._length}[whence]
        self._pos = max(0, min(self._length, base + pos))
        return self._pos

    def tell(self) -> int:
        return self._pos

    def __len__(self) -> int:
        return self._length


def _error_code(e: BaseException) -> str:
    response = getattr(e, "response", None)
    if not isinstance(response, dict):
        return ""
    code = (response.get("Error") or {}).get("Code")
    return str(code or (response.get("ResponseMetadata") or {}).get("HTTPStatusCode") or "")


def _s3_reason(e: BaseException) -> str:
    """One line for people: the S3 error code and message, or the exception's class and
    message. botocore's messages name no secret (never the secret key; an access key id at
    most, which is not a credential on its own)."""
    from volguard.terminal import printable

    response = getattr(e, "response", None)
    if isinstance(response, dict):
        error = response.get("Error") or {}
        status = (response.get("ResponseMetadata") or {}).get("HTTPStatusCode")
        code = str(error.get("Code") or status or "error")
        message = str(error.get("Message") or "")
        if code in {"403", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch"}:
            message = (message + " " if message else "") + "(credentials refused or no access)"
        return printable(f"{code}: {message}" if message else code)
    name = type(e).__name__
    if name in {"NoCredentialsError", "PartialCredentialsError"}:
        return f"{name}: no credentials found (set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY)"
    return printable(f"{name}: {e}".splitlines()[0])


VERIFY_MODES = ("read", "checksum")


def destination_for(storage: Any, verify: str = "read") -> S3Destination | StorageDestination:
    if storage_index.storage_kind(storage) == "s3":
        return S3Destination(storage, checked_by_store=verify == "checksum")
    return StorageDestination(storage)


# -- the run ------------------------------------------------------------------------------


@dataclass
class Options:
    to_alias: str
    from_alias: str | None = None
    apply: bool = False
    manifest: Path | None = None
    workers: int = DEFAULT_WORKERS
    all_files: bool = False
    verify: str = "read"
    batch_size: int = 2000
    progress: Callable[[dict[str, int]], None] | None = None


@dataclass
class Tally:
    files: int = 0
    bytes: int = 0

    def add(self, size: int) -> None:
        self.files += 1
        self.bytes += size


@dataclass
class MigrationReport:
    """What a run did: the ``--json`` document (`as_dict`)."""

    source: str
    destination: str
    applied: bool
    manifest: str
    verify: str = "read-back"
    fields: list[dict[str, Any]] = field(default_factory=list)
    other_storage_fields: list[dict[str, str]] = field(default_factory=list)
    copied: Tally = field(default_factory=Tally)
    identical: Tally = field(default_factory=Tally)
    skipped: Tally = field(default_factory=Tally)
    to_copy: Tally = field(default_factory=Tally)
    delta: Tally = field(default_factory=Tally)
    conflicts: list[dict[str, Any]] = field(default_factory=list)
    missing_from_source: list[dict[str, Any]] = field(default_factory=list)
    changing: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def verified(self) -> Tally:
        return Tally(
            self.copied.files + self.identical.files + self.skipped.files,
            self.copied.bytes + self.identical.bytes + self.skipped.bytes,
        )

    @property
    def exit_code(self) -> int:
        return 2 if self.conflicts or self.missing_from_source or self.changing else 0

    def as_dict(self) -> dict[str, Any]:
        tallies = {
            "copied": self.copied,
            "identical": self.identical,
            "skipped": self.skipped,
            "verified": self.verified,
            "to_copy": self.to_copy,
            "delta": self.delta,
        }
        return {
            "version": REPORT_VERSION,
            "from": self.source,
            "to": self.destination,
            "applied": self.applied,
            "manifest": self.manifest,
            "verify": self.verify,
            "fields": self.fields,
            "other_storage_fields": self.other_storage_fields,
            "files": {k: t.files for k, t in tallies.items()}
            | {
                "conflicts": len(self.conflicts),
                "missing_from_source": len(self.missing_from_source),
                "changing": len(self.changing),
            },
            "bytes": {k: t.bytes for k, t in tallies.items()},
            "conflicts": self.conflicts,
            "missing_from_source": self.missing_from_source,
            "changing": self.changing,
            "seconds": round(self.seconds, 3),
            "exit_code": self.exit_code,
        }


def resolve_storage(alias: str) -> Any:
    """``STORAGES[alias]``, or a one-line error naming the aliases there are."""
    from django.conf import settings
    from django.core.files.storage import InvalidStorageError, storages

    try:
        return storages[alias]
    except InvalidStorageError:
        known = ", ".join(sorted(settings.STORAGES)) or "none"
        raise MediaMigrationError(
            f"no storage {alias!r} in settings.STORAGES (there are: {known})"
        ) from None
    except VolguardError:
        raise
    except Exception as e:
        raise MediaMigrationError(
            f"cannot set up the storage {alias!r}: {type(e).__name__}: {e}"
        ) from e


def migrate(options: Options) -> MigrationReport:
    """Plan (``apply=False``) or perform the copy; see the module docstring."""
    from django.core.files.storage import default_storage

    if options.workers < 1:
        raise MediaMigrationError("--workers must be at least 1")
    from_alias = options.from_alias or "default"
    if from_alias == options.to_alias:
        raise MediaMigrationError(f"--from and --to are the same storage {from_alias!r}")
    source_storage = storage_index.unwrap(resolve_storage(from_alias))
    destination_storage = storage_index.unwrap(resolve_storage(options.to_alias))
    if source_storage is destination_storage:
        raise MediaMigrationError(f"--from and --to are the same storage {from_alias!r}")
    source = Source(source_storage)
    if options.verify not in VERIFY_MODES:
        raise MediaMigrationError(f"--verify must be one of {', '.join(VERIFY_MODES)}")
    destination = destination_for(destination_storage, options.verify)
    destination.preflight()

    # The fields whose files are on the source: those on it, and those on the default
    # storage (with --from, the default may already be the new setting, e.g. a
    # FallbackStorage over the source and the destination).
    default = storage_index.unwrap(default_storage)
    targets: list[Target] = []
    report = MigrationReport(
        source=source.describe(),
        destination=destination.describe(),
        applied=options.apply,
        manifest="",
        verify="content-md5" if destination.checked_by_store else "read-back",
    )
    for target in discover():
        storage = target.storage
        if storage is source_storage or storage is default:
            targets.append(target)
        else:
            report.other_storage_fields.append(
                {"field": str(target), "storage": _describe(storage)}
            )

    path = options.manifest or default_manifest_path(source.root, options.to_alias)
    report.manifest = str(path)
    manifest = Manifest(path, destination.describe(), write=options.apply)
    run = _Run(options, source, destination, manifest, report, targets)
    started = time.monotonic()
    try:
        run.pass_over(first=True)
        if options.apply:
            run.pass_over(first=False)
    finally:
        manifest.close()
        report.seconds = time.monotonic() - started
    return report


def _describe(storage: Any) -> str:
    from volguard.django.helpers import describe_storage

    return describe_storage(storage)


class _Run:
    """One run's passes: rows (and files) streamed, copies in a bounded thread pool."""

    def __init__(
        self,
        options: Options,
        source: Source,
        destination: S3Destination | StorageDestination,
        manifest: Manifest,
        report: MigrationReport,
        targets: list[Target],
    ) -> None:
        self.options = options
        self.source = source
        self.destination = destination
        self.manifest = manifest
        self.report = report
        self.targets = targets
        self.lock = threading.Lock()
        self.first = True
        self.next_progress = 0.0

    # Work items: (model label or None, pk or None, name).
    def _items(self) -> Iterator[tuple[str | None, Any, Any]]:
        for target in self.targets:
            label = str(target)
            rows = queries.base_rows(target.model).order_by().values_list("pk", target.field_name)
            chunks = queries.row_chunks(rows, self.options.batch_size, own_connection=False)
            count = 0
            with contextlib.closing(chunks):
                for chunk in chunks:
                    count += len(chunk)
                    for pk, name in chunk:
                        yield label, pk, name
            if self.first:
                self.report.fields.append({"field": label, "rows": count})
        if self.options.all_files:
            yield from ((None, None, name) for name in self.source.walk())

    def pass_over(self, *, first: bool) -> None:
        self.first = first
        self.destination.forget()  # listings taken before this pass are stale
        report = self.report
        # The final state of the lists is the last pass's: a row whose file appeared, or a
        # conflict settled, during the copy is not reported.
        report.conflicts, report.missing_from_source, report.changing = [], [], []
        seen: set[int] = set()
        limit = self.options.workers * 4
        pending: set[Future] = set()
        with ThreadPoolExecutor(self.options.workers, thread_name_prefix="migrate") as pool:
            try:
                for label, pk, name in self._items():
                    if not name:
                        continue  # an empty file field: nothing to copy
                    name = str(name)
                    problem = storage_index.invalid_name_reason(name)
                    if problem is None:
                        try:
                            found = self.source.stat(name)
                        except ValueError as e:  # SuspiciousFileOperation and the like
                            found, problem = None, f"is rejected by the storage ({e})"
                    if problem is not None or found is None:
                        if label is not None:
                            report.missing_from_source.append(
                                {
                                    "model": label,
                                    "pk": pk,
                                    "name": name,
                                    "reason": "invalid_name" if problem else "missing",
                                    **({"detail": f"the name {problem}"} if problem else {}),
                                }
                            )
                        continue
                    key = _name_key(name)
                    if key in seen:
                        continue
                    seen.add(key)
                    size, mtime_ns = found
                    if self.manifest.verified(name, size, mtime_ns):
                        if first:
                            report.skipped.add(size)
                        continue
                    while len(pending) >= limit:
                        done, _ = wait(pending, return_when=FIRST_COMPLETED)
                        pending -= done
                        for future in done:
                            future.result()
                    pending.add(pool.submit(self._copy, label, pk, name, size, mtime_ns, first))
                    self._progress()
                for future in pending:
                    future.result()
            except BaseException:
                for future in pending:
                    future.cancel()
                raise
        self._progress(final=True)

    def _copy(
        self, label: str | None, pk: Any, name: str, size: int, mtime_ns: int, first: bool
    ) -> None:
        report = self.report
        try:
            with self.source.open(name) as f:
                sha256, read = hash_stream(f)
        except FileNotFoundError:
            return  # deleted since it was listed: the next pass reports it if a row needs it
        except OSError as e:
            raise MediaMigrationError(f"cannot read {name!r}: {e.strerror or e}") from e
        if read != size or self.source.stat(name) != (size, mtime_ns):
            with self.lock:
                report.changing.append(name)
            return
        fresh = False
        retried = False
        while True:
            existing = self.destination.head(name, fresh=fresh)
            if existing is not None:
                theirs = existing.sha256
                if existing.size == size and (theirs is None or theirs == sha256):
                    # Metadata is a claim; the bytes are the proof (and only they, when
                    # there is no metadata, tell whether the object is this file).
                    theirs, _ = self.destination.read_sha256(name)
                elif theirs is None and self.manifest.knows(name):
                    theirs, _ = self.destination.read_sha256(name)
                if theirs == sha256 and existing.size == size:
                    if self.options.apply:
                        self.manifest.record(name, size, mtime_ns, sha256)
                    with self.lock:
                        report.identical.add(size)
                    return
                if theirs is None or not self.manifest.wrote(name, theirs):
                    self._conflict(label, pk, name, sha256, size, existing, theirs)
                    return
            if not self.options.apply:
                with self.lock:
                    report.to_copy.add(size)
                return
            opener = lambda: self.source.open(name)  # noqa: E731
            if not self.destination.put(name, opener, size, sha256, if_absent=existing is None):
                if fresh:  # appeared, then went away again: someone else is writing it
                    self._conflict(label, pk, name, sha256, size, None, None)
                    return
                fresh = True  # the name was taken meanwhile: judge what is there now
                continue
            if self.source.stat(name) != (size, mtime_ns):
                # Changed while uploading: the object is volguard's own but unverified;
                # recorded so that the next pass may replace it, not call it a conflict.
                written = self.destination.written_sha256(name, sha256)
                self.manifest.record(name, size, mtime_ns, written, verified=False)
                with self.lock:
                    report.changing.append(name)
                return
            if self.destination.checked_by_store:
                break
            theirs, length = self.destination.read_sha256(name)
            if (theirs, length) == (sha256, size):
                break
            # The store kept other bytes than were sent: volguard's own object, replaced
            # once; recorded as written so that a later run may replace it too.
            self.manifest.record(name, size, mtime_ns, theirs, verified=False)
            if retried:
                raise MediaMigrationError(
                    f"{name!r} read back from the destination differs from the source twice "
                    f"({length} bytes, sha256 {theirs[:12]}…, expected {size} bytes, "
                    f"{sha256[:12]}…): the store did not keep what was sent"
                )
            retried, fresh = True, True
        self.manifest.record(name, size, mtime_ns, sha256)
        with self.lock:
            report.copied.add(size)
            if not first:
                report.delta.add(size)

    def _conflict(
        self,
        label: str | None,
        pk: Any,
        name: str,
        sha256: str,
        size: int,
        existing: Existing | None,
        theirs: str | None,
    ) -> None:
        entry: dict[str, Any] = {
            "name": name,
            "source_size": size,
            "source_sha256": sha256,
            "destination_size": existing.size if existing else None,
            "destination_sha256": theirs,
        }
        if label is not None:
            entry |= {"model": label, "pk": pk}
        with self.lock:
            self.report.conflicts.append(entry)

    def _progress(self, *, final: bool = False) -> None:
        if self.options.progress is None:
            return
        now = time.monotonic()
        if not final and now < self.next_progress:
            return
        self.next_progress = now + 0.5
        r = self.report
        with self.lock:
            counts = {
                "copied": r.copied.files,
                "bytes": r.copied.bytes,
                "identical": r.identical.files,
                "skipped": r.skipped.files,
                "conflicts": len(r.conflicts),
                "missing": len(r.missing_from_source),
                "final": int(final),
            }
        self.options.progress(counts)


def terminal_progress(counts: dict[str, int]) -> None:
    """Progress on one stderr line, rewritten in place (only when stderr is a terminal)."""
    line = (
        f"migrate_media: {counts['copied']} copied ({counts['bytes'] / 1e6:.1f} MB), "
        f"{counts['identical']} identical, {counts['skipped']} already verified, "
        f"{counts['conflicts']} conflicts, {counts['missing']} missing"
    )
    sys.stderr.write("\r" + line + ("\n" if counts["final"] else ""))
    sys.stderr.flush()
