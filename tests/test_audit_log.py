"""volguard.audit_log: the JSONL audit log and its journal, on real files (no Django).

The remediation tests (test_remediation*.py) check the log end to end; these pin the
format (one JSON object per line, fields sorted, then target, before, after), that a batch
written the fast way is byte for byte what one entry at a time gives, and the journal's
life cycle: commit logs it once, abandon logs nothing, recover settles a dead run's.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from pathlib import Path

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
