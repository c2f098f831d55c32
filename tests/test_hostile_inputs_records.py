"""Hostile run records and journals: corrupt, truncated, wrong types, huge, binary.

(1) A file named like a run record under .volguard/runs/ holds a mutated record: `--resume`
(`RunRecord.resume`, through `latest`) resumes or refuses in one line naming the file. (2)
A `.pending.<batch>` journal of the audit log, and the log itself, hold mutated entries:
`AuditLog.recover` settles them or raises a one-line ValueError naming the file (what
check_missing_files reports). Never a traceback, never a hang. Full count 500 (scaled by
VOLGUARD_FUZZ_SCALE), half records, half journals.
"""

from __future__ import annotations

import copy
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hostile_inputs_support import fuzz, hang_guard, one_line, tally
from hypothesis import example, given
from hypothesis import strategies as st

from volguard.audit_log import AuditLog
from volguard.errors import VolguardError
from volguard.runs import RunRecord

STEPS = ["lint", "volumes", "deploy", "verify"]
NAME = "deploy-shop-20261201T120000000000-4242.json"
RECORD: dict[str, Any] = {
    "kind": "deploy",
    "app": "shop",
    "id": NAME.removesuffix(".json"),
    "fly_toml": None,
    "fly_toml_sha256": None,
    "version": "0.1.0",
    "started": "2026-12-01T12:00:00.000000+00:00",
    "finished": "2026-12-01T12:01:00+00:00",
    "status": "failed",
    "resumed_from": None,
    "options": {"yes": True},
    "steps": [
        {"name": "lint", "status": "ok", "summary": "", "started": None, "seconds": 0.1,
         "detail": {}, "carried_over": False},
        {"name": "volumes", "status": "failed", "summary": "boom", "started": None,
         "seconds": 1.0, "detail": {"n": 1}, "carried_over": False},
    ],
}  # fmt: skip
JOURNAL_ENTRY: dict[str, Any] = {
    "action": "fix",
    "after": {"status": "failed"},
    "batch": "b" * 32,
    "before": {"status": "ok"},
    "command": "check_missing_files --fix",
    "host": "h",
    "target": "shop.Photo#pk=1",
    "time": "2026-12-01T12:00:00+00:00",
    "user": "app",
}

hostile_values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.sampled_from([10**30, -1, 1e308, "", "\x1b[2J", "é" * 10_000, "\x00"]),
    st.text(max_size=10),
    st.lists(st.integers() | st.text(max_size=3), max_size=3),
    st.dictionaries(st.text(max_size=4), st.integers() | st.none(), max_size=3),
)


def _paths(value: Any, path: tuple = ()) -> Iterator[tuple]:
    yield path
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _paths(v, (*path, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _paths(v, (*path, i))


def mutate_json(doc: Any, ops: list[tuple]) -> Any:
    doc = copy.deepcopy(doc)
    for kind, index, value in ops:
        paths = [p for p in _paths(doc) if p]
        if not paths:
            return value
        path = paths[index % len(paths)]
        parent = doc
        for k in path[:-1]:
            parent = parent[k]
        if kind == "delete":
            del parent[path[-1]]
        elif kind == "set":
            parent[path[-1]] = value
        elif isinstance(parent, dict):
            parent[f"extra_{index}"] = value
    return doc


json_ops = st.lists(
    st.tuples(st.sampled_from(["delete", "set", "extra"]), st.integers(0, 100), hostile_values),
    max_size=4,
)
#: What happens to the bytes after the JSON is written: nothing, truncation, binary garbage.
byte_ops = st.one_of(
    st.just(("keep",)),
    st.tuples(st.just("truncate"), st.integers(0, 10_000)),
    st.tuples(st.just("insert"), st.integers(0, 10_000), st.binary(min_size=1, max_size=16)),
    st.tuples(st.just("replace"), st.binary(max_size=64)),
    st.tuples(st.just("replace"), st.sampled_from([b"\xff\xfe\x00", b"null", b"[]", b"{}"])),
    st.tuples(st.just("huge"), st.integers(100_000, 2_000_000)),
)


def apply_bytes(raw: bytes, op: tuple) -> bytes:
    if op[0] == "truncate":
        return raw[: op[1] % (len(raw) + 1)]
    if op[0] == "insert":
        at = op[1] % (len(raw) + 1)
        return raw[:at] + op[2] + raw[at:]
    if op[0] == "replace":
        return op[1]
    if op[0] == "huge":
        return raw[:-2] + b', "pad": "' + b"x" * op[1] + b'"}\n'
    return raw


@pytest.fixture
def workdir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="volguard-hostile-records-") as d:
        yield Path(d)


# -- (1) run records through --resume --------------------------------------------------------


def resume(runs: Path, raw: bytes) -> str | None:
    """Resume from a record holding ``raw``; the refusal's message, or None when it resumed."""
    runs.mkdir(exist_ok=True)
    for old in runs.iterdir():
        old.unlink()
    (runs / NAME).write_bytes(raw)
    with hang_guard(10):
        try:
            record = RunRecord.resume("deploy", "shop", STEPS, runs_dir=str(runs))
        except VolguardError as e:
            return str(e)
        _ = (record.text(), record.markdown())
    return None


@fuzz(250)
@given(ops=json_ops, byte_op=byte_ops)
@example(ops=[("set", 0, 5)], byte_op=("keep",))
@example(ops=[], byte_op=("replace", b"\xff\xfe\x00"))
@example(ops=[], byte_op=("truncate", 100))
def test_a_hostile_run_record_resumes_or_is_one_line_naming_it(
    workdir: Path, ops: list[tuple], byte_op: tuple
) -> None:
    tally("run records and journals")
    raw = apply_bytes(json.dumps(mutate_json(RECORD, ops)).encode() + b"\n", byte_op)
    refusal = resume(workdir / "runs", raw)
    if refusal is not None:
        assert one_line(refusal), refusal
        if "no earlier" not in refusal and "succeeded" not in refusal:
            assert NAME in refusal, refusal


# -- (2) the audit log's journals and the log ------------------------------------------------


def recover(workdir: Path, journal: bytes, log: bytes | None = None) -> str | None:
    """Settle a journal holding ``journal``; the ValueError's message, or None when settled."""
    path = workdir / "audit.jsonl"
    for old in workdir.glob("audit.jsonl*"):
        old.unlink()
    if log is not None:
        path.write_bytes(log)
    (workdir / f"audit.jsonl.pending.{'b' * 32}").write_bytes(journal)
    with hang_guard(10):
        try:
            logged, dropped = AuditLog(str(path)).recover(lambda entry: True)
        except ValueError as e:
            return str(e)
    assert logged >= 0
    assert dropped == 0
    for line in path.read_bytes().splitlines()[-logged:] if logged else []:
        assert isinstance(json.loads(line), dict)  # what recover appends is valid JSONL
    return None


@fuzz(250)
@given(ops=json_ops, byte_op=byte_ops, log_op=st.none() | byte_ops, lines=st.integers(1, 3))
@example(ops=[("set", 0, 1)], byte_op=("replace", b"1\n"), log_op=None, lines=1)
@example(ops=[], byte_op=("keep",), log_op=("replace", b"\xff" + b"b" * 32 + b"\n"), lines=1)
@example(ops=[], byte_op=("keep",), log_op=("replace", b'["' + b"b" * 32 + b'"]\n'), lines=1)
@example(ops=[], byte_op=("replace", b"[" * 100_000), log_op=None, lines=1)
@example(ops=[], byte_op=("keep",), log_op=("replace", b"{}"), lines=2)  # a torn last line
def test_a_hostile_journal_settles_or_is_one_line_naming_it(
    workdir: Path, ops: list[tuple], byte_op: tuple, log_op: tuple | None, lines: int
) -> None:
    tally("run records and journals")
    entry = json.dumps(mutate_json(JOURNAL_ENTRY, ops)).encode() + b"\n"
    journal = apply_bytes(entry * lines, byte_op)
    log = None if log_op is None else apply_bytes(entry, log_op)
    refusal = recover(workdir, journal, log)
    if refusal is not None:
        assert one_line(refusal), refusal
        assert "audit.jsonl" in refusal, refusal


def test_a_fifo_as_a_journal_is_refused_at_once(workdir: Path) -> None:
    os.mkfifo(workdir / f"audit.jsonl.pending.{'b' * 32}")
    with hang_guard(5), pytest.raises(ValueError, match="not a regular file"):
        AuditLog(str(workdir / "audit.jsonl")).recover(lambda entry: True)


def test_a_fifo_as_the_log_is_refused_at_once(workdir: Path) -> None:
    os.mkfifo(workdir / "audit.jsonl")
    with hang_guard(5), pytest.raises(ValueError, match="not a regular file"):
        AuditLog(str(workdir / "audit.jsonl")).record("fix", "shop.Photo#pk=1")


def test_a_directory_as_a_journal_is_refused(workdir: Path) -> None:
    (workdir / f"audit.jsonl.pending.{'b' * 32}").mkdir()
    with hang_guard(5), pytest.raises(ValueError, match="not a regular file"):
        AuditLog(str(workdir / "audit.jsonl")).recover(lambda entry: True)


# -- found by the suites and fixed (see docs/safety.md, "Hostile-input suites") -----------


def test_a_deeply_nested_run_record_is_one_line(workdir: Path) -> None:
    refusal = resume(workdir / "runs", b"[" * 100_000)
    assert refusal is not None
    assert NAME in refusal


def test_a_fifo_named_like_a_run_record_is_refused_at_once(workdir: Path) -> None:
    runs = workdir / "runs"
    runs.mkdir()
    os.mkfifo(runs / NAME)
    with hang_guard(3), pytest.raises(VolguardError, match=NAME):
        RunRecord.resume("deploy", "shop", STEPS, runs_dir=str(runs))
