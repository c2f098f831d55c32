"""Remediation for ``check_missing_files --fix`` / ``--delete``: acting on an audit's rows.

The audit (`volguard.django.missing_files`) is read-only; this module is the only part
that writes, so every safety rule of issue #5 lives here:

- **Candidates.** Only rows without a file: reason ``missing``, and ``empty`` (reported only
  for required fields). Invalid names (VG402) are left alone — the file may well exist under
  a name we refuse to follow — and shared-only rows (VG403) have a file. ``--delete`` also
  never deletes a row whose name another row still uses. The rule is
  `volguard.audit_document.candidates`, which the Fly side's plan applies too.
- **Interlock (VG404).** A failed mount looks exactly like "every file is missing", so
  before changing anything `interlock` refuses when a FileSystemStorage root is missing or
  holds no file at all, or when more than ``--max-missing`` of the audited rows are
  candidates (`volguard.audit_document.parse_max_missing`). ``--force`` overrides, and
  every log entry of the run then says ``forced``.
- **Re-check.** Each batch's files are re-checked (`missing_files.recheck`: still absent) just
  before it is changed, and its rows re-read under a row lock inside the transaction
  (still there, with the same name), so an upload that landed during the audit, or a row
  re-uploaded under a new name, is never marked.
- **Bulk, batched, idempotent.** One ``transaction.atomic()`` per batch, one
  ``filter(pk__in=…).update(…)`` (or ``delete()``) per batch, never a per-row ``save()``.
  The log is appended with a database expression, and the update is guarded so a row that
  is already failed with the message as its last line is not touched: a second run changes
  nothing and logs nothing.
- **Every change logged once, kill-safe.** Each batch's entries are journaled inside its
  transaction and appended to the JSONL log right after it commits (`volguard.audit_log`:
  ``Pending``). A run killed at any point leaves at most a journal, which the next run
  settles first (`recover`): entries whose change is in place are logged (unless already
  logged), the others dropped. The re-run then finds the changed rows done and leaves
  them alone, so the end state and the log are those of one uninterrupted run.
- **Delete exports first.** The rows are serialized (``django.core.serializers`` "json",
  full rows, ``loaddata``-compatible) and written atomically (temporary file, fsync, rename)
  before the first row is deleted. Files are never deleted.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import tempfile
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from volguard import audit_document
from volguard.audit_document import MaxMissing
from volguard.audit_log import AuditLog, Pending
from volguard.django import storage_index
from volguard.django.audit_result import AuditResult, AuditRow
from volguard.django.missing_files import recheck
from volguard.django.queries import IN_CHUNK, chunks, pk_in
from volguard.django.targets import model_config
from volguard.errors import RemediationError

if TYPE_CHECKING:
    from django.db.models import Model

DEFAULT_EXPORT_DIR = os.path.join(".volguard", "exports")
#: How much of the log field an entry keeps as ``before.log_tail``.
LOG_TAIL_CHARS = 200


@dataclass
class Remediation:
    """What a ``--fix`` or ``--delete`` run planned and did: the command's report of it."""

    action: str  # "fix" or "delete"
    planned: Counter[str] = field(default_factory=Counter)
    left_alone: Counter[str] = field(default_factory=Counter)
    forced: bool = False
    overridden: list[str] = field(default_factory=list)
    changed: int = 0
    already_done: int = 0
    rechecked_away: int = 0
    export: str | None = None
    audit_log: str = ""
    notes: list[str] = field(default_factory=list)

    @property
    def planned_total(self) -> int:
        return sum(self.planned.values())

    def as_dict(self) -> dict[str, Any]:
        """The ``remediation`` section of ``--json``."""
        return {
            "action": self.action,
            "planned": dict(sorted(self.planned.items())),
            "planned_total": self.planned_total,
            "left_alone": dict(sorted(self.left_alone.items())),
            "forced": self.forced,
            "overridden": self.overridden,
            "changed": self.changed,
            "already_done": self.already_done,
            "rechecked_away": self.rechecked_away,
            "export": self.export,
            "audit_log": self.audit_log,
            "notes": self.notes,
        }


# -- plan and interlock -------------------------------------------------------------------


def candidates(result: AuditResult, *, for_delete: bool = False) -> list[AuditRow]:
    """The rows to act on: missing or empty; for delete, none whose file another row uses.

    A missing file shared by several rows gives each a ``missing`` and a ``shared`` row: it
    is marked failed (none of them has the file), but never deleted (VG403).
    """
    return audit_document.candidates(
        result.rows,
        reason=lambda r: r.reason,
        key=lambda r: (r.model, r.field, r.pk),
        for_delete=for_delete,
    )


def plan(result: AuditResult, action: str) -> tuple[Remediation, list[AuditRow]]:
    """The `Remediation` report's plan (counts per reason) and the candidate rows."""
    rows = candidates(result, for_delete=action == "delete")
    report = Remediation(action=action)
    report.planned.update(r.reason for r in rows)
    # The candidates are some of the audit's rows: what is left is the difference.
    report.left_alone.update(r.reason for r in result.rows)
    report.left_alone.subtract(report.planned)
    report.left_alone = +report.left_alone  # drops the reasons with nothing left
    return report, rows


def interlock(result: AuditResult, rows: Sequence[AuditRow], max_missing: MaxMissing) -> list[str]:
    """Why acting on ``rows`` now would be unsafe (VG404); empty when it is safe.

    What an unmounted volume looks like: a FileSystemStorage root that is missing, holds no
    file at all, or is not on the volume's filesystem where one is expected
    (`volguard.django.filesystem`: ``VOLGUARD_EXPECT_MOUNT``, on by default on Fly); for S3,
    a bucket that cannot be listed or a location with no object. And a sudden jump in
    missing rows, hence the ``max_missing`` cap.
    """
    from volguard.django import filesystem

    try:
        expected = filesystem.configured_expectation()
    except ValueError as e:
        raise RemediationError(str(e)) from None
    reasons: list[str] = []
    seen: set[tuple[str, str]] = set()
    for label, field_name in sorted({(r.model, r.field) for r in rows}):
        storage = storage_index.unwrap(_model(label)._meta.get_field(field_name).storage)
        kind = storage_index.storage_kind(storage)
        if kind == "filesystem":
            root = str(storage.location)
            if ("filesystem", root) in seen:
                continue
            seen.add(("filesystem", root))
            if not os.path.isdir(root):
                reasons.append(f"the storage root {root} does not exist (volume not mounted?)")
            elif not _holds_a_file(root):
                reasons.append(f"the storage root {root} holds no files (volume not mounted?)")
            elif problem := filesystem.mount_problem(root, expected):
                reasons.append(f"the storage root {problem}")
        elif kind == "s3":
            where = storage_index.s3_key_prefix(storage, "")
            key = f"{getattr(storage, 'bucket_name', '?')}/{where}"
            if ("s3", key) in seen:
                continue
            seen.add(("s3", key))
            if problem := _s3_root_problem(storage, where):
                reasons.append(problem)
    limit = max_missing.limit(result.audited_rows)
    if len(rows) > limit:
        reasons.append(
            f"{len(rows)} of {result.audited_rows} audited rows are missing their file, more "
            f"than --max-missing {max_missing.text}"
        )
    return reasons


def _s3_root_problem(storage: Any, prefix: str) -> str | None:
    """Why an S3 storage looks wrong (bucket missing, nothing under its location), or None."""
    bucket = getattr(storage, "bucket_name", "?")
    try:
        client = storage.connection.meta.client
        page = client.list_objects_v2(Bucket=bucket, Prefix=prefix, MaxKeys=1)
    except Exception as e:  # botocore's ClientError (NoSuchBucket, AccessDenied), network
        return f"cannot list the bucket {bucket!r}: {_one_line(e)} (wrong bucket or credentials?)"
    if not page.get("KeyCount") and not page.get("Contents"):
        where = f"under {prefix!r} " if prefix else ""
        return f"the bucket {bucket!r} holds no objects {where}(wrong bucket or location?)"
    return None


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split())[:300]


def _holds_a_file(root: str) -> bool:
    """Whether any file lies under ``root``; stops at the first one."""
    return any(files for _dirpath, _dirs, files in os.walk(root))


# -- --fix --------------------------------------------------------------------------------


def fix(
    report: Remediation,
    rows: Sequence[AuditRow],
    *,
    log: AuditLog,
    batch_size: int,
) -> Remediation:
    """Mark ``rows`` failed and append the message to their log; see the module docstring."""
    for (label, field_name), group in _by_field(rows).items():
        model = _model(label)
        config = model_config(model)
        if config.status_field is None:
            report.notes.append(f"left {label} alone: no status field (set status_field)")
            continue
        for batch in chunks(group, batch_size):
            _fix_batch(report, model, field_name, batch, log)
    return report


def _fix_batch(
    report: Remediation, model: type[Model], field_name: str, batch: list[AuditRow], log: AuditLog
) -> None:
    from django.db.models import Q

    config = model_config(model)
    status, failed, log_field = config.status_field, config.failed_value, config.log_field
    assert status is not None
    message = config.message
    still = recheck(batch, names=False)  # the locked read below compares the names
    report.rechecked_away += len(batch) - len(still)
    if not still:
        return
    names = {r.pk: r.name for r in still}
    columns = [status] + ([log_field] if log_field else [])
    manager = model._default_manager
    with _atomic_batch(manager.db) as journals:
        locked = _locked(pk_in(manager.all(), list(names)), manager.db)
        current = {pk: rest for pk, *rest in locked.values_list("pk", field_name, *columns)}
        entries: list[tuple[Any, dict[str, Any]]] = []
        for pk, name in names.items():
            if pk not in current or (current[pk][0] or None) != (name or None):
                report.rechecked_away += 1  # deleted, or a new file since the re-check
                continue
            before_status = current[pk][1]
            before_log = current[pk][2] if log_field else None
            if before_status == failed and (not log_field or _ends_with(before_log, message)):
                report.already_done += 1
                continue
            entries.append((pk, {"status": before_status, "log_tail": _tail(before_log)}))
        if not entries:
            return
        changing = [pk for pk, _ in entries]
        done = Q(**{status: failed})
        values: dict[str, Any] = {status: failed}
        if log_field:
            has_message = Q(**{log_field: message})
            has_message |= Q(**{f"{log_field}__endswith": "\n" + message})
            done &= has_message
            values[log_field] = _appended(model, log_field, message, has_message)
        report.changed += pk_in(manager.all(), changing).exclude(done).update(**values)
        target, after = model._meta.label, {"status": failed}  # one object: serialized once
        _journal(
            journals,
            log,
            "mark_failed",
            [(f"{target}#pk={pk}", before, after) for pk, before in entries],
            using=manager.db,
            field=field_name,
            forced=report.forced,
            overridden=report.overridden,
            **({"export": report.export} if report.export else {}),
        )


def _appended(model: type[Model], log_field: str, message: str, has_message: Any) -> Any:
    """The log field with ``message`` as a new last line, as one SQL expression.

    Unchanged when the message already is the last line (idempotent); the message alone
    when the log is empty (or NULL), so no leading blank line.
    """
    from django.db.models import Case, F, Q, Value, When
    from django.db.models.functions import Concat

    column = model._meta.get_field(log_field)
    empty = Q(**{log_field: ""})
    if column.null:
        empty |= Q(**{f"{log_field}__isnull": True})
    # Output fields set from the column: Value() of a str is a CharField, the log a TextField.
    return Case(
        When(has_message, then=F(log_field)),
        When(empty, then=Value(message, output_field=column)),
        default=Concat(F(log_field), Value("\n" + message), output_field=column),
        output_field=column,
    )


def _ends_with(text: str | None, message: str) -> bool:
    """Whether ``message`` is the log's last line, ignoring case.

    Ignoring case because SQLite's ``LIKE`` (``__endswith``) does, for ASCII: a row this
    calls done is also left alone by the update's guard, so every logged row changed.
    """
    if not text:
        return False
    text, message = text.lower(), message.lower()
    return text == message or text.endswith("\n" + message)


def _tail(text: str | None) -> str | None:
    """The last line of a log (at most `LOG_TAIL_CHARS`): enough to see what was there."""
    if text is None:
        return None
    return text[-LOG_TAIL_CHARS:].rpartition("\n")[2]  # never more than the tail is scanned


# -- --delete -----------------------------------------------------------------------------


def default_export_path(rows: Sequence[AuditRow], now: dt.datetime | None = None) -> str:
    """``.volguard/exports/<model>-<UTC timestamp>.json`` (``several`` for several models)."""
    labels = sorted({r.model.lower() for r in rows})
    model = labels[0] if len(labels) == 1 else "several"
    stamp = (now or dt.datetime.now(dt.UTC)).strftime("%Y%m%dT%H%M%S%fZ")
    return os.path.join(DEFAULT_EXPORT_DIR, f"{model}-{stamp}.json")


def delete(
    report: Remediation,
    rows: Sequence[AuditRow],
    *,
    log: AuditLog,
    batch_size: int,
    export: str,
) -> Remediation:
    """Export then delete ``rows`` (re-checked); see the module docstring.

    The export holds every row re-checked as a candidate, written before the first delete;
    a row the in-transaction check then spares is in it too, harmlessly (it still exists).
    """
    still = recheck(rows)
    report.rechecked_away += len(rows) - len(still)
    if not still:
        return report
    export_rows(report, still, export)
    for (label, field_name), group in _by_field(still).items():
        model = _model(label)
        for batch in chunks(group, batch_size):
            _delete_batch(report, model, field_name, batch, log)
    return report


def export_rows(report: Remediation, rows: Sequence[AuditRow], path: str) -> None:
    """Write ``rows`` to ``path`` as loaddata JSON before acting; the path goes in the report."""
    write_export(path, rows)
    report.export = path


def write_export(path: str, rows: Iterable[AuditRow]) -> None:
    """The full rows as ``loaddata``-compatible JSON, written atomically at ``path``."""
    from django.core import serializers

    objects: list[Any] = []
    for (label, _field_name), group in _by_field(rows).items():
        manager = _model(label)._default_manager
        pks = [r.pk for r in group]
        for chunk in chunks(pks, IN_CHUNK):
            objects.extend(manager.filter(pk__in=chunk).order_by("pk"))
    # Django's "json" format, built from its "python" serializer so that times keep their
    # microseconds: DjangoJSONEncoder cuts them to milliseconds, and a restore would differ.
    text = json.dumps(serializers.serialize("python", objects), cls=_exact_encoder(), indent=2)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".export-", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _exact_encoder() -> type[json.JSONEncoder]:
    from django.core.serializers.json import DjangoJSONEncoder

    class ExactEncoder(DjangoJSONEncoder):
        """DjangoJSONEncoder without its cut of microseconds to milliseconds."""

        def default(self, o: Any) -> Any:
            if isinstance(o, dt.datetime | dt.time):
                text = o.isoformat()
                return text[:-6] + "Z" if text.endswith("+00:00") else text
            return super().default(o)

    return ExactEncoder


def _delete_batch(
    report: Remediation, model: type[Model], field_name: str, batch: list[AuditRow], log: AuditLog
) -> None:

    config = model_config(model)
    columns = [c for c in (config.status_field, config.log_field) if c]
    # Again, just before (the export may have taken a while); the locked read compares names.
    still = recheck(batch, names=False)
    report.rechecked_away += len(batch) - len(still)
    names = {r.pk: r.name for r in still}
    if not names:
        return
    manager = model._default_manager
    with _atomic_batch(manager.db) as journals:
        locked = _locked(pk_in(manager.all(), list(names)), manager.db)
        current = {pk: rest for pk, *rest in locked.values_list("pk", field_name, *columns)}
        used = set(
            manager.filter(**{f"{field_name}__in": [n for n in names.values() if n]})
            .exclude(pk__in=list(names))
            .values_list(field_name, flat=True)
        )
        entries: list[tuple[Any, dict[str, Any]]] = []
        for pk, name in names.items():
            if pk not in current or (current[pk][0] or None) != (name or None):
                report.rechecked_away += 1
                continue
            if name and name in used:
                report.notes.append(f"kept {model._meta.label} #{pk}: another row uses {name!r}")
                continue
            rest = dict(zip(columns, current[pk][1:], strict=True))
            before = {
                "status": rest.get(config.status_field) if config.status_field else None,
                "log_tail": _tail(rest.get(config.log_field)) if config.log_field else None,
                "name": name,
            }
            entries.append((pk, before))
        if not entries:
            return
        deleted, _ = manager.filter(pk__in=[pk for pk, _ in entries]).delete()
        report.changed += len(entries)
        if deleted > len(entries):
            report.notes.append(f"{deleted - len(entries)} related rows deleted by cascade")
        target = model._meta.label
        _journal(
            journals,
            log,
            "delete",
            [(f"{target}#pk={pk}", before, None) for pk, before in entries],
            using=manager.db,
            field=field_name,
            forced=report.forced,
            overridden=report.overridden,
            export=report.export,
        )


# -- shared -------------------------------------------------------------------------------


@contextlib.contextmanager
def _atomic_batch(using: str) -> Iterator[list[Pending]]:
    """``transaction.atomic`` for one batch; its journals are abandoned if it rolls back."""
    from django.db import transaction

    journals: list[Pending] = []
    try:
        with transaction.atomic(using=using):
            yield journals
    except BaseException:
        for pending in journals:
            pending.abandon()  # a no-op once its commit has begun: recovery settles it
        raise


def _journal(
    journals: list[Pending],
    log: AuditLog,
    action: str,
    entries: list[tuple[str, Any, Any]],
    *,
    using: str,
    **more: Any,
) -> Pending:
    """Journal the batch's log lines now, inside its transaction; log them once it commits.

    See `volguard.audit_log`: a kill anywhere leaves a journal that `recover` settles; the
    caller abandons the journal when the transaction rolls back (on_commit never runs).
    """
    from django.db import transaction

    pending = log.prepare(action, entries, **more)
    journals.append(pending)
    transaction.on_commit(pending.commit, using=using)
    return pending


def recover(log: AuditLog) -> tuple[int, int]:
    """Settle journals left by a killed ``--fix``/``--delete``: ``(logged, dropped)``.

    An entry is logged when its change is in place (the row is failed with the message as
    its log's last line; the deleted row is gone), dropped when its batch rolled back.
    """
    return log.recover(_in_place)


def _in_place(entry: dict[str, Any]) -> bool:
    label, _, pk = str(entry.get("target", "")).partition("#pk=")
    try:
        model = _model(label)
    except (LookupError, ValueError):
        return False
    manager = model._default_manager
    if entry.get("action") == "delete":
        return not manager.filter(pk=pk).exists()
    config = model_config(model)
    if entry.get("action") != "mark_failed" or config.status_field is None:
        return False
    columns = [config.status_field] + ([config.log_field] if config.log_field else [])
    row = manager.filter(pk=pk).values_list(*columns).first()
    if row is None:
        return False
    if row[0] != config.failed_value:
        return False
    return not config.log_field or _ends_with(row[1], config.message)


def _locked(queryset: Any, using: str) -> Any:
    """``select_for_update()`` where the backend has it (SQLite locks the whole database)."""
    from django.db import connections

    if connections[using].features.has_select_for_update:
        return queryset.select_for_update()
    return queryset


def _by_field(rows: Iterable[AuditRow]) -> dict[tuple[str, str], list[AuditRow]]:
    groups: dict[tuple[str, str], list[AuditRow]] = {}
    for row in rows:
        groups.setdefault((row.model, row.field), []).append(row)
    return groups


def _model(label: str) -> type[Model]:
    from django.apps import apps

    return apps.get_model(label)
