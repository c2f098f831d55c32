"""The `volguard` and `invoke` console scripts, run for real in a subprocess.

Exit codes (docs/architecture.md, docs/checks.md): 0 nothing at or above --fail-on, 2 findings at or
above it, 1 volguard could not do its job. Machine formats own stdout; notices go to stderr.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

import volguard
from volguard.tasks import ns

REPO = Path(__file__).resolve().parents[1]
REPO_FLY_TOML = REPO / "fly.toml"
VOLGUARD = Path(sys.executable).with_name("volguard")
INVOKE = Path(sys.executable).with_name("invoke")

VG103_AT = "fly.toml:31:3"  # the incident's `processes = ["app", "worker"]` mount line

CLEAN_TOML = """\
app = "clean"
primary_region = "syd"

[env]
  MEDIA_ROOT = "/data/media"

[[mounts]]
  source = "data"
  destination = "/data"
"""

# Only a warning (VG110: retention below the 5-day policy), on line 10.
WARNING_ONLY_TOML = """\
app = "warned"
primary_region = "syd"

[env]
  MEDIA_ROOT = "/data/media"

[[mounts]]
  source = "data"
  destination = "/data"
  snapshot_retention = 2
"""


def _env(extra: dict[str, str] | None, home: Path) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("INVOKE_", "GITHUB_", "VOLGUARD_")) and k != "NO_COLOR"
    }
    env["HOME"] = str(home)  # no ~/.invoke.yaml of whoever runs the tests
    env.update(extra or {})
    return env


def run_cli(
    args: list[str],
    cwd: Path,
    *,
    env: dict[str, str] | None = None,
    program: Path = VOLGUARD,
    home: Path | None = None,
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(program), *args],
        cwd=cwd,
        env=_env(env, home or cwd),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def assert_no_traceback(proc: subprocess.CompletedProcess[str]) -> None:
    assert "Traceback" not in proc.stdout
    assert "Traceback" not in proc.stderr


def assert_one_line_error(proc: subprocess.CompletedProcess[str]) -> None:
    assert proc.returncode == 1, (proc.stdout, proc.stderr)
    assert_no_traceback(proc)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].strip()
    assert proc.stdout == ""  # no report when volguard could not do its job


@pytest.fixture
def incident_dir(tmp_path: Path) -> Path:
    """A directory holding a copy of the repo's fly.toml (the VG103 incident)."""
    shutil.copy(REPO_FLY_TOML, tmp_path / "fly.toml")
    return tmp_path


@pytest.fixture
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("home")


# -- the incident fly.toml ---------------------------------------------------------------


def test_repo_fly_toml_has_the_shared_mount_at_line_31() -> None:
    line = REPO_FLY_TOML.read_text(encoding="utf-8").splitlines()[30]
    assert line.startswith('  processes = ["app", "worker"]')


def test_lint_path_exits_2_and_reports_vg103(incident_dir: Path) -> None:
    proc = run_cli(["lint", "fly.toml"], incident_dir)
    assert proc.returncode == 2, proc.stderr
    assert_no_traceback(proc)
    finding_lines = [line for line in proc.stdout.splitlines() if "VG103" in line]
    assert finding_lines, proc.stdout
    assert VG103_AT in finding_lines[0]
    assert finding_lines[0].split()[0] == "error"


def test_lint_without_path_uses_fly_toml_in_cwd(incident_dir: Path) -> None:
    proc = run_cli(["lint"], incident_dir)
    assert proc.returncode == 2, proc.stderr
    assert "VG103" in proc.stdout
    assert VG103_AT in proc.stdout


def test_lint_without_path_and_flags_still_uses_fly_toml(incident_dir: Path) -> None:
    proc = run_cli(["lint", "--format", "json", "--fail-on", "warning"], incident_dir)
    assert proc.returncode == 2, proc.stderr
    data = json.loads(proc.stdout)
    assert data["inputs"]["fly_toml"] == "fly.toml"
    assert [f["id"] for f in data["findings"]] == ["VG103"]


def test_lint_without_path_and_no_fly_toml_is_vg100(tmp_path: Path) -> None:
    proc = run_cli(["lint"], tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert "VG100" in proc.stdout
    assert "fly.toml" in proc.stdout
    assert_no_traceback(proc)


def test_invoke_lint_from_repo_root(home: Path) -> None:
    proc = run_cli(["lint", "fly.toml"], REPO, program=INVOKE, home=home)
    assert proc.returncode == 2, proc.stderr
    assert_no_traceback(proc)
    finding_lines = [line for line in proc.stdout.splitlines() if "VG103" in line]
    assert finding_lines, proc.stdout
    assert VG103_AT in finding_lines[0]


def test_invoke_and_volguard_give_the_same_json(incident_dir: Path, home: Path) -> None:
    by_invoke = run_cli(["lint", "fly.toml", "--format", "json"], REPO, program=INVOKE, home=home)
    by_volguard = run_cli(["lint", "fly.toml", "--format", "json"], incident_dir)
    assert by_invoke.returncode == by_volguard.returncode == 2
    assert json.loads(by_invoke.stdout)["findings"] == json.loads(by_volguard.stdout)["findings"]


# -- exit codes ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "flags",
    [
        ["--fail-on", "never"],
        ["--report-only"],
        ["--fail-on=never"],
        ["--report-only", "--fail-on", "info"],
    ],
)
def test_findings_do_not_fail_with_never_or_report_only(
    incident_dir: Path, flags: list[str]
) -> None:
    proc = run_cli(["lint", "fly.toml", *flags], incident_dir)
    assert proc.returncode == 0, proc.stderr
    assert "VG103" in proc.stdout  # still reported


def test_clean_fly_toml_exits_0(tmp_path: Path) -> None:
    (tmp_path / "fly.toml").write_text(CLEAN_TOML, encoding="utf-8")
    proc = run_cli(["lint", "--format", "json", "--fail-on", "info"], tmp_path)
    assert proc.returncode == 0, proc.stdout
    assert json.loads(proc.stdout)["findings"] == []
    text = run_cli(["lint"], tmp_path)
    assert text.returncode == 0
    assert "VG1" not in text.stdout


def test_warning_only_file_passes_by_default(tmp_path: Path) -> None:
    (tmp_path / "fly.toml").write_text(WARNING_ONLY_TOML, encoding="utf-8")
    proc = run_cli(["lint"], tmp_path)
    assert proc.returncode == 0, proc.stdout
    assert "VG110" in proc.stdout
    assert "fly.toml:10:3" in proc.stdout


@pytest.mark.parametrize("fail_on", ["warning", "info", "WARNING"])
def test_fail_on_warning_turns_a_warning_into_exit_2(tmp_path: Path, fail_on: str) -> None:
    (tmp_path / "fly.toml").write_text(WARNING_ONLY_TOML, encoding="utf-8")
    proc = run_cli(["lint", "--fail-on", fail_on], tmp_path)
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert "VG110" in proc.stdout


# -- volguard could not do its job: exit 1, one line on stderr --------------------------------


@pytest.mark.parametrize(
    ("args", "mentions"),
    [
        (["lint", "--bogus"], "--bogus"),
        (["lint", "fly.toml", "--bogus"], "--bogus"),
        (["lint", "--format", "xml"], "xml"),
        (["lint", "--fail-on", "bogus"], "bogus"),
        (["lint", "--output", "sarif.out"], "sarif.out"),
        (["lint", "--output", "sarif:"], "sarif:"),
        (["lint", "--output", "xml:out.xml"], "xml"),
        (["lint", "--media-groups", "nope"], "nope"),
        (["lint", "--media-groups", "app,nope"], "nope"),
        (["nosuchtask"], "nosuchtask"),
    ],
    ids=[
        "unknown-flag",
        "unknown-flag-after-path",
        "format-xml",
        "fail-on-bogus",
        "output-no-colon",
        "output-no-path",
        "output-bad-format",
        "media-groups-missing",
        "media-groups-one-missing",
        "unknown-task",
    ],
)
def test_bad_flags_exit_1_with_one_line(incident_dir: Path, args: list[str], mentions: str) -> None:
    proc = run_cli(args, incident_dir)
    assert_one_line_error(proc)
    assert mentions in proc.stderr
    assert not list(incident_dir.glob("*.xml"))
    assert not list(incident_dir.glob("*.out"))


def test_malformed_inline_waiver_exits_1_naming_file_and_line(incident_dir: Path) -> None:
    text = (incident_dir / "fly.toml").read_text(encoding="utf-8")
    lines = text.splitlines()
    assert lines[30].startswith("  processes")
    lines[30] += "  # volguard: ignore VG103"  # no reason="…"
    (incident_dir / "waived.toml").write_text("\n".join(lines) + "\n", encoding="utf-8")
    proc = run_cli(["lint", "waived.toml"], incident_dir)
    assert_one_line_error(proc)
    assert "waived.toml:31" in proc.stderr
    assert "reason" in proc.stderr


def test_inline_waiver_with_reason_waives(incident_dir: Path) -> None:
    lines = (incident_dir / "fly.toml").read_text(encoding="utf-8").splitlines()
    lines[30] += '  # volguard: ignore VG103 reason="one worker shares via S3"'
    (incident_dir / "fly.toml").write_text("\n".join(lines) + "\n", encoding="utf-8")
    proc = run_cli(["lint", "--format", "json"], incident_dir)
    assert proc.returncode == 0, proc.stdout
    (vg103,) = json.loads(proc.stdout)["findings"]
    assert vg103["waived"] is True
    assert vg103["waiver_reason"] == "one worker shares via S3"
    assert run_cli(["lint", "--no-waivers"], incident_dir).returncode == 2


# -- configuration: invoke.yaml and the environment -------------------------------------------


def test_invoke_yaml_fly_toml_is_honoured(incident_dir: Path) -> None:
    shutil.move(incident_dir / "fly.toml", incident_dir / "other.toml")
    (incident_dir / "fly.toml").write_text(CLEAN_TOML, encoding="utf-8")
    (incident_dir / "invoke.yaml").write_text("volguard:\n  fly_toml: other.toml\n")
    proc = run_cli(["lint"], incident_dir)
    assert proc.returncode == 2, proc.stdout
    assert "other.toml:31:3" in proc.stdout
    assert "VG103" in proc.stdout


def test_invoke_yaml_unknown_key_exits_1(incident_dir: Path) -> None:
    (incident_dir / "invoke.yaml").write_text("volguard:\n  bogus_key: 1\n")
    proc = run_cli(["lint"], incident_dir)
    assert_one_line_error(proc)
    assert "bogus_key" in proc.stderr


def _vg101(proc: subprocess.CompletedProcess[str]) -> list[dict]:
    return [f for f in json.loads(proc.stdout)["findings"] if f["id"] == "VG101"]


def test_env_var_media_root_overrides_fly_toml(incident_dir: Path) -> None:
    assert _vg101(run_cli(["lint", "--format", "json"], incident_dir)) == []
    env = {"INVOKE_VOLGUARD_MEDIA_ROOT": "/srv/media"}
    proc = run_cli(["lint", "--format", "json"], incident_dir, env=env)
    assert proc.returncode == 2
    (vg101,) = _vg101(proc)
    assert "/srv/media" in vg101["message"]


def test_env_var_media_root_overrides_invoke_yaml(incident_dir: Path) -> None:
    (incident_dir / "invoke.yaml").write_text("volguard:\n  media_root: /opt/elsewhere\n")
    (before,) = _vg101(run_cli(["lint", "--format", "json"], incident_dir))
    assert "/opt/elsewhere" in before["message"]
    env = {"INVOKE_VOLGUARD_MEDIA_ROOT": "/srv/media"}
    (vg101,) = _vg101(run_cli(["lint", "--format", "json"], incident_dir, env=env))
    assert "/srv/media" in vg101["message"]
    assert "/opt/elsewhere" not in vg101["message"]


def test_media_root_flag_overrides_env_var(incident_dir: Path) -> None:
    env = {"INVOKE_VOLGUARD_MEDIA_ROOT": "/srv/media"}
    proc = run_cli(
        ["lint", "--format", "json", "--media-root", "/data/uploads"], incident_dir, env=env
    )
    assert _vg101(proc) == []


# -- output files, step summary ---------------------------------------------------------------


def test_output_writes_all_files_and_text_still_on_stdout(incident_dir: Path) -> None:
    proc = run_cli(
        [
            "lint",
            "--output",
            "sarif:a.sarif",
            "--output",
            "junit:b.xml",
            "--output",
            "json:c.json",
        ],
        incident_dir,
    )
    assert proc.returncode == 2, proc.stderr
    assert VG103_AT in proc.stdout
    assert not proc.stdout.lstrip().startswith(("{", "<"))
    sarif = json.loads((incident_dir / "a.sarif").read_text(encoding="utf-8"))
    assert sarif["version"] == "2.1.0"
    assert [r["ruleId"] for r in sarif["runs"][0]["results"]] == ["VG103"]
    junit = ET.fromstring((incident_dir / "b.xml").read_text(encoding="utf-8"))  # noqa: S314  (our own output)
    assert junit.tag == "testsuites"
    assert junit.get("failures") == "1"
    data = json.loads((incident_dir / "c.json").read_text(encoding="utf-8"))
    assert [f["id"] for f in data["findings"]] == ["VG103"]
    assert not list(incident_dir.glob(".volguard-*"))


def test_output_same_format_twice_and_machine_stdout(incident_dir: Path) -> None:
    proc = run_cli(
        ["lint", "--format", "json", "--output", "json:one.json", "--output", "json:two.json"],
        incident_dir,
    )
    assert proc.returncode == 2
    on_stdout = json.loads(proc.stdout)
    assert json.loads((incident_dir / "one.json").read_text()) == on_stdout
    assert json.loads((incident_dir / "two.json").read_text()) == on_stdout


@pytest.mark.parametrize(
    "outputs",
    [
        ["json:c.json", "sarif:nodir/a.sarif"],
        ["sarif:nodir/a.sarif", "json:c.json"],
        ["json:c.json", "junit:b.xml", "sarif:missing/deeper/a.sarif"],
    ],
)
def test_output_in_missing_directory_exits_1_and_writes_nothing(
    incident_dir: Path, outputs: list[str]
) -> None:
    before = sorted(p.name for p in incident_dir.iterdir())
    args = ["lint"]
    for spec in outputs:
        args += ["--output", spec]
    proc = run_cli(args, incident_dir)
    assert_one_line_error(proc)
    assert "a.sarif" in proc.stderr
    assert sorted(p.name for p in incident_dir.iterdir()) == before  # no partial files, no temp


def test_output_onto_a_directory_exits_1_and_writes_nothing(incident_dir: Path) -> None:
    """The last file to be put in place fails: the ones before it must not stay behind."""
    (incident_dir / "adir").mkdir()
    (incident_dir / "c.json").write_text("old\n", encoding="utf-8")
    before = sorted(p.name for p in incident_dir.iterdir())
    args = ["lint", "--output", "json:c.json", "--output", "sarif:adir", "--output", "junit:b.xml"]
    proc = run_cli(args, incident_dir)
    assert_one_line_error(proc)
    assert "adir" in proc.stderr
    assert sorted(p.name for p in incident_dir.iterdir()) == before  # no b.xml, no temp files
    assert (incident_dir / "c.json").read_text(encoding="utf-8") == "old\n"
    assert list((incident_dir / "adir").iterdir()) == []


def test_github_step_summary_is_appended(incident_dir: Path) -> None:
    summary = incident_dir / "summary.md"
    summary.write_text("earlier step\n", encoding="utf-8")
    proc = run_cli(
        ["lint", "--format", "github"], incident_dir, env={"GITHUB_STEP_SUMMARY": str(summary)}
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.stdout.startswith("::error ")
    text = summary.read_text(encoding="utf-8")
    assert text.startswith("earlier step\n")
    rows = [line for line in text.splitlines() if line.startswith("| ") and "VG103" in line]
    assert len(rows) == 1
    assert f"`{VG103_AT}`" in rows[0]
    assert "#" in text  # a Markdown heading
    assert "::error" not in text


def test_github_step_summary_unwritable_is_a_warning_not_a_failure(incident_dir: Path) -> None:
    env = {"GITHUB_STEP_SUMMARY": str(incident_dir / "no" / "such" / "summary.md")}
    proc = run_cli(["lint", "--format", "github"], incident_dir, env=env)
    assert proc.returncode == 2
    assert "GITHUB_STEP_SUMMARY" in proc.stderr
    assert_no_traceback(proc)


# -- stdout carries only the report in machine formats -------------------------------------------


@pytest.mark.parametrize("fmt", ["json", "sarif", "junit", "github"])
def test_machine_formats_own_stdout(incident_dir: Path, fmt: str) -> None:
    proc = run_cli(["lint", "--format", fmt], incident_dir)
    assert proc.returncode == 2
    assert proc.stderr == ""
    if fmt in ("json", "sarif"):
        json.loads(proc.stdout)
    elif fmt == "junit":
        ET.fromstring(proc.stdout)  # noqa: S314  (our own output)
    else:
        lines = proc.stdout.splitlines()
        assert lines
        assert all(line.startswith("::") for line in lines)


def test_json_stdout_parses_and_points_at_line_31(incident_dir: Path) -> None:
    proc = run_cli(["lint", "--format", "json"], incident_dir)
    data = json.loads(proc.stdout)
    (vg103,) = data["findings"]
    assert vg103["location"] == {"file": "fly.toml", "line": 31, "column": 3}
    assert data["exit_code"] == proc.returncode == 2


def test_text_is_not_coloured_when_not_a_terminal(incident_dir: Path) -> None:
    proc = run_cli(["lint"], incident_dir)
    assert "\x1b[" not in proc.stdout


# -- help, list, version ------------------------------------------------------------------------


def _lint_summary() -> str:
    doc = ns.tasks["lint"].body.__doc__ or ""
    first = doc.strip().splitlines()[0]
    assert first
    return first


def _squash(text: str) -> str:
    return " ".join(text.split())


def test_volguard_help_lists_lint_with_its_help(tmp_path: Path) -> None:
    proc = run_cli(["--help"], tmp_path)
    assert proc.returncode == 0
    assert f"lint {_lint_summary()}" in _squash(proc.stdout)


def test_invoke_list_lists_lint_with_its_help(home: Path) -> None:
    proc = run_cli(["--list"], REPO, program=INVOKE, home=home)
    assert proc.returncode == 0, proc.stderr
    assert f"lint {_lint_summary()}" in _squash(proc.stdout)


LINT_FLAGS = [
    "--path",
    "--format",
    "--output",
    "--fail-on",
    "--report-only",
    "--no-waivers",
    "--media-root",
    "--media-groups",
]


def test_lint_help_describes_every_flag(tmp_path: Path) -> None:
    proc = run_cli(["lint", "--help"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    described = {}
    for line in proc.stdout.splitlines():
        m = re.match(r"\s+(--[\w-]+)(?:=\w+)?\s{2,}(\S.*)$", line)
        if m:
            described[m.group(1)] = m.group(2)
    for flag in LINT_FLAGS:
        assert described.get(flag), f"{flag} has no help text in:\n{proc.stdout}"
    assert _lint_summary() in _squash(proc.stdout)


@pytest.mark.parametrize("flag", ["--version", "-V"])
def test_version(tmp_path: Path, flag: str) -> None:
    proc = run_cli([flag], tmp_path)
    assert proc.returncode == 0
    assert proc.stdout.strip() == f"volguard {volguard.__version__}"


# -- core options: only those that mean something to volguard ------------------------------

OFFERED = {"--complete", "--config", "--help", "--list", "--print-completion-script", "--version"}
#: invoke's options for its own shell commands and internals: volguard's tasks run none
HIDDEN = [
    "--command-timeout=5",
    "--debug",
    "--dry",
    "--echo",
    "--hide=both",
    "--list-depth=1",
    "--list-format=json",
    "--prompt-for-sudo-password",
    "--pty",
    "--warn-only",
    "--write-pyc",
]


def _core_options(help_text: str) -> set[str]:
    section = help_text.split("Core options:", 1)[1].split("Subcommands:", 1)[0]
    return set(re.findall(r"(?<![\w-])--[a-z][\w-]*", section))


def test_help_offers_only_the_core_options_volguard_uses(tmp_path: Path) -> None:
    proc = run_cli(["--help"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert _core_options(proc.stdout) == OFFERED
    for flag in HIDDEN:
        assert flag.split("=")[0] not in proc.stdout
    assert "run()" not in proc.stdout  # invoke's wording about its shell commands


@pytest.mark.parametrize("flag", [*HIDDEN, "-p", "-e", "-R", "-w", "-T", "-d", "-D", "-F"])
@pytest.mark.parametrize("where", ["before", "after"])
def test_a_hidden_invoke_option_is_rejected(incident_dir: Path, flag: str, where: str) -> None:
    args = [flag, "lint"] if where == "before" else ["lint", flag]
    proc = run_cli(args, incident_dir)
    assert_one_line_error(proc)  # exit 1, no report: lint did not run
    assert flag.split("=")[0] in proc.stderr


def test_completion_offers_no_hidden_option(tmp_path: Path) -> None:
    proc = run_cli(["--complete", "--", "volguard", "--"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert set(proc.stdout.split()) == OFFERED
    script = run_cli(["--print-completion-script", "bash"], tmp_path)
    assert script.returncode == 0, script.stderr
    assert "--complete" in script.stdout


def test_config_option_reads_another_configuration_file(incident_dir: Path) -> None:
    (incident_dir / "fly.toml").rename(incident_dir / "staging.toml")
    (incident_dir / "ci.yaml").write_text("volguard:\n  fly_toml: staging.toml\n")
    proc = run_cli(["--config", "ci.yaml", "lint", "--format", "json"], incident_dir)
    assert proc.returncode == 2, proc.stderr
    assert json.loads(proc.stdout)["findings"][0]["location"]["file"] == "staging.toml"


def test_a_reader_that_stops_early_gets_no_traceback(tmp_path: Path) -> None:
    with subprocess.Popen(
        [str(VOLGUARD), "--help"],
        cwd=tmp_path,
        env=_env(None, tmp_path),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as proc:
        proc.stdout.close()  # before volguard has started: its first write breaks the pipe
        err = proc.stderr.read()
        code = proc.wait(timeout=60)
    assert code == 1
    assert "Traceback" not in err
