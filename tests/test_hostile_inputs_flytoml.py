"""Hostile fly.toml: real files from the corpus, mutated, through `volguard lint` in-process.

Each case takes one real fly.toml (tests/data/flytoml/), mutates its structure (delete,
retype or duplicate keys and tables; a wrong type at a key flyctl types; huge numbers, long
strings, deep nesting) and then its text (NUL and control characters, a BOM, CRLF, invalid
UTF-8, truncation, duplicated or dropped lines), and lints it. The promise: findings, or a
`VolguardError` whose message is one line — never a traceback, never a hang. Full count
10,000 (scaled by VOLGUARD_FUZZ_SCALE, see hostile_inputs_support.py).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import math
import tempfile
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import tomlkit
from hostile_inputs_support import fuzz, hang_guard, one_line, tally
from hypothesis import example, given
from hypothesis import strategies as st
from tomlkit.exceptions import TOMLKitError

from volguard.catalogue import CHECKS
from volguard.config import Settings
from volguard.errors import VolguardError
from volguard.findings import Finding, Severity
from volguard.lint import lint
from volguard.render import render
from volguard.report import Report

CORPUS = Path(__file__).resolve().parent / "data" / "flytoml"
FILES = sorted(CORPUS.glob("*.toml"))
SOURCES = {p.name: p.read_bytes() for p in FILES}

# -- hostile values --------------------------------------------------------------------------

HUGE_INTS = [2**63 - 1, 2**63, -(2**63), -(2**63) - 1, 10**30, -(10**30), 10**400]


def _deep_list(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = [value]
    return value


def _deep_table(depth: int) -> Any:
    value: Any = {"a": 1}
    for _ in range(depth):
        value = {"a": value}
    return value


hostile_values = st.one_of(
    st.sampled_from(HUGE_INTS),
    st.integers(),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([math.nan, math.inf, -math.inf, -0.0, 1e308, 5e-324]),
    st.booleans(),
    st.text(max_size=30),
    st.sampled_from(["", " ", "\t", "\x1b[31mred", "\u202e/atad", "/data\x00x", "é" * 50]),
    st.integers(1_000, 200_000).map(lambda n: "x" * n),  # long strings
    st.sampled_from(["9" * 400 + "gb", "-1gb", "1e999", "0x10gb", "NaN", "+Inf"]),
    st.dates(),
    st.datetimes(timezones=st.just(dt.UTC)),
    st.lists(st.integers() | st.text(max_size=5), max_size=5),
    st.lists(st.fixed_dictionaries({"source": st.text(max_size=5)}), max_size=3),
    st.dictionaries(st.text(min_size=1, max_size=6), st.integers() | st.text(max_size=5)),
    st.integers(20, 400).map(_deep_list),
    st.integers(20, 200).map(_deep_table),
)

#: The keys flyctl gives a type (fly-facts §1), where a wrong type must be VG100, not a crash.
TYPED_PATHS: list[tuple[str | int, ...]] = [
    ("app",),
    ("primary_region",),
    ("mounts",),
    ("mount",),
    ("mounts", 0),
    ("mounts", 0, "source"),
    ("mounts", 0, "destination"),
    ("mounts", 0, "processes"),
    ("mounts", 0, "initial_size"),
    ("mounts", 0, "snapshot_retention"),
    ("mounts", 0, "scheduled_snapshots"),
    ("mounts", 0, "auto_extend_size_threshold"),
    ("mounts", 0, "auto_extend_size_increment"),
    ("mounts", 0, "auto_extend_size_limit"),
    ("processes",),
    ("processes", "app"),
    ("processes", "worker"),
    ("env",),
    ("env", "MEDIA_ROOT"),
    ("env", "DATABASE_URL"),
    ("deploy",),
    ("deploy", "strategy"),
    ("deploy", "release_command"),
    ("http_service",),
    ("http_service", "processes"),
    ("http_service", "min_machines_running"),
    ("services",),
    ("services", 0),
    ("services", 0, "processes"),
    ("services", 0, "min_machines_running"),
    ("vm",),
    ("build",),
]

# -- structural mutations (on the parsed document) -------------------------------------------


def _containers(value: Any, path: tuple = ()) -> Iterator[tuple[tuple, Any]]:
    """Every (path, value) in the document, tables and arrays included."""
    yield path, value
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _containers(v, (*path, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _containers(v, (*path, i))


def _parent(doc: Any, path: tuple) -> Any:
    for k in path[:-1]:
        doc = doc[k]
    return doc


def _pick(doc: dict, index: int) -> tuple | None:
    paths = [p for p, _ in _containers(doc) if p]
    return paths[index % len(paths)] if paths else None


def _set_typed(doc: dict, path: tuple, value: Any) -> None:
    """Set ``path`` to ``value``, making or replacing whatever is in the way."""
    here: Any = doc
    for i, key in enumerate(path):
        if isinstance(here, list):
            if not here:
                here.append({})
            key = key % len(here) if isinstance(key, int) else 0
        if i == len(path) - 1:
            here[key] = value
            return
        want = list if isinstance(path[i + 1], int) else dict
        if not isinstance(here[key] if _has(here, key) else None, want):
            here[key] = [{}] if want is list else {}
        here = here[key]


def _has(container: Any, key: Any) -> bool:
    if isinstance(container, list):
        return isinstance(key, int) and 0 <= key < len(container)
    return key in container


def apply_structural(doc: dict, op: tuple) -> None:
    kind = op[0]
    if kind == "typed":
        _, index, value = op
        _set_typed(doc, TYPED_PATHS[index % len(TYPED_PATHS)], value)
        return
    path = _pick(doc, op[1])
    if path is None:
        doc["app"] = op[-1] if kind == "retype" else "x"
        return
    parent = _parent(doc, path)
    key = path[-1]
    if kind == "delete":
        del parent[key]
    elif kind == "retype":
        parent[key] = op[2]
    elif kind == "duplicate":  # an array entry twice, or a table's key under a second name
        if isinstance(parent, list):
            parent.append(parent[key])
        else:
            parent[f"{key}_"] = parent[key]
            if isinstance(parent[key], dict):
                parent[key] = [parent[key], dict(parent[key])]  # [x] becomes [[x]] twice
    elif kind == "empty":
        parent[key] = type(parent[key])() if isinstance(parent[key], dict | list | str) else 0


structural_ops = st.one_of(
    st.tuples(st.just("delete"), st.integers(0, 10_000)),
    st.tuples(st.just("retype"), st.integers(0, 10_000), hostile_values),
    st.tuples(st.just("duplicate"), st.integers(0, 10_000)),
    st.tuples(st.just("empty"), st.integers(0, 10_000)),
    st.tuples(st.just("typed"), st.integers(0, len(TYPED_PATHS) - 1), hostile_values),
)

# -- textual mutations (on the bytes) --------------------------------------------------------

NASTY_BYTES = [
    b"\x00",
    b"\x01",
    b"\x1b[2J",
    b"\x7f",
    b"\x0b\x0c",
    b"\xff",
    b"\xc3",
    b"\xed\xa0\x80",  # a UTF-16 surrogate in UTF-8: invalid
    b"\xef\xbb\xbf",
    b"\r",
    "\u2028".encode(),  # a line separator for Python, not for TOML
    b'"',
    b"'''",
    b"[",
    b"[[mounts]]\n",
    b"[mounts]\n",
    b"= = =",
    b"\\",
]


def apply_textual(raw: bytes, op: tuple) -> bytes:
    kind = op[0]
    lines = raw.split(b"\n")
    where = op[1] % (len(raw) + 1)
    row = op[1] % len(lines)
    if kind == "insert":
        return raw[:where] + op[2] + raw[where:]
    if kind == "bom":
        return b"\xef\xbb\xbf" + raw
    if kind == "crlf":
        return raw.replace(b"\n", b"\r\n")
    if kind == "cr":
        return raw.replace(b"\n", b"\r")
    if kind == "truncate":
        return raw[:where]
    if kind == "drop_line":
        return b"\n".join(lines[:row] + lines[row + 1 :])
    if kind == "dup_line":
        return b"\n".join(lines[: row + 1] + lines[row:])
    if kind == "swap_lines":
        other = op[2] % len(lines)
        lines[row], lines[other] = lines[other], lines[row]
        return b"\n".join(lines)
    if kind == "repeat":  # every table twice: duplicate tables and keys
        return raw + b"\n" + raw
    if kind == "deep":  # nesting far beyond anything real, at the top level
        depth = op[2]
        opener, closer = (b"[", b"]") if op[1] % 2 else (b"{a = ", b"}")
        return b"deep = " + opener * depth + b"1" + closer * depth + b"\n" + raw
    if kind == "long_line":
        return raw + b'\nlong = "' + b"y" * op[2] + b'"\n'
    raise AssertionError(kind)


textual_ops = st.one_of(
    st.tuples(st.just("insert"), st.integers(0, 100_000), st.sampled_from(NASTY_BYTES)),
    st.tuples(st.just("insert"), st.integers(0, 100_000), st.binary(min_size=1, max_size=8)),
    st.tuples(st.sampled_from(["bom", "crlf", "cr", "repeat"]), st.integers(0, 100_000)),
    st.tuples(st.sampled_from(["truncate", "drop_line", "dup_line"]), st.integers(0, 100_000)),
    st.tuples(st.just("swap_lines"), st.integers(0, 10_000), st.integers(0, 10_000)),
    st.tuples(st.just("deep"), st.integers(0, 1), st.integers(30, 5_000)),
    st.tuples(st.just("long_line"), st.integers(0, 1), st.integers(10_000, 1_100_000)),
)


def mutate(name: str, structural: list[tuple], textual: list[tuple]) -> bytes:
    raw = SOURCES[name]
    if structural:
        doc = tomllib.loads(raw.decode("utf-8-sig"))
        for op in structural:
            apply_structural(doc, op)
        # tomlkit cannot write every shape (arrays mixing tables and values): then text only
        with contextlib.suppress(RecursionError, ValueError, TypeError, TOMLKitError):
            raw = tomlkit.dumps(doc).encode("utf-8", "surrogatepass")
    for op in textual:
        raw = apply_textual(raw, op)
    return raw


# -- the property ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def workdir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="volguard-hostile-toml-") as d:
        yield Path(d)


def lint_bytes(workdir: Path, raw: bytes) -> Report | None:
    """Lint ``raw`` as fly.toml; None when volguard refused it with its own (one-line) error."""
    path = workdir / "fly.toml"
    path.write_bytes(raw)
    with hang_guard(20):
        try:
            report = lint(Settings(), str(path))
        except VolguardError as e:
            refusal = str(e)
        else:
            refusal = None
    if refusal is not None:
        assert one_line(refusal), repr(refusal)
        return None
    with hang_guard(20):
        for fmt in ("text", "json"):
            render(report, fmt, fail_on=Severity.ERROR)
    for f in report.findings:
        assert isinstance(f, Finding)
        assert f.id in CHECKS
        assert one_line(f.message), f
        assert f.location.line is None or f.location.line >= 1
    return report


@fuzz(10_000, deadline_seconds=15)
@given(
    name=st.sampled_from(sorted(SOURCES)),
    structural=st.lists(structural_ops, max_size=4),
    textual=st.lists(textual_ops, max_size=3),
)
@example(name=FILES[0].name, structural=[], textual=[("insert", 10, b"\x00")])
@example(name=FILES[0].name, structural=[], textual=[("deep", 1, 5_000)])
@example(name=FILES[0].name, structural=[], textual=[("deep", 0, 5_000)])
@example(name=FILES[0].name, structural=[], textual=[("long_line", 0, 1_100_000)])
@example(name=FILES[0].name, structural=[("typed", 4, 10**400)], textual=[])
@example(name=FILES[0].name, structural=[("typed", 1, "\x1b[31mred")], textual=[])
def test_mutated_real_fly_toml_never_crashes_lint(
    workdir: Path, name: str, structural: list[tuple], textual: list[tuple]
) -> None:
    tally("fly.toml mutations")
    lint_bytes(workdir, mutate(name, structural, textual))


@pytest.mark.parametrize("name", sorted(SOURCES))
def test_every_corpus_file_lints_unmutated(workdir: Path, name: str) -> None:
    """The mutations' starting points are themselves accepted (findings, no refusal)."""
    assert lint_bytes(workdir, SOURCES[name]) is not None
