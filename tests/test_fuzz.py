"""Property tests: whatever fly.toml holds, lint answers with findings, never a crash.

(1) TOML documents built from fly.toml's vocabulary with values of every type, serialised
with tomlkit; (2) arbitrary text and bytes given to read_fly_toml. The budget is small
(max_examples) so the whole module runs in well under 20 s.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import tomlkit
from hypothesis import HealthCheck, Phase, assume, example, given, settings
from hypothesis import strategies as st

from volguard.catalogue import CHECKS
from volguard.config import Settings
from volguard.errors import VolguardError
from volguard.findings import Finding, Severity
from volguard.flytoml import read_fly_toml
from volguard.lint import lint
from volguard.render import FORMATS, render
from volguard.report import Report

VOCABULARY = [
    "app",
    "primary_region",
    "mounts",
    "mount",
    "processes",
    "env",
    "deploy",
    "strategy",
    "release_command",
    "http_service",
    "services",
    "min_machines_running",
    "internal_port",
    "source",
    "destination",
    "initial_size",
    "snapshot_retention",
    "scheduled_snapshots",
    "auto_extend_size_threshold",
    "auto_extend_size_increment",
    "auto_extend_size_limit",
    "MEDIA_ROOT",
    "DATABASE_URL",
    "name",
    "command",
    "app",
    "worker",
    "web",
]

FUZZ = settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    phases=[Phase.explicit, Phase.reuse, Phase.generate],  # no shrinking: bounded runtime
)

keys = st.sampled_from(VOCABULARY) | st.text(min_size=1, max_size=8)

# Strings that look like what fly.toml holds: paths, sizes (including absurd ones), groups.
size_strings = st.one_of(
    st.from_regex(r"[+-]?[0-9]{1,30}(\.[0-9]{1,5})?\s?[kmgtpKMGTP]?[iI]?[bB]?", fullmatch=True),
    st.sampled_from(["9" * 400 + "gb", "1" * 400, "9" * 5000, "1e999", "0.5GB", "1.2.3gb"]),
)
fly_strings = st.one_of(
    st.text(max_size=20),
    st.sampled_from(["/data", "/data/media", "/", "data", "/proc/x", "app", "worker", ""]),
    st.sampled_from(["canary", "bluegreen", "rolling", "python manage.py migrate"]),
    size_strings,
    st.just("sqlite:////data/db.sqlite3"),
)

scalars = st.one_of(
    fly_strings,
    st.integers(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.booleans(),
    st.floats(allow_nan=True, allow_infinity=True),
    st.dates(),
)

values = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(keys, children, max_size=5),
    max_leaves=12,
)

_mount_values = {
    "source": st.one_of(st.sampled_from(["data", "media", ""]), values),
    "destination": st.one_of(st.sampled_from(["/data", "/", "data", "/proc/x", "/srv"]), values),
    "processes": st.one_of(st.lists(st.sampled_from(["app", "worker", "web"]), max_size=3), values),
    "initial_size": st.one_of(size_strings, st.integers(-5, 600), values),
    "snapshot_retention": st.one_of(st.integers(-5, 100), values),
    "scheduled_snapshots": st.one_of(st.booleans(), values),
    "auto_extend_size_threshold": st.one_of(st.integers(0, 120), values),
    "auto_extend_size_increment": st.one_of(size_strings, values),
    "auto_extend_size_limit": st.one_of(size_strings, values),
}
mount_tables = st.fixed_dictionaries({}, optional=_mount_values)
group_names = st.sampled_from(["app", "worker", "web", "cron"]) | st.text(min_size=1, max_size=6)

fly_documents = st.fixed_dictionaries(
    {},
    optional={
        "app": st.one_of(fly_strings, values),
        "primary_region": st.one_of(st.sampled_from(["syd", "ams", ""]), values),
        "mounts": st.one_of(mount_tables, st.lists(mount_tables, max_size=3), values),
        "mount": st.one_of(mount_tables, st.lists(mount_tables, max_size=2), values),
        "processes": st.one_of(
            st.dictionaries(group_names, st.one_of(fly_strings, values), max_size=4),
            st.lists(
                st.fixed_dictionaries({}, optional={"name": group_names, "command": fly_strings}),
                max_size=3,
            ),
            values,
        ),
        "env": st.one_of(
            st.dictionaries(
                st.sampled_from(["MEDIA_ROOT", "DATABASE_URL", "PORT"]) | keys,
                st.one_of(fly_strings, values),
                max_size=4,
            ),
            st.lists(st.dictionaries(keys, fly_strings, max_size=3), max_size=2),
            values,
        ),
        "deploy": st.one_of(
            st.fixed_dictionaries(
                {},
                optional={
                    "strategy": st.one_of(fly_strings, values),
                    "release_command": st.one_of(fly_strings, values),
                },
            ),
            values,
        ),
        "http_service": st.one_of(
            st.fixed_dictionaries(
                {},
                optional={
                    "min_machines_running": st.one_of(st.integers(-3, 5), values),
                    "processes": st.one_of(st.lists(group_names, max_size=3), values),
                },
            ),
            values,
        ),
        "services": st.one_of(
            st.lists(
                st.fixed_dictionaries(
                    {},
                    optional={
                        "min_machines_running": st.one_of(st.integers(-3, 5), values),
                        "processes": st.one_of(st.lists(group_names, max_size=3), values),
                    },
                ),
                max_size=3,
            ),
            values,
        ),
    },
)

random_documents = st.dictionaries(keys, values, max_size=8)


@pytest.fixture(scope="module")
def workdir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="volguard-fuzz-") as d:
        yield Path(d)


def _dump(doc: dict[str, Any]) -> str:
    try:
        return tomlkit.dumps(doc)
    except Exception:  # tomlkit cannot write every dict (e.g. arrays mixing tables and values)
        assume(False)
        raise


def _check_report(report: Report, path: str) -> None:
    assert isinstance(report, Report)
    assert report.inputs == {"fly_toml": path}
    assert report.layers["static"].status == "ran"
    for f in report.findings:
        assert isinstance(f, Finding)
        assert f.id in CHECKS, f.id
        assert CHECKS[f.id].layer == "static"
        assert isinstance(f.severity, Severity)
        assert f.message
        assert f.location.file == path
        assert f.location.line is None or f.location.line >= 1
    for fmt in FORMATS:
        out = render(report, fmt, fail_on=Severity.ERROR)
        assert out == "" or out.endswith("\n")


def _lint_text(workdir: Path, text: str) -> Report | None:
    path = workdir / "fly.toml"
    path.write_text(text, encoding="utf-8")
    try:
        report = lint(Settings(), str(path))
    except VolguardError:
        return None  # volguard's own error (exit 1): allowed, though not expected here
    _check_report(report, str(path))
    return report


HUGE_SIZE = 'primary_region = "syd"\n[[mounts]]\nsource = "d"\ndestination = "/data"\n'


@FUZZ
@given(doc=fly_documents)
def test_fly_shaped_documents_never_crash_lint(workdir: Path, doc: dict[str, Any]) -> None:
    report = _lint_text(workdir, _dump(doc))
    if report is not None and any(f.id == "VG100" for f in report.findings):
        assert report.exit_code(Severity.ERROR) == 2


typed_mounts = st.fixed_dictionaries(
    {
        "source": st.sampled_from(["data", "media"]),
        "destination": st.sampled_from(["/data", "/", "data", "/proc/x", "/srv", "/data/../etc"]),
    },
    optional={
        "processes": st.lists(st.sampled_from(["app", "worker", "web", "nope"]), max_size=3),
        "initial_size": st.one_of(size_strings, st.integers(-5, 600)),
        "snapshot_retention": st.integers(-(2**63), 2**63 - 1),
        "scheduled_snapshots": st.booleans(),
        "auto_extend_size_threshold": st.integers(-(2**63), 2**63 - 1),
        "auto_extend_size_increment": size_strings,
        "auto_extend_size_limit": size_strings,
    },
)
typed_documents = st.fixed_dictionaries(
    {"mounts": st.lists(typed_mounts, min_size=1, max_size=3)},
    optional={
        "primary_region": st.sampled_from(["syd", ""]),
        "processes": st.dictionaries(
            st.sampled_from(["app", "worker", "web"]), st.sampled_from(["", "gunicorn"])
        ),
        "env": st.fixed_dictionaries(
            {},
            optional={
                "MEDIA_ROOT": st.sampled_from(["/data/media", "media", "/srv/m", "/data/../x"]),
                "DATABASE_URL": st.sampled_from(["sqlite:////data/db.sqlite3", "postgres://h"]),
            },
        ),
        "deploy": st.fixed_dictionaries(
            {},
            optional={
                "strategy": st.sampled_from(["canary", "bluegreen", "rolling", "CANARY "]),
                "release_command": st.sampled_from(["python manage.py migrate", "ls /data"]),
            },
        ),
        "http_service": st.fixed_dictionaries(
            {"min_machines_running": st.integers(-2, 5)},
            optional={"processes": st.lists(st.sampled_from(["app", "worker"]), max_size=2)},
        ),
    },
)


@FUZZ
@given(doc=typed_documents)
def test_well_typed_documents_never_crash_lint(workdir: Path, doc: dict[str, Any]) -> None:
    """Every key has flyctl's type, so no VG100: only the rules speak, about any values."""
    report = _lint_text(workdir, _dump(doc))
    assert report is not None
    assert "VG100" not in {f.id for f in report.findings}


@FUZZ
@given(doc=random_documents)
def test_random_documents_never_crash_lint(workdir: Path, doc: dict[str, Any]) -> None:
    _lint_text(workdir, _dump(doc))


@pytest.mark.parametrize(
    "size",
    ["9" * 400 + "gb", "1" * 400, "9" * 5000, "1e999", "0.5GB", "1.2.3gb"],
    ids=["huge-decimal", "huge-integer-400", "huge-integer-5000", "exponent", "half", "dots"],
)
def test_absurd_sizes_are_vg108_not_a_crash(workdir: Path, size: str) -> None:
    """flyctl parses sizes with Go's strconv (64-bit): a number too large for it is an error."""
    report = _lint_text(workdir, HUGE_SIZE + f'initial_size = "{size}"\n')
    assert report is not None
    sizes = [f for f in report.findings if f.id == "VG108"]
    assert len(sizes) == 1, report.findings
    assert sizes[0].location.line == 5


# -- (2) any text or bytes ----------------------------------------------------------------------


toml_alphabet = st.sampled_from(list("[]{}=.\"'#\n\r\t ,-_+:0123456789abcdefxyzTtruefalsmnp\\"))
text_inputs = st.one_of(
    st.text(max_size=300),
    st.text(alphabet=toml_alphabet, max_size=300),
    st.lists(
        st.sampled_from(
            [
                "[mounts]\n",
                "[[mounts]]\n",
                "[processes]\n",
                "[env]\n",
                'source = "data"\n',
                'destination = "/data"\n',
                'processes = ["app", "worker"]\n',
                "processes = []\n",
                'app = "x"\n',
                "# volguard: ignore VG103\n",
                '"""\n',
                "a = [\n",
                "]\n",
                "key = {a = 1}\n",
                "\ufeff",
                "\r\n",
            ]
        ),
        max_size=20,
    ).map("".join),
)


def _check_read(path: Path) -> None:
    config, findings = read_fly_toml(str(path))
    assert isinstance(findings, list)
    for f in findings:
        assert f.id in CHECKS
        assert f.location.file == str(path)
    if config is None:
        assert [f.id for f in findings] == ["VG100"]
    else:
        assert all(f.id == "VG100" for f in findings)


@FUZZ
@given(text=text_inputs)
def test_any_text_never_crashes_read_fly_toml(workdir: Path, text: str) -> None:
    path = workdir / "text.toml"
    try:
        path.write_text(text, encoding="utf-8", newline="")
    except UnicodeEncodeError:  # lone surrogates cannot be a file's UTF-8
        assume(False)
    _check_read(path)
    problem: VolguardError | None = None
    try:
        report = lint(Settings(), str(path))  # waiver comments are parsed here
    except VolguardError as e:
        problem = e
    if problem is not None:
        assert str(problem).startswith(f"{path}:")  # a malformed waiver names file:line
    else:
        _check_report(report, str(path))


@FUZZ
@given(data=st.binary(max_size=600))
@example(data=b"\xef\xbb\xbf")
@example(data=b'a = "\xff"\n')
@example(data=b"\x00")
def test_any_bytes_never_crash_read_fly_toml(workdir: Path, data: bytes) -> None:
    path = workdir / "bytes.toml"
    path.write_bytes(data)
    _check_read(path)
    if b"\0" in data:
        config, findings = read_fly_toml(str(path))
        assert config is None
        assert "NUL" in findings[0].message


@FUZZ
@given(text=text_inputs)
@example(text='app = "x"\napp = "y"\n')
def test_positions_are_one_based(workdir: Path, text: str) -> None:
    """Lines and columns are 1-based everywhere (fly.toml:31:3), syntax errors included."""
    path = workdir / "pos.toml"
    try:
        path.write_text(text, encoding="utf-8", newline="")
    except UnicodeEncodeError:
        assume(False)
    _, findings = read_fly_toml(str(path))
    for f in findings:
        assert f.location.line is None or f.location.line >= 1, f
        assert f.location.column is None or f.location.column >= 1, f
        assert "column 0" not in f.message
