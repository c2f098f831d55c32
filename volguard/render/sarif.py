"""SARIF 2.1.0, so code scanning annotates the fly.toml line.

One rule per check id that ran; one result per finding. Waived findings are
kept as results with a suppression, as the spec intends.
"""

from __future__ import annotations

import json
import os

from volguard import __version__
from volguard.catalogue import CHECKS, Check
from volguard.findings import Finding, Severity
from volguard.report import Report

SCHEMA = "https://json.schemastore.org/sarif-2.1.0.json"
_LEVEL = {Severity.ERROR: "error", Severity.WARNING: "warning", Severity.INFO: "note"}


def render(report: Report, *, fail_on: Severity | None, color: bool = False) -> str:
    rule_ids = report.checks_run()
    index = {rule_id: i for i, rule_id in enumerate(rule_ids)}
    run = {
        "tool": {
            "driver": {
                "name": "volguard",
                "version": __version__,
                "semanticVersion": __version__,
                "rules": [_rule(rule_id) for rule_id in rule_ids],
            }
        },
        "originalUriBaseIds": {"%SRCROOT%": {"uri": _dir_uri(os.getcwd())}},
        "invocations": [
            {
                "executionSuccessful": all(
                    layer.status != "broken" for layer in report.layers.values()
                )
            }
        ],
        "results": [_result(f, index[f.id]) for f in report.sorted_findings()],
    }
    log = {"$schema": SCHEMA, "version": "2.1.0", "runs": [run]}
    return json.dumps(log, indent=2, ensure_ascii=False, default=str) + "\n"


def _rule(rule_id: str) -> dict:
    check = CHECKS.get(rule_id) or Check(rule_id, "custom", Severity.ERROR, rule_id, "")
    return {
        "id": rule_id,
        "name": "".join(
            w.capitalize() for w in check.title.replace("/", " ").split() if w.isalnum()
        )[:100]
        or rule_id,
        "shortDescription": {"text": check.title},
        "help": {"text": f"{check.hint} See docs/checks.md#{rule_id.lower()}."},
        "defaultConfiguration": {"level": _LEVEL[check.severity]},
        "properties": {"layer": check.layer},
    }


def _result(f: Finding, rule_index: int) -> dict:
    result: dict = {
        "ruleId": f.id,
        "ruleIndex": rule_index,
        "level": _LEVEL[f.severity],
        "message": {"text": f.message + (f" Hint: {f.hint}" if f.hint else "")},
    }
    loc = f.location
    if loc.file:
        physical: dict = {"artifactLocation": _artifact(loc.file)}
        if loc.line:
            physical["region"] = {"startLine": loc.line}
            if loc.column:
                physical["region"]["startColumn"] = loc.column
        result["locations"] = [{"physicalLocation": physical}]
    else:
        name = loc.machine or loc.volume or loc.object
        if name:
            result["locations"] = [{"logicalLocations": [{"name": name, "kind": "resource"}]}]
    if f.evidence:
        result["properties"] = {"evidence": f.evidence}
    if f.waived:
        result["suppressions"] = [{"kind": "external", "justification": f.waiver_reason or ""}]
    return result


def _artifact(path: str) -> dict:
    absolute = os.path.abspath(path)
    relative = os.path.relpath(absolute)
    if relative.startswith(".."):
        return {"uri": _file_uri(absolute)}
    return {"uri": relative.replace(os.sep, "/"), "uriBaseId": "%SRCROOT%"}


def _file_uri(path: str) -> str:
    from urllib.parse import quote

    return "file://" + quote(path.replace(os.sep, "/"))


def _dir_uri(path: str) -> str:
    return _file_uri(path).rstrip("/") + "/"
