"""GitHub Actions: workflow-command annotations, and a Markdown step summary.

Values from outside volguard are escaped twice over: control characters by
`volguard.terminal.printable` (the log is shown in a terminal-like viewer), then the
workflow-command encoding (``%``, CR, LF, and ``:``/``,`` in properties), so a message can
neither end its annotation early nor start a workflow command of its own.
"""

from __future__ import annotations

from volguard.catalogue import CHECKS
from volguard.findings import Finding, Severity
from volguard.report import Report
from volguard.terminal import printable

_LEVEL = {Severity.ERROR: "error", Severity.WARNING: "warning", Severity.INFO: "notice"}


def render(report: Report, *, fail_on: Severity | None, color: bool = False) -> str:
    lines = [_annotation(f) for f in report.sorted_findings() if not f.waived]
    return "".join(line + "\n" for line in lines)


def _annotation(f: Finding) -> str:
    props = {"title": f"{f.id} {CHECKS[f.id].title}" if f.id in CHECKS else f.id}
    if f.location.file:
        props["file"] = f.location.file
        if f.location.line:
            props["line"] = str(f.location.line)
            if f.location.column:
                props["col"] = str(f.location.column)
    text = ",".join(f"{k}={_escape_property(v)}" for k, v in props.items())
    body = f.message + (f"\nhint: {f.hint}" if f.hint else "")
    return f"::{_LEVEL[f.severity]} {text}::{_escape_data(body)}"


def _escape_data(value: str) -> str:
    # CR and LF stay: the workflow-command encoding below makes them harmless (%0D, %0A)
    value = "\r".join(printable(part, newlines=True) for part in value.split("\r"))
    return value.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def _escape_property(value: str) -> str:
    return _escape_data(value).replace(":", "%3A").replace(",", "%2C")


def step_summary(report: Report, fail_on: Severity | None) -> str:
    """Markdown for $GITHUB_STEP_SUMMARY."""
    failing = report.failing(fail_on)
    verdict = "failed" if failing else "passed"
    out = [f"### volguard: {verdict}", ""]
    counts = report.counts()
    out.append(
        ", ".join(
            [
                _count(counts["error"], "error"),
                _count(counts["warning"], "warning"),
                f"{counts['info']} info",
                f"{counts['waived']} waived",
            ]
        )
        + f" ({_cell(', '.join(str(v) for v in report.inputs.values()))})"
    )
    if report.findings:
        out += ["", "| | id | where | what |", "|---|---|---|---|"]
        for f in report.sorted_findings():
            mark = "waived" if f.waived else f.severity.value
            where = _cell(str(f.location)).replace("`", "'")
            out.append(f"| {mark} | [{f.id}]({f.doc}) | `{where}` | {_cell(f.message)} |")
    return "\n".join(out) + "\n"


def _cell(value: str) -> str:
    """One Markdown table cell: control characters escaped, no pipe ends it early."""
    return printable(value).replace("|", "\\|")


def _count(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"
