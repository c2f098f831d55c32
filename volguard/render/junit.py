"""JUnit XML: one testsuite per layer, one testcase per check, a failure per failing finding.

A testcase fails when it has a finding at or above --fail-on, so CI's test
view agrees with the exit code; findings below it and waived ones are listed
in the testcase's system-out.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET

from volguard.catalogue import CHECKS
from volguard.findings import Finding, Severity
from volguard.report import Report


def render(report: Report, *, fail_on: Severity | None, color: bool = False) -> str:
    root = ET.Element("testsuites", name="volguard")
    total = failures = 0
    for layer_name, layer in report.layers.items():
        suite = ET.SubElement(root, "testsuite", name=f"volguard.{layer_name}")
        ids = sorted(
            set(layer.checks)
            | {
                f.id
                for f in report.findings
                if (CHECKS[f.id].layer if f.id in CHECKS else "machine") == layer_name
            }
        )
        if layer.status != "ran":
            case = ET.SubElement(suite, "testcase", classname=suite.get("name"), name=layer_name)
            ET.SubElement(case, "skipped", message=f"{layer.status}: {layer.reason}")
            ids = []
        suite_failures = 0
        for check_id in ids:
            found = [f for f in report.sorted_findings() if f.id == check_id]
            failing = [f for f in found if f.counts_at(fail_on)]
            title = CHECKS[check_id].title if check_id in CHECKS else ""
            case = ET.SubElement(
                suite, "testcase", classname=suite.get("name"), name=f"{check_id} {title}"
            )
            for f in failing:
                failure = ET.SubElement(
                    case, "failure", type=f"{check_id}.{f.severity.value}", message=f.message
                )
                failure.text = _describe(f)
            others = [f for f in found if f not in failing]
            if others:
                ET.SubElement(case, "system-out").text = "\n\n".join(_describe(f) for f in others)
            suite_failures += bool(failing)
        suite.set("tests", str(max(len(ids), 1 if layer.status != "ran" else 0)))
        suite.set("failures", str(suite_failures))
        suite.set("errors", "0")
        suite.set("skipped", "1" if layer.status != "ran" else "0")
        total += int(suite.get("tests"))
        failures += suite_failures
    root.set("tests", str(total))
    root.set("failures", str(failures))
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


def _describe(f: Finding) -> str:
    state = f" (waived: {f.waiver_reason})" if f.waived else ""
    hint = f"\nhint: {f.hint}" if f.hint else ""
    return f"{f.severity.value} {f.id} at {f.location}{state}: {f.message}{hint}"
