"""Text for people: most severe first, the hint under each finding, colour on a terminal."""

from __future__ import annotations

from volguard.catalogue import CHECKS
from volguard.findings import Finding, Severity
from volguard.report import Report

_COLORS = {Severity.ERROR: "31", Severity.WARNING: "33", Severity.INFO: "36"}


def render(report: Report, *, fail_on: Severity | None, color: bool = False) -> str:
    def paint(code: str, text: str) -> str:
        return f"\033[{code}m{text}\033[0m" if color else text

    lines = []
    for f in report.sorted_findings():
        lines.extend(_finding(f, paint))
    for name, layer in report.layers.items():
        if layer.status != "ran":
            lines.append(paint("2", f"{name}: {layer.status} ({layer.reason})"))
    lines.append(_summary(report, fail_on, paint))
    return "\n".join(lines) + "\n"


def _finding(f: Finding, paint) -> list[str]:
    severity = paint("2" if f.waived else _COLORS[f.severity], f"{f.severity.value:<7}")
    head = f"{severity} {paint('1', f.id)}  {f.location}  {f.message}"
    out = [head]
    pad = " " * 15
    if f.waived:
        out.append(pad + paint("2", f"waived: {f.waiver_reason}"))
    elif "waiver_expired" in f.evidence:
        out.append(pad + paint("33", f"waiver expired on {f.evidence['waiver_expired']}"))
    if f.hint:
        out.append(pad + paint("2", "hint: ") + f.hint)
    title = CHECKS[f.id].title if f.id in CHECKS else ""
    out.append(pad + paint("2", f"{f.doc}  ({title})"))
    return out


def _summary(report: Report, fail_on: Severity | None, paint) -> str:
    counts = report.counts()
    parts = [
        f"{counts[s]} {s}{'' if counts[s] == 1 else 's'}"
        for s in ("error", "warning", "info")
        if counts[s]
    ]
    if counts["waived"]:
        parts.append(f"{counts['waived']} waived")
    where = ", ".join(report.inputs.values())
    failing = len(report.failing(fail_on))
    if failing:
        verdict = paint("31", f"FAIL: {failing} at or above --fail-on={fail_on.value}")
    else:
        verdict = paint("32", "ok")
    return f"{where}: {', '.join(parts) or 'no findings'} - {verdict}"
