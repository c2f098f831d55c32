"""``manage.py restore_fixed_rows`` (`volguard.django.row_restore`): undo an earlier ``--fix``
for the rows whose file came back, and only those nobody changed since.

On the example app, SQLite and PostgreSQL (the fixtures of tests/test_missing_files.py), with
``--fix`` run for real first; every run uses an ``--audit-log`` under the test's tmp_path.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import test_missing_files as ta
import test_repair as tr

project = ta.project
database = ta.database
site = ta.site

FIX = ("--fix", "--max-missing", "100%", "--audit-log")
KEY = "services.UserDataFile#pk={}"


def _restore(site: ta.Site, log: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "manage.py", "restore_fixed_rows", "--audit-log", str(log), *args],
        cwd=ta.EXAMPLE,
        env=site.env(),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        encoding="utf-8",
        timeout=300,
        check=False,
    )


def _restore_json(site: ta.Site, log: Path, *args: str, code: int) -> dict[str, Any]:
    proc = _restore(site, log, "--json", *args)
    assert proc.returncode == code, proc.stdout + proc.stderr
    return json.loads(proc.stdout)


def _statuses(document: dict[str, Any]) -> dict[int, str]:
    return {int(r["pk"]): r["status"] for r in document["rows"]}


def _fixed(site: ta.Site, log: Path, rows: dict[str, dict[str, Any]]) -> dict[str, int]:
    """Seed ``rows`` (none with a file) beside one whose file is there (the interlock wants a
    storage root holding files), give ``a`` a log history, and --fix them all."""
    pks = site.seed(users=["alice"], rows={**rows, "ok": {"owner": "alice", "name": "ok.csv"}})
    site.files("ok.csv")
    site.shell(
        "from apps.services.models import UserDataFile\n"
        f"UserDataFile.objects.filter(pk={pks['a']}).update(processing_log='run 1: ok')\n"
    )
    proc = tr._run(site, *FIX, str(log))
    assert proc.returncode == 2, proc.stdout + proc.stderr
    return {k: pks[k] for k in rows}


def _update(site: ta.Site, pk: int, **values: str) -> None:
    site.shell(
        "from apps.services.models import UserDataFile\n"
        f"UserDataFile.objects.filter(pk={pk}).update(**{values!r})\n"
    )


def test_restore_puts_status_and_log_back_exactly_only_where_the_file_is_back(
    site: ta.Site, tmp_path: Path
) -> None:
    log = tmp_path / "audit.jsonl"
    rows = {
        "a": {"owner": "alice", "name": "a.csv", "status": "done"},
        "b": {"owner": "alice", "name": "b.csv", "status": "processing"},
        "still": {"owner": "alice", "name": "still.csv", "status": "done"},
        "reup": {"owner": "alice", "name": "reup.csv", "status": "done"},
        "admin": {"owner": "alice", "name": "admin.csv", "status": "done"},
    }
    pks = _fixed(site, log, rows)
    fixed = tr._rows(site)
    assert all(fixed[pk]["processing_status"] == "failed" for pk in pks.values())
    # The files come back, except one; one row was re-uploaded, another edited by an admin.
    site.files("a.csv", "b.csv", "reup.csv", "admin.csv", "reup-2.csv")
    _update(site, pks["reup"], file="reup-2.csv", processing_status="pending")
    _update(site, pks["admin"], processing_log=fixed[pks["admin"]]["processing_log"] + "\nseen")

    edited = tr._rows(site)
    plan = _restore_json(site, log, code=2)
    assert _statuses(plan) == {
        pks["a"]: "restorable",
        pks["b"]: "restorable",
        pks["still"]: "file_missing",
        pks["reup"]: "changed_since_fix",
        pks["admin"]: "changed_since_fix",
    }
    assert tr._rows(site) == edited  # a plan changes nothing
    lines = len(tr._log(log))

    done = _restore_json(site, log, "--apply", code=2)
    assert {pk: s for pk, s in _statuses(done).items() if s == "restored"} == {
        pks["a"]: "restored",
        pks["b"]: "restored",
    }
    now = tr._rows(site)
    assert now[pks["a"]]["processing_status"] == "done"
    assert now[pks["a"]]["processing_log"] == "run 1: ok"
    assert now[pks["b"]]["processing_status"] == "processing"
    assert now[pks["b"]]["processing_log"] == ""
    for key in ("a", "b"):  # everything else of the row is as the fix left it
        row, was = now[pks[key]], fixed[pks[key]]
        assert {k: v for k, v in row.items() if not k.startswith("processing_")} == {
            k: v for k, v in was.items() if not k.startswith("processing_")
        }
    assert now[pks["still"]] == fixed[pks["still"]]
    assert now[pks["reup"]]["processing_status"] == "pending"
    assert now[pks["admin"]]["processing_log"].endswith("\nseen")
    assert now[pks["admin"]]["processing_status"] == "failed"

    entries = tr._log(log)[lines:]
    assert sorted(e["target"] for e in entries) == sorted(KEY.format(pks[k]) for k in ("a", "b"))
    a = next(e for e in entries if e["target"] == KEY.format(pks["a"]))
    assert a["action"] == "restore_row"
    assert a["before"] == {"status": "failed", "log_tail": tr.MESSAGE}
    assert a["after"] == {"status": "done", "log_tail": "run 1: ok"}

    # Again: nothing restored, nothing logged.
    again = _restore_json(site, log, "--apply", code=2)
    assert "restored" not in _statuses(again).values()
    assert tr._rows(site) == now
    assert len(tr._log(log)) == lines + 2


def test_rows_file_and_restored_by_narrow_to_the_rows_asked_about(
    site: ta.Site, tmp_path: Path
) -> None:
    log = tmp_path / "audit.jsonl"
    rows = {k: {"owner": "alice", "name": f"{k}.csv", "status": "done"} for k in "abc"}
    pks = _fixed(site, log, rows)
    site.files("a.csv", "b.csv", "c.csv")
    asked = tmp_path / "rows.json"
    asked.write_text(json.dumps([{"model": "services.UserDataFile", "pk": pks["a"],
                                  "name": "a.csv"}]))  # fmt: skip
    done = _restore_json(site, log, "--apply", "--rows", str(asked), code=0)
    assert _statuses(done) == {pks["a"]: "restored"}
    # A recover run logged b.csv as restored: only b is restored by --restored-by.
    with log.open("a") as f:
        f.write(json.dumps({"action": "restore_file", "target": "b.csv", "run": "recover-x",
                            "after": {"sha256": "0"}}) + "\n")  # fmt: skip
    done = _restore_json(site, log, "--apply", "--restored-by", "recover-x", code=0)
    assert _statuses(done) == {pks["b"]: "restored"}
    # Asked again (a resumed recover), b is reported done, and nothing changes.
    again = _restore_json(site, log, "--apply", "--restored-by", "recover-x", code=0)
    assert _statuses(again) == {pks["b"]: "already_restored"}
    assert tr._rows(site)[pks["c"]]["processing_status"] == "failed"


def test_bad_rows_file_is_one_line_exit_1(site: ta.Site, tmp_path: Path) -> None:
    bad = tmp_path / "rows.json"
    bad.write_text('{"rows": [{"pk": 1}]}')
    proc = _restore(site, tmp_path / "audit.jsonl", "--rows", str(bad))
    assert proc.returncode == 1
    assert proc.stderr.startswith("CommandError: --rows")
    assert "Traceback" not in proc.stderr


KILLER = textwrap.dedent("""
    import os, signal
    from django.core.management import call_command
    from volguard import audit_log as A

    at, seen = int(os.environ["VG_KILL_BATCH"]), {"n": 0}
    commit = A.Pending.commit
    def killing_commit(self):
        seen["n"] += 1
        if seen["n"] == at:
            self.log.append(self.entries[: len(self.entries) // 2])
            os.kill(os.getpid(), signal.SIGKILL)  # committed, half logged
        commit(self)
    A.Pending.commit = killing_commit
    call_command("restore_fixed_rows", "--apply", "--batch-size", "10",
                 "--audit-log", os.environ["VG_LOG"])
""")


def test_a_run_killed_mid_batch_then_rerun_logs_each_restored_row_once(
    site: ta.Site, tmp_path: Path
) -> None:
    log = tmp_path / "audit.jsonl"
    rows = {f"r{i}": {"owner": "alice", "name": f"r/{i}.csv", "status": "done"} for i in range(45)}
    rows["a"] = {"owner": "alice", "name": "a.csv", "status": "done"}
    pks = _fixed(site, log, rows)
    site.files("a.csv", *(f"r/{i}.csv" for i in range(45)))
    killed = subprocess.run(
        [sys.executable, "manage.py", "shell", "-c", KILLER],
        cwd=ta.EXAMPLE,
        env=site.env(VG_KILL_BATCH="3", VG_LOG=str(log)),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stdout + killed.stderr
    assert len(list(tmp_path.glob("audit.jsonl.pending.*"))) == 1

    proc = _restore(site, log, "--apply")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "settled an interrupted run's journal: 5 change(s) logged" in proc.stderr
    now = tr._rows(site)
    assert all(now[pk]["processing_status"] == "done" for pk in pks.values())
    assert now[pks["a"]]["processing_log"] == "run 1: ok"
    restores = [e["target"] for e in tr._log(log) if e["action"] == "restore_row"]
    assert sorted(restores) == sorted(KEY.format(pk) for pk in pks.values())
    assert not list(tmp_path.glob("audit.jsonl.pending.*"))


def test_a_killed_restore_is_settled_by_the_next_fix_not_dropped(
    site: ta.Site, tmp_path: Path
) -> None:
    # Whichever command runs next settles the journal; `--fix` must recognise restore_row
    # entries as in place, or the restored rows would be restored with no line in the log.
    log = tmp_path / "audit.jsonl"
    rows = {f"r{i}": {"owner": "alice", "name": f"r/{i}.csv", "status": "done"} for i in range(25)}
    rows["a"] = {"owner": "alice", "name": "a.csv", "status": "done"}
    pks = _fixed(site, log, rows)
    site.files("a.csv", *(f"r/{i}.csv" for i in range(25)))
    killed = subprocess.run(
        [sys.executable, "manage.py", "shell", "-c", KILLER],
        cwd=ta.EXAMPLE,
        env=site.env(VG_KILL_BATCH="2", VG_LOG=str(log)),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stdout + killed.stderr
    assert len(list(tmp_path.glob("audit.jsonl.pending.*"))) == 1

    proc = tr._run(site, *FIX, str(log))
    assert "settled an interrupted run's journal: 5 change(s) logged" in proc.stderr, proc.stderr
    now = tr._rows(site)
    restored = [pk for pk in pks.values() if now[pk]["processing_status"] == "done"]
    assert len(restored) == 20  # two batches of 10 committed before the kill
    restores = [e["target"] for e in tr._log(log) if e["action"] == "restore_row"]
    assert sorted(restores) == sorted(KEY.format(pk) for pk in restored)
    assert not list(tmp_path.glob("audit.jsonl.pending.*"))
