"""Temporary forks, restores and Machines (#10): made, recorded, searched, destroyed.

`volguard.fly.temporary` is how `recover` reads an unattached volume or a snapshot without
touching it. These tests drive it against the API simulator over real HTTP and, where the
host allows, against the local fleet over real SSH: the copy holds the source's files (a
snapshot's as they were when it was taken), the source stays byte-for-byte the same, a
failure is one clear error with nothing left, only recorded ids are ever destroyed, and a
run SIGKILLed midway is cleaned up from its run record.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from volguard.errors import FlyAPIError, TemporaryResourceError
from volguard.fly.client import MachinesClient, RateLimiter, Token
from volguard.fly.snapshots import snapshot_volumes
from volguard.fly.temporary import (
    GROUP,
    TEMPORARY_KEY,
    Ledger,
    TemporaryMachines,
    cleanup,
    destroy_recorded,
    temporary_machine,
)
from volguard.runs import RunRecord
from volguard.sim.api import SimServer, load_scenario
from volguard.sim.local_fleet import LocalFleet, fleet_unavailable
from volguard.sim.scenario import Limits

WHY = fleet_unavailable()
if WHY is not None and os.environ.get("CI"):
    pytest.fail(f"CI must be able to run the local fleet, but: {WHY}", pytrace=False)
needs_fleet = pytest.mark.skipif(WHY is not None, reason=WHY or "")

LIMITS = Limits(rate_per_second=0, get_machine_rate=0, snapshot_delay_seconds=0.2)
SCENARIO = replace(load_scenario("incident"), limits=LIMITS)
APP = SCENARIO.app
WEB = "148e21ea4d3089"
WEB_VOLUME = "vol_668we58kuhntaa1u"


def client_for(sim: SimServer) -> MachinesClient:
    return MachinesClient(
        Token(sim.token), base_url=sim.url, limiter=RateLimiter(rate=0), backoff=0.01
    )


def live(sim: SimServer) -> tuple[set[str], set[str]]:
    """Ids of the Machines not destroyed and the volumes not being destroyed."""
    state = sim.state.to_json()
    machines = {m["id"] for m in state["machines"] if m["state"] != "destroyed"}
    volumes = {v["id"] for v in state["volumes"] if v["state"] != "pending_destroy"}
    return machines, volumes


def source_volume(client: MachinesClient) -> Any:
    return next(v for v in client.list_volumes(APP) if v.id == WEB_VOLUME)


# -- against the API simulator ----------------------------------------------------------------


def test_a_fork_on_a_temporary_machine_is_recorded_and_destroyed_at_the_end(tmp_path):
    record = RunRecord.new("recover", APP, ["search"], runs_dir=str(tmp_path))
    lines: list[str] = []
    with SimServer(SCENARIO) as sim, client_for(sim) as client:
        before = live(sim)
        with record.step("search"):
            ledger = Ledger.for_step(record, "search")
            with temporary_machine(
                client, APP, source_volume(client), ledger=ledger, poll=0.05, out=lines.append
            ) as tmp:
                during = live(sim)
                assert tmp.machine.state == "started"
                assert tmp.machine.group == GROUP
                assert tmp.machine.mount is not None
                assert tmp.machine.mount.volume == tmp.volume.id
                assert tmp.volume.state == "created"
                assert sim.state.lineage[tmp.volume.id] == {"source_volume_id": WEB_VOLUME}
                saved = json.loads(Path(record.path).read_text())
                entries = saved["steps"][0]["detail"][TEMPORARY_KEY]
                assert {(e["kind"], e["id"], e["status"]) for e in entries} == {
                    ("volume", tmp.volume.id, "created"),
                    ("machine", tmp.machine.id, "created"),
                }
        after = live(sim)
        web = sim.state.get_machine(WEB)
    assert during[0] - before[0] == {tmp.machine.id}
    assert during[1] - before[1] == {tmp.volume.id}
    assert after == before
    assert web["state"] == "started"  # the source's Machine was never touched
    saved = json.loads(Path(record.path).read_text())
    assert {e["status"] for e in saved["steps"][0]["detail"][TEMPORARY_KEY]} == {"destroyed"}
    assert any("destroyed" in line for line in lines)


def test_the_copy_is_destroyed_when_the_search_fails():
    ledger = Ledger.in_memory()
    with SimServer(SCENARIO) as sim, client_for(sim) as client:
        before = live(sim)
        with (
            pytest.raises(RuntimeError, match="search broke"),
            temporary_machine(client, APP, source_volume(client), ledger=ledger, poll=0.05),
        ):
            raise RuntimeError("search broke")
        assert live(sim) == before
    assert [e["status"] for e in ledger.entries] == ["destroyed", "destroyed"]


def maker(client: MachinesClient, ledger: Ledger) -> Any:
    """A `make` for TemporaryMachines.get: a fork of the web volume on a temporary Machine."""
    volume = source_volume(client)
    return volume.id, lambda: temporary_machine(client, APP, volume, ledger=ledger, poll=0.05)


def test_a_kept_machine_is_made_once_for_every_use_and_destroyed_when_the_run_closes():
    ledger = Ledger.in_memory()
    kept = TemporaryMachines()
    with SimServer(SCENARIO) as sim, client_for(sim) as client:
        before = live(sim)
        key, make = maker(client, ledger)
        first = kept.get(key, make)  # the search
        again = kept.get(key, make)  # the copy: the same Machine, the same fork
        during = live(sim)
        kept.close()
        after = live(sim)
        kept.close()  # a second close has nothing left to do
    forks = [a for a in sim.state.actions if a["action"] == "create_volume"]
    assert again == first
    assert len(forks) == 1
    assert during[0] - before[0] == {first.machine.id}
    assert during[1] - before[1] == {first.volume.id}
    assert after == before
    assert [e["status"] for e in ledger.entries] == ["destroyed", "destroyed"]


def test_a_failed_make_keeps_nothing_and_the_next_use_tries_again():
    ledger = Ledger.in_memory()
    kept = TemporaryMachines()
    with SimServer(SCENARIO) as sim, client_for(sim) as client:
        before = live(sim)
        key, make = maker(client, ledger)
        sim.inject(refuse_volume_next=1)
        with pytest.raises(TemporaryResourceError, match="forking volume"):
            kept.get(key, make)
        made = kept.get(key, make)
        kept.close()
        after = live(sim)
    assert made.volume.state == "created"
    assert after == before


@pytest.mark.parametrize(
    ("fault", "doing"),
    [
        ({"refuse_volume_next": 1}, "forking volume"),
        ({"fail_next": 1}, "forking volume"),  # a 5xx: it may or may not have happened
        ({"refuse_machine_next": 1}, "starting a temporary Machine"),
        ({"machine_fails_next": 1}, "starting a temporary Machine"),
    ],
)
def test_a_failed_fork_or_machine_start_is_one_clear_error_and_leaves_nothing(fault, doing):
    ledger = Ledger.in_memory()
    lines: list[str] = []
    with SimServer(SCENARIO) as sim, client_for(sim) as client:
        volume = source_volume(client)
        template = client.get_machine(APP, WEB)  # so the fault hits the POST, not a list
        before = live(sim)
        sim.inject(**fault)
        with (
            pytest.raises(TemporaryResourceError) as caught,
            temporary_machine(
                client, APP, volume, ledger=ledger, template=template, poll=0.05, timeout=2,
                out=lines.append,
            ),
        ):  # fmt: skip
            pytest.fail("no Machine should have been yielded")
        after = live(sim)
    message = str(caught.value)
    assert message.startswith(doing)
    assert message.endswith("nothing was left behind")
    assert "\n" not in message
    assert caught.value.left == []
    assert after == before
    assert all(e["status"] == "destroyed" for e in ledger.entries)
    assert sim.token not in message + "".join(lines)


def test_a_refused_volume_carries_the_apis_words():
    with SimServer(SCENARIO) as sim, client_for(sim) as client:
        sim.inject(refuse_volume_next=1)
        volume = source_volume(client)
        with (
            pytest.raises(TemporaryResourceError, match="insufficient resources"),
            temporary_machine(client, APP, volume, ledger=Ledger.in_memory()),
        ):
            pass


def test_only_ids_the_run_recorded_are_ever_destroyed():
    ledger = Ledger.in_memory()
    with SimServer(SCENARIO) as sim, client_for(sim) as client:
        before = live(sim)
        with pytest.raises(TemporaryResourceError, match="did not create it"):
            destroy_recorded(client, ledger, "machine", WEB)
        with pytest.raises(TemporaryResourceError, match="did not create it"):
            destroy_recorded(client, ledger, "volume", WEB_VOLUME)
        assert live(sim) == before


def test_a_volume_a_machine_holds_cannot_be_destroyed_as_on_fly():
    with (
        SimServer(SCENARIO) as sim,
        client_for(sim) as client,
        pytest.raises(FlyAPIError, match="failed_precondition") as caught,
    ):
        client.destroy_volume(APP, WEB_VOLUME)
    assert caught.value.status == 412
    assert f"volume is currently bound to machine: {WEB}" in str(caught.value)


def test_a_restore_takes_the_snapshot_volumes_region_and_ends_created():
    with SimServer(SCENARIO) as sim, client_for(sim) as client:
        volume = source_volume(client)
        (taken,) = snapshot_volumes(client, APP, [volume], poll=0.05).values()
        with temporary_machine(
            client, APP, volume, ledger=Ledger.in_memory(), snapshot_id=taken, poll=0.05
        ) as tmp:
            assert tmp.volume.region == volume.region
            assert sim.state.lineage[tmp.volume.id]["snapshot_id"] == taken


KILLED_RUN = textwrap.dedent(
    """
    import sys, time
    from volguard.fly.client import MachinesClient, RateLimiter, Token
    from volguard.fly.temporary import Ledger, temporary_machine
    from volguard.runs import RunRecord
    url, token, app, volume_id, runs = sys.argv[1:]
    client = MachinesClient(Token(token), base_url=url, limiter=RateLimiter(rate=0))
    record = RunRecord.new("recover", app, ["search"], runs_dir=runs)
    volume = next(v for v in client.list_volumes(app) if v.id == volume_id)
    with record.step("search"):
        ledger = Ledger.for_step(record, "search")
        with temporary_machine(client, app, volume, ledger=ledger, poll=0.05) as tmp:
            print(record.path, tmp.machine.id, tmp.volume.id, flush=True)
            time.sleep(60)
    """
)


def killed_run(sim: SimServer, runs: Path) -> tuple[subprocess.Popen, str, str, str]:
    """A run killed right after it made a fork and a temporary Machine: (the process, its
    record's path, the Machine's id, the fork's id)."""
    argv = [sys.executable, "-c", KILLED_RUN, sim.url, sim.token, APP, WEB_VOLUME, str(runs)]
    child = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert child.stdout is not None
    path, machine_id, volume_id = child.stdout.readline().split()
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    return child, path, machine_id, volume_id


def test_a_run_killed_after_creating_resources_is_cleaned_up_from_its_record(tmp_path):
    runs = tmp_path / "runs"
    with SimServer(SCENARIO) as sim, client_for(sim) as client:
        before = live(sim)
        child, path, machine_id, volume_id = killed_run(sim, runs)
        assert live(sim)[0] - before[0] == {machine_id}  # left behind by the killed run
        record = RunRecord.load(path)
        destroyed = cleanup(record, client)
        after = live(sim)
        again = cleanup(RunRecord.load(path), client)
        actions = [a for a in sim.state.actions if a["action"].startswith("destroy")]
    assert sorted(destroyed) == sorted([machine_id, volume_id])
    assert after == before
    assert again == []  # marked destroyed in the record: nothing twice
    assert [a["id"] for a in actions] == [machine_id, volume_id]  # and nothing else
    assert sim.token not in Path(path).read_text() + child.stderr.read()


# -- against the local fleet -----------------------------------------------------------------


def tree_digest(fleet: LocalFleet, machine_id: str, path: str) -> str:
    """sha256 of every file's name, mode, owner and bytes under `path` on the Machine."""
    script = (
        f"cd {path} && find . -print0 | sort -z | "
        "xargs -0 stat -c '%n %a %U %s' && find . -type f -print0 | sort -z | "
        "xargs -0 cat"
    )
    done = fleet.exec(machine_id, ["sh", "-c", script], text=False)
    assert done.returncode == 0, done.stderr
    return hashlib.sha256(done.stdout).hexdigest()


def ssh(fleet: LocalFleet, host: str, command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["ssh", "-F", str(fleet.ssh_config), host, command],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip


def write(fleet: LocalFleet, machine_id: str, name: str, text: str) -> None:
    done = fleet.exec(
        machine_id, ["sh", "-c", f"mkdir -p /data/media/up && printf %s '{text}' > {name}"]
    )
    assert done.returncode == 0, done.stderr


@pytest.fixture
def fleet_and_sim(tmp_path):
    with SimServer(SCENARIO) as sim, LocalFleet(SCENARIO, workdir=tmp_path / "fleet") as fleet:
        fleet.follow(sim)
        yield fleet, sim


@needs_fleet
def test_a_temporary_machine_serves_the_forks_files_over_ssh_and_goes(fleet_and_sim):
    fleet, sim = fleet_and_sim
    write(fleet, WEB, "/data/media/up/a.txt", "first upload")
    source_before = tree_digest(fleet, WEB, "/data")
    with client_for(sim) as client:
        with temporary_machine(
            client, APP, source_volume(client), ledger=Ledger.in_memory(), poll=0.05
        ) as tmp:
            mid = tmp.machine.id
            assert mid in fleet.machines
            seen = ssh(fleet, mid, "cat /data/media/up/a.txt; echo; echo $(hostname)")
            write(fleet, WEB, "/data/media/up/b.txt", "after the fork")
            later = ssh(fleet, mid, "ls /data/media/up")
        assert mid not in fleet.machines
        assert mid not in fleet.ssh_config.read_text()
    assert seen.returncode == 0, seen.stderr
    assert seen.stdout.split() == ["first", "upload", mid]
    assert later.stdout.split() == ["a.txt"]  # the fork holds the files at fork time
    write(fleet, WEB, "/data/media/up/b.txt", "")  # undo the later write for the digest
    fleet.exec(WEB, ["rm", "/data/media/up/b.txt"])
    assert tree_digest(fleet, WEB, "/data") == source_before


@needs_fleet
def test_a_restored_snapshot_holds_the_files_as_they_were_when_it_was_taken(fleet_and_sim):
    fleet, sim = fleet_and_sim
    write(fleet, WEB, "/data/media/up/a.txt", "before the snapshot")
    with client_for(sim) as client:
        volume = source_volume(client)
        (taken,) = snapshot_volumes(client, APP, [volume], poll=0.05).values()
        write(fleet, WEB, "/data/media/up/a.txt", "changed later")
        write(fleet, WEB, "/data/media/up/new.txt", "added later")
        source_before = tree_digest(fleet, WEB, "/data")
        with temporary_machine(
            client, APP, volume, ledger=Ledger.in_memory(), snapshot_id=taken, poll=0.05
        ) as tmp:
            seen = ssh(fleet, tmp.machine.id, "cat /data/media/up/a.txt; echo; ls /data/media/up")
    assert seen.returncode == 0, seen.stderr
    assert seen.stdout.split() == ["before", "the", "snapshot", "a.txt"]
    assert tree_digest(fleet, WEB, "/data") == source_before


@needs_fleet
def test_an_unattached_volumes_seeded_files_reach_its_fork(fleet_and_sim):
    fleet, sim = fleet_and_sim
    with client_for(sim) as client:
        spare = client.create_volume(APP, {"name": "data", "region": "syd", "size_gb": 1})
        fleet.seed_volume(spare.id, {"media/up/old.txt": b"stranded"})
        with temporary_machine(client, APP, spare, ledger=Ledger.in_memory(), poll=0.05) as tmp:
            seen = ssh(fleet, tmp.machine.id, "cat /data/media/up/old.txt")
        assert (fleet.volume_dir(spare.id) / "media/up/old.txt").read_bytes() == b"stranded"
    assert seen.stdout == "stranded"


def test_cleanup_outlasts_a_platform_that_fails_for_a_while_and_names_its_reason(tmp_path):
    """A destroy that keeps failing (5xx) past the client's own retries is tried again until
    the deadline; one that never succeeds is one error naming the API's words."""
    runs = tmp_path / "runs"
    with SimServer(SCENARIO) as sim, client_for(sim) as client:
        before = live(sim)
        _, path, machine_id, volume_id = killed_run(sim, runs)
        sim.inject(fail_next=12)  # more than one call's retries
        destroyed = cleanup(RunRecord.load(path), client, poll=0.01, timeout=30)
        after = live(sim)
        _, path2, machine2, _ = killed_run(sim, runs)
        sim.inject(fail_next=10_000)
        with pytest.raises(TemporaryResourceError) as caught:
            cleanup(RunRecord.load(path2), client, poll=0.01, timeout=0.5)
        sim.reset()
        cleanup(RunRecord.load(path2), client)
    assert sorted(destroyed) == sorted([machine_id, volume_id])
    assert after == before
    assert machine2 in caught.value.left
    assert f"{machine2} (" in str(caught.value)  # with the API's reason
    assert sim.token not in str(caught.value)
