"""`volguard recover`: the lost uploads found on the app's other Machines and copied back.

Real parts only: the Machines API simulator, the local fleet (each Machine a namespace with
its own sshd and volume) and the example Django app running on the app Machine as `app`,
its rows seeded through the Machine. The scenario is the incident (the web app and the
worker each on their own "data" volume) with a second worker Machine on a third volume, so
that two sources can hold copies that differ. The files exist only on the workers' volumes,
written there as `app` through the fleet's exec helper.

The deployment is tests/recover_support.py's. These tests search the Machines only
(``--sources machines``): tests/test_recover_sources.py covers unattached volumes and
snapshots. The fleet needs root and Linux; without it these tests skip, except under CI.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from recover_support import (
    APP,
    COUNTING_DRIVER,
    NAMES,
    SLOW_DRIVER,
    VOLGUARD,
    WHY,
    WORKER,
    WORKER_B,
    WORKER_B_FILES,
    WORKER_FILES,
    Deployment,
    deployment,
    needs_fleet,
)

from volguard.errors import UsageError
from volguard.fly.client import MachinesClient, Token
from volguard.recover import (
    STEP_FUNCTIONS,
    STEPS,
    RecoverContext,
    parse_sources,
    recover,
    render_text,
)
from volguard.recover_document import (
    CONFLICT,
    FOUND,
    NOT_FOUND,
    Copy,
    MissingRow,
    RecoverDocument,
    classify,
)
from volguard.remote.probe import parse_facts, probe_script
from volguard.remote.transports import Transport, TransportOptions

# -- the pure parts ---------------------------------------------------------------------------


def _copy(source: str, sha: str, size: int = 10, mtime: float = 1.0) -> Copy:
    return Copy("machine", source, size, sha, mtime)


def test_identical_copies_are_found_and_differing_ones_a_conflict_until_preferred() -> None:
    row = MissingRow("services.UserDataFile", 1, "file", "user_data/a.csv")
    same = classify(row, [_copy("m1", "aa"), _copy("m2", "aa")])
    assert (same.status, [c.id for c in same.sources]) == (FOUND, ["m1", "m2"])
    old, new = _copy("m1", "aa", 10, 1.0), _copy("m2", "bb", 5, 2.0)
    assert classify(row, [old, new]).status == CONFLICT
    assert classify(row, [old, new]).chosen is None
    assert classify(row, [old, new], "newest").chosen == new
    assert classify(row, [old, new], "largest").chosen == old
    tie = classify(row, [old, _copy("m2", "bb", 10, 1.0)], "newest")
    assert tie.status == CONFLICT  # the same mtime: nothing to prefer
    assert classify(row, []).status == NOT_FOUND
    assert classify(row, [_copy("m1", "e3", size=0)]).status == NOT_FOUND  # 0 bytes: no copy


def test_the_document_has_exactly_the_documented_shape() -> None:
    row = MissingRow("m.M", 7, "file", "x.csv")
    document = RecoverDocument(plan=[classify(row, [_copy("m1", "aa")])], searched=["m1"])
    data = json.loads(json.dumps(document.as_dict()))
    assert set(data) == {"plan", "summary"}
    assert set(data["plan"][0]) == {
        "model", "pk", "field", "name", "status", "marked_failed", "sources",
    }  # fmt: skip
    assert data["plan"][0]["marked_failed"] is False
    assert set(data["plan"][0]["sources"][0]) == {"kind", "id", "size", "sha256", "mtime"}
    assert data["summary"]["bytes_to_copy"] == 10
    assert data["summary"]["per_source"] == {"m1": 1}
    assert "row_restored" in data["summary"]["rows_note"]
    assert document.exit_code() == 0


def test_sources_are_kinds_in_the_order_of_their_cost_and_unknown_ones_refused() -> None:
    assert parse_sources("") == (("machines", "volumes", "snapshots"), False)
    assert parse_sources("machines") == (("machines",), True)
    assert parse_sources("snapshots,machines, volumes") == (
        ("machines", "volumes", "snapshots"),
        True,
    )
    with pytest.raises(UsageError, match="choose from"):
        parse_sources("tapes")


def test_each_step_is_one_function_in_order() -> None:
    assert tuple(STEP_FUNCTIONS) == STEPS
    assert STEPS.index("snapshot") < STEPS.index("copy") < STEPS.index("restore-rows")


def test_an_unknown_source_or_a_bad_time_on_the_command_line_is_one_line_exit_1(
    tmp_path: Path,
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("INVOKE_", "FLY_"))}
    for args, line in (
        (["--sources", "machines,tapes"], "volguard: error: --sources 'machines,tapes': "
         "choose from machines, volumes, snapshots (comma-separated)"),
        (["--snapshot-before", "last tuesday"], "volguard: error: --snapshot-before "
         "'last tuesday': give an ISO 8601 time, e.g. 2026-11-20 or 2026-11-20T14:00:00Z"),
    ):  # fmt: skip
        proc = subprocess.run(
            [VOLGUARD, "recover", *args],
            cwd=tmp_path,
            env={**env, "HOME": str(tmp_path)},
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert proc.returncode == 1, proc.stdout + proc.stderr
        assert proc.stderr.strip().splitlines() == [line]


# -- the simulated deployment ------------------------------------------------------------------


@pytest.fixture(scope="module")
def incident(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    if WHY:
        pytest.skip(WHY)
    with deployment(tmp_path_factory.mktemp("recover")) as site:
        site.sh(WORKER, WORKER_FILES, user="app")
        site.sh(WORKER_B, WORKER_B_FILES, user="app")
        site.sh(WORKER_B, "cp /dev/null /tmp/x")  # (root) nothing else on worker B
        w2 = site.fleet.exec(WORKER, ["cat", "/data/media/" + NAMES["w2"]], text=False).stdout
        site.sh(WORKER_B, "mkdir -p /data/media/user_data/deep/er && chown -R app /data/media")
        site.fleet.exec(WORKER_B, ["sh", "-c", f"cat > /data/media/{NAMES['w2']}"],
                        input=w2, text=False, user="app")  # fmt: skip
        yield site


MACHINES = ("machines",)


def _by_name(document: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {row["name"]: row for row in document["plan"]}


# -- the plan ----------------------------------------------------------------------------------


@needs_fleet
def test_the_plan_finds_the_workers_copies_and_lists_a_conflict(incident: Deployment) -> None:
    site = incident
    proc = site.run_cli("--format", "json", "--transport", "ssh", "--sources", "machines")
    assert proc.returncode == 2, proc.stdout + proc.stderr  # a conflict and not_found remain
    document = json.loads(proc.stdout)
    assert set(document) == {"plan", "summary"}
    rows = _by_name(document)
    assert set(rows) == set(NAMES.values())
    w1 = rows[NAMES["w1"]]
    assert w1["status"] == "found"
    assert [(s["kind"], s["id"]) for s in w1["sources"]] == [("machine", WORKER)]
    assert w1["sources"][0]["sha256"] == hashlib.sha256(b"worker one\n").hexdigest()
    assert w1["sources"][0]["size"] == len(b"worker one\n")
    assert w1["pk"] == site.pks["w1"]
    assert rows[NAMES["w2"]]["status"] == "found"
    assert {s["id"] for s in rows[NAMES["w2"]]["sources"]} == {WORKER, WORKER_B}
    conflict = rows[NAMES["c"]]
    assert conflict["status"] == "conflict"
    assert {s["id"] for s in conflict["sources"]} == {WORKER, WORKER_B}
    # the symlink and the symlinked directory are refused on the worker, never followed
    for key in ("nowhere", "link", "esc"):
        assert rows[NAMES[key]]["status"] == "not_found", key
        assert rows[NAMES[key]]["sources"] == []
    summary = document["summary"]
    assert (summary["found"], summary["conflict"], summary["not_found"]) == (2, 1, 3)
    assert summary["per_source"] == {WORKER: 3, WORKER_B: 2}
    assert summary["files_to_copy"] == 2
    assert summary["bytes_to_copy"] == len(b"worker one\n") + 300000
    assert summary["sources_searched"] == [WORKER, WORKER_B]
    assert summary["sources_not_available"] == {}
    assert summary["target"]["machine"] == APP
    assert site.sim.token not in proc.stdout + proc.stderr


@needs_fleet
def test_prefer_newest_chooses_the_newer_copy(incident: Deployment) -> None:
    outcome = recover(incident.context(prefer="newest", sources=MACHINES))
    document = outcome.as_dict()
    conflict = _by_name(document)[NAMES["c"]]
    assert conflict["status"] == "found"
    assert conflict["sources"][0]["id"] == WORKER_B  # the newer one comes first: chosen
    assert document["summary"]["conflicts_resolved"] == 1
    assert outcome.exit_code == 2  # three rows have no copy anywhere
    assert "conflicts settled by --prefer newest: 1" in render_text(outcome)


@needs_fleet
def test_names_that_escape_media_root_are_refused_by_the_probe(incident: Deployment) -> None:
    names = ["../../etc/passwd", "/etc/passwd", "user_data/./w1.csv", "user_data/link.csv",
             "user_data/esc/hostname", ".volguard/audit.jsonl", "user_data/w1.csv"]  # fmt: skip
    options = TransportOptions(
        kind="ssh", app=incident.sim.scenario.app, ssh_config=str(incident.fleet.ssh_config)
    )
    with Transport(options) as transport:
        machine = next(m for m in _fleet(incident).machines if m.id == WORKER)
        done = transport.run(machine, probe_script({"locate": {"names": names, "group": "worker"}}))
    files = parse_facts(done.stdout)["files"]
    assert [files[n]["status"] for n in names] == ["refused"] * 6 + ["found"]


def _fleet(site: Deployment) -> Any:
    from volguard.fly.fleet import load_fleet

    with MachinesClient(Token(site.sim.token), base_url=site.sim.url) as client:
        return load_fleet(client, site.sim.scenario.app)


# -- acting ------------------------------------------------------------------------------------


@needs_fleet
def test_apply_copies_verified_files_without_replacing_one_uploaded_meanwhile(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sessions: dict[str, int] = {}
    run, stream = Transport.run, Transport.stream

    def counted_run(self: Transport, machine: Any, command: str) -> Any:
        sessions[machine.id] = sessions.get(machine.id, 0) + 1
        return run(self, machine, command)

    def counted_stream(self: Transport, machine: Any, command: str, **kw: Any) -> Any:
        sessions[machine.id] = sessions.get(machine.id, 0) + 1
        return stream(self, machine, command, **kw)

    monkeypatch.setattr(Transport, "run", counted_run)
    monkeypatch.setattr(Transport, "stream", counted_stream)
    with deployment(tmp_path) as site:
        site.sh(WORKER, WORKER_FILES, user="app")
        site.sh(WORKER_B, WORKER_B_FILES, user="app")
        before = {m: site.files(m) for m in (WORKER, WORKER_B)}
        # a user uploads w1.csv again on the app while the run is between search and copy
        copy_step = STEP_FUNCTIONS["copy"]

        def upload_then_copy(ctx: RecoverContext, step: Any) -> None:
            site.sh(APP, f"printf 'uploaded again\\n' > /data/media/{NAMES['w1']}", user="app")
            copy_step(ctx, step)

        monkeypatch.setitem(STEP_FUNCTIONS, "copy", upload_then_copy)
        outcome = recover(site.context(apply=True, prefer="newest", sources=MACHINES))
        after = {m: site.files(m) for m in (WORKER, WORKER_B)}
        target = site.files(APP)
        log = site.log_lines()
        snapshots = [a for a in site.sim.app.state.actions if a["action"] == "create_snapshot"]
        temps = site.sh(APP, "find /data/media -name '.volguard-recover-*'")
    assert outcome.error is None, outcome.error
    record = outcome.record
    assert record is not None
    steps = {s.name: s for s in record.steps}
    assert {n: s.status for n, s in steps.items()} == {
        "gate": "ok", "audit": "ok", "search": "ok", "confirm": "ok", "snapshot": "changed",
        "copy": "changed", "restore-rows": "ok", "re-audit": "ok",
    }  # fmt: skip
    # the file uploaded meanwhile is reported and kept; the others restored and verified
    assert steps["copy"].detail["problems"] == {NAMES["w1"]: {"status": "target_exists"}}
    assert target[NAMES["w1"]][0] == hashlib.sha256(b"uploaded again\n").hexdigest()
    for key, source in (("w2", WORKER), ("c", WORKER_B)):
        sha, owner, mode, _ = target[NAMES[key]]
        assert sha == before[source][NAMES[key]][0], key
        assert owner == "app:app", key
        assert mode == before[source][NAMES[key]][2], key  # the mode the app gave it there
    assert before[WORKER][NAMES["w2"]][2] == "640"  # written with umask 027 on the worker
    # the sources are byte-for-byte (and mtime) unchanged
    assert after == before
    # one snapshot of the target's volume, before the copy
    assert [s["volume"] for s in snapshots] == ["vol_668we58kuhntaa1u"]
    # one change-log line per restored file, on the target's volume
    restored = [e for e in log if e["action"] == "restore_file"]
    assert sorted(e["target"] for e in restored) == sorted([NAMES["w2"], NAMES["c"]])
    assert temps == ""
    applied = outcome.as_dict()["applied"]
    assert sorted(a["name"] for a in applied) == sorted([NAMES["w2"], NAMES["c"]])
    assert all(a["row_restored"] is False for a in applied)
    # the re-audit: what no copy could bring back, and what to do next
    still = {r["name"] for r in outcome.after_missing or ()}
    assert still == {NAMES[k] for k in ("nowhere", "link", "esc")}
    assert outcome.exit_code == 2
    assert "remediate --fix" in outcome.as_dict()["summary"]["next"]
    # one session to search and one to send, per source Machine, whatever the file count
    assert sessions[WORKER] <= 3, sessions
    assert sessions[WORKER_B] <= 3, sessions


def _verified_saved(site: Deployment) -> bool:
    """The latest run record's copy step lists a verified file."""
    runs = sorted((site.workdir / ".volguard" / "runs").glob("recover-*.json"))
    try:
        steps = json.loads(runs[-1].read_text())["steps"] if runs else []
    except ValueError:  # never half-written (atomic rename), but be safe
        return False
    return any(s["name"] == "copy" and s.get("detail", {}).get("verified") for s in steps)


@needs_fleet
def test_a_run_killed_during_the_copy_resumes_and_restores_each_file_once(
    tmp_path: Path,
) -> None:
    names = {f"f{i}": f"user_data/big/f{i:02d}.bin" for i in range(24)}
    with deployment(tmp_path, names) as site:
        site.sh(WORKER, "mkdir -p /data/media/user_data/big && cd /data/media/user_data/big && "
                "for i in $(seq -w 0 23); do head -c 200000 /dev/urandom > f$i.bin; done",
                user="app")  # fmt: skip
        source = site.files(WORKER)
        # the real command, slowed to one file per 0.15 s so that the kill lands mid-copy
        args = site.cli("--apply", "--yes", "--transport", "ssh", "--format", "json",
                        "--sources", "machines")[1:]  # fmt: skip
        proc = site.start(SLOW_DRIVER, *args, text=False)
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and proc.poll() is None:
            copied = site.fleet.exec(APP, ["ls", "/data/media/user_data/big"]).stdout.split()
            # at least 3 files in place, and the record saved with one verified (it is
            # saved every 0.5 s at most): the resume must carry that one over
            if len([n for n in copied if n.endswith(".bin")]) >= 3 and _verified_saved(site):
                break
            time.sleep(0.05)
        assert proc.poll() is None, "the run ended before it could be killed"
        proc.send_signal(signal.SIGKILL)
        first_out, first_err = proc.communicate()
        partial_count = len(
            [n for n in site.fleet.exec(APP, ["ls", "/data/media/user_data/big"]).stdout.split()]
        )
        time.sleep(1)  # the orphaned sessions see their pipes close and end
        in_place = [
            n for n in site.fleet.exec(APP, ["ls", "/data/media/user_data/big"]).stdout.split()
            if n.endswith(".bin")
        ]  # fmt: skip
        # the resume, with every frame and byte the relay hands to the target counted
        counts = tmp_path / "sent.json"
        args = site.cli("--apply", "--yes", "--resume", "--transport", "ssh", "--format", "json",
                        "--sources", "machines")[1:]  # fmt: skip
        resumed = subprocess.run(
            [sys.executable, "-c", COUNTING_DRIVER, str(counts), *args],
            cwd=site.workdir,
            env=site.cli_env(),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        sent = json.loads(counts.read_text())
        target = site.files(APP)
        log = site.log_lines()
        temps = site.sh(APP, "find /data/media -name '.volguard-recover-*'")
        after = site.files(WORKER)
    assert 0 < partial_count < 24
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    document = json.loads(resumed.stdout)
    assert len(document["applied"]) == 24
    for name in names.values():
        assert target[name][0] == source[name][0], name
    restored = [e["target"] for e in log if e["action"] == "restore_file"]
    assert sorted(restored) == sorted(names.values())  # each file logged exactly once
    assert temps == ""
    assert after == source
    runs = sorted((site.workdir / ".volguard" / "runs").glob("recover-*.json"))
    second = json.loads(runs[-1].read_text())
    copy = next(s for s in second["steps"] if s["name"] == "copy")
    assert copy["detail"]["carried"] >= 1  # verified before the kill: not sent again
    statuses = [r["status"] for r in copy["detail"]["results"].values()]
    # the killed run's record knew of few of the files in place (it is saved rarely); the
    # target named them before the first frame, so not one of their bytes was sent again
    in_place_names = {f"user_data/big/{n}" for n in in_place}
    assert not in_place_names & {name for name, _ in sent}
    assert sorted(name for name, _ in sent) == sorted(set(names.values()) - in_place_names)
    assert sum(size for _, size in sent) == 200000 * (24 - len(in_place))
    assert copy["detail"]["sent"] == {"files": 24 - len(in_place),
                                      "bytes": 200000 * (24 - len(in_place))}  # fmt: skip
    assert (
        statuses.count("restored") + copy["detail"]["carried"] + statuses.count("present_identical")
        == 24
    )
    token = site.sim.token
    assert token not in first_out.decode() + first_err.decode()
    assert token not in resumed.stdout + resumed.stderr
    for path in runs:
        assert token not in path.read_text()


@needs_fleet
def test_apply_puts_back_the_rows_an_earlier_fix_marked_failed(tmp_path: Path) -> None:
    """After ``remediate --fix`` (here its Django side, as remediate runs it, writing the
    change log on the volume) marked every missing row failed, the plan flags them, and
    ``--apply`` copies the files back and restores those rows' status and log exactly."""
    with deployment(tmp_path) as site:
        site.sh(WORKER, WORKER_FILES, user="app")
        site.sh(WORKER_B, WORKER_B_FILES, user="app")
        log = "/data/.volguard/audit.jsonl"
        site.sh(APP, "mkdir -p /data/.volguard && chown app:app /data/.volguard")
        done = site.manage("check_missing_files", "--fix", "--max-missing", "100%", "--force",
                           "--audit-log", log)  # fmt: skip
        assert done.returncode == 2, done.stdout + done.stderr
        fixed = _row_values(site)
        assert {fixed[site.pks[k]][0] for k in NAMES} == {"failed"}

        plan = recover(site.context(prefer="newest", sources=MACHINES)).as_dict()
        assert all(p["marked_failed"] for p in plan["plan"])
        assert plan["summary"]["marked_failed"] == len(NAMES)

        outcome = recover(site.context(apply=True, prefer="newest", sources=MACHINES))
        assert outcome.error is None, outcome.error
        rows = _row_values(site)
        entries = site.log_lines()
    applied = {a["name"]: a for a in outcome.as_dict()["applied"]}
    back = {NAMES["w1"], NAMES["w2"], NAMES["c"]}
    assert set(applied) == back
    assert all(a["row_restored"] is True for a in applied.values())
    steps = {s.name: s for s in outcome.record.steps} if outcome.record else {}
    assert steps["restore-rows"].status == "changed"
    for key in ("w1", "w2", "c"):  # back to what they were before the fix
        assert rows[site.pks[key]] == ("done", ""), key
    for key in ("nowhere", "link", "esc"):  # no copy anywhere: still failed
        assert rows[site.pks[key]] == fixed[site.pks[key]], key
    restores = [e["target"] for e in entries if e["action"] == "restore_row"]
    assert sorted(restores) == sorted(
        f"services.UserDataFile#pk={site.pks[k]}" for k in ("w1", "w2", "c")
    )


def _row_values(site: Deployment) -> dict[int, tuple[str, str]]:
    done = site.manage(
        "shell", "-c",
        "import json\nfrom apps.services.models import UserDataFile\n"
        "print('VG=' + json.dumps(list(UserDataFile.objects.values_list("
        "'pk', 'processing_status', 'processing_log'))))",
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    return {pk: (status, log) for pk, status, log in json.loads(done.stdout.split("VG=", 1)[1])}
