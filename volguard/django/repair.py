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
  holds no file at all, or when more than ``--max-missing`` of the rows of a model field
  that name a file are candidates (`volguard.audit_document.parse_max_missing`): rows whose
  optional file field is empty are not in that share, so 8 missing files of 9 stay 89%
  beside any number of rows without a file. ``--force`` overrides, and every log entry of
  the run then says ``forced``.
- **Rows as stored.** Every read, the export and the delete go through Django's plain
  ``QuerySet`` (`volguard.django.queries.base_rows`), never an app's manager that filters
  rows out or downcasts them (django-polymorphic).
- **Re-check under the lock.** Each batch's rows are re-read under a row lock inside its
  transaction (still there, with the same name), and only then are their files re-checked
  (`missing_files.recheck`: still absent, on a volume or S3 alike). A file uploaded again
  at any time before the row is changed is seen, and the row left alone.
- **Bulk, batched, idempotent.** One ``transaction.atomic()`` per batch, one
  ``filter(pk__in=…).update(…)`` (or one deletion) per batch, never a per-row ``save()``.
  The log is appended with a database expression, and the update is guarded so a row that
  is already failed with the message as its last line is not touched: a second run changes
  nothing and logs nothing.
- **Every change logged once, kill-safe.** Each batch's entries are journaled inside its
  transaction and appended to the JSONL log right after it commits (`volguard.audit_log`:
  ``Pending``). A run killed at any point leaves at most a journal, which the next run
  settles first (`recover`): entries whose change is in place are logged (unless already
  logged), the others dropped. The re-run then finds the changed rows done and leaves
  them alone, so the end state and the log are those of one uninterrupted run.
- **What a delete takes with it** (`plan_delete`). Deleting a row through Django also
  deletes what CASCADE foreign keys, many-to-many links, generic relations and multi-table
  inheritance tie to it, and runs the ``pre_delete``/``post_delete`` receivers of every
  model involved (django-cleanup and its like delete files there). Before anything is
  deleted, Django's deletion collector (as the admin's confirmation page uses it) computes
  the whole set: every row it removes is exported and logged; rows a PROTECT or RESTRICT
  key guards, or rows it would change (SET_NULL, SET_DEFAULT, SET()), refuse the delete,
  naming models and counts; receivers other than Django's own are named and refuse it
  unless ``--allow-delete-receivers``.
- **Delete exports first.** Every row the delete removes is serialized (``django.core.
  serializers`` "json", full rows, multi-table parents before their children, in an order
  ``loaddata`` restores) and written to a new file, owner-only (``0600``), never over an
  existing one (`volguard.safeio.write_new`), before the first row is deleted. Under each
  batch's lock the rows are compared with their export, and the batch's collector is the
  one that deletes: a row changed since the export is left alone, so the export holds
  every deleted row as it was when deleted. Files are never deleted by volguard.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
from collections import Counter
from collections.abc import Container, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from volguard import audit_document
from volguard.audit_document import MaxMissing
from volguard.audit_log import AuditLog, Pending
from volguard.django import storage_index
from volguard.django.audit_result import AuditResult, AuditRow
from volguard.django.missing_files import recheck
from volguard.django.queries import IN_CHUNK, base_rows, chunks, pk_in
from volguard.django.targets import model_config
from volguard.errors import RemediationError
from volguard.safeio import write_new

if TYPE_CHECKING:
    from django.db.models import Model

DEFAULT_EXPORT_DIR = os.path.join(".volguard", "exports")
#: The flag that lets ``--delete`` run the app's delete receivers.
ALLOW_RECEIVERS_FLAG = "--allow-delete-receivers"
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
    #: Rows a --delete removed with the candidates (cascades, parents), per model label.
    cascade: Counter[str] = field(default_factory=Counter)
    #: pre_delete/post_delete receivers the --delete ran (with --allow-delete-receivers).
    receivers: list[str] = field(default_factory=list)
    #: ``--fix --export``: the exported rows by ``(model, pk)``, compared under the lock.
    exported: dict[tuple[str, Any], dict[str, Any]] | None = field(default=None, repr=False)

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
            "cascade": dict(sorted(self.cascade.items())),
            "receivers": self.receivers,
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
    reasons.extend(_too_many(result, rows, max_missing))
    return reasons


def _too_many(result: AuditResult, rows: Sequence[AuditRow], max_missing: MaxMissing) -> list[str]:
    """The ``--max-missing`` cap: a share per model field, of the rows that name a file.

    A row whose optional file field is empty has no file to lose: counting it would let a
    table of mostly empty fields hide any share of missing files. A required field left
    empty is a candidate and counts (`AuditResult.files_checked`, per field). A count cap
    (``50``) is over the whole run.
    """
    named = {(f.model, f.field): f.audited_rows - f.empty_allowed for f in result.fields}
    per_field = Counter((r.model, r.field) for r in rows)
    if max_missing.fraction is None:
        if len(rows) > max_missing.limit(0):
            total = sum(named.get(key, n) for key, n in per_field.items())
            return [
                f"{len(rows)} of {total} audited rows are missing their file, more than "
                f"--max-missing {max_missing.text}"
            ]
        return []
    reasons: list[str] = []
    for (label, field_name), count in sorted(per_field.items()):
        total = max(named.get((label, field_name), count), count)
        if count > max_missing.limit(total):
            reasons.append(
                f"{count} of {total} audited rows of {label}.{field_name} that name a file "
                f"are missing it, more than --max-missing {max_missing.text}"
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
    """Mark ``rows`` failed and append the message to their log; see the module docstring.

    After `export_rows` (``--fix --export``), a row changed since its export is left alone,
    so the export holds every changed row as it was when it changed.
    """
    for (label, field_name), group in _by_field(rows).items():
        model = _model(label)
        config = model_config(model)
        if config.status_field is None:
            report.notes.append(f"left {label} alone: no status field (set status_field)")
            continue
        for batch in chunks(group, batch_size):
            _fix_batch(report, model, field_name, batch, log, report.exported)
    return report


def _fix_batch(
    report: Remediation,
    model: type[Model],
    field_name: str,
    batch: list[AuditRow],
    log: AuditLog,
    exported: dict[tuple[str, Any], dict[str, Any]] | None = None,
) -> None:
    from django.db.models import Q

    config = model_config(model)
    status, failed, log_field = config.status_field, config.failed_value, config.log_field
    assert status is not None
    message = config.message
    names = {r.pk: r.name for r in batch}
    columns = [status] + ([log_field] if log_field else [])
    rows = base_rows(model)
    with _atomic_batch(rows.db) as journals:
        locked = _locked(pk_in(rows, list(names)), rows.db)
        current = {pk: rest for pk, *rest in locked.values_list("pk", field_name, *columns)}
        # Still there under the same name (not deleted, not given a new file since the
        # audit), and only now, with the rows locked, re-checked in storage: a file
        # uploaded again while this run waited for the lock is seen here.
        same = [
            r for r in batch if r.pk in current and (current[r.pk][0] or None) == (r.name or None)
        ]
        still = recheck(same, names=False)
        report.rechecked_away += len(batch) - len(still)
        if exported is not None and still:
            now = {o.pk: o for o in pk_in(rows, [r.pk for r in still])}  # locked above
            unchanged = [
                r
                for r in still
                if all(_as_exported(o, exported) for o in (*_parents(now[r.pk]), now[r.pk]))
            ]
            for row in still:
                if row not in unchanged:
                    report.notes.append(
                        f"kept {model._meta.label} #{row.pk}: changed since the export; run again"
                    )
            still = unchanged
        entries: list[tuple[Any, dict[str, Any]]] = []
        for row in still:
            before_status = current[row.pk][1]
            before_log = current[row.pk][2] if log_field else None
            if before_status == failed and (not log_field or _ends_with(before_log, message)):
                report.already_done += 1
                continue
            entries.append((row.pk, {"status": before_status, "log_tail": _tail(before_log)}))
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
        report.changed += pk_in(rows, changing).exclude(done).update(**values)
        target, after = model._meta.label, {"status": failed}  # one object: serialized once
        _journal(
            journals,
            log,
            "mark_failed",
            [(f"{target}#pk={pk}", before, after) for pk, before in entries],
            using=rows.db,
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


def check_export_path(path: str) -> None:
    """Refuse an export path where something already is: an export is never overwritten."""
    if os.path.lexists(path):
        raise RemediationError(
            f"the export path {path} already exists: an export is never overwritten; "
            "choose a new --export path (nothing changed)"
        )


@dataclass
class DeletePlan:
    """Everything ``--delete`` of the candidate rows would remove, before any is deleted.

    Computed by Django's deletion collector, as the delete itself will run it: the rows,
    their multi-table parents and children, and what CASCADE foreign keys, many-to-many
    links and generic relations take with them (``objects``, in an order ``loaddata``
    restores: a row after the rows it refers to).
    """

    rows: list[AuditRow]
    objects: list[Any] = field(default_factory=list)
    #: Rows removed besides the candidates themselves, per model label.
    cascade: Counter[str] = field(default_factory=Counter)
    #: Rows of other models that SET_NULL, SET_DEFAULT or SET() would change, per label.
    updates: Counter[str] = field(default_factory=Counter)
    #: Rows whose PROTECT or RESTRICT foreign key forbids the delete, per label.
    protected: Counter[str] = field(default_factory=Counter)
    #: ``pre_delete``/``post_delete`` receivers the delete would run (``module.qualname``).
    receivers: list[str] = field(default_factory=list)

    def refusals(self, *, allow_receivers: bool = False) -> list[str]:
        """Why this delete must not run; empty when it may."""
        reasons: list[str] = []
        if self.protected:
            reasons.append(
                f"rows of other models protect them from deletion (PROTECT or RESTRICT): "
                f"{per_model(self.protected)}"
            )
        if self.updates:
            reasons.append(
                "deleting them would change rows of other models (SET_NULL, SET_DEFAULT or "
                f"SET()), which an export of the deleted rows does not restore: "
                f"{per_model(self.updates)}"
            )
        if self.receivers and not allow_receivers:
            reasons.append(
                "deleting them runs receivers of the app that may delete files: "
                f"{', '.join(self.receivers)} ({ALLOW_RECEIVERS_FLAG} runs them)"
            )
        return reasons


def per_model(counts: Counter[str]) -> str:
    """``photologue.Gallery_photos 6, photologue.Photo_sites 3``."""
    return ", ".join(f"{label} {n}" for label, n in sorted(counts.items()))


def plan_delete(report: Remediation, rows: Sequence[AuditRow]) -> DeletePlan:
    """The rows still missing their file, and all that deleting them would remove or change.

    The rows are re-checked first (`missing_files.recheck`: still there, same name, file
    still absent); those gone meanwhile are counted in ``report.rechecked_away``.
    """
    from django.db.models.deletion import ProtectedError, RestrictedError

    still = recheck(rows)
    report.rechecked_away += len(rows) - len(still)
    plan = DeletePlan(rows=still)
    by_db: dict[str, list[tuple[type[Model], list[Any]]]] = {}
    for (label, _field_name), group in _by_field(still).items():
        model = _model(label)
        by_db.setdefault(base_rows(model).db, []).append((model, [r.pk for r in group]))
    roots = {
        (type_._meta.concrete_model, pk)
        for groups in by_db.values()
        for type_, pks in groups
        for pk in pks
    }
    for using, groups in by_db.items():
        collector = _collector(using)
        try:
            for model, pks in groups:
                for chunk in chunks(sorted(set(pks), key=_sortable), IN_CHUNK):
                    objs = list(base_rows(model, using).filter(pk__in=chunk).order_by("pk"))
                    collector.collect(objs)
        except (ProtectedError, RestrictedError) as e:
            guards = getattr(e, "protected_objects", None) or getattr(e, "restricted_objects", ())
            plan.protected.update(type(obj)._meta.label for obj in guards)
            continue
        objects, removed = _closure(collector)
        plan.objects.extend(objects)
        plan.cascade.update(
            type(obj)._meta.label
            for obj in removed
            if (type(obj)._meta.concrete_model, obj.pk) not in roots
        )
        for (field_, _value), instances_list in collector.field_updates.items():
            for instances in instances_list:
                plan.updates[field_.model._meta.label] += len(instances)
        plan.receivers.extend(r for r in _receivers(collector) if r not in plan.receivers)
    return plan


def delete(
    report: Remediation,
    plan: DeletePlan,
    *,
    log: AuditLog,
    batch_size: int,
    export: str | None = None,
    allow_receivers: bool = False,
) -> Remediation:
    """Export every row ``plan`` removes, then delete the rows batch by batch.

    ``export``: the path (refused if anything is there); ``None`` chooses a new name under
    `DEFAULT_EXPORT_DIR`. Refuses (`RemediationError`) a plan with `DeletePlan.refusals`.
    """
    if reasons := plan.refusals(allow_receivers=allow_receivers):
        raise RemediationError(f"--delete refused: {'; '.join(reasons)}; nothing deleted")
    if not plan.rows:
        return report
    report.receivers = list(plan.receivers)
    exported = _serialized(plan.objects)
    report.export = _write_export(exported, export, plan.rows)
    index = {(d["model"], _key(d["pk"])): d for d in exported}
    for (label, field_name), group in _by_field(plan.rows).items():
        model = _model(label)
        for batch in chunks(group, batch_size):
            _delete_batch(report, model, field_name, batch, log, index)
    return report


def export_rows(report: Remediation, rows: Sequence[AuditRow], path: str) -> None:
    """Write ``rows`` (with their multi-table parents) to ``path`` as loaddata JSON before
    acting (``--fix --export``); the path goes in the report."""
    objects: list[Any] = []
    for (label, _field_name), group in _by_field(rows).items():
        model = _model(label)
        for chunk in chunks(sorted({r.pk for r in group}, key=_sortable), IN_CHUNK):
            for obj in base_rows(model).filter(pk__in=chunk).order_by("pk"):
                objects.extend(_parents(obj))
                objects.append(obj)
    exported = _serialized(objects)
    report.export = _write_export(exported, path, rows)
    report.exported = {(d["model"], _key(d["pk"])): d for d in exported}


def _write_export(
    exported: list[dict[str, Any]], path: str | None, rows: Sequence[AuditRow]
) -> str:
    """Write the export as a new owner-only file: at ``path``, refused if anything is there,
    or (``None``) at a new default path. Returns where."""
    # Django's "json" format, built from its "python" serializer so that times keep their
    # microseconds: DjangoJSONEncoder cuts them to milliseconds, and a restore would differ.
    text = json.dumps(exported, cls=_exact_encoder(), indent=2)
    if path is not None:
        check_export_path(path)
        try:
            write_new(path, text)
        except FileExistsError:
            check_export_path(path)
            raise
        return path
    base = default_export_path(rows)
    for attempt in range(1, 100):
        candidate = base if attempt == 1 else base.replace(".json", f"-{attempt}.json")
        try:
            write_new(candidate, text)
        except FileExistsError:
            continue
        return candidate
    raise RemediationError(f"no free export name beside {base}; nothing deleted")


def _serialized(objects: Iterable[Any]) -> list[dict[str, Any]]:
    """Django's "python" serialization of ``objects``: each row's own fields, as loaddata reads."""
    from django.core import serializers

    return serializers.serialize("python", objects)


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
    report: Remediation,
    model: type[Model],
    field_name: str,
    batch: list[AuditRow],
    log: AuditLog,
    exported: dict[tuple[str, Any], dict[str, Any]],
) -> None:
    """Lock the batch's rows, re-check them, and delete them with all they take along,
    provided every row the delete removes is in the export exactly as it is now."""
    from django.db.models.deletion import ProtectedError, RestrictedError

    config = model_config(model)
    names = {r.pk: r.name for r in batch}
    rows = base_rows(model)
    using = rows.db
    file_field = model._meta.get_field(field_name)
    with _atomic_batch(using) as journals:
        locked = {obj.pk: obj for obj in _locked(pk_in(rows, list(names)), using)}
        same = [
            r
            for r in batch
            if r.pk in locked
            and (_stored_name(locked[r.pk], file_field) or None) == (r.name or None)
        ]
        # Only now, with the rows locked: a file uploaded again meanwhile is seen.
        still = recheck(same, names=False)
        report.rechecked_away += len(batch) - len(still)
        used = set(
            rows.filter(**{f"{field_name}__in": [n for n in names.values() if n]})
            .exclude(pk__in=list(names))
            .values_list(field_name, flat=True)
        )
        roots: list[Any] = []
        entries: list[tuple[Any, dict[str, Any]]] = []
        for row in still:
            obj = locked[row.pk]
            if row.name and row.name in used:
                report.notes.append(
                    f"kept {model._meta.label} #{row.pk}: another row uses {row.name!r}"
                )
                continue
            if any(not _as_exported(o, exported) for o in (*_parents(obj), obj)):
                report.notes.append(
                    f"kept {model._meta.label} #{row.pk}: changed since the export; run again"
                )
                continue
            before = {
                "status": _value(obj, config.status_field),
                "log_tail": _tail(_value(obj, config.log_field)) if config.log_field else None,
                "name": row.name,
            }
            roots.append(obj)
            entries.append((row.pk, before))
        if not entries:
            return
        collector = _collector(using)
        try:
            collector.collect(roots)
        except (ProtectedError, RestrictedError) as e:
            report.notes.append(
                f"kept {len(roots)} {model._meta.label} rows: a related row now protects "
                f"them ({_one_line(e)})"
            )
            return
        objects, removed = _closure(collector, pin=True)
        stale = [o for o in objects if not _as_exported(o, exported)]
        if stale or collector.field_updates:
            report.notes.append(
                f"kept {len(roots)} {model._meta.label} rows: rows deleted with them changed "
                f"since the export ({per_model(Counter(type(o)._meta.label for o in stale))}"
                "); run again"
            )
            return
        target = model._meta.label
        ours = {(model._meta.concrete_model, pk) for pk, _ in entries}
        # Read before the delete, which sets every deleted instance's pk to None.
        along = [
            (type(o)._meta.label, o.pk)
            for o in removed
            if (type(o)._meta.concrete_model, o.pk) not in ours
        ]
        collector.delete()
        report.changed += len(entries)
        report.cascade.update(label for label, _pk in along)
        common = {
            "using": using,
            "forced": report.forced,
            "overridden": report.overridden,
            "export": report.export,
        }
        _journal(
            journals,
            log,
            "delete",
            [(f"{target}#pk={pk}", before, None) for pk, before in entries],
            field=field_name,
            **common,
        )
        if along:
            _journal(
                journals,
                log,
                "delete",
                [(f"{label}#pk={pk}", {"with": target}, None) for label, pk in along],
                cascade=True,
                **common,
            )


def _collector(using: str) -> Any:
    from django.db.models.deletion import Collector

    return Collector(using=using)


def _closure(collector: Any, *, pin: bool = False) -> tuple[list[Any], list[Any]]:
    """``(to export, removed)``: every row ``collector`` would delete, and of them those an
    export must hold, in an order ``loaddata`` restores (a row after those it refers to).

    The link rows of a many-to-many field declared on a deleted row are not exported: that
    row's serialization lists them, and loaddata re-creates them from it. ``pin``: the
    collector's fast deletes (querysets, re-evaluated when they run) become deletes of
    exactly the rows read here, so the delete removes nothing that was not compared.
    """
    collector.sort()  # deletion order: a row before those it refers to
    removed: list[Any] = []
    for model in reversed(list(collector.data)):
        removed.extend(sorted(collector.data[model], key=lambda o: _sortable(o.pk)))
    pinned: list[Any] = []
    for qs in collector.fast_deletes:
        found = list(qs)
        removed.extend(found)
        if pin:
            pks = [o.pk for o in found]
            pinned.extend(
                base_rows(qs.model, collector.using).filter(pk__in=chunk)
                for chunk in chunks(pks, IN_CHUNK)
            )
    if pin:
        collector.fast_deletes = pinned
    # One row can be reached twice (a child's inherited reverse relations repeat its
    # parent's): keep its first place.
    unique: dict[tuple[Any, Any], Any] = {}
    for obj in removed:
        unique.setdefault((type(obj)._meta.concrete_model, obj.pk), obj)
    removed = list(unique.values())
    objects = [o for o in removed if not _listed_by_its_owner(o, unique)]
    return objects, removed


def _listed_by_its_owner(obj: Any, exported: Container[tuple[Any, Any]]) -> bool:
    """Whether ``obj`` is a link row of an auto-created many-to-many table whose declaring
    row is exported (loaddata would insert it twice: once from the row's list, once as is)."""
    owner = obj._meta.auto_created
    if not owner:
        return False
    for m2m in owner._meta.many_to_many:
        if m2m.remote_field.through is type(obj):
            source = type(obj)._meta.get_field(m2m.m2m_field_name())
            return (owner._meta.concrete_model, getattr(obj, source.attname)) in exported
    return False


def _receivers(collector: Any) -> list[str]:
    """The ``pre_delete``/``post_delete`` receivers the collector's delete would run, other
    than Django's own, as ``module.qualname (signal of app.Model)``.

    Every model whose rows it deletes counts: the rows' own, their multi-table parents and
    children, the cascaded ones. Django sends no signal for an auto-created link table.
    """
    from django.db.models import signals

    found: list[str] = []
    for model in collector.data:
        if model._meta.auto_created:
            continue
        for name, signal in (
            ("pre_delete", signals.pre_delete),
            ("post_delete", signals.post_delete),
        ):
            for receiver in _live_receivers(signal, model):
                qualified = _qualified_name(receiver)
                if qualified.split(".", 1)[0] == "django":
                    continue
                text = f"{qualified} ({name} of {model._meta.label})"
                if text not in found:
                    found.append(text)
    return found


def _live_receivers(signal: Any, sender: Any) -> list[Any]:
    """The receivers ``signal.send(sender)`` would call (Django 5 splits sync and async)."""
    live = signal._live_receivers(sender)
    if isinstance(live, tuple) and len(live) == 2 and all(isinstance(x, list) for x in live):
        return [*live[0], *live[1]]
    return list(live)


def _qualified_name(receiver: Any) -> str:
    target = getattr(receiver, "__func__", receiver)  # a bound method: its function
    target = getattr(target, "func", target)  # functools.partial: the function it wraps
    module = getattr(target, "__module__", None) or type(target).__module__
    name = getattr(target, "__qualname__", None) or type(target).__qualname__
    return f"{module}.{name}"


def _parents(obj: Any) -> list[Any]:
    """The multi-table parent rows of ``obj``, farthest first, built from its own fields."""
    found: list[Any] = []
    for link in obj._meta.concrete_model._meta.parents.values():
        if link is None:
            continue
        parent = getattr(obj, link.name)
        found.extend(_parents(parent))
        found.append(parent)
    return found


def _as_exported(obj: Any, exported: dict[tuple[str, Any], dict[str, Any]]) -> bool:
    """Whether ``obj`` is in the export exactly as it is now."""
    now = _serialized([obj])[0]
    return exported.get((now["model"], _key(now["pk"]))) == now


def _stored_name(obj: Any, file_field: Any) -> str | None:
    value = file_field.value_from_object(obj)
    return getattr(value, "name", value)


def _value(obj: Any, field_name: str | None) -> Any:
    if field_name is None:
        return None
    return getattr(obj, obj._meta.get_field(field_name).attname)


def _key(pk: Any) -> Any:
    return str(pk)


def _sortable(value: Any) -> tuple[int, Any]:
    return (0, value) if isinstance(value, int) else (1, str(value))


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
    """Settle journals left by a killed ``--fix``, ``--delete`` or ``restore_fixed_rows``:
    ``(logged, dropped)``.

    An entry is logged when its change is in place (the row is failed with the message as
    its log's last line; the deleted row is gone; a restored row holds its ``after``),
    dropped when its batch rolled back. One judge for every action, so whichever command
    runs next settles what any of them left.
    """
    return log.recover(_in_place)


def _in_place(entry: dict[str, Any]) -> bool:
    from volguard.django.row_restore import RESTORE_ACTION, restored_in_place

    if entry.get("action") == RESTORE_ACTION:
        return restored_in_place(entry)
    label, _, pk = str(entry.get("target", "")).partition("#pk=")
    try:
        model = _model(label)
    except (LookupError, ValueError):
        return False
    rows = base_rows(model)
    if entry.get("action") == "delete":
        return not rows.filter(pk=pk).exists()
    config = model_config(model)
    if entry.get("action") != "mark_failed" or config.status_field is None:
        return False
    columns = [config.status_field] + ([config.log_field] if config.log_field else [])
    row = rows.filter(pk=pk).values_list(*columns).first()
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
