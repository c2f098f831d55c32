"""Undo an earlier ``--fix`` for the rows whose file is back: ``manage.py restore_fixed_rows``.

``check_missing_files --fix`` (`volguard.django.repair`) marks a row whose file is missing
failed and appends the configured message to its log field, one ``mark_failed`` line per
row in the change log (`volguard.audit_log`): ``before`` holds the status and the log's
last line, ``after`` the status set. Once `volguard recover` (or anyone) has put the file
back, this module puts those fields back — and only those, only when it is safe:

- **What was fixed** comes from the change log alone: per row, its latest ``mark_failed``
  entry, unless a ``restore_row`` entry for that row follows it (undone already: a second
  run finds nothing to do and logs nothing).
- **Only when the file is back**: the row's file exists in the row's own storage and is
  not empty (`volguard.django.missing_files.recheck`, as ``--fix`` checks absence).
- **Only what the fix set, only if nobody changed it since**: the status still is the
  value the fix set, and the log's last line still is the message the fix appended; the
  status goes back to ``before.status`` and that last line is removed (the line before it
  must be ``before.log_tail``). A field the fix did not change (a status already failed, a
  message already there) is left as it is. A row edited since (a re-upload set another
  status, an admin wrote to the log, another file name) is left alone and reported.
- **Rows as stored, under a lock, batched**: each batch is one transaction; its rows are
  read with ``select_for_update`` through the plain queryset (`queries.base_rows`), the
  conditions are checked on what was read under the lock, and the batch is one ``UPDATE``.
- **Every restored row one ``restore_row`` line, kill-safe**: the batch's entries are
  journaled inside its transaction and appended after it commits (`audit_log.Pending`),
  and the next run settles a killed run's journals first, as ``--fix`` does.

The ``--json`` document (`RestoreReport.as_dict`) is read by `volguard.recover`: its
statuses are `STATUSES`. Nothing here imports Django at module level.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from volguard.audit_document import MISSING
from volguard.audit_log import AuditLog, Pending
from volguard.errors import RemediationError, UsageError

if TYPE_CHECKING:
    from django.db.models import Model

FIX_ACTION = "mark_failed"
RESTORE_ACTION = "restore_row"
#: The action the recover copy logs for each file it put back (volguard/remote/probe_script.py).
RESTORE_FILE_ACTION = "restore_file"

#: What happened (``--apply``) or would happen (plan) to each row an earlier --fix changed.
RESTORED = "restored"  # --apply: the fields are back to their values before the fix
RESTORABLE = "restorable"  # plan: the file is back and the fields are as the fix set them
ALREADY_RESTORED = "already_restored"  # a restore_row entry follows the fix (earlier run)
FILE_MISSING = "file_missing"  # the file is not back (absent, or 0 bytes)
CHANGED = "changed_since_fix"  # a field the fix set, or the file's name, changed since
GONE = "row_gone"  # the row was deleted since
NO_FIELDS = "no_status_field"  # the model no longer has the configured status field
STATUSES = (RESTORED, RESTORABLE, ALREADY_RESTORED, FILE_MISSING, CHANGED, GONE, NO_FIELDS)
#: Statuses that leave the row failed although it was asked about: exit 2.
NOT_RESTORED = (FILE_MISSING, CHANGED, GONE, NO_FIELDS)
DEFAULT_BATCH = 500


@dataclass(frozen=True)
class FixedRow:
    """One row an earlier ``--fix`` changed: its latest ``mark_failed`` entry."""

    model: str
    pk: str  # as the log's target spells it
    field: str  # the file field the fix was about
    before: dict[str, Any]
    after: dict[str, Any]
    time: str = ""
    undone: bool = False  # a restore_row entry follows it

    @property
    def target(self) -> str:
        return f"{self.model}#pk={self.pk}"


@dataclass(frozen=True)
class RowSelection:
    """Which fixed rows to consider: ``None`` for all; else ``(model, pk)`` keys, each
    optionally with the file name the row must still hold (``--rows``), and/or the file
    names a recover run restored (``--restored-by``)."""

    keys: dict[tuple[str, str], str | None] | None = None
    names: frozenset[str] | None = None

    def wants(self, row: FixedRow) -> bool:
        return self.keys is None or (row.model, row.pk) in self.keys

    def asked(self, name: str | None) -> bool:
        """Whether a row holding the file ``name`` is asked about at all (``--restored-by``)."""
        return self.names is None or (name is not None and name in self.names)

    def name_ok(self, row: FixedRow, name: str | None) -> bool:
        """Whether the row still holds the file ``--rows`` names for it (when it names one)."""
        wanted = self.keys.get((row.model, row.pk)) if self.keys is not None else None
        return wanted is None or wanted == name


@dataclass
class RowOutcome:
    model: str
    pk: str
    field: str
    name: str | None
    status: str
    why: str = ""
    fixed_at: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "pk": self.pk,
            "field": self.field,
            "name": self.name,
            "status": self.status,
            "why": self.why,
            "fixed_at": self.fixed_at,
        }


@dataclass
class RestoreReport:
    """The command's report: one `RowOutcome` per row considered."""

    apply: bool
    audit_log: str
    rows: list[RowOutcome] = field(default_factory=list)
    settled: tuple[int, int] = (0, 0)  # a killed run's journal: (logged, dropped)

    def counts(self) -> Counter[str]:
        return Counter(r.status for r in self.rows)

    @property
    def not_restored(self) -> list[RowOutcome]:
        return [r for r in self.rows if r.status in NOT_RESTORED]

    def exit_code(self) -> int:
        return 2 if self.not_restored else 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "tool": "volguard",
            "command": "restore_fixed_rows",
            "apply": self.apply,
            "audit_log": self.audit_log,
            "rows": [r.as_dict() for r in self.rows],
            "summary": {
                "rows": len(self.rows),
                **{s: self.counts().get(s, 0) for s in STATUSES},
                "settled_journal": {"logged": self.settled[0], "dropped": self.settled[1]},
            },
        }


# -- reading the change log ----------------------------------------------------------------


def read_log(path: str) -> Iterable[dict[str, Any]]:
    """The change log's entries in order; lines that are not entries (torn, foreign) skipped."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except FileNotFoundError:
        return
    with os.fdopen(fd, "rb") as f:
        if not _regular(f.fileno()):
            raise RemediationError(f"{path}: not a regular file; refused")
        for raw in f:
            try:
                entry = json.loads(raw)
            except (ValueError, RecursionError):
                continue
            if isinstance(entry, dict) and isinstance(entry.get("target"), str):
                yield entry


def fixed_rows(path: str) -> list[FixedRow]:
    """Per row, its latest ``mark_failed`` entry, marked ``undone`` when a ``restore_row``
    entry for the row follows it; in the order of the fixes."""
    latest: dict[str, FixedRow] = {}
    for entry in read_log(path):
        action, target = entry.get("action"), entry["target"]
        if action == FIX_ACTION:
            label, sep, pk = target.partition("#pk=")
            before, after = entry.get("before"), entry.get("after")
            if not sep or not isinstance(before, dict) or not isinstance(after, dict):
                continue
            latest.pop(target, None)  # keep the order of the latest fix
            latest[target] = FixedRow(
                label, pk, str(entry.get("field") or ""), before, after, str(entry.get("time", ""))
            )
        elif action == RESTORE_ACTION and target in latest:
            row = latest[target]
            latest[target] = FixedRow(
                row.model, row.pk, row.field, row.before, row.after, row.time, undone=True
            )
    return list(latest.values())


def restored_names(path: str, runs: Collection[str]) -> frozenset[str]:
    """The file names the recover runs ``runs`` logged as restored (``restore_file``)."""
    return frozenset(
        e["target"]
        for e in read_log(path)
        if e.get("action") == RESTORE_FILE_ACTION and str(e.get("run")) in runs
    )


def parse_rows(text: str, where: str) -> dict[tuple[str, str], str | None]:
    """``--rows``: a JSON list of ``{"model", "pk", "name"?}``; UsageError otherwise."""
    try:
        data = json.loads(text)
    except ValueError as e:
        raise UsageError(f"{where}: not JSON ({e})") from None
    if isinstance(data, dict):
        data = data.get("rows")
    if not isinstance(data, list):
        raise UsageError(f"{where}: expected a JSON list of {{model, pk, name}} objects")
    keys: dict[tuple[str, str], str | None] = {}
    for item in data:
        if (
            not isinstance(item, dict)
            or not isinstance(item.get("model"), str)
            or (item.get("pk") is None)
        ):
            raise UsageError(f"{where}: each row needs a model and a pk: {item!r:.80}")
        name = item.get("name")
        keys[(item["model"], str(item["pk"]))] = name if isinstance(name, str) else None
    return keys


# -- the restore -------------------------------------------------------------------------------


def restore(
    log: AuditLog,
    selection: RowSelection,
    *,
    apply: bool,
    batch_size: int = DEFAULT_BATCH,
) -> RestoreReport:
    """Plan (``apply`` False) or restore the rows an earlier --fix changed; see the module
    docstring. A killed run's journals are settled first (``apply`` only: a plan writes
    nothing)."""
    report = RestoreReport(apply=apply, audit_log=log.path)
    if apply:
        report.settled = settle(log)
    groups: dict[tuple[str, str], list[FixedRow]] = {}
    for row in fixed_rows(log.path):
        if not selection.wants(row):
            continue
        if row.undone and selection.keys is None and selection.names is None:
            continue  # done by an earlier run; asked about by name, it is reported so
        groups.setdefault((row.model, row.field), []).append(row)
    for (label, field_name), rows in groups.items():
        try:
            model = _model(label)
            model._meta.get_field(field_name)
        except (LookupError, ValueError) as e:
            report.rows += [_outcome(r, None, GONE, f"no such model or field: {e}") for r in rows]
            continue
        for start in range(0, len(rows), batch_size):
            _batch(report, log, model, field_name, rows[start : start + batch_size], selection)
    return report


def _batch(
    report: RestoreReport,
    log: AuditLog,
    model: type[Model],
    field_name: str,
    rows: Sequence[FixedRow],
    selection: RowSelection,
) -> None:
    from django.db import transaction
    from django.db.models import Case, Value, When

    from volguard.django.audit_result import AuditRow
    from volguard.django.missing_files import recheck
    from volguard.django.queries import base_rows, pk_in
    from volguard.django.repair import _locked
    from volguard.django.targets import model_config

    config = model_config(model)
    status, log_field, message = config.status_field, config.log_field, config.message
    if status is None:
        report.rows += [_outcome(r, None, NO_FIELDS, "set status_field") for r in rows]
        return
    columns = [field_name, status] + ([log_field] if log_field else [])
    queryset = base_rows(model)
    using = queryset.db
    pk_field = model._meta.pk
    by_pk = {_pk_value(pk_field, r.pk): r for r in rows}
    journals: list[Pending] = []
    try:
        with transaction.atomic(using=using):
            locked = _locked(pk_in(queryset, list(by_pk)), using)
            current = {pk: rest for pk, *rest in locked.values_list("pk", *columns)}
            ready: list[tuple[Any, FixedRow, str | None, dict[str, Any]]] = []
            for pk, row in by_pk.items():
                if pk not in current:
                    if row.undone:
                        continue
                    report.rows.append(_outcome(row, None, GONE, "deleted since the fix"))
                    continue
                name, now_status, *rest = current[pk]
                name = getattr(name, "name", name) or None
                now_log = rest[0] if rest else None
                if not selection.asked(name):
                    continue  # not a file the recover runs restored: not asked about
                if row.undone:
                    # asked about by name (recover, resumed): done already, nothing changes
                    report.rows.append(_outcome(row, name, ALREADY_RESTORED))
                    continue
                if not selection.name_ok(row, name):
                    why = f"its file is now {name!r}, not the one restored"
                    report.rows.append(_outcome(row, name, CHANGED, why))
                    continue
                undo, why = _undo(row, now_status, now_log, log_field is not None, message)
                if undo is None:
                    report.rows.append(_outcome(row, name, CHANGED, why))
                    continue
                ready.append((pk, row, name, undo))
            # The file check last, on the locked rows: a file that arrived is seen here.
            audit_rows = [AuditRow(model._meta.label, pk, field_name, n, MISSING)
                          for pk, _r, n, _u in ready if n]  # fmt: skip
            still = {r.pk for r in recheck(audit_rows, names=False)}
            todo = []
            for pk, row, name, undo in ready:
                if not name or pk in still:
                    why = "no file name" if not name else "not in storage (or 0 bytes)"
                    report.rows.append(_outcome(row, name, FILE_MISSING, why))
                else:
                    todo.append((pk, row, name, undo))
            if not todo:
                return
            if not report.apply:
                report.rows += [_outcome(r, n, RESTORABLE) for _pk, r, n, _u in todo]
                return
            values: dict[str, Any] = {}
            status_field = model._meta.get_field(status)
            values[status] = Case(
                *[When(pk=pk, then=Value(u["status"], output_field=status_field))
                  for pk, _r, _n, u in todo],
                output_field=status_field,
            )  # fmt: skip
            if log_field:
                log_column = model._meta.get_field(log_field)
                values[log_field] = Case(
                    *[When(pk=pk, then=Value(u["log"], output_field=log_column))
                      for pk, _r, _n, u in todo],
                    output_field=log_column,
                )  # fmt: skip
            queryset.filter(pk__in=[pk for pk, *_ in todo]).update(**values)
            pending = log.prepare(
                RESTORE_ACTION,
                [
                    (
                        r.target,
                        {"status": u["was_status"], "log_tail": u["was_tail"]},
                        {"status": u["status"], "log_tail": _tail(u["log"])},
                    )
                    for _pk, r, _n, u in todo
                ],
                field=field_name,
            )
            journals.append(pending)
            transaction.on_commit(pending.commit, using=using)
            report.rows += [_outcome(r, n, RESTORED) for _pk, r, n, _u in todo]
    except BaseException:
        for pending in journals:
            pending.abandon()  # a no-op once its commit began: the next run settles it
        raise


def _undo(
    row: FixedRow, status: Any, text: str | None, has_log: bool, message: str
) -> tuple[dict[str, Any] | None, str]:
    """The values to put back, or ``(None, why)`` when a field the fix set changed since.

    The fix set the status to ``after.status`` and (unless the message already was the
    log's last line) appended the message as a new last line.
    """
    set_status = row.after.get("status")
    if status != set_status:
        return None, f"status is {status!r}, not {set_status!r} as the fix set it"
    before_status = row.before.get("status")
    before_tail = row.before.get("log_tail")
    undo: dict[str, Any] = {"status": before_status, "was_status": status, "log": text}
    undo["was_tail"] = _tail(text)
    if not has_log:
        return undo, ""
    if _ends_with(before_tail, message):
        # the message already was the last line: the fix appended nothing
        if not _ends_with(text, message):
            return None, "the log no longer ends with the message"
        return undo, ""
    if text == message:
        undo["log"] = before_tail  # the log was empty ("") or NULL before the fix
    elif text is not None and text.endswith("\n" + message):
        undo["log"] = text[: -len(message) - 1]
        if _tail(undo["log"]) != (before_tail or ""):
            return None, "the log's earlier lines changed since the fix"
    else:
        return None, "the log's last line is no longer the fix's message"
    return undo, ""


def settle(log: AuditLog) -> tuple[int, int]:
    """Settle the journals a killed run left, restore_row and --fix alike: ``(logged,
    dropped)`` (`volguard.django.repair.recover` judges every action)."""
    from volguard.django.repair import recover

    try:
        return recover(log)
    except (OSError, ValueError) as e:
        raise RemediationError(f"cannot settle the journal of {log.path}: {e}") from None


def restored_in_place(entry: dict[str, Any]) -> bool:
    from volguard.django.queries import base_rows
    from volguard.django.targets import model_config

    label, _, pk = str(entry.get("target", "")).partition("#pk=")
    after = entry.get("after")
    try:
        model = _model(label)
    except (LookupError, ValueError):
        return False
    config = model_config(model)
    if config.status_field is None or not isinstance(after, dict):
        return False
    columns = [config.status_field] + ([config.log_field] if config.log_field else [])
    found = base_rows(model).filter(pk=pk).values_list(*columns).first()
    if found is None or found[0] != after.get("status"):
        return False
    return not config.log_field or _tail(found[1]) == after.get("log_tail")


# -- small helpers -----------------------------------------------------------------------------


def _outcome(row: FixedRow, name: str | None, status: str, why: str = "") -> RowOutcome:
    return RowOutcome(row.model, row.pk, row.field, name, status, why, row.time)


def _pk_value(pk_field: Any, text: str) -> Any:
    """The log spells a pk as text: back to the column's Python value for the lookup."""
    try:
        return pk_field.to_python(text)
    except Exception:  # a ValidationError: the row cannot exist under that key
        return text


def _tail(text: str | None) -> str | None:
    from volguard.django.repair import _tail as tail

    return tail(text)


def _ends_with(text: str | None, message: str) -> bool:
    from volguard.django.repair import _ends_with as ends

    return ends(text, message)


def _model(label: str) -> type[Model]:
    from django.apps import apps

    return apps.get_model(label)


def _regular(fd: int) -> bool:
    import stat

    return stat.S_ISREG(os.fstat(fd).st_mode)
