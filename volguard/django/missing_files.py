"""The read-only missing-file audit: which rows point at a file that is not in storage.

The engine behind ``manage.py check_missing_files`` (and its repair,
`volguard.django.repair`): it reads the database and the storages and changes nothing. For
every model with a FileField (or a subclass: ImageField, …), for every such field, each
with its own ``field.storage``:

- ``missing``: the stored name is not in the field's storage (VG401);
- ``empty_file``: the file is there but holds 0 bytes, a truncated upload (VG405); the size
  comes from the ``stat`` a per-row check makes and from the listing's ``Size`` on S3; a
  volume's listing holds names only, so with it sizes are read (one ``stat`` per listed
  file, about seven times the listing's cost) only when asked (``sizes``, ``--sizes``);
- ``empty``: the field is empty although the model requires a file (``blank=False``; an
  empty optional field is not a problem, only counted) (VG401);
- ``invalid_name``: absolute, a NUL byte, a ``..`` component, over-long (longer than the
  field's ``max_length``, than 1,024 bytes, or, on a volume, a component longer than 255
  bytes) — such a name is never looked up, so nothing outside the storage root is ever
  touched (VG402);
- ``shared``: several rows of the field point to one file, whether it exists or not (VG403).
  A missing shared file gives each row two reasons, ``missing`` and ``shared``.

A field whose rows choose their own storage (its FieldFile class or descriptor picks it
per row, as django-filer's public/private split does: `Target.per_row_storage`) is audited
through model instances instead, each row against the storage of its own FieldFile; a row
whose storage cannot be told refuses the model (`AuditError`), never a guess. Stock fields
never pay for it.

Rows created or changed within the grace period (``older_than``, default 10 minutes) are
skipped and counted: an upload in flight has its row before its file. The age comes from the
model's ``auto_now`` DateTimeField (else its ``auto_now_add`` one, else the configured
``timestamp_field``); a model without one has no grace period.

Which fields are audited and each model's settings (owner, status, grace-period clock):
`volguard.django.targets`. The rows found: `volguard.django.audit_result`. The queries
that stream and look up rows: `volguard.django.queries`.

Memory stays bounded on large tables:

- the database side is streamed, ``values_list("pk", field)`` through a (server-side, where
  ``iterator()`` would use one) cursor, ``batch_size`` rows per fetch, with no ordering;
  model instances are never loaded, and the rows are checked a fetched chunk at a time.
  Owner and status are read only for problem rows, a query per ``batch_size`` of them;
- the storage side is an index (`volguard.django.storage_index`): on a volume, the file
  names of each directory the rows point into (each listed once, on first use, kept as a
  compact dict that the garbage collector does not walk: about 120 bytes per listed file,
  so ~120 MB for a million), the keys under the rows' common prefix on S3 (capped),
  nothing for per-row checks;
- shared files are found by the database (``GROUP BY name HAVING COUNT(*) > 1``, in a
  thread while the rows stream, after the row counts), not by holding every name in
  memory; their rows are reported after the field's stream;
- only problem rows are kept, and with ``keep_rows=False`` they are only handed to
  ``on_row`` as they are found, so a caller can act on them in batches.

Time stays close to the I/O (reading the rows, listing the directories): a row found in
its directory's listing costs a split and two hash lookups (see `_FieldAudit._stream`);
the counts and the ``GROUP BY`` run on another connection while the rows stream.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Container, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from functools import partial
from typing import TYPE_CHECKING, Any

from volguard.audit_document import (
    EMPTY,
    EMPTY_FILE,
    INVALID_NAME,
    MISSING,
    PROBLEM_REASONS,
    SHARED,
)
from volguard.django import queries, storage_index
from volguard.django.audit_result import DEFAULT_OLDER_THAN, AuditResult, AuditRow, FieldReport
from volguard.django.helpers import describe_storage
from volguard.django.storage_index import (
    MAX_COMPONENT_BYTES,
    MAX_NAME_BYTES,
    invalid_name_reason,
)
from volguard.django.targets import SETTING, Target, discover, per_row_storage
from volguard.errors import AuditError

if TYPE_CHECKING:
    from django.db.models import Model, QuerySet

#: Settings override of `storage_index.PER_ROW_MAX` (rows up to which a volume is stat'ed).
PER_ROW_MAX_SETTING = "VOLGUARD_AUDIT_PER_ROW_MAX"
#: Settings default of ``sizes``: stat each listed file on a volume (finds 0-byte files).
SIZES_SETTING = "VOLGUARD_AUDIT_SIZES"
DEFAULT_BATCH_SIZE = 2000
#: Largest batch: rows fetched at a time are held in memory, and drivers take a C integer.
MAX_BATCH_SIZE = 1_000_000


def audit(
    targets: Sequence[Target] | None = None,
    *,
    filters: Iterable[tuple[str, Any]] = (),
    user_id: Any = None,
    older_than: timedelta = DEFAULT_OLDER_THAN,
    batch_size: int = DEFAULT_BATCH_SIZE,
    strategy: storage_index.Strategy = "auto",
    per_row_max: int | None = None,
    on_row: Callable[[AuditRow], None] | None = None,
    keep_rows: bool = True,
    now: datetime | None = None,
    sizes: bool | None = None,
) -> AuditResult:
    """Audit ``targets`` (default: `discover()`), read-only; see the module docstring.

    ``filters`` are Django lookups (``("processing_status", "failed")``), ANDed;
    ``user_id`` filters on each model's owner field. A model that lacks a filter's field
    (or an owner field, for ``user_id``) is left out with a note; none left is an
    `AuditError`. ``on_row`` gets each problem or shared row as soon as its batch is
    complete; ``keep_rows=False`` keeps none in the result. ``sizes`` (default: the
    ``VOLGUARD_AUDIT_SIZES`` setting, else False) stats every file a volume's listing holds,
    so that 0-byte files (VG405) are found with the listing strategy too; per-row checks and
    S3 listings find them always.
    Raises `AuditError` for bad input or an unreadable storage.
    """
    from django.conf import settings
    from django.utils import timezone

    if not 1 <= batch_size <= MAX_BATCH_SIZE:
        raise AuditError(f"batch size must be from 1 to {MAX_BATCH_SIZE:,}, not {batch_size}")
    started = time.perf_counter()
    result = AuditResult(older_than=older_than)
    lookups = [tuple(f) for f in filters]
    plans = _plan(discover() if targets is None else list(targets), lookups, user_id, result)
    if per_row_max is None:
        per_row_max = getattr(settings, PER_ROW_MAX_SETTING, storage_index.PER_ROW_MAX)
    if sizes is None:
        sizes = bool(getattr(settings, SIZES_SETTING, False))
    cutoff = (now or timezone.now()) - older_than if older_than > timedelta(0) else None

    def deliver(rows: list[AuditRow]) -> None:
        result.per_reason.update(row.reason for row in rows)
        if keep_rows:
            result.rows.extend(rows)
        if on_row is not None:
            for row in rows:
                on_row(row)

    for target, target_lookups in plans:
        report = _FieldAudit(target, target_lookups, cutoff, batch_size, deliver, sizes).run(
            strategy, per_row_max
        )
        result.fields.append(report)
        result.total_rows += report.total_rows
        result.audited_rows += report.audited_rows
        result.skipped_recent += report.skipped_recent
        result.storage_requests += report.storage_requests
    result.duration = time.perf_counter() - started
    return result


def recheck(rows: Iterable[AuditRow], *, names: bool = True) -> list[AuditRow]:
    """The problem rows that are still problems now, checked one by one.

    For remediation, just before it changes a row: the row must still exist with the same
    stored name (one query; ``names=False`` skips it for a caller that re-reads the rows
    under a lock and compares the names itself), and its file must still be absent (one
    ``exists()`` per row, so a file that arrived since the audit's listing is seen; on a
    volume, one ``stat`` of a directory that is gone answers for every name in it). Rows
    of other reasons are dropped.
    """
    from django.apps import apps

    groups: dict[tuple[str, str], list[AuditRow]] = {}
    for row in rows:
        if row.reason in PROBLEM_REASONS:
            groups.setdefault((row.model, row.field), []).append(row)
    still: list[AuditRow] = []
    for (label, field_name), group in groups.items():
        model = apps.get_model(label)
        field_ = model._meta.get_field(field_name)
        storage = storage_index.unwrap(field_.storage)
        index = storage_index.PerRowIndex(storage, gone_directories=True)
        own = _row_indexes(model, field_, [r.pk for r in group])
        current = (
            queries.values_by_pk(queries.base_rows(model), [r.pk for r in group], [field_name])
            if names
            else None
        )
        for row in group:
            if current is not None and (
                row.pk not in current or (current[row.pk][0] or None) != (row.name or None)
            ):
                continue  # deleted, or a new file was stored since the audit
            if row.reason in (MISSING, EMPTY_FILE):
                # Still a problem while the file is absent, or (EMPTY_FILE) still 0 bytes.
                try:
                    name = row.name or ""
                    on = own.get(row.pk, index) if own is not None else index
                    if on.exists(name) and not on.is_empty(name):
                        continue
                except storage_index.StorageIndexError as e:
                    raise AuditError(str(e)) from e
            still.append(row)
    return still


def _row_indexes(
    model: type[Model], field_: Any, pks: list[Any]
) -> dict[Any, storage_index.NameIndex] | None:
    """For a field whose rows choose their storage: each row's index (one per storage);
    None for a stock field (every row on the field's storage).

    A row whose storage cannot be told is an `AuditError`, as in the audit.
    """
    from django.db.models.fields.files import FileField

    if not isinstance(field_, FileField) or per_row_storage(model, field_) is None:
        return None
    indexes: dict[int, storage_index.NameIndex] = {}
    found: dict[Any, storage_index.NameIndex] = {}
    for chunk in queries.chunks(pks, queries.IN_CHUNK):
        for obj in queries.base_rows(model).filter(pk__in=chunk):
            try:
                storage = storage_index.unwrap(getattr(obj, field_.attname).storage)
            except Exception as e:  # the app's own code
                raise AuditError(
                    f"{model._meta.label}: cannot tell which storage holds the file of row "
                    f"{obj.pk} ({type(e).__name__}: {e}); nothing changed"
                ) from None
            index = indexes.get(id(storage))
            if index is None:
                index = indexes[id(storage)] = storage_index.PerRowIndex(
                    storage, gone_directories=True
                )
            found[obj.pk] = index
    return found


class _FieldAudit:
    """The audit of one target: counts, the shared names, the index, then the stream."""

    def __init__(
        self,
        target: Target,
        lookups: list[tuple[str, Any]],
        cutoff: datetime | None,
        batch_size: int,
        deliver: Callable[[list[AuditRow]], None],
        sizes: bool = False,
    ) -> None:
        self.target = target
        self.sizes = sizes
        self.lookups = lookups
        self.cutoff = cutoff
        self.batch_size = batch_size
        self.deliver = deliver
        self.storage = target.storage
        self.kind = storage_index.storage_kind(self.storage)
        self.report = FieldReport(
            target.label, target.field_name, describe_storage(self.storage), target.config
        )
        #: `storage_index.location_of` for this storage.
        self._locate = storage_index._locator(self.storage)
        #: Whether the rows may be read on a connection of their own (see `queries.row_chunks`).
        self.own_connection = False
        #: Why each row's storage is read from its instance (`Target.per_row_storage`).
        self.per_row = target.per_row_storage
        #: Where the file of a problem row on another storage than the field's was looked for.
        self._row_paths: dict[Any, str] = {}

    def run(self, strategy: storage_index.Strategy, per_row_max: int) -> FieldReport:
        from django.db import DatabaseError

        try:
            base, scope, recent = self._scope()
            if self.per_row is not None:
                return self._run_per_row(base, scope, recent, strategy, per_row_max)
            in_thread = self.own_connection = self._can_use_thread()
            # The counts need a scan of the table: with a worker thread, they are taken
            # there, while the rows stream, unless the index must know the number of rows
            # first (S3's listing budget). On a volume it only needs to know whether the
            # rows are more than per_row_max, which a query stopping there tells.
            early = not in_thread or (strategy == "auto" and self.kind == "s3")
            if early:
                self._count(base, recent)
                rows = self.report.total_rows - self.report.skipped_recent
            elif strategy == "auto" and self.kind == "filesystem":
                rows = scope[: per_row_max + 1].count()
            else:
                rows = 0  # not used by this strategy or storage
            background = self._background(
                None if early else (base, recent), scope if self.lookups else None, in_thread
            )
            index = storage_index.build_index(
                self.storage,
                rows=rows,
                strategy=strategy,
                common_prefix=lambda: _common_prefix(scope, self.target.field_name),
                per_row_max=per_row_max,
                sizes=self.sizes,
            )
            self._stream(scope, index)
            counts, shared_names = background()
            if counts is not None:
                self.report.total_rows, self.report.skipped_recent = counts
            self._shared(scope, shared_names)
        except storage_index.StorageIndexError as e:
            raise AuditError(str(e)) from e
        except DatabaseError as e:
            raise AuditError(f"cannot read {self.target}: {_one_line(e)}") from e
        except OverflowError as e:  # SQLite: a filter value beyond 64 bits
            raise AuditError(f"bad filter for {self.target.label}: {_one_line(e)}") from e
        self.report.strategy = index.strategy
        self.report.strategy_detail = index.detail
        self.report.storage_requests = index.requests
        if self.kind == "filesystem" and not os.path.isdir(self.storage.location):
            self.report.notes.append(
                f"the storage root {self.storage.location} does not exist (volume not mounted?)"
            )
        if self.target.config.timestamp_field is None:
            self.report.notes.append("no auto_now/auto_now_add field: no grace period")
        return self.report

    def _run_per_row(
        self,
        base: QuerySet,
        scope: QuerySet,
        recent: dict[str, Any] | None,
        strategy: storage_index.Strategy,
        per_row_max: int,
    ) -> FieldReport:
        """The audit of a field whose rows choose their storage (`Target.per_row_storage`).

        The rows are read as model instances, ``batch_size`` at a time, and each row's file
        is checked on the storage of its own FieldFile (``getattr(instance, field)``), with
        one index per storage met. A row whose storage cannot be told (its FieldFile
        raises, or is not on a storage) refuses the model: a guess could call an intact
        file missing.
        """
        self._count(base, recent)
        rows = self.report.total_rows - self.report.skipped_recent
        field_ = self.target.field
        label = self.target.label
        indexes: dict[int, tuple[storage_index.NameIndex, Callable[[str], str], str]] = {}
        default = id(self.storage)
        pending: list[tuple[Any, Any, str, str, int | None]] = []
        audited = empty_allowed = 0

        def index_of(storage: Any) -> tuple[storage_index.NameIndex, Callable[[str], str], str]:
            entry = indexes.get(id(storage))
            if entry is None:
                index = storage_index.build_index(
                    storage,
                    rows=rows,
                    strategy=strategy,
                    common_prefix=lambda: _common_prefix(scope, self.target.field_name),
                    per_row_max=per_row_max,
                    sizes=self.sizes,
                )
                kind = storage_index.storage_kind(storage)
                entry = (index, storage_index._locator(storage), kind)
                indexes[id(storage)] = entry
            return entry

        for obj in scope.iterator(chunk_size=self.batch_size):
            audited += 1
            try:
                fieldfile = getattr(obj, field_.attname)
                name = fieldfile.name
                storage = storage_index.unwrap(fieldfile.storage)
                if not callable(getattr(storage, "exists", None)):
                    raise TypeError(f"{type(storage).__name__} is not a storage")
            except Exception as e:  # the app's own code: anything may be raised
                raise AuditError(
                    f"{label}: cannot tell which storage holds the file of row {obj.pk} "
                    f"({self.per_row}: {type(e).__name__}: {e}); {label} is not audited "
                    "rather than guessed (leave it out with --model)"
                ) from None
            if not name:
                if field_.blank:
                    empty_allowed += 1
                else:
                    pending.append((obj.pk, name, EMPTY, "the file field is empty", None))
            else:
                index, locate, kind = index_of(storage)
                found = self._judge(index, kind, name)
                if found is not None:
                    pending.append((obj.pk, name, *found, None))
                    if found[0] in (MISSING, EMPTY_FILE) and id(storage) != default:
                        self._row_paths[obj.pk] = locate(name)
            if len(pending) >= self.batch_size:
                self._flush(pending)
        self._flush(pending)
        self._shared(scope, self._shared_names(scope if self.lookups else None))
        self.report.audited_rows = audited
        self.report.empty_allowed = empty_allowed
        used = [entry[0] for entry in indexes.values()]
        self.report.strategy = "+".join(sorted({i.strategy for i in used})) or "exists"
        self.report.strategy_detail = (
            f"each row's own storage, read from its instance ({self.per_row}): "
            f"{len(used)} storage(s)" + "".join(f"; {i.detail}" for i in used if i.detail)
        )
        self.report.storage_requests = sum(i.requests for i in used)
        if self.target.config.timestamp_field is None:
            self.report.notes.append("no auto_now/auto_now_add field: no grace period")
        return self.report

    def _judge(
        self, index: storage_index.NameIndex, kind: str, name: str
    ) -> tuple[str, str] | None:
        """A named file's problem (reason, detail) on one index, or None when it is fine."""
        from django.core.exceptions import SuspiciousOperation

        problem = invalid_name_reason(
            name,
            max_length=self.target.field.max_length,
            max_component_bytes=MAX_COMPONENT_BYTES if kind == "filesystem" else None,
        )
        if problem is not None:
            return INVALID_NAME, problem
        try:
            found = index.exists(name)
        except (SuspiciousOperation, ValueError) as e:
            return INVALID_NAME, f"is rejected by the storage ({e})"
        if not found:
            return MISSING, "not in storage"
        if index.is_empty(name):
            return EMPTY_FILE, "holds 0 bytes"
        return None

    def _shared_names(self, scope: QuerySet | None) -> dict[str, int]:
        """The names several rows use (see `_background`), at once."""
        return self._background(None, scope, in_thread=False)()[1]

    def _scope(self) -> tuple[QuerySet, QuerySet, dict[str, Any] | None]:
        """The rows the filters select (``base``), those of them to audit (``scope``:
        not skipped by the grace period), and the lookup that selects the recent ones."""
        from django.core.exceptions import FieldError, ValidationError

        base = self.target.rows().order_by()
        try:
            for key, value in self.lookups:
                base = base.filter(**{key: _boolean(self.target.model, key, value)})
        except (FieldError, ValueError, TypeError, ValidationError) as e:
            message = "; ".join(e.messages) if isinstance(e, ValidationError) else str(e)
            raise AuditError(f"bad filter for {self.target.label}: {message}") from None
        stamp = self.target.config.timestamp_field
        if stamp is None or self.cutoff is None:
            return base, base, None
        recent = {f"{stamp}__gte": self.cutoff}
        return base, base.exclude(**recent), recent

    def _count(self, base: QuerySet, recent: dict[str, Any] | None) -> tuple[int, int]:
        """Count the rows the filters select (``total_rows``) and those skipped as recent,
        in one scan of the table."""
        if recent is None:
            counts = (base.count(), 0)
        else:
            from django.db.models import Count, Q

            found = base.aggregate(total=Count("*"), recent=Count("pk", filter=Q(**recent)))
            counts = (found["total"], found["recent"])
        self.report.total_rows, self.report.skipped_recent = counts
        return counts

    def _can_use_thread(self) -> bool:
        """Whether queries may run on a connection of their own while the rows stream.

        Not inside a transaction, whose uncommitted rows another connection would not
        see, nor on an in-memory SQLite database (another connection is another database).
        """
        from django.db import connections

        connection = connections[self.target.rows().db]
        in_memory = connection.vendor == "sqlite" and connection.is_in_memory_db()
        return not (connection.in_atomic_block or in_memory)

    def _background(
        self,
        counts: tuple[QuerySet, dict[str, Any] | None] | None,
        scope: QuerySet | None,
        in_thread: bool,
    ) -> Callable[[], tuple[tuple[int, int] | None, dict[str, int]]]:
        """Start the whole-table queries; call the result for ``(counts, shared names)``.

        ``counts`` (``base`` and the recent lookup): count them too (`_count`), first.
        The shared names are those several rows of the table use (``scope``: only names
        that it holds, in a filtered audit). Their ``GROUP BY`` costs about as much as
        streaming the rows, so with ``in_thread`` both run in a thread on a connection of
        its own while the rows stream (the database works, the GIL is free); else at once.
        """
        from django.db import connections

        def query() -> tuple[tuple[int, int] | None, dict[str, int]]:
            from django.db.models import Count

            counted = None if counts is None else self._count(*counts)
            name = self.target.field_name
            rows = self.target.rows().order_by().exclude(**{name: ""})
            rows = rows.exclude(**{f"{name}__isnull": True})
            if scope is not None:
                rows = rows.filter(**{f"{name}__in": scope.values(name)})
            groups = rows.values(name).annotate(n=Count("pk")).filter(n__gt=1)
            return counted, dict(groups.values_list(name, "n"))

        def worker() -> tuple[tuple[int, int] | None, dict[str, int]]:
            try:
                return query()
            finally:
                connections.close_all()  # this thread's connections only

        if not in_thread:
            done = query()
            return lambda: done
        pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="volguard-shared")
        future = pool.submit(worker)
        pool.shutdown(wait=False)  # the queries run on; the pool takes no more work
        return future.result

    def _stream(self, scope: QuerySet, index: storage_index.NameIndex) -> None:
        """Check every row of ``scope``, keeping the per-row path to a few local lookups.

        An index that ``accepts_any_name`` is asked first, and only the names it does not
        find (or that are long, or hold a backslash) are validated in full: a name found
        in a listing of a validated directory is valid but for those two.

        On a volume (`DirectoryIndex`) a row costs less still: its name is split at its
        last ``/`` and looked up in that directory's *plain* names, the files listed there
        whose full name is short enough and holds no backslash (most often the listing
        itself, shared, not a copy). A row found there is settled: that is exactly the
        case the rules above let through. Every other row (not found, empty, in the
        storage root or an invalid directory) goes through those rules unchanged.
        """
        from django.core.exceptions import SuspiciousOperation

        field_ = self.target.field
        invalid = partial(
            invalid_name_reason,
            max_length=field_.max_length,
            max_component_bytes=MAX_COMPONENT_BYTES if self.kind == "filesystem" else None,
        )
        # Names up to this long break no length rule (4 bytes a character at most); the
        # components of a name found in a listing are short enough, or it would not be.
        short = min(field_.max_length or MAX_NAME_BYTES, MAX_NAME_BYTES // 4)
        exists = index.exists
        is_empty = index.is_empty
        any_name = index.accepts_any_name
        blank_ok = field_.blank
        batch_size = self.batch_size
        flush = self._flush
        pending: list[tuple[Any, Any, str, str, int | None]] = []
        append = pending.append
        empty_allowed = 0

        def check(pk: Any, name: Any) -> None:
            nonlocal empty_allowed
            if not name:
                if blank_ok:
                    empty_allowed += 1
                else:
                    append((pk, name, EMPTY, "the file field is empty", None))
                return
            if any_name:
                found = exists(name)
                if found and len(name) <= short and "\\" not in name and not is_empty(name):
                    return
                problem = invalid(name)
            else:
                problem = invalid(name)
                if problem is None:
                    try:
                        found = exists(name)
                    except (SuspiciousOperation, ValueError) as e:
                        problem = f"is rejected by the storage ({e})"
            if problem is not None:
                append((pk, name, INVALID_NAME, problem, None))
            elif not found:
                append((pk, name, MISSING, "not in storage", None))
            elif is_empty(name):
                append((pk, name, EMPTY_FILE, "holds 0 bytes", None))
            if len(pending) >= batch_size:
                flush(pending)

        audited = 0
        rows = scope.values_list("pk", self.target.field_name)
        directories = index if isinstance(index, storage_index.DirectoryIndex) else None
        plain: dict[str, Container[str]] = {}
        get = plain.get
        chunks = queries.row_chunks(rows, batch_size, own_connection=self.own_connection)
        with contextlib.closing(chunks):  # a failure mid-stream closes the cursor
            for chunk in chunks:
                audited += len(chunk)
                if directories is None:
                    for pk, name in chunk:
                        check(pk, name)
                    continue
                for pk, name in chunk:
                    try:
                        directory, _, base = name.rpartition("/")
                    except AttributeError:  # NULL
                        check(pk, name)
                        continue
                    files = get(directory)
                    if files is None:
                        files = plain[directory] = directories._plain_files(directory, short)
                    if base not in files:
                        check(pk, name)
        flush(pending)
        self.report.audited_rows = audited
        self.report.empty_allowed = empty_allowed

    def _shared(self, scope: QuerySet, names: dict[str, int]) -> None:
        """Report the audited rows whose name several rows use."""
        pending: list[tuple[Any, Any, str, str, int | None]] = []
        field_name = self.target.field_name
        for chunk in queries.chunks(sorted(names), queries.IN_CHUNK):
            rows = scope.filter(**{f"{field_name}__in": chunk}).values_list("pk", field_name)
            for pk, name in rows.order_by(field_name, "pk"):
                count = names[name]
                pending.append((pk, name, SHARED, f"shared by {count} rows", count))
            self._flush(pending)

    def _flush(self, pending: list[tuple[Any, Any, str, str, int | None]]) -> None:
        """Deliver pending rows, with their owner and status read in one query."""
        if not pending:
            return
        config = self.target.config
        locate = self._locate
        columns = [c for c in (config.owner_field, config.status_field) if c]
        facts: dict[Any, tuple[Any, ...]] = {}
        if columns:
            rows = self.target.rows()
            facts = queries.values_by_pk(rows, [p[0] for p in pending], columns)
        label, field_name = self.target.label, self.target.field_name
        has_owner, has_status = config.owner_field is not None, config.status_field is not None
        rows: list[AuditRow] = []
        for pk, name, reason, detail, shared_with in pending:
            values = facts.get(pk)  # (owner, status), either left out when not configured
            owner = values[0] if has_owner and values else None
            status = values[-1] if has_status and values else None
            if reason in (MISSING, EMPTY_FILE):  # validated by _stream: looked up
                path = self._row_paths.pop(pk, None) or locate(name)
            elif reason == SHARED:
                path = self._location(name)
            else:
                path = ""
            rows.append(
                AuditRow(
                    label, pk, field_name, name, reason, owner, status, detail, path, shared_with
                )
            )
        self.report.per_reason.update(p[2] for p in pending)
        self.deliver(rows)
        pending.clear()

    def _location(self, name: str) -> str:
        """Where the file was looked for; empty for a name that is never looked up."""
        component = MAX_COMPONENT_BYTES if self.kind == "filesystem" else None
        if invalid_name_reason(
            name, max_length=self.target.field.max_length, max_component_bytes=component
        ):
            return ""
        return self._locate(name)


def _plan(
    targets: list[Target],
    lookups: list[tuple[str, Any]],
    user_id: Any,
    result: AuditResult,
) -> list[tuple[Target, list[tuple[str, Any]]]]:
    """Each target with its lookups; targets lacking a filtered field are left out."""
    plans = []
    unknown_fields: set[str] = set()
    for target in targets:
        target_lookups = list(lookups)
        if user_id is not None:
            if target.config.owner_field is None:
                result.notes.append(f"left out {target}: no owner field (set owner_field)")
                continue
            target_lookups.insert(0, (target.config.owner_field, user_id))
        unknown = [k.split("__", 1)[0] for k, _ in lookups if not _has_field(target.model, k)]
        if unknown:
            unknown_fields.update(unknown)
            result.notes.append(f"left out {target}: no field {unknown[0]!r}")
            continue
        plans.append((target, target_lookups))
    if plans:
        return plans
    if not targets:
        raise AuditError("no model with a FileField or ImageField to audit")
    if user_id is not None and all(t.config.owner_field is None for t in targets):
        raise AuditError(f"no audited model has an owner field (set owner_field in {SETTING})")
    models = ", ".join(sorted({t.label for t in targets}))
    fields = ", ".join(repr(f) for f in sorted(unknown_fields))
    raise AuditError(f"bad filter: {models} has no field {fields}")


#: The spellings ``--filter …__isnull=`` takes (`check_missing_files.parse_filter`).
_BOOLEANS = {"true": True, "1": True, "false": False, "0": False}


def _boolean(model: type[Model], key: str, value: Any) -> Any:
    """``value`` as a bool when ``key`` is an exact lookup on a BooleanField and ``value``
    one of the spellings ``__isnull`` takes (``true``, ``False``, ``1``, ``0``); Django's own
    BooleanField refuses ``true``. Anything else unchanged."""
    from django.core.exceptions import FieldDoesNotExist
    from django.db.models import BooleanField

    if not isinstance(value, str) or value.strip().lower() not in _BOOLEANS:
        return value
    parts = key.split("__")
    if parts[-1] == "exact":
        parts.pop()
    field: Any = None
    for part in parts:
        if field is not None:
            if not field.is_relation or field.related_model is None:
                return value
            model = field.related_model
        try:
            field = model._meta.pk if part == "pk" else model._meta.get_field(part)
        except FieldDoesNotExist:
            return value
    return _BOOLEANS[value.strip().lower()] if isinstance(field, BooleanField) else value


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split())


def _has_field(model: type[Model], lookup: str) -> bool:
    from django.core.exceptions import FieldDoesNotExist

    first = lookup.split("__", 1)[0]
    if first == "pk":
        return True
    try:
        model._meta.get_field(first)
    except FieldDoesNotExist:
        return False
    return True


def _common_prefix(scope: QuerySet, name: str) -> str:
    """The longest prefix the audited names share, from their smallest and largest.

    In byte order (``COLLATE "C"`` on PostgreSQL) the common prefix of the first and last
    name is that of all of them. With another collation it may be too long for a few
    names; the S3 index checks those with a ``HEAD``, so that costs requests, never
    correctness. Absolute and ``..`` names (invalid, never looked up) are left out.
    """
    from django.db import connections
    from django.db.models import F, Max, Min
    from django.db.models.functions import Collate

    expression: Any = F(name)
    collation = {"postgresql": "C", "mysql": "utf8mb4_bin"}.get(connections[scope.db].vendor)
    if collation:
        expression = Collate(expression, collation)
    names = scope.exclude(**{name: ""}).exclude(**{f"{name}__isnull": True})
    for bad in ("/", "..", "\\"):
        names = names.exclude(**{f"{name}__startswith": bad})
    bounds = names.aggregate(lo=Min(expression), hi=Max(expression))
    if not bounds["lo"] or not bounds["hi"]:
        return ""
    # Character by character on purpose: an S3 prefix need not end at a "/".
    return os.path.commonprefix([bounds["lo"], bounds["hi"]])  # noqa: RUF071
