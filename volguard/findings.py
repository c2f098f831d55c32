"""The one result model: every layer reports `Finding` values.

Modelled on Django's `CheckMessage`: a small immutable value with a stable id,
a message with the concrete values, a hint, and the object it is about.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any, NamedTuple


class Severity(StrEnum):
    """How bad a finding is. Ordered: ``INFO < WARNING < ERROR``."""

    INFO = "info"
    WARNING = "warning"
    ERROR = "error"

    @property
    def rank(self) -> int:
        return _RANK[self]

    @classmethod
    def parse(cls, value: str) -> Severity:
        try:
            return cls(value.strip().lower())
        except ValueError:
            choices = ", ".join(s.value for s in cls)
            raise ValueError(f"unknown severity {value!r} (choose from {choices})") from None


_RANK = {Severity.INFO: 0, Severity.WARNING: 1, Severity.ERROR: 2}


class Location(NamedTuple):
    """Where a finding points: a place in a file, or a platform object."""

    file: str | None = None
    line: int | None = None
    column: int | None = None
    machine: str | None = None
    volume: str | None = None
    object: str | None = None  # e.g. "services.UserDataFile.file" or "...#pk=12"

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self._asdict().items() if v is not None}

    def __str__(self) -> str:
        if self.file:
            parts = [self.file]
            if self.line:
                parts.append(str(self.line))
                if self.column:
                    parts.append(str(self.column))
            return ":".join(parts)
        for key in ("machine", "volume", "object"):
            value = getattr(self, key)
            if value:
                return f"{key} {value}"
        return "-"


@dataclass(frozen=True)
class Finding:
    """One thing wrong (or worth knowing) about a deployment."""

    id: str
    severity: Severity
    message: str
    hint: str = ""
    location: Location = field(default_factory=Location)
    evidence: dict[str, Any] = field(default_factory=dict)
    waived: bool = False
    waiver_reason: str | None = None

    @property
    def doc(self) -> str:
        """Anchor of this check's section in docs/checks.md."""
        return f"docs/checks.md#{self.id.lower()}"

    def waive(self, reason: str) -> Finding:
        return replace(self, waived=True, waiver_reason=reason)

    def counts_at(self, threshold: Severity | None) -> bool:
        """True when this finding should fail a run whose ``--fail-on`` is ``threshold``."""
        return threshold is not None and not self.waived and self.severity.rank >= threshold.rank

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "severity": self.severity.value,
            "message": self.message,
            "hint": self.hint,
            "doc": self.doc,
            "location": self.location.as_dict(),
            "evidence": self.evidence,
            "waived": self.waived,
            "waiver_reason": self.waiver_reason,
        }
