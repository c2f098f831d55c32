"""fly.toml that cannot be read, decoded, parsed or typed: a VG100 finding, never a crash.

Each case is checked twice: through the library (`volguard.lint.lint`) and through the real
`volguard lint` command (exit code 2, the finding on stdout, no traceback anywhere).
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from volguard.config import Settings
from volguard.findings import Finding, Severity
from volguard.flytoml import MAX_BYTES, read_fly_toml
from volguard.lint import lint

REPO = Path(__file__).resolve().parents[1]
VOLGUARD = Path(sys.executable).with_name("volguard")


def run_cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("INVOKE_", "GITHUB_"))}
    env["HOME"] = str(cwd)
    return subprocess.run(
        [str(VOLGUARD), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def _garbage_with_nul() -> bytes:
    rng = random.Random(20240601)  # noqa: S311  (reproducible garbage, not crypto)
    data = bytearray(rng.randbytes(4096))
    data[1234] = 0  # at least one NUL, whatever the seed gives
    return bytes(data)


def _nul_position(data: bytes) -> tuple[int, int]:
    i = data.index(b"\0")
    return data.count(b"\n", 0, i) + 1, i - (data.rfind(b"\n", 0, i) + 1) + 1


@dataclass(frozen=True)
class Case:
    """A bad fly.toml: how to make it, and where the VG100 finding must point."""

    name: str
    make: Callable[[Path], None] | None  # None: the file does not exist
    line: int | None
    column: int | None
    says: str  # a fragment of the message
    key: str | None = None  # for wrong types: the dotted key in the evidence


def _write(content: str | bytes) -> Callable[[Path], None]:
    def make(path: Path) -> None:
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, encoding="utf-8")

    return make


GARBAGE = _garbage_with_nul()
MOUNT = '[mounts]\n  source = "data"\n  destination = "/data"\n'

CASES = [
    Case("missing", None, None, None, "does not exist"),
    Case("directory", lambda p: p.mkdir(), None, None, "directory"),
    Case("garbage", _write(GARBAGE), *_nul_position(GARBAGE), "binary"),
    Case("nul-in-string", _write(b'app = "x"\nb = "\x00"\n'), 2, 6, "NUL"),
    Case("latin-1", _write(b'app = "x"\nname = "caf\xe9"\n'), 2, 12, "UTF-8"),
    # Syntax errors: 1-based columns, as Python's tomllib reports them and as volguard's own
    # locations are (fly.toml:31:3 is the `p` of `  processes`).
    Case("unclosed-table", _write("[mounts\nsource = 'x'\n"), 1, 8, "not valid TOML"),
    Case("missing-value", _write('app = "x"\na = \n'), 2, 5, "not valid TOML"),
    Case("bad-character", _write("a = @\n"), 1, 5, "not valid TOML"),
    Case(
        "wrong-type-source",
        _write('primary_region = "syd"\n[mounts]\n  source = 42\n  destination = "/data"\n'),
        3,
        12,
        "must be a string",
        key="mounts.source",
    ),
    Case(
        "wrong-type-mount-processes",
        _write('primary_region = "syd"\n' + MOUNT + '  processes = "app"\n'),
        5,
        15,
        "array of strings",
        key="mounts.processes",
    ),
    Case(
        "wrong-type-destination",
        _write('primary_region = "syd"\n[mounts]\n  source = "data"\n  destination = ["/data"]\n'),
        4,
        17,
        "must be a string",
        key="mounts.destination",
    ),
    Case(
        "wrong-type-env",
        _write('primary_region = "syd"\nenv = "MEDIA_ROOT=/data/media"\n' + MOUNT),
        2,
        7,
        "must be a table",
        key="env",
    ),
    Case(
        "wrong-type-processes",
        _write('primary_region = "syd"\nprocesses = "app"\n' + MOUNT),
        2,
        13,
        "must be a table",
        key="processes",
    ),
    Case(
        "wrong-type-initial-size",
        _write('primary_region = "syd"\n' + MOUNT + "  initial_size = true\n"),
        5,
        18,
        "size",
        key="mounts.initial_size",
    ),
]


@pytest.fixture(params=CASES, ids=[c.name for c in CASES])
def case(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[Case, Path]:
    case: Case = request.param
    path = tmp_path / "fly.toml"
    if case.make is not None:
        case.make(path)
    return case, tmp_path


def _only_vg100(findings: list[Finding]) -> Finding:
    vg100 = [f for f in findings if f.id == "VG100"]
    assert len(vg100) == 1, findings
    return vg100[0]


def test_library_reports_one_vg100(
    case: tuple[Case, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    c, cwd = case
    monkeypatch.chdir(cwd)
    report = lint(Settings(), "fly.toml")
    f = _only_vg100(report.findings)
    assert f.severity is Severity.ERROR
    assert not f.waived
    assert f.location.file == "fly.toml"
    assert (f.location.line, f.location.column) == (c.line, c.column), f.message
    assert "fly.toml" in f.message
    assert c.says.lower() in (f.message + " " + f.hint).lower()
    if c.key:
        assert f.evidence.get("key") == c.key
    assert report.exit_code(Severity.ERROR) == 2
    assert "VG100" in report.checks_run()


def test_cli_exits_2_with_the_vg100_location(case: tuple[Case, Path]) -> None:
    c, cwd = case
    text = run_cli(["lint", "fly.toml"], cwd)
    assert text.returncode == 2, (text.stdout, text.stderr)
    for stream in (text.stdout, text.stderr):
        assert "Traceback" not in stream
        assert "internal error" not in stream
    where = ":".join(str(x) for x in ("fly.toml", c.line, c.column) if x is not None)
    vg100_lines = [line for line in text.stdout.splitlines() if "VG100" in line]
    assert len(vg100_lines) == 1, text.stdout
    assert f"  {where}  " in vg100_lines[0]

    as_json = run_cli(["lint", "fly.toml", "--format", "json"], cwd)
    assert as_json.returncode == 2
    (f,) = [f for f in json.loads(as_json.stdout)["findings"] if f["id"] == "VG100"]
    expected = {"file": "fly.toml"}
    expected |= {"line": c.line} if c.line else {}
    expected |= {"column": c.column} if c.column else {}
    assert f["location"] == expected


# -- cases with their own expectations ---------------------------------------------------------


DUPLICATE_KEYS = [
    ('app = "x"\napp = "y"\n', 2),
    ('[mounts]\n  source = "a"\n  source = "b"\n', 3),
    ('[env]\n  A = "1"\n[env]\n  B = "2"\n', 3),
]


@pytest.mark.parametrize(("text", "line"), DUPLICATE_KEYS, ids=["top", "in-table", "table"])
def test_duplicate_key_is_vg100_with_its_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str, line: int
) -> None:
    monkeypatch.chdir(tmp_path)
    Path("fly.toml").write_text(text, encoding="utf-8")
    f = _only_vg100(lint(Settings(), "fly.toml").findings)
    assert f.location.line == line, f.message
    # columns are 1-based: a column is either left out or at least 1, in the model and message
    assert f.location.column is None or f.location.column >= 1, f.location
    assert "column 0" not in f.message
    proc = run_cli(["lint", "fly.toml", "--format", "json"], tmp_path)
    assert proc.returncode == 2
    (vg100,) = [x for x in json.loads(proc.stdout)["findings"] if x["id"] == "VG100"]
    assert vg100["location"]["line"] == line
    assert vg100["location"].get("column", 1) >= 1


@pytest.mark.parametrize("text", ["", "\n\n", "# only a comment\n", "\ufeff"])
def test_empty_file_is_not_vg100(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str
) -> None:
    monkeypatch.chdir(tmp_path)
    Path("fly.toml").write_text(text, encoding="utf-8")
    config, findings = read_fly_toml("fly.toml")
    assert config is not None
    assert findings == []
    assert config.mounts == ()
    assert config.group_names == ["app"]
    report = lint(Settings(), "fly.toml")
    # An empty configuration: nothing to verify, said once at info level.
    assert [(f.id, f.severity) for f in report.findings] == [("VG114", Severity.INFO)]
    assert report.exit_code(Severity.ERROR) == 0
    proc = run_cli(["lint", "fly.toml"], tmp_path)
    assert proc.returncode == 0, proc.stdout
    assert "VG100" not in proc.stdout
    assert "VG114" in proc.stdout
    assert run_cli(["lint", "fly.toml", "--fail-on", "info"], tmp_path).returncode == 2


def test_bom_and_crlf_are_accepted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    text = (REPO / "fly.toml").read_text(encoding="utf-8")
    Path("fly.toml").write_bytes(b"\xef\xbb\xbf" + text.replace("\n", "\r\n").encode("utf-8"))
    report = lint(Settings(), "fly.toml")
    assert [(f.id, f.location.line, f.location.column) for f in report.findings] == [
        ("VG103", 31, 3)
    ]


def test_ten_megabyte_file_is_vg100_and_fast(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    line = b'key_%07d = "' + b"x" * 80 + b'"\n'
    with open("fly.toml", "wb") as fh:
        written = 0
        n = 0
        while written < 10 * 1024 * 1024:
            chunk = line % n
            fh.write(chunk)
            written += len(chunk)
            n += 1
    start = time.perf_counter()
    report = lint(Settings(), "fly.toml")
    elapsed = time.perf_counter() - start
    assert elapsed < 2, elapsed
    f = _only_vg100(report.findings)
    assert str(MAX_BYTES) in f.message.replace(",", "")
    assert f.location.file == "fly.toml"
    start = time.perf_counter()
    proc = run_cli(["lint", "fly.toml"], tmp_path)
    assert time.perf_counter() - start < 2
    assert proc.returncode == 2
    assert "VG100" in proc.stdout
    assert "Traceback" not in proc.stderr


def test_size_limit_boundary(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    head = b"# padding\n"
    Path("at.toml").write_bytes(head + b"#" * (MAX_BYTES - len(head) - 1) + b"\n")
    Path("over.toml").write_bytes(head + b"#" * (MAX_BYTES - len(head)) + b"\n")
    assert os.path.getsize("at.toml") == MAX_BYTES
    assert os.path.getsize("over.toml") == MAX_BYTES + 1
    config, findings = read_fly_toml("at.toml")
    assert config is not None
    assert findings == []
    config, findings = read_fly_toml("over.toml")
    assert config is None
    assert [f.id for f in findings] == ["VG100"]


@pytest.mark.parametrize("size", ["9" * 400 + "gb", "9" * 5000])
def test_absurd_size_is_a_finding_not_an_internal_error(tmp_path: Path, size: str) -> None:
    """A size flyctl cannot parse is VG108 (exit 2), not volguard breaking (exit 1)."""
    (tmp_path / "fly.toml").write_text(
        'primary_region = "syd"\n' + MOUNT + f'  initial_size = "{size}"\n', encoding="utf-8"
    )
    proc = run_cli(["lint", "fly.toml"], tmp_path)
    assert "internal error" not in proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.returncode == 2, proc.stderr
    assert "VG108" in proc.stdout
    assert "fly.toml:5:3" in proc.stdout


@pytest.mark.skipif(
    not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root can read any file"
)
def test_unreadable_file_is_vg100(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    shutil.copy(REPO / "fly.toml", "fly.toml")
    os.chmod("fly.toml", 0)
    try:
        f = _only_vg100(lint(Settings(), "fly.toml").findings)
        assert "permission" in f.message.lower()
        assert f.location.file == "fly.toml"
        proc = run_cli(["lint", "fly.toml"], tmp_path)
        assert proc.returncode == 2
        assert "VG100" in proc.stdout
        assert "Traceback" not in proc.stderr
    finally:
        os.chmod("fly.toml", 0o644)


def test_a_bad_mount_still_lets_the_other_checks_speak(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A wrong type is one VG100; the rest of the file is still modelled and checked."""
    monkeypatch.chdir(tmp_path)
    Path("fly.toml").write_text(
        'primary_region = "syd"\n[deploy]\n  strategy = "canary"\n'
        '[[mounts]]\n  source = "ok"\n  destination = "/data"\n'
        '[[mounts]]\n  source = 42\n  destination = "/other"\n',
        encoding="utf-8",
    )
    report = lint(Settings(), "fly.toml")
    f = _only_vg100(report.findings)
    assert (f.location.line, f.location.column) == (8, 12)  # at the offending value
    assert "VG109" in {x.id for x in report.findings}
