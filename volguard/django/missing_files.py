"""The read-only missing-file audit: which rows point at a file that is not in storage.

The engine behind ``manage.py check_missing_files`` (and, later, its remediation): it reads
the database and the storages and changes nothing. For every model with a FileField (or a
subclass: ImageField, …), for every such field, each with its own ``field.storage``:

- ``missing``: the stored name is not in the field's storage (VG401);
- ``empty``: the field is empty although the model requires a file (``blank=False``; an
  empty optional field is not a problem, only counted) (VG401);
- ``invalid_name``: absolute, a NUL byte, a ``..`` component, over-long (longer than the
  field's ``max_length``, than 1,024 bytes, or, on a volume, a component longer than 255
  bytes) — such a name is never looked up, so nothing outside the storage root is ever
  touched (VG402);
- ``shared``: several rows of the field point to one file, whether it exists or not (VG403).
  A missing shared file gives each row two reasons, ``missing`` and ``shared``.

Rows created or changed within the grace period (``older_than``, default 10 minutes) are
skipped and counted: an upload in flight has its row before its file. The age comes from the
model's ``auto_now`` DateTimeField (else its ``auto_now_add`` one, else the configured
``timestamp_field``); a model without one has no grace period.

Per-model configuration, in settings (every key optional; the defaults are the example app's
shape, ``apps.services.UserDataFile``, whenever the model has those fields)::

    VOLGUARD_MISSING_FILES = {
        "services.UserDataFile": {
            "owner_field": "owner",              # --user-id filters on it; output groups by it
            "status_field": "processing_status",
            "failed_value": "failed",            # for remediation
            "log_field": "processing_log",       # for remediation
            "message": "File missing from storage. Please re-upload your file.",
            "timestamp_field": "updated_at",     # the grace period's clock
        },
    }

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
import re
import time
from collections import Counter
from collections.abc import Callable, Container, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import partial
from itertools import islice
from typing import TYPE_CHECKING, Any

from volguard.catalogue import finding
from volguard.django import storage_index
from volguard.django.helpers import describe_storage
from volguard.django.storage_index import (
    MAX_COMPONENT_BYTES,
    MAX_NAME_BYTES,
    invalid_name_reason,
)
from volguard.findings import Finding, Location

if TYPE_CHECKING:
    from django.db.models import FileField, Model, QuerySet

MISSING, EMPTY, INVALID_NAME, SHARED = "missing", "empty", "invalid_name", "shared"
REASONS = (MISSING, EMPTY, INVALID_NAME, SHARED)
#: Reasons that mean "this row has no usable file" (remediation's candidates, exit code 2).
PROBLEM_REASONS = frozenset({MISSING, EMPTY, INVALID_NAME})
FINDING_IDS = {MISSING: "VG401", EMPTY: "VG401", INVALID_NAME: "VG402", SHARED: "VG403"}

SETTING = "VOLGUARD_MISSING_FILES"
#: Settings override of `storage_index.PER_ROW_MAX` (rows up to which a volume is stat'ed).
PER_ROW_MAX_SETTING = "VOLGUARD_AUDIT_PER_ROW_MAX"
DEFAULT_MESSAGE = "File missing from storage. Please re-upload your file."
DEFAULT_OLDER_THAN = timedelta(minutes=10)
DEFAULT_BATCH_SIZE = 2000

_CONFIG_KEYS = frozenset(
    {"owner_field", "status_field", "failed_value", "log_field", "message", "timestamp_field"}
)
_FILTER_KEY = re.compile(r"[A-Za-z_]\w*(?:__\w+)*")
_DURATION = re.compile(r"(\d+)([smhd]?)")
_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
#: Names per ``IN (…)`` query: far below every backend's parameter limit.
_IN_CHUNK = 500


class AuditError(Exception):
    """The audit cannot run: unknown model, bad filter or setting, unreadable storage."""


# -- configuration and discovery ----------------------------------------------------------


@dataclass(frozen=True)
class ModelConfig:
    """How one model's rows are read and (by remediation) repaired; see the module docstring."""

    owner_field: str | None = None
    status_field: str | None = None
    failed_value: str = "failed"
    log_field: str | None = None
    message: str = DEFAULT_MESSAGE
    timestamp_field: str | None = None


@dataclass(frozen=True)
class Target:
    """One file field of one model: what an audit walks."""

    model: type[Model]
    field_name: str
    config: ModelConfig

    @property
    def label(self) -> str:
        return self.model._meta.label

    @property
    def field(self) -> FileField:
        return self.model._meta.get_field(self.field_name)  # type: ignore[return-value]

    @property
    def storage(self) -> Any:
        return storage_index.unwrap(self.field.storage)

    def __str__(self) -> str:
        return f"{self.label}.{self.field_name}"


def discover(labels: Sequence[str] = ()) -> list[Target]:
    """The file fields to audit: those of ``labels`` (``app.Model`` or ``app.Model.field``),
    or of every installed model when none is given.

    Proxy and swapped-out models are left out (their table is audited through the concrete
    model), and so are fields a model inherits from a multi-table parent (audited with the
    parent), so no row is audited twice.
    """
    from django.apps import apps

    if not labels:
        models = [m for m in apps.get_models() if not m._meta.proxy and not m._meta.swapped]
        return [t for m in models for t in _targets(m)]

    targets: list[Target] = []
    for label in labels:
        app_label, _, rest = label.partition(".")
        model_name, _, field_name = rest.partition(".")
        try:
            model = apps.get_model(app_label, model_name)
        except (LookupError, ValueError):
            raise AuditError(
                f"unknown model {label!r} (use app_label.ModelName, e.g. services.UserDataFile)"
            ) from None
        found = _targets(model)
        if field_name:
            found = [t for t in found if t.field_name == field_name]
        if not found:
            what = f"field {field_name!r}" if field_name else "FileField or ImageField"
            raise AuditError(f"{model._meta.label} has no {what} to audit")
        targets.extend(t for t in found if t not in targets)
    return targets


def model_config(model: type[Model]) -> ModelConfig:
    """The model's configuration: ``VOLGUARD_MISSING_FILES`` over the example app's defaults."""
    names = {f.name for f in model._meta.get_fields()}
    values: dict[str, Any] = {
        "owner_field": "owner" if "owner" in names else None,
        "status_field": "processing_status" if "processing_status" in names else None,
        "log_field": "processing_log" if "processing_log" in names else None,
        "timestamp_field": _timestamp_field(model),
    }
    values.update(_configured().get(model._meta.label_lower, {}))
    for key in ("owner_field", "status_field", "log_field", "timestamp_field"):
        name = values.get(key)
        if name is not None and name not in names:
            raise AuditError(
                f"{SETTING}[{model._meta.label!r}][{key!r}]: {model._meta.label} has no "
                f"field {name!r}"
            )
    return ModelConfig(**values)


def _targets(model: type[Model]) -> list[Target]:
    from django.db.models import FileField

    fields = [f for f in model._meta.local_concrete_fields if isinstance(f, FileField)]
    if not fields:
        return []
    config = model_config(model)
    return [Target(model, f.name, config) for f in fields]


def _configured() -> dict[str, dict[str, Any]]:
    """``VOLGUARD_MISSING_FILES``, validated, keyed by lower-case model label."""
    from django.apps import apps
    from django.conf import settings

    value = getattr(settings, SETTING, None) or {}
    if not isinstance(value, dict):
        raise AuditError(f"{SETTING} must be a dict of model label to options, not {value!r}")
    configured: dict[str, dict[str, Any]] = {}
    for label, options in value.items():
        try:
            model = apps.get_model(label)
        except (LookupError, ValueError, TypeError):
            raise AuditError(f"{SETTING}: unknown model {label!r}") from None
        if not isinstance(options, dict) or not set(options) <= _CONFIG_KEYS:
            unknown = sorted(set(options) - _CONFIG_KEYS) if isinstance(options, dict) else []
            raise AuditError(
                f"{SETTING}[{label!r}] must be a dict with keys among "
                f"{', '.join(sorted(_CONFIG_KEYS))}" + (f" (unknown: {unknown})" if unknown else "")
            )
        configured[model._meta.label_lower] = options
    return configured


def _timestamp_field(model: type[Model]) -> str | None:
    """The field that tells a row's age: ``auto_now`` (changed) before ``auto_now_add``."""
    from django.db.models import DateTimeField

    stamps = [f for f in model._meta.concrete_fields if isinstance(f, DateTimeField)]
    for flag in ("auto_now", "auto_now_add"):
        for f in stamps:
            if getattr(f, flag, False):
                return f.name
    return None


# -- results ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AuditRow:
    """One finding about one row: ``reason`` is one of `REASONS`.

    ``owner`` is the owner field's raw value (a user id for a ForeignKey), ``status`` the
    status field's; ``path`` is where the file was looked for (a path, ``s3://…`` or URL;
    empty for a name that was not looked up); ``shared_with`` the number of rows sharing
    the name (reason ``shared``).
    """

    model: str
    pk: Any
    field: str
    name: str | None
    reason: str
    owner: Any = None
    status: Any = None
    detail: str = ""
    path: str = ""
    shared_with: int | None = None

    @property
    def object(self) -> str:
        return f"{self.model}.{self.field}#pk={self.pk}"

    def as_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "pk": self.pk,
            "field": self.field,
            "name": self.name,
            "reason": self.reason,
            "detail": self.detail,
            "owner": self.owner,
            "status": self.status,
            "path": self.path,
            "shared_with": self.shared_with,
        }

    def to_finding(self) -> Finding:
        where = f"row {self.pk} of {self.model}.{self.field}"
        messages = {
            MISSING: f"{where}: file {self.name!r} is missing from storage ({self.path})",
            EMPTY: f"{where}: the file field is empty",
            INVALID_NAME: f"{where}: stored name {self.name!r} {self.detail}; not looked up",
            SHARED: f"{where}: file {self.name!r} is shared by {self.shared_with} rows",
        }
        evidence = {k: v for k, v in self.as_dict().items() if v not in (None, "")}
        return finding(
            FINDING_IDS[self.reason],
            messages[self.reason],
            Location(object=self.object),
            evidence=evidence,
        )


@dataclass
class FieldReport:
    """What the audit of one model field found and what it cost."""

    model: str
    field: str
    storage: str
    config: ModelConfig
    strategy: str = ""
    strategy_detail: str = ""
    storage_requests: int = 0
    total_rows: int = 0
    audited_rows: int = 0
    skipped_recent: int = 0
    empty_allowed: int = 0
    per_reason: Counter[str] = field(default_factory=Counter)
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "field": self.field,
            "storage": self.storage,
            "strategy": self.strategy,
            "strategy_detail": self.strategy_detail,
            "storage_requests": self.storage_requests,
            "total_rows": self.total_rows,
            "audited_rows": self.audited_rows,
            "skipped_recent": self.skipped_recent,
            "empty_allowed": self.empty_allowed,
            "timestamp_field": self.config.timestamp_field,
            "owner_field": self.config.owner_field,
            "status_field": self.config.status_field,
            "per_reason": {r: self.per_reason[r] for r in REASONS},
            "notes": self.notes,
        }


@dataclass
class AuditResult:
    """The whole audit: totals, the problem rows, and per field what was done and found."""

    older_than: timedelta = DEFAULT_OLDER_THAN
    total_rows: int = 0
    audited_rows: int = 0
    skipped_recent: int = 0
    rows: list[AuditRow] = field(default_factory=list)
    per_reason: Counter[str] = field(default_factory=Counter)
    fields: list[FieldReport] = field(default_factory=list)
    storage_requests: int = 0
    duration: float = 0.0
    notes: list[str] = field(default_factory=list)

    @property
    def problems(self) -> list[AuditRow]:
        """Rows without a usable file (missing, empty, invalid name): remediation's input."""
        return [r for r in self.rows if r.reason in PROBLEM_REASONS]

    @property
    def problem_count(self) -> int:
        """Problem rows found (counted even when ``keep_rows=False`` kept none)."""
        return sum(self.per_reason[r] for r in PROBLEM_REASONS)

    @property
    def files_checked(self) -> int:
        """Audited rows that name a file (an empty optional field names none)."""
        return self.audited_rows - sum(f.empty_allowed for f in self.fields)

    @property
    def per_field(self) -> dict[str, Counter[str]]:
        return {f"{f.model}.{f.field}": f.per_reason for f in self.fields}

    @property
    def strategies(self) -> dict[str, str]:
        """The storage strategy used for each ``app.Model.field``."""
        return {f"{f.model}.{f.field}": f.strategy for f in self.fields}

    def to_findings(self) -> list[Finding]:
        """One volguard `Finding` per row and reason: VG401, VG402 or VG403."""
        return [row.to_finding() for row in self.rows]

    def as_dict(self) -> dict[str, Any]:
        """The ``--json`` document."""
        return {
            "total_rows": self.total_rows,
            "audited_rows": self.audited_rows,
            "skipped_recent": self.skipped_recent,
            "older_than_seconds": self.older_than.total_seconds(),
            "files_checked": self.files_checked,
            "missing": self.problem_count,
            "per_reason": {r: self.per_reason[r] for r in REASONS},
            "strategy": self.strategies,
            "storage_requests": self.storage_requests,
            "duration_seconds": round(self.duration, 6),
            "fields": [f.as_dict() for f in self.fields],
            "notes": self.notes,
            "rows": [r.as_dict() for r in self.rows],
        }


# -- the audit ----------------------------------------------------------------------------


def audit(
    targets: Sequence[Target] | None = None,
    *,
    filters: Iterable[tuple[str, Any] | str] = (),
    user_id: Any = None,
    older_than: timedelta = DEFAULT_OLDER_THAN,
    batch_size: int = DEFAULT_BATCH_SIZE,
    strategy: storage_index.Strategy = "auto",
    per_row_max: int | None = None,
    on_row: Callable[[AuditRow], None] | None = None,
    keep_rows: bool = True,
    now: datetime | None = None,
) -> AuditResult:
    """Audit ``targets`` (default: `discover()`), read-only; see the module docstring.

    ``filters`` are Django lookups (``("processing_status", "failed")`` or the text
    ``"processing_status=failed"``), ANDed; ``user_id`` filters on each model's owner
    field. A model that lacks a filter's field (or an owner field, for ``user_id``) is left
    out with a note; none left is an `AuditError`. ``on_row`` gets each problem or shared
    row as soon as its batch is complete; ``keep_rows=False`` keeps none in the result.
    Raises `AuditError` for bad input or an unreadable storage.
    """
    from django.conf import settings
    from django.utils import timezone

    if batch_size < 1:
        raise AuditError(f"batch size must be at least 1, not {batch_size}")
    started = time.perf_counter()
    result = AuditResult(older_than=older_than)
    lookups = [parse_filter(f) if isinstance(f, str) else tuple(f) for f in filters]
    plans = _plan(discover() if targets is None else list(targets), lookups, user_id, result)
    if per_row_max is None:
        per_row_max = getattr(settings, PER_ROW_MAX_SETTING, storage_index.PER_ROW_MAX)
    cutoff = (now or timezone.now()) - older_than if older_than > timedelta(0) else None

    def deliver(rows: list[AuditRow]) -> None:
        result.per_reason.update(row.reason for row in rows)
        if keep_rows:
            result.rows.extend(rows)
        if on_row is not None:
            for row in rows:
                on_row(row)

    for target, target_lookups in plans:
        report = _FieldAudit(target, target_lookups, cutoff, batch_size, deliver).run(
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
        storage = storage_index.unwrap(model._meta.get_field(field_name).storage)
        index = storage_index.PerRowIndex(storage, gone_directories=True)
        current = (
            _values_by_pk(model._default_manager, [r.pk for r in group], [field_name])
            if names
            else None
        )
        for row in group:
            if current is not None and (
                row.pk not in current or (current[row.pk][0] or None) != (row.name or None)
            ):
                continue  # deleted, or a new file was stored since the audit
            if row.reason == MISSING:
                try:
                    if index.exists(row.name or ""):
                        continue
                except storage_index.StorageIndexError as e:
                    raise AuditError(str(e)) from e
            still.append(row)
    return still


class _FieldAudit:
    """The audit of one target: counts, the shared names, the index, then the stream."""

    def __init__(
        self,
        target: Target,
        lookups: list[tuple[str, Any]],
        cutoff: datetime | None,
        batch_size: int,
        deliver: Callable[[list[AuditRow]], None],
    ) -> None:
        self.target = target
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
        #: Whether the rows may be read on a connection of their own (see `_row_chunks`).
        self.own_connection = False

    def run(self, strategy: storage_index.Strategy, per_row_max: int) -> FieldReport:
        from django.db import DatabaseError

        try:
            base, scope, recent = self._scope()
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
            )
            self._stream(scope, index)
            counts, shared_names = background()
            if counts is not None:
                self.report.total_rows, self.report.skipped_recent = counts
            self._shared(scope, shared_names)
        except storage_index.StorageIndexError as e:
            raise AuditError(str(e)) from e
        except DatabaseError as e:
            raise AuditError(f"cannot read {self.target}: {str(e).strip()}") from e
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

    def _scope(self) -> tuple[QuerySet, QuerySet, dict[str, Any] | None]:
        """The rows the filters select (``base``), those of them to audit (``scope``:
        not skipped by the grace period), and the lookup that selects the recent ones."""
        from django.core.exceptions import FieldError, ValidationError

        base = self.target.model._default_manager.order_by()
        try:
            for key, value in self.lookups:
                base = base.filter(**{key: value})
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

        connection = connections[self.target.model._default_manager.db]
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
            rows = self.target.model._default_manager.order_by().exclude(**{name: ""})
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
                if found and len(name) <= short and "\\" not in name:
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
            if len(pending) >= batch_size:
                flush(pending)

        audited = 0
        rows = scope.values_list("pk", self.target.field_name)
        directories = index if isinstance(index, storage_index.DirectoryIndex) else None
        plain: dict[str, Container[str]] = {}
        get = plain.get
        chunks = _row_chunks(rows, batch_size, own_connection=self.own_connection)
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
        for chunk in _chunks(sorted(names), _IN_CHUNK):
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
            manager = self.target.model._default_manager
            facts = _values_by_pk(manager, [p[0] for p in pending], columns)
        label, field_name = self.target.label, self.target.field_name
        has_owner, has_status = config.owner_field is not None, config.status_field is not None
        rows: list[AuditRow] = []
        for pk, name, reason, detail, shared_with in pending:
            values = facts.get(pk)  # (owner, status), either left out when not configured
            owner = values[0] if has_owner and values else None
            status = values[-1] if has_status and values else None
            if reason == MISSING:  # validated by _stream: looked up
                path = locate(name)
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


# -- names, filters, durations ------------------------------------------------------------


def parse_filter(text: str) -> tuple[str, Any]:
    """``field=value`` (any Django lookup) as a ``(lookup, value)`` pair.

    ``…__in=a,b`` gives a list; ``…__isnull=true|false`` a boolean.
    """
    key, sep, value = text.partition("=")
    key = key.strip()
    if not sep or not _FILTER_KEY.fullmatch(key):
        raise AuditError(f"bad filter {text!r}: use field=value, e.g. processing_status=failed")
    if key.endswith("__in"):
        return key, [v.strip() for v in value.split(",")]
    if key.endswith("__isnull"):
        flag = value.strip().lower()
        if flag not in ("true", "false", "1", "0"):
            raise AuditError(f"bad filter {text!r}: __isnull takes true or false")
        return key, flag in ("true", "1")
    return key, value


def parse_duration(text: str) -> timedelta:
    """``30s``, ``10m``, ``2h``, ``1d``, or ``0`` (no grace period) as a timedelta."""
    match = _DURATION.fullmatch(text.strip().lower())
    if not match or (not match[2] and int(match[1]) != 0):
        raise AuditError(
            f"bad duration {text!r}: use a number and a unit (30s, 10m, 2h, 1d), or 0 to disable"
        )
    return timedelta(seconds=int(match[1]) * _DURATION_UNITS.get(match[2], 1))


def format_duration(value: timedelta) -> str:
    """The shortest `parse_duration` text for ``value`` (``600 s`` → ``10m``)."""
    seconds = int(value.total_seconds())
    for unit in ("d", "h", "m"):
        if seconds and seconds % _DURATION_UNITS[unit] == 0:
            return f"{seconds // _DURATION_UNITS[unit]}{unit}"
    return f"{seconds}s" if seconds else "0"


def _row_chunks(
    rows: QuerySet, chunk_size: int, *, own_connection: bool
) -> Iterator[Sequence[Any]]:
    """``rows.iterator(chunk_size)`` (a ``values_list`` queryset) a chunk at a time.

    The chunks are the lists of tuples the database cursor fetches (a server-side cursor
    where ``iterator()`` would use one), so the caller loops over plain lists instead of
    Django's per-row generators. When a column needs a converter (a UUID primary key on
    SQLite, a field's ``from_db_value``), the rows come from ``iterator()`` itself.

    ``own_connection`` (outside any transaction): on PostgreSQL the rows are read on a
    connection of their own, in a transaction, whose server-side cursor then needs no
    ``WITH HOLD``, which would copy the whole result on the server (to a temporary file,
    for a large table) before the first row. The caller's connection stays free for its
    own queries, outside that transaction.
    """
    from django.db import connections
    from django.db.models.sql.constants import MULTI

    connection = connections[rows.db]
    chunked = not connection.settings_dict.get("DISABLE_SERVER_SIDE_CURSORS")
    reader = None
    if own_connection and chunked and connection.vendor == "postgresql":
        reader = connection = connections.create_connection(rows.db)
    try:
        if reader is not None:
            reader.set_autocommit(False)
        compiler = rows.query.get_compiler(connection=connection)
        results = compiler.execute_sql(MULTI, chunked_fetch=chunked, chunk_size=chunk_size)
        select = compiler.select or []  # not set up when the query is known to be empty
        fields = [s[0] for s in select[0 : getattr(compiler, "col_count", None) or len(select)]]
        composite = getattr(compiler, "has_composite_fields", None)  # Django 5.2+
        if compiler.get_converters(fields) or (composite is not None and composite(fields)):
            converted = compiler.results_iter(results, tuple_expected=True)
            while chunk := list(islice(converted, chunk_size)):
                yield chunk
            return
        yield from results
    finally:
        if reader is not None:
            reader.close()  # and with it the transaction, which only read


def _values_by_pk(manager: Any, pks: list[Any], columns: Sequence[str]) -> dict[Any, tuple]:
    """``{pk: (values of columns)}`` for those rows of ``pks`` that exist.

    By ``IN (…)`` queries of `_IN_CHUNK` keys, or, when the keys are integers lying close
    together (at least half of their range, as in a batch of a mostly missing table), by
    one range query whose other rows are dropped: far fewer parameters to send and parse.
    Other integer keys on PostgreSQL go as one array (``IN (SELECT unnest(%s))``).
    """
    from django.db import connections

    wanted = set(pks)
    found: dict[Any, tuple] = {}
    rows = manager.order_by()
    if wanted and all(type(pk) is int for pk in wanted):
        low, high = min(wanted), max(wanted)
        if high - low < 2 * len(wanted):
            for pk, *values in rows.filter(pk__gte=low, pk__lte=high).values_list("pk", *columns):
                if pk in wanted:
                    found[pk] = tuple(values)
            return found
        if connections[rows.db].vendor == "postgresql":
            for pk, *values in pk_in(rows, sorted(wanted)).values_list("pk", *columns):
                found[pk] = tuple(values)
            return found
    for chunk in _chunks(list(wanted), _IN_CHUNK):
        for pk, *values in rows.filter(pk__in=chunk).values_list("pk", *columns):
            found[pk] = tuple(values)
    return found


def pk_in(queryset: QuerySet, pks: Sequence[Any]) -> QuerySet:
    """``queryset.filter(pk__in=pks)``, cheaper for integer keys.

    Keys that are exactly a run of consecutive integers (a batch of a mostly missing
    table) become one range, ``pk BETWEEN low AND high``: nothing to send or look up per
    key. On PostgreSQL other integer keys go as one array: ``IN (%s, %s, …)`` with
    thousands of parameters costs more to build and for psycopg to parse than the query
    itself, ``IN (SELECT unnest(%s))`` sends one parameter, in its text form (``{1,2,3}``:
    five times cheaper for psycopg than a list of ints).
    """
    from django.db import connections
    from django.db.models.expressions import RawSQL

    keys = list(pks)
    if not keys or not all(type(pk) is int for pk in keys):
        return queryset.filter(pk__in=keys)
    low, high = min(keys), max(keys)
    if high - low + 1 == len(keys) == len(set(keys)):
        return queryset.filter(pk__gte=low, pk__lte=high)
    if connections[queryset.db].vendor == "postgresql":
        array = "{" + ",".join(map(str, keys)) + "}"
        return queryset.filter(pk__in=RawSQL("SELECT unnest(%s::bigint[])", (array,)))
    return queryset.filter(pk__in=keys)


def _chunks(items: list[Any], size: int) -> Iterable[list[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
