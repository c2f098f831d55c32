"""``--fix`` killed with SIGKILL, then re-run: one end state, every change logged once.

Two kinds of kill, on SQLite and PostgreSQL (the fixtures of tests/test_missing_files.py):

- at named points of a batch (journal written but not committed; committed but not
  logged; half the batch's lines appended; all appended but the journal not yet removed),
  by a driver that wraps `volguard.audit_log.Pending` to SIGKILL its own process there — the
  only way to land a kill inside a window of microseconds;
- at random moments of a real ``manage.py check_missing_files --fix`` subprocess, started
  once its log appears, several times in a row.

After each scenario the command runs to completion, and then the rows, the log and the
journals must be exactly those of one uninterrupted run.
"""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import test_missing_files as ta
import test_repair as tr

project = ta.project
database = ta.database
site = ta.site

MISSING_ROWS = 120
PRESENT_ROWS = 30
BATCH = "10"
FIX_ARGS = ("--fix", "--max-missing", "100%", "--batch-size", BATCH, "--audit-log")

DRIVER = textwrap.dedent("""
    import os, signal
    from django.core.management import call_command
    from volguard import audit_log as A

    point, at = os.environ["VG_KILL_AT"], int(os.environ["VG_KILL_BATCH"])
    seen = {"batches": 0}

    def die():
        os.kill(os.getpid(), signal.SIGKILL)

    write = A.Pending.write.__func__
    def killing_write(cls, *args):
        pending = write(cls, *args)
        seen["batches"] += 1
        if point == "journaled" and seen["batches"] == at:
            die()  # inside the transaction: the batch rolls back
        return pending
    A.Pending.write = classmethod(killing_write)

    commit = A.Pending.commit
    def killing_commit(self):
        if seen["batches"] == at:
            if point == "committed":
                die()
            if point == "half-appended":
                self.log.append(self.entries[: len(self.entries) // 2])
                die()
            if point == "appended":
                self.log.append(self.entries)
                die()
        commit(self)
    A.Pending.commit = killing_commit

    call_command(
        "check_missing_files", "--fix", "--max-missing", "100%%",
        "--batch-size", "%s", "--audit-log", os.environ["VG_LOG"],
    )
""")


def _seed(site: ta.Site) -> tuple[set[int], dict[int, dict]]:
    rows = {f"m{i}": {"owner": "alice", "name": f"gone/{i}.csv"} for i in range(MISSING_ROWS)}
    rows |= {f"p{i}": {"owner": "bob", "name": f"here/{i}.csv"} for i in range(PRESENT_ROWS)}
    pks = site.seed(users=["alice", "bob"], rows=rows)
    site.files(*(f"here/{i}.csv" for i in range(PRESENT_ROWS)))
    missing = {pk for key, pk in pks.items() if key.startswith("m")}
    before = tr._rows(site)
    return missing, before


def _fix(site: ta.Site, log: Path) -> subprocess.CompletedProcess[str]:
    return tr._run(site, *FIX_ARGS, str(log))


def _assert_converged(site: ta.Site, missing: set[int], before: dict, log: Path) -> None:
    rows = tr._rows(site)
    for pk in missing:
        assert rows[pk]["processing_status"] == "failed", pk
        assert rows[pk]["processing_log"] == tr.MESSAGE, pk  # appended exactly once
    for pk, row in before.items():
        if pk not in missing:
            assert rows[pk] == row, pk
    targets = [e["target"] for e in tr._log(log)]
    assert sorted(targets) == sorted(f"services.UserDataFile#pk={pk}" for pk in missing)
    assert len(set(targets)) == len(targets)  # no row logged twice
    assert not list(log.parent.glob(log.name + ".pending.*"))


@pytest.mark.parametrize("point", ["journaled", "committed", "half-appended", "appended"])
def test_a_kill_at_each_point_of_a_batch_converges(
    site: ta.Site, tmp_path: Path, point: str
) -> None:
    missing, before = _seed(site)
    log = tmp_path / "audit.jsonl"
    env = site.env(VG_KILL_AT=point, VG_KILL_BATCH="3", VG_LOG=str(log))
    killed = subprocess.run(
        [sys.executable, "manage.py", "shell", "-c", DRIVER % BATCH],
        cwd=ta.EXAMPLE,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stdout + killed.stderr
    journals = list(tmp_path.glob("audit.jsonl.pending.*"))
    assert len(journals) == 1  # the killed batch's, whatever the point
    logged_before = len(tr._log(log))
    assert (
        logged_before
        == {
            "journaled": 20,
            "committed": 20,
            "half-appended": 25,
            "appended": 30,
        }[point]
    )

    proc = _fix(site, log)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    settled = {"journaled": (0, 10), "committed": (10, 0), "half-appended": (5, 0)}
    if point in settled:
        logged, dropped = settled[point]
        assert (
            f"settled an interrupted run's journal: {logged} change(s) logged, "
            f"{dropped} rolled back" in proc.stderr
        )
    _assert_converged(site, missing, before, log)

    again = _fix(site, log)  # and a third run changes and logs nothing
    assert "Marked failed: 0 rows" in again.stdout
    _assert_converged(site, missing, before, log)


def test_kills_at_random_moments_converge(site: ta.Site, tmp_path: Path) -> None:
    missing, before = _seed(site)
    log = tmp_path / "audit.jsonl"
    rng = random.Random(int(time.time()))  # noqa: S311 (timing, not secrets)
    kills = 0
    for _ in range(4):
        proc = subprocess.Popen(
            [sys.executable, "manage.py", "check_missing_files", *FIX_ARGS, str(log)],
            cwd=ta.EXAMPLE,
            env=site.env(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 120
        # Wait for the fix phase: a journal or a log line is the first thing it writes.
        while proc.poll() is None and time.monotonic() < deadline:
            if log.exists() or list(tmp_path.glob("audit.jsonl.pending.*")):
                break
            time.sleep(0.002)
        time.sleep(rng.uniform(0, 0.05))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.wait(timeout=60)
        if proc.returncode == 2:
            break  # it finished before the kill landed: converged already
    assert kills >= 1
    final = _fix(site, log)
    assert final.returncode == 2, final.stdout + final.stderr
    _assert_converged(site, missing, before, log)
    assert json.loads(log.read_text().splitlines()[0])["action"] == "mark_failed"
