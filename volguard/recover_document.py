"""The ``volguard recover`` document: the plan (where each lost file is), its summary, and
what ``--apply`` restored — one definition for the JSON it prints, the run record it keeps
and the text it shows.

Shape (documented for users in docs/recover.md)::

    {"plan": [{"model", "pk", "field", "name", "status", "marked_failed",
               "sources": [{"kind", "id", "size", "sha256", "mtime"}]}],
     "summary": {...},
     "applied": [{"model", "pk", "name", "sha256", "row_restored"}]}   # after --apply

``status`` is one of `STATUSES`. For a ``found`` row the first source is the copy that is
(or would be) copied; a row whose copies differ is ``conflict`` unless ``--prefer`` chose one,
in which case it is ``found`` with the chosen copy first. Pure: no I/O here.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from volguard.audit_document import EMPTY_FILE, MISSING
from volguard.django.row_restore import ALREADY_RESTORED, FILE_MISSING, RESTORED

FOUND, CONFLICT, NOT_FOUND = "found", "conflict", "not_found"
STATUSES = (FOUND, CONFLICT, NOT_FOUND)
#: The audit reasons recover looks for copies of: no file at all, or a 0-byte one.
RECOVERABLE_REASONS = (MISSING, EMPTY_FILE)
NEWEST, LARGEST = "newest", "largest"
PREFERENCES = (NEWEST, LARGEST)
#: Source kinds, cheapest first (the order they are searched in): a started Machine of the
#: app, an unattached volume (forked), a snapshot (restored); a copy names the Machine, the
#: volume or the snapshot it was found on, never the temporary copy it was read through.
MACHINE_KIND, VOLUME_KIND, SNAPSHOT_KIND = "machine", "volume", "snapshot"
SOURCE_KINDS = (MACHINE_KIND, VOLUME_KIND, SNAPSHOT_KIND)
#: What --apply says happened to one file on the target.
RESTORED_FILE, PRESENT = "restored", "present_identical"
VERIFIED = (RESTORED_FILE, PRESENT)
#: ``restore_fixed_rows`` statuses of a row whose fields are back (this run or an earlier).
ALREADY_RESTORED_STATUSES = (RESTORED, ALREADY_RESTORED)
ROWS_NOTE = (
    "rows an earlier --fix marked failed (marked_failed) get their status and log back once "
    "their file is restored and verified, unless changed since the fix (row_restored)"
)


@dataclass(frozen=True)
class Copy:
    """One copy of a file on one source: what the search saw."""

    kind: str
    id: str
    size: int
    sha256: str
    mtime: float

    def as_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "id": self.id,
            "size": self.size,
            "sha256": self.sha256,
            "mtime": self.mtime,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Copy:
        return cls(
            str(data["kind"]),
            str(data["id"]),
            int(data["size"]),
            str(data["sha256"]),
            float(data["mtime"]),
        )


@dataclass(frozen=True)
class MissingRow:
    """A row of the audit whose file is missing (or 0 bytes) on the target."""

    model: str
    pk: Any
    field: str
    name: str
    reason: str = MISSING
    #: An earlier ``--fix`` marked the row failed (the change log says so, not undone since).
    marked_failed: bool = False


@dataclass(frozen=True)
class PlanRow:
    row: MissingRow
    status: str
    sources: tuple[Copy, ...] = ()

    @property
    def chosen(self) -> Copy | None:
        return self.sources[0] if self.status == FOUND and self.sources else None

    def as_dict(self) -> dict[str, Any]:
        return {
            "model": self.row.model,
            "pk": self.row.pk,
            "field": self.row.field,
            "name": self.row.name,
            "status": self.status,
            "marked_failed": self.row.marked_failed,
            "sources": [c.as_dict() for c in self.sources],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PlanRow:
        row = MissingRow(
            str(data["model"]), data["pk"], str(data["field"]), str(data["name"]),
            marked_failed=bool(data.get("marked_failed")),
        )  # fmt: skip
        return cls(row, str(data["status"]), tuple(Copy.from_dict(c) for c in data["sources"]))


def missing_rows(document: Mapping[str, Any]) -> list[MissingRow]:
    """The rows of a ``check_missing_files --json`` document recover looks for, once each."""
    seen: dict[tuple[Any, ...], MissingRow] = {}
    for r in document.get("rows") or ():
        if not isinstance(r, dict) or r.get("reason") not in RECOVERABLE_REASONS:
            continue
        name = r.get("name")
        if not isinstance(name, str) or not name:
            continue
        row = MissingRow(
            str(r.get("model", "")), r.get("pk"), str(r.get("field", "")), name, r["reason"]
        )
        seen.setdefault((row.model, row.field, repr(row.pk), row.name), row)
    return list(seen.values())


def with_marked_failed(
    missing: Sequence[MissingRow], fixed: Iterable[Mapping[str, Any]]
) -> list[MissingRow]:
    """The audit's rows, each flagged when an earlier ``--fix`` marked it failed, plus the rows
    the change log names whose file is still missing and the audit did not list.

    ``fixed``: the rows of ``restore_fixed_rows --json`` (its plan): model, pk, field, name,
    status. A fixed row whose file is back or that changed since is not searched for.
    """
    marked = {
        (str(r.get("model")), str(r.get("pk"))): r
        for r in fixed
        if isinstance(r, Mapping) and r.get("status") not in ALREADY_RESTORED_STATUSES
    }
    out = [
        MissingRow(r.model, r.pk, r.field, r.name, r.reason, (r.model, str(r.pk)) in marked)
        for r in missing
    ]
    listed = {(r.model, str(r.pk)) for r in missing}
    for key, r in marked.items():
        name = r.get("name")
        if key in listed or r.get("status") != FILE_MISSING or not isinstance(name, str):
            continue
        if not name:
            continue
        out.append(MissingRow(key[0], r.get("pk"), str(r.get("field") or ""), name, MISSING, True))
    return out


def classify(row: MissingRow, copies: Sequence[Copy], prefer: str | None = None) -> PlanRow:
    """found (one content: the first copy of it is chosen), conflict, or not_found.

    0-byte copies are no copy of an upload. Copies that differ are a conflict unless
    ``prefer`` picks exactly one content (newest mtime, or largest size).
    """
    usable = [c for c in copies if c.size > 0]
    if not usable:
        return PlanRow(row, NOT_FOUND, tuple(copies))
    contents = {c.sha256 for c in usable}
    if len(contents) == 1:
        return PlanRow(row, FOUND, tuple(usable))
    if prefer in PREFERENCES:
        key = (lambda c: c.mtime) if prefer == NEWEST else (lambda c: c.size)
        best = max(key(c) for c in usable)
        winners = {c.sha256 for c in usable if key(c) == best}
        if len(winners) == 1:
            first = next(c for c in usable if key(c) == best)
            rest = [c for c in usable if c is not first]
            return PlanRow(row, FOUND, (first, *rest))
    return PlanRow(row, CONFLICT, tuple(usable))


@dataclass(frozen=True)
class Transfer:
    """One file to copy: its name, the chosen copy, and the rows that wait for it."""

    name: str
    copy: Copy
    rows: tuple[MissingRow, ...]


def transfers(plan: Iterable[PlanRow]) -> list[Transfer]:
    """One transfer per name (rows sharing a file need it once), in plan order."""
    by_name: dict[str, tuple[Copy, list[MissingRow]]] = {}
    for p in plan:
        chosen = p.chosen
        if chosen is None:
            continue
        by_name.setdefault(p.row.name, (chosen, []))[1].append(p.row)
    return [Transfer(name, copy, tuple(rows)) for name, (copy, rows) in by_name.items()]


@dataclass
class Applied:
    """One row whose file --apply put back (or found back, identical)."""

    model: str
    pk: Any
    name: str
    sha256: str
    row_restored: bool = False
    #: An earlier --fix marked the row failed: restore-rows puts its fields back.
    marked_failed: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "pk": self.pk,
            "name": self.name,
            "sha256": self.sha256,
            "row_restored": self.row_restored,
        }


@dataclass
class RecoverDocument:
    """The whole document; ``summary_extra`` holds the run's facts (target, record, …)."""

    plan: list[PlanRow]
    searched: list[str] = field(default_factory=list)  # source ids, in search order
    unavailable: dict[str, str] = field(default_factory=dict)  # kind -> why
    source_errors: dict[str, str] = field(default_factory=dict)  # source id -> why
    skipped: dict[str, str] = field(default_factory=dict)  # source id -> why not searched
    prefer: str | None = None
    applied: list[Applied] | None = None
    summary_extra: dict[str, Any] = field(default_factory=dict)

    def counts(self) -> Counter[str]:
        return Counter(p.status for p in self.plan)

    def summary(self) -> dict[str, Any]:
        counts = self.counts()
        per_source: Counter[str] = Counter()
        for p in self.plan:
            for c in {c.id: c for c in p.sources if c.size > 0}.values():
                per_source[c.id] += 1
        moves = transfers(self.plan)
        resolved = sum(
            1 for p in self.plan if p.status == FOUND and len({c.sha256 for c in p.sources}) > 1
        )
        summary: dict[str, Any] = {
            "rows": len(self.plan),
            FOUND: counts.get(FOUND, 0),
            CONFLICT: counts.get(CONFLICT, 0),
            NOT_FOUND: counts.get(NOT_FOUND, 0),
            "conflicts_resolved": resolved,
            "prefer": self.prefer,
            "per_source": dict(sorted(per_source.items())),
            "files_to_copy": len(moves),
            "bytes_to_copy": sum(t.copy.size for t in moves),
            "sources_searched": list(self.searched),
            "sources_failed": dict(self.source_errors),
            "sources_not_available": dict(self.unavailable),
            "sources_skipped": dict(self.skipped),
            "rows_note": ROWS_NOTE,
        }
        summary["marked_failed"] = sum(1 for p in self.plan if p.row.marked_failed)
        if self.applied is not None:
            summary["restored_rows"] = len(self.applied)
            summary["rows_restored"] = sum(1 for a in self.applied if a.row_restored)
        summary.update(self.summary_extra)
        return summary

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "plan": [p.as_dict() for p in self.plan],
            "summary": self.summary(),
        }
        if self.applied is not None:
            out["applied"] = [a.as_dict() for a in self.applied]
        return out

    def exit_code(self) -> int:
        """0: every row found (plan) or restored (--apply); 2: some remain."""
        if self.applied is None:
            return 0 if all(p.status == FOUND for p in self.plan) else 2
        done = {(a.model, repr(a.pk), a.name) for a in self.applied}
        left = [p for p in self.plan if (p.row.model, repr(p.row.pk), p.row.name) not in done]
        return 2 if left else 0
