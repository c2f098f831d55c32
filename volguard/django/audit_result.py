"""The missing-file audit's result model: what it found about each row and field.

`AuditRow` is one finding about one row (a reason of `volguard.audit_document.REASONS`),
`FieldReport` what the audit of one model field found and cost, `AuditResult` the whole
audit. `AuditResult.as_dict` is the ``check_missing_files --json`` document, built with
`volguard.audit_document` (the definition the Fly side reads it with); `to_findings` turns
the rows into volguard findings: VG401 (missing, empty), VG402 (invalid name), VG403
(shared), VG405 (a 0-byte file).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from volguard.audit_document import (
    EMPTY,
    EMPTY_FILE,
    INVALID_NAME,
    MISSING,
    PROBLEM_REASONS,
    REASONS,
    SHARED,
    AuditDocumentJSON,
    AuditRowJSON,
    audit_document,
)
from volguard.catalogue import finding
from volguard.django.targets import ModelConfig
from volguard.findings import Finding, Location

FINDING_IDS = {
    MISSING: "VG401",
    EMPTY: "VG401",
    EMPTY_FILE: "VG405",
    INVALID_NAME: "VG402",
    SHARED: "VG403",
}
#: The grace period for uploads in flight: rows changed more recently are skipped.
DEFAULT_OLDER_THAN = timedelta(minutes=10)


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

    def as_dict(self) -> AuditRowJSON:
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
            EMPTY_FILE: f"{where}: file {self.name!r} holds 0 bytes ({self.path})",
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
        """Rows without a usable file (missing, empty, a 0-byte file, invalid name):
        remediation's input."""
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
        """One volguard `Finding` per row and reason: VG401, VG402, VG403 or VG405."""
        return [row.to_finding() for row in self.rows]

    def as_dict(self) -> AuditDocumentJSON:
        """The ``--json`` document (`volguard.audit_document`)."""
        return audit_document(
            total_rows=self.total_rows,
            audited_rows=self.audited_rows,
            skipped_recent=self.skipped_recent,
            older_than_seconds=self.older_than.total_seconds(),
            files_checked=self.files_checked,
            per_reason=self.per_reason,
            strategy=self.strategies,
            storage_requests=self.storage_requests,
            duration_seconds=round(self.duration, 6),
            fields=[f.as_dict() for f in self.fields],
            notes=self.notes,
            rows=[r.as_dict() for r in self.rows],
        )
