"""`volguard recover` beyond the Machines: an unattached volume and a snapshot, read through
a temporary Machine, never touched themselves.

Real parts only (tests/recover_support.py): the API simulator, the local fleet following it
(a fork holds its source's files, a restore its snapshot's, a temporary Machine is a
namespace with sshd) and the example Django app on the app Machine. The scenario is the
shipped `detached-volume`: the app Machine on a fresh "data" volume, the old one (64% used)
unattached — the files the rows name are put on the old one, or only in a snapshot taken
before they were deleted. What must hold: the copies are found and copied back, the original
volume is byte-for-byte unchanged and never attached, a failed fork or Machine start is one
clear finding with nothing left behind, a run SIGKILLed while a temporary Machine exists
leaves nothing once resumed (and so does a chain of runs killed at random moments), and the
token is never printed.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import random
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from recover_support import APP, Deployment, deployment, needs_fleet
from recover_support import SLOW_DRIVER as SLOW_RELAY

from volguard.fly.client import MachinesClient, Token
from volguard.fly.models import Snapshot, Volume
from volguard.fly.snapshots import snapshot_volumes
from volguard.fly.temporary import GROUP
from volguard.recover import ALREADY_FOUND, choose_snapshots, holds_data, recover, render_text

OLD_VOLUME = "vol_1y5lkzmvx0qcqdt7"  # unattached, 64% used: where the files were stranded
APP_VOLUME = "vol_hj31hsr146b9d3mq"
NAMES = {
    "old": "user_data/old.csv",
    "deep": "user_data/2026/11/deep.bin",
    "nowhere": "user_data/nowhere.csv",
}
OLD_FILES = {
    "media/user_data/old.csv": b"written before the redeploy\n",
    "media/user_data/2026/11/deep.bin": os.urandom(200_000),
}


# -- the pure parts ---------------------------------------------------------------------------


def _snapshot(sid: str, hours_ago: float, status: str = "created") -> Snapshot:
    when = dt.datetime(2026, 12, 2, 12, tzinfo=dt.UTC) - dt.timedelta(hours=hours_ago)
    return Snapshot(id=sid, created_at=when, size=1, status=status)


def test_snapshots_are_the_created_ones_newest_first_and_before_the_given_time() -> None:
    volume = Volume(id="vol_a", name="data", state="created", region="syd")
    taken = [
        (_snapshot("vs_old", 30), volume),
        (_snapshot("vs_new", 2), volume),
        (_snapshot("vs_mid", 10), volume),
        (_snapshot("", 1, status="running"), volume),  # being taken: no backup yet
    ]
    assert [s.id for s, _ in choose_snapshots(taken, None)] == ["vs_new", "vs_mid", "vs_old"]
    before = dt.datetime(2026, 12, 2, 5, tzinfo=dt.UTC)  # after vs_mid, before vs_new
    assert [s.id for s, _ in choose_snapshots(taken, before)] == ["vs_mid", "vs_old"]


def test_only_an_unattached_volume_with_a_filesystem_in_use_holds_data() -> None:
    used = Volume(id="v", name="data", state="created", region="syd", blocks=100, blocks_free=40)
    assert holds_data(used)
    assert not holds_data(Volume(**{**used.__dict__, "attached_machine_id": "148e21ea4d3089"}))
    assert not holds_data(Volume(**{**used.__dict__, "blocks": 0, "blocks_free": 0}))  # never
    assert not holds_data(Volume(**{**used.__dict__, "state": "hydrating"}))


# -- against the simulated deployment -----------------------------------------------------------


def live(site: Deployment) -> tuple[set[str], set[str]]:
    """Ids of the Machines not destroyed and of the volumes not being destroyed."""
    state = site.sim.state.to_json()
    machines = {m["id"] for m in state["machines"] if m["state"] != "destroyed"}
    volumes = {v["id"] for v in state["volumes"] if v["state"] != "pending_destroy"}
    return machines, volumes


def tree(path: Path) -> str:
    """sha256 over every entry's name, mode, owner, mtime and bytes under `path`."""
    h = hashlib.sha256()
    for top, dirs, files in sorted(os.walk(path)):
        dirs.sort()
        for name in sorted(dirs + files):
            full = Path(top) / name
            st = full.lstat()
            h.update(f"{full.relative_to(path)} {st.st_mode} {st.st_uid} {st.st_mtime_ns}".encode())
            if full.is_file():
                h.update(full.read_bytes())
    return h.hexdigest()


def attached_ever(site: Deployment, volume_id: str) -> bool:
    creates = [a for a in site.sim.state.actions if a["action"] == "create_machine"]
    mounts = [m for a in creates for m in a["request"]["config"].get("mounts") or ()]
    return any(m.get("volume") == volume_id for m in mounts)


def _by_name(document: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {row["name"]: row for row in document["plan"]}


@needs_fleet
def test_files_on_an_unattached_volume_are_found_on_a_fork_and_copied_back(
    tmp_path: Path,
) -> None:
    with deployment(tmp_path, NAMES, "detached-volume") as site:
        site.fleet.seed_volume(OLD_VOLUME, OLD_FILES)
        original = tree(site.fleet.volume_dir(OLD_VOLUME))
        before = live(site)
        plan = site.run_cli("--format", "json", "--transport", "ssh")
        planned = len(site.sim.state.actions)
        outcome = recover(site.context(apply=True))
        after = live(site)
        forks = [a["request"] for a in site.sim.state.actions[planned:]
                 if a["action"] == "create_volume"]  # fmt: skip
        target = site.files(APP)
        unchanged = tree(site.fleet.volume_dir(OLD_VOLUME))
        never_attached = not attached_ever(site, OLD_VOLUME)
        old = site.sim.state.to_json()["volumes"]
    assert plan.returncode == 2, plan.stdout + plan.stderr  # `nowhere` has no copy anywhere
    rows = _by_name(json.loads(plan.stdout))
    for key in ("old", "deep"):
        assert rows[NAMES[key]]["status"] == "found", key
        assert [(s["kind"], s["id"]) for s in rows[NAMES[key]]["sources"]] == [
            ("volume", OLD_VOLUME)
        ]
    assert rows[NAMES["nowhere"]]["status"] == "not_found"
    summary = json.loads(plan.stdout)["summary"]
    assert summary["sources_searched"][0] == OLD_VOLUME  # then the snapshots, for `nowhere`
    assert summary["sources_searched"][1:]  # the snapshots were searched for `nowhere`
    assert not any(s.startswith("vol_") for s in summary["sources_searched"][1:])
    assert summary["sources_failed"] == {}
    assert site.sim.token not in plan.stdout + plan.stderr
    # --apply: both files back on the app Machine, verified, as the app's
    assert outcome.error is None, outcome.error
    for key, stored in (("old", "media/user_data/old.csv"),
                        ("deep", "media/user_data/2026/11/deep.bin")):  # fmt: skip
        sha, owner, _, _ = target[NAMES[key]]
        assert sha == hashlib.sha256(OLD_FILES[stored]).hexdigest(), key
        assert owner == "app:app"
    assert {r["name"] for r in outcome.after_missing or ()} == {NAMES["nowhere"]}
    assert outcome.exit_code == 2
    assert "volume vol_1y5lkzmvx0qcqdt7" in render_text(outcome)
    # the original: never attached, byte-for-byte the same, still listed and unattached
    assert never_attached
    assert unchanged == original
    (listed,) = [v for v in old if v["id"] == OLD_VOLUME]
    assert listed["attached_machine_id"] is None
    assert listed["state"] == "created"
    # every temporary fork, restore and Machine is gone; nothing else was destroyed
    assert after[0] == before[0]
    assert after[1] - before[1] == set()
    assert before[1] - after[1] == set()
    record = outcome.record
    assert record is not None
    entries = [e for s in record.steps for e in s.detail.get("temporary", ())]
    assert entries
    assert all(e["status"] == "destroyed" for e in entries)
    assert {e["kind"] for e in entries} == {"volume", "machine"}
    # the copy read the fork its search made: one fork of the volume in the whole run
    assert [f.get("source_volume_id") for f in forks].count(OLD_VOLUME) == 1


@needs_fleet
def test_files_deleted_after_a_snapshot_are_found_in_a_restore_of_it(tmp_path: Path) -> None:
    names = {"gone": "user_data/gone.csv"}
    with deployment(tmp_path, names, "detached-volume") as site:
        site.sh(APP, "mkdir -p /data/media/user_data && printf 'kept in the snapshot\\n' > "
                "/data/media/user_data/gone.csv", user="app")  # fmt: skip
        client = MachinesClient(Token(site.sim.token), base_url=site.sim.url, backoff=0.01)
        with client:
            volume = next(v for v in client.list_volumes(site.sim.scenario.app)
                          if v.id == APP_VOLUME)  # fmt: skip
            (taken,) = snapshot_volumes(client, site.sim.scenario.app, [volume], poll=0.05).values()
            listed = client.list_snapshots(site.sim.scenario.app, APP_VOLUME)
        site.sh(APP, "rm /data/media/user_data/gone.csv")
        before = live(site)
        found = recover(site.context(sources=("snapshots",))).as_dict()
        when = next(s.created_at for s in listed if s.id == taken)
        older = recover(site.context(sources=("snapshots",), snapshot_before=when)).as_dict()
        after = live(site)
    row = _by_name(found)[names["gone"]]
    assert row["status"] == "found"
    assert [(s["kind"], s["id"]) for s in row["sources"]] == [("snapshot", taken)]
    assert row["sources"][0]["sha256"] == hashlib.sha256(b"kept in the snapshot\n").hexdigest()
    assert found["summary"]["sources_searched"][0] == taken  # the newest first
    # the rest were not restored at all: the row was already found
    assert set(found["summary"]["sources_skipped"].values()) <= {ALREADY_FOUND}
    # before that snapshot, only the older (empty) ones: not found
    assert _by_name(older)[names["gone"]]["status"] == "not_found"
    assert taken not in older["summary"]["sources_searched"]
    assert after == before


@needs_fleet
@pytest.mark.parametrize(
    ("fault", "doing"),
    [
        ({"refuse_volume_next": 1}, "forking volume vol_1y5lkzmvx0qcqdt7"),
        ({"refuse_machine_next": 1}, "starting a temporary Machine"),
        ({"machine_fails_next": 1}, "starting a temporary Machine"),
    ],
)
def test_a_failed_fork_or_machine_start_is_one_finding_and_leaves_nothing(
    tmp_path: Path, fault: dict[str, int], doing: str
) -> None:
    with deployment(tmp_path, {"old": NAMES["old"]}, "detached-volume") as site:
        site.fleet.seed_volume(OLD_VOLUME, {"media/user_data/old.csv": b"stranded\n"})
        before = live(site)
        site.sim.inject(**fault)
        outcome = recover(site.context(sources=("volumes",), temporary_timeout=3))
        after = live(site)
        extra = [m for m in site.sim.state.to_json()["machines"]
                 if m["state"] != "destroyed" and GROUP in json.dumps(m)]  # fmt: skip
    document = outcome.as_dict()
    failed = document["summary"]["sources_failed"]
    assert list(failed) == [OLD_VOLUME]
    assert failed[OLD_VOLUME].startswith(doing)
    assert failed[OLD_VOLUME].endswith("nothing was left behind")
    assert "\n" not in failed[OLD_VOLUME]
    assert _by_name(document)[NAMES["old"]]["status"] == "not_found"
    assert outcome.exit_code == 2
    assert f"{OLD_VOLUME}: could not be searched: {doing}" in render_text(outcome)
    assert after == before
    assert extra == []
    assert site.sim.token not in json.dumps(document) + render_text(outcome)


SLOW_DRIVER = """\
import sys, time
import volguard.recover as recover
search = recover.MachineSource.search

def slow(self, names):
    if self.source_id:  # a temporary Machine: up, recorded, and now the run is killed
        print("VG_TEMPORARY_MACHINE_UP", file=sys.stderr, flush=True)
        time.sleep(300)
    return search(self, names)

recover.MachineSource.search = slow
from volguard.cli import main
sys.argv = ["volguard", *sys.argv[1:]]
main()
"""


@needs_fleet
def test_a_run_killed_with_a_temporary_machine_up_leaves_nothing_once_resumed(
    tmp_path: Path,
) -> None:
    with deployment(tmp_path, {"old": NAMES["old"]}, "detached-volume") as site:
        site.fleet.seed_volume(OLD_VOLUME, {"media/user_data/old.csv": b"stranded\n"})
        original = tree(site.fleet.volume_dir(OLD_VOLUME))
        before = live(site)
        args = site.cli("--apply", "--yes", "--transport", "ssh", "--sources", "volumes")[1:]
        proc = site.start(SLOW_DRIVER, *args)
        assert proc.stderr is not None
        seen = []
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            line = proc.stderr.readline()
            seen.append(line)
            if not line or "VG_TEMPORARY_MACHINE_UP" in line:
                break
        assert "VG_TEMPORARY_MACHINE_UP" in seen[-1], "".join(seen)
        during = live(site)
        proc.send_signal(signal.SIGKILL)
        first_out, first_err = proc.communicate()
        killed_record = sorted((site.workdir / ".volguard" / "runs").glob("recover-*.json"))[-1]
        left = json.loads(killed_record.read_text())
        resumed = site.run_cli("--apply", "--yes", "--resume", "--transport", "ssh",
                               "--sources", "volumes")  # fmt: skip
        after = live(site)
        target = site.files(APP)
        unchanged = tree(site.fleet.volume_dir(OLD_VOLUME))
        runs = sorted((site.workdir / ".volguard" / "runs").glob("recover-*.json"))
    made = during[0] - before[0]
    assert len(made) == 1  # the killed run's temporary Machine was up when it died
    search = next(s for s in left["steps"] if s["name"] == "search")
    recorded = {e["id"] for e in search["detail"]["temporary"] if e["kind"] == "machine"}
    assert made <= recorded  # and its record names it
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert f"{next(iter(made))}: temporary resource of run" in resumed.stdout
    assert after == before  # zero temporary resources left, nothing else destroyed
    assert target[NAMES["old"]][0] == hashlib.sha256(b"stranded\n").hexdigest()
    assert unchanged == original
    for text in (first_out, "".join(seen) + first_err, resumed.stdout, resumed.stderr):
        assert site.sim.token not in text
    for path in runs:
        assert site.sim.token not in path.read_text()


@needs_fleet
def test_a_run_killed_at_random_points_and_resumed_restores_each_file_once_and_leaves_nothing(
    tmp_path: Path,
) -> None:
    """A chain of runs, each SIGKILLed at a random moment (the search, the snapshot, the
    copy, with the temporary Machine up or not) and the next one resumed, then a last
    resume to the end: every file restored once, nothing temporary left, the source the
    same."""
    rng = random.Random(20261202)  # noqa: S311 - kill points, not a secret
    stranded = {f"media/user_data/k/{i:02d}.bin": os.urandom(40_000) for i in range(20)}
    names = {f"k{i:02d}": name.removeprefix("media/") for i, name in enumerate(stranded)}
    runs_dir = tmp_path / ".volguard" / "runs"
    killed_at: list[float] = []
    outputs: list[str] = []
    with deployment(tmp_path, names, "detached-volume") as site:
        site.fleet.seed_volume(OLD_VOLUME, stranded)
        original = tree(site.fleet.volume_dir(OLD_VOLUME))
        before = live(site)
        finished = None
        for _ in range(4):
            resume = ["--resume"] if any(runs_dir.glob("recover-*.json")) else []
            args = site.cli("--apply", "--yes", "--transport", "ssh", "--sources", "volumes",
                            "--format", "json", *resume)[1:]  # fmt: skip
            proc = site.start(SLOW_RELAY, *args)  # one file per 0.15 s
            delay = rng.uniform(0.5, 6.0)
            try:
                out, err = proc.communicate(timeout=delay)
            except subprocess.TimeoutExpired:
                proc.kill()
                out, err = proc.communicate()
                killed_at.append(round(delay, 2))
                time.sleep(1)  # its orphaned ssh sessions see their pipes close and end
            else:
                finished = (proc.returncode, out)
            outputs.append(out + err)
            if finished:
                break
        if finished is None:
            last = site.run_cli("--apply", "--yes", "--transport", "ssh", "--sources",
                                "volumes", "--format", "json", "--resume")  # fmt: skip
            outputs.append(last.stdout + last.stderr)
            finished = (last.returncode, last.stdout)
        after = live(site)
        target = site.files(APP)
        log = site.log_lines()
        temps = site.sh(APP, "find /data/media -name '.volguard-recover-*'")
        unchanged = tree(site.fleet.volume_dir(OLD_VOLUME))
        never_attached = not attached_ever(site, OLD_VOLUME)
        records = [path.read_text() for path in runs_dir.glob("recover-*.json")]
    assert killed_at, "no run was killed: the kill points are too late for this machine"
    code, out = finished
    assert code == 0, f"killed at {killed_at}:\n" + "\n".join(outputs)
    for stored, data in stranded.items():
        assert target[stored.removeprefix("media/")][0] == hashlib.sha256(data).hexdigest()
    restored = sorted(e["target"] for e in log if e["action"] == "restore_file")
    assert restored == sorted(names.values()), f"killed at {killed_at}"  # each exactly once
    assert temps == ""
    assert after == before, f"killed at {killed_at}"  # zero temporary resources left
    assert unchanged == original
    assert never_attached
    assert {row["name"] for row in json.loads(out)["applied"]} <= set(names.values())
    for text in [*outputs, *records]:
        assert site.sim.token not in text
