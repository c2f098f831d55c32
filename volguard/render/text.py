"""Text for people: most severe first, the hint under each finding, colour on a terminal.

Every value that may have come from outside volguard (a message quoting a Machine or the
API, a location, a waiver's reason, a layer's reason, the inputs) goes through
`volguard.terminal.printable`, so it shows as text and never acts on the terminal.
"""

from __future__ import annotations

from volguard.catalogue import CHECKS
from volguard.findings import Finding, Severity
from volguard.report import Report
from volguard.terminal import printable

_COLORS = {Severity.ERROR: "31", Severity.WARNING: "33", Severity.INFO: "36"}


def render(report: Report, *, fail_on: Severity | None, color: bool = False) -> str:
    def paint(code: str, text: str) -> str:
        return f"\033[{code}m{text}\033[0m" if color else text

    lines = []
    for f in report.sorted_findings():
        lines.extend(_finding(f, paint))
    for name, layer in report.layers.items():
        if layer.status != "ran":
            lines.append(paint("2", f"{name}: {layer.status} ({printable(layer.reason)})"))
    lines.append(_summary(report, fail_on, paint))
    return "\n".join(lines) + "\n"


def _finding(f: Finding, paint) -> list[str]:
    severity = paint("2" if f.waived else _COLORS[f.severity], f"{f.severity.value:<7}")
    head = f"{severity} {paint('1', printable(f.id))}  {printable(f.location)}  "
    out = [head + printable(f.message)]
    pad = " " * 15
    if f.waived:
        out.append(pad + paint("2", f"waived: {printable(f.waiver_reason)}"))
    elif "waiver_expired" in f.evidence:
        expired = printable(f.evidence["waiver_expired"])
        out.append(pad + paint("33", f"waiver expired on {expired}"))
    if f.hint:
        out.append(pad + paint("2", "hint: ") + printable(f.hint))
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
    where = printable(", ".join(str(v) for v in report.inputs.values()))
    failing = len(report.failing(fail_on))
    if failing:
        verdict = paint("31", f"FAIL: {failing} at or above --fail-on={fail_on.value}")
    else:
        verdict = paint("32", "ok")
    return f"{where}: {', '.join(parts) or 'no findings'} - {verdict}"
