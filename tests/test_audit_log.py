"""volguard.audit_log: the JSONL audit log and its journal, on real files (no Django).

The remediation tests (test_remediation*.py) check the log end to end; these pin the
format (one JSON object per line, fields sorted, then target, before, after), that a batch
written the fast way is byte for byte what one entry at a time gives, and the journal's
life cycle: commit logs it once, abandon logs nothing, recover settles a dead run's.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from volguard.audit_log import PENDING_INFIX, AuditLog, _batch_lines, _lines


def _read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def _journals(path: Path) -> list[Path]:
    return sorted(path.parent.glob(path.name + PENDING_INFIX + "*"))


AWKWARD = [
    ("m#pk=1", {"status": "done", "log_tail": 'é "quoted"\nnext\x00line'}, {"status": "failed"}),
    ("m#pk=2", None, None),
    ("m#pk=3", {"when": dt.datetime(2026, 1, 2, 3, 4, 5), "n": [1, 2.5, True]}, {"b": 1, "a": 2}),
    ("m#pk=\u2028", {"z": {"y": {"x": ""}}}, {"status": "failed"}),
]


def test_a_batch_is_byte_for_byte_what_single_entries_give(tmp_path: Path) -> None:
    log = AuditLog(str(tmp_path / "audit.jsonl"), command="check_missing_files --fix")
    common = log._common("mark_failed", {"field": "file", "forced": True, "export": None})
    common["batch"] = "b" * 32
    entries = [{**common, "target": t, "before": b, "after": a} for t, b, a in AWKWARD]
    fast, slow = _batch_lines(common, AWKWARD), _lines(entries)
    assert fast == slow
    lines = fast.decode("utf-8").splitlines()
    assert len(lines) == len(AWKWARD)
    for line, entry in zip(lines, entries, strict=True):
        parsed = json.loads(line)
        assert list(parsed)[-3:] == ["target", "before", "after"]
        assert list(parsed)[:-3] == sorted(set(parsed) - {"target", "before", "after"})
        assert parsed["target"] == entry["target"]
    assert json.loads(lines[2])["before"]["when"] == "2026-01-02 03:04:05"  # default=str


def test_commit_logs_the_journal_once_and_removes_it(tmp_path: Path) -> None:
    path = tmp_path / "logs" / "audit.jsonl"
    log = AuditLog(str(path), command="cmd")
    pending = log.prepare("mark_failed", AWKWARD[:2], field="file")
    [journal] = _journals(path)
    assert oct(journal.stat().st_mode & 0o777) == "0o600"
    assert not path.exists()
    pending.commit()
    assert _journals(path) == []
    entries = _read(path)
    assert [e["target"] for e in entries] == ["m#pk=1", "m#pk=2"]
    assert {e["batch"] for e in entries} == {journal.name.rsplit(".", 1)[1]}
    assert all(e["user"] and e["host"] and e["command"] == "cmd" for e in entries)
    assert entries == pending.entries


def test_abandon_logs_nothing(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    pending = AuditLog(str(path)).prepare("delete", AWKWARD[:1])
    pending.abandon()
    assert _journals(path) == []
    assert not path.exists()


def test_recover_logs_what_committed_once_and_skips_live_journals(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    log = AuditLog(str(path))
    live = log.prepare("mark_failed", [("m#pk=9", None, None)])
    dead = log.prepare("mark_failed", AWKWARD)
    # A run killed after logging the first line of its batch: that line is in the log,
    # and its lock is gone with it.
    log.append_lines(dead._data.splitlines(keepends=True)[0])
    os.close(dead._fd)
    dead._fd = -1
    committed = {"m#pk=1", "m#pk=2", "m#pk=3"}  # pk 4's batch rolled back, say
    assert log.recover(lambda e: e["target"] in committed) == (2, 1)
    assert [e["target"] for e in _read(path)] == ["m#pk=1", "m#pk=2", "m#pk=3"]
    assert _journals(path) == [Path(live.path)]  # held by a live run: left alone
    assert log.recover(lambda e: True) == (0, 0)
    live.commit()
    assert [e["target"] for e in _read(path)][-1] == "m#pk=9"


# -- a full disk, for real: a small tmpfs that fills up (#8 item 8) ---------------------------


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 256 KiB tmpfs, unmounted afterwards (root only: mount(2))."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root")
    where = tmp_path / "disk"
    where.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(where)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def _fill(disk: Path, leave: int = 0) -> Path:
    """Fill ``disk`` up, then free ``leave`` bytes (so a later write is cut off midway)."""
    filler = disk / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        with contextlib.suppress(OSError):
            while True:
                os.write(fd, b"\0" * 4096)
    finally:
        os.close(fd)
    if leave:
        os.truncate(filler, max(0, filler.stat().st_size - leave))
    return filler


def _valid_jsonl(path: Path) -> list[dict]:
    data = path.read_bytes()
    assert not data or data.endswith(b"\n"), data[-80:]
    return [json.loads(line) for line in data.decode("utf-8").splitlines()]


@pytest.mark.parametrize("leave", [0, 8192])
def test_a_full_disk_never_corrupts_the_log_and_the_rerun_logs_each_row_once(
    small_disk: Path, leave: int
) -> None:
    log = AuditLog(str(small_disk / "audit.jsonl"), command="manage.py check_missing_files --fix")
    log.record("mark_failed", "shop.Photo#pk=0", {"status": "ready"}, {"status": "failed"})
    changes = [
        (f"shop.Photo#pk={i}", {"status": "ready", "log_tail": "x" * 300}, {"status": "failed"})
        for i in range(1, 101)
    ]  # about 50 KB: more than the space left
    pending = log.prepare("mark_failed", changes)  # journaled while there is room
    before = (small_disk / "audit.jsonl").read_bytes()
    filler = _fill(small_disk, leave)

    with pytest.raises(OSError, match="No space left"):
        pending.commit()  # the rows' change committed; the log line cannot be written

    assert (small_disk / "audit.jsonl").read_bytes() == before  # no torn line, all or nothing
    assert len(_journals(small_disk / "audit.jsonl")) == 1  # kept for the re-run

    os.close(pending._fd)  # the failed run exits, and with it its lock on the journal
    filler.unlink()  # space returns; the run is repeated: it settles the journal first
    assert log.recover(lambda entry: True) == (100, 0)
    assert log.recover(lambda entry: True) == (0, 0)
    entries = _valid_jsonl(small_disk / "audit.jsonl")
    targets = [e["target"] for e in entries]
    assert targets == [f"shop.Photo#pk={i}" for i in range(101)]  # one line per changed row
    assert _journals(small_disk / "audit.jsonl") == []


def test_a_torn_line_left_by_a_killed_writer_is_dropped_before_the_next_append(
    tmp_path: Path,
) -> None:
    path = tmp_path / "audit.jsonl"
    log = AuditLog(str(path))
    log.record("mark_failed", "m#pk=1")
    with open(path, "ab") as fh:
        fh.write(b'{"action": "mark_failed", "target": "m#pk=2", "bef')  # killed mid-write

    log.record("mark_failed", "m#pk=3")

    assert [e["target"] for e in _valid_jsonl(path)] == ["m#pk=1", "m#pk=3"]


@pytest.mark.parametrize("kind", ["fifo", "directory", "device"])
def test_a_special_file_as_the_log_is_refused_at_once(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "audit.jsonl"
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "directory":
        path.mkdir()
    else:
        path.symlink_to("/dev/null")
    started = time.monotonic()
    with pytest.raises(ValueError, match="not a regular file"):
        AuditLog(str(path)).record("mark_failed", "m#pk=1")
    assert time.monotonic() - started < 2
