"""JSON: one object with a `findings` list (the shape is documented in README.md)."""

from __future__ import annotations

import json

from volguard.findings import Severity
from volguard.report import Report


def render(report: Report, *, fail_on: Severity | None, color: bool = False) -> str:
    return json.dumps(report.as_dict(fail_on), indent=2, ensure_ascii=False, default=str) + "\n"
