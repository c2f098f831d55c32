"""Waivers: accepted findings stay in the report, marked waived, and stop failing the run.

Two sources: inline comments in fly.toml, and the `waivers:` list of volguard's
config. An inline waiver is a trailing comment on the offending line, or a
comment on its own line directly above it::

    snapshot_retention = 2  # volguard: ignore VG110 reason="staging app" until=2027-03-01

A reason is required; an expired waiver stops waiving (the finding says so).
"""

from __future__ import annotations

import datetime as dt
import os
import re
from collections.abc import Iterable
from dataclasses import replace

from volguard.config import Waiver, check_id_or_error, date_or_error, reason_or_error
from volguard.errors import ConfigError
from volguard.findings import Finding
from volguard.tomlsource import SourceMap

# Patterns are compiled on first use (re caches them): most files have no directive.
_DIRECTIVE = r"(?i)\s*volguard\s*:"
_IGNORE = (
    r"(?i)\s*volguard\s*:\s*ignore\s+"
    r"(?P<ids>[A-Za-z]{2}\d{3}(?:\s*,\s*[A-Za-z]{2}\d{3})*)(?P<rest>.*)$"
)
_OPTION = r"""\s*(?P<key>\w+)\s*=\s*(?:"(?P<dq>[^"]*)"|'(?P<sq>[^']*)'|(?P<bare>\S+))"""


def inline_waivers(source_map: SourceMap, path: str) -> list[Waiver]:
    """Waivers written as `# volguard: ignore …` comments. Raises ConfigError when malformed."""
    waivers = []
    for comment in source_map.comments:
        if "volguard" not in comment.text.lower() or not re.match(_DIRECTIVE, comment.text):
            continue
        origin = f"{path}:{comment.line}"
        m = re.match(_IGNORE, comment.text)
        if not m:
            raise ConfigError(
                f"{origin}: cannot read volguard directive; write `# volguard: ignore VG110 "
                f'reason="…" [until=YYYY-MM-DD]`'
            )
        options = _options(m.group("rest"), origin)
        ids = tuple(check_id_or_error(i, origin) for i in re.split(r"\s*,\s*", m.group("ids")))
        line = comment.line if comment.trailing else source_map.next_code_line(comment.line)
        waivers.append(
            Waiver(
                ids=ids,
                reason=reason_or_error(options.get("reason"), origin),
                until=date_or_error(options.get("until"), origin),
                file=path,
                line=line,
                origin=origin,
            )
        )
    return waivers


def _options(rest: str, origin: str) -> dict[str, str]:
    options: dict[str, str] = {}
    pos = 0
    while rest[pos:].strip():
        m = re.compile(_OPTION).match(rest, pos)
        if not m:
            raise ConfigError(f"{origin}: cannot read {rest[pos:].strip()!r} in volguard directive")
        key = m.group("key").lower()
        if key not in ("reason", "until"):
            raise ConfigError(f"{origin}: unknown waiver option {key!r} (reason, until)")
        options[key] = next(v for v in m.group("dq", "sq", "bare") if v is not None)
        pos = m.end()
    return options


def apply_waivers(
    findings: Iterable[Finding], waivers: Iterable[Waiver], today: dt.date | None = None
) -> list[Finding]:
    """Mark the findings that a (current) waiver covers; note expired ones in the evidence."""
    today = today or dt.date.today()
    waivers = list(waivers)
    out = []
    for f in findings:
        waiver = next((w for w in waivers if _covers(w, f)), None)
        if waiver is None:
            out.append(f)
        elif waiver.expired(today):
            note = {"waiver_expired": waiver.until.isoformat(), "waiver_origin": waiver.origin}
            out.append(replace(f, evidence={**f.evidence, **note}))
        else:
            until = f" (until {waiver.until.isoformat()})" if waiver.until else ""
            out.append(f.waive(waiver.reason + until))
    return out


def _covers(waiver: Waiver, f: Finding) -> bool:
    if f.id not in waiver.ids:
        return False
    if waiver.file is not None and not _same_file(waiver.file, f.location.file):
        return False
    return waiver.line is None or waiver.line == f.location.line


def _same_file(a: str, b: str | None) -> bool:
    return b is not None and os.path.abspath(a) == os.path.abspath(b)
