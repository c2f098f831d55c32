"""The Machine layer end to end: API simulator + local fleet, both transports, as a user runs it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from functools import partial
from pathlib import Path

import pytest

from volguard.config import Settings
from volguard.fly.client import MachinesClient, Token
from volguard.sim.api import SimServer, load_scenario
from volguard.sim.local_fleet import LocalFleet, fleet_unavailable
from volguard.verify import verify

WHY = fleet_unavailable()
if WHY and os.environ.get("CI"):
    raise RuntimeError(f"CI must be able to run the local fleet, but: {WHY}")
pytestmark = pytest.mark.skipif(WHY is not None, reason=WHY or "")

VOLGUARD = str(Path(sys.executable).with_name("volguard"))

#: Each scenario and exactly the Machine-layer findings it must yield (its description says so).
EXPECTED = {
    "healthy": [],
    "incident": ["VG306"],
    "machine-not-mounted": ["VG301"],
    "machine-read-only": ["VG302", "VG304"],
    "root-owned-media": ["VG304", "VG307"],
    "worker-media-root-wrong": ["VG303", "VG303", "VG306"],  # outside the mount; differs
    "machine-stopped": [],
    "machine-unreachable": ["VG300"],
    "missing-volume": ["VG301"],
    "two-app-machines": [],
}


def machine_ids(report) -> list[str]:
    return sorted(f.id for f in report.findings if f.id.startswith("VG3") or f.id == "CUSTOM")


def settings_for(fleet: LocalFleet, transport: str, **more) -> Settings:
    return Settings.load(
        None,
        transport=transport,
        ssh_config=str(fleet.ssh_config),
        volume_fstypes=["ext4", "tmpfs"],  # the simulated volumes are tmpfs
        **more,
    )


@pytest.fixture
def flyctl_on_path(monkeypatch):
    def put(fleet: LocalFleet) -> None:
        monkeypatch.setenv("PATH", f"{fleet.flyctl_dir}{os.pathsep}{os.environ['PATH']}")

    return put


def probes_left(fleet: LocalFleet, machine_id: str, directory: str) -> list[str]:
    listing = fleet.exec(machine_id, ["ls", "-a", directory])
    return [n for n in listing.stdout.split() if n.startswith(".volguard-probe-")]


@pytest.mark.parametrize("transport", ["fly", "ssh"])
@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_each_scenario_gives_exactly_its_machine_findings(
    name, transport, tmp_path, flyctl_on_path
):
    scenario = load_scenario(name)
    (tmp_path / "fly.toml").write_text(scenario.fly_toml)
    with SimServer(scenario) as sim, LocalFleet(scenario) as fleet:
        flyctl_on_path(fleet)
        report = verify(
            settings_for(fleet, transport),
            str(tmp_path / "fly.toml"),
            token=Token(sim.token),
            client_factory=partial(MachinesClient, base_url=sim.url, backoff=0.01),
        )
        leftovers = {
            m: probes_left(fleet, m, d)
            for m in fleet.machines
            for d in ("/data", "/data/media", "/srv/media")
            if fleet.exec(m, ["test", "-d", d]).returncode == 0
        }
    assert report.layers["machine"].status == "ran", report.layers["machine"].reason
    assert machine_ids(report) == EXPECTED[name]
    assert not any(leftovers.values()), leftovers
    for finding in report.findings:
        if finding.id.startswith("VG3"):
            assert finding.location.machine, finding


def test_a_stopped_machine_is_vg209_and_never_contacted(tmp_path, flyctl_on_path):
    scenario = load_scenario("machine-stopped")
    stopped = [m.id for m in scenario.machines if m.state != "started" and m.group == "app"]
    (tmp_path / "fly.toml").write_text(scenario.fly_toml)
    with SimServer(scenario) as sim, LocalFleet(scenario) as fleet:
        flyctl_on_path(fleet)
        report = verify(
            settings_for(fleet, "fly"),
            str(tmp_path / "fly.toml"),
            token=Token(sim.token),
            client_factory=partial(MachinesClient, base_url=sim.url),
        )
    assert stopped
    assert [f.location.machine for f in report.findings if f.id == "VG209"] == stopped
    assert not [f for f in report.findings if f.id.startswith("VG3")]


@pytest.mark.parametrize("transport", ["fly", "ssh"])
def test_at_most_two_sessions_per_machine(transport, tmp_path, flyctl_on_path):
    scenario = load_scenario("incident")
    (tmp_path / "fly.toml").write_text(scenario.fly_toml)
    with SimServer(scenario) as sim, LocalFleet(scenario) as fleet:
        flyctl_on_path(fleet)
        report = verify(
            settings_for(fleet, transport),
            str(tmp_path / "fly.toml"),
            token=Token(sim.token),
            client_factory=partial(MachinesClient, base_url=sim.url),
        )
    assert report.stats["machines_checked"] == 2
    assert report.stats["machine_sessions_max"] <= 2


def _cli(sim, fleet, cwd, *args, **popen):
    env = {
        **os.environ,
        "FLY_FLAPS_BASE_URL": sim.url,
        "FLY_API_TOKEN": sim.token,
        "PATH": f"{fleet.flyctl_dir}{os.pathsep}{os.environ['PATH']}",
        "NO_COLOR": "1",
        **popen.pop("env", {}),
    }
    return subprocess.Popen(
        [VOLGUARD, "verify-volume", *args],
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **popen,
    )


def test_the_incident_from_the_command_line(tmp_path):
    scenario = load_scenario("incident")
    (tmp_path / "fly.toml").write_text(scenario.fly_toml)
    (tmp_path / "invoke.yaml").write_text("volguard:\n  volume_fstypes: [ext4, tmpfs]\n")
    with SimServer(scenario) as sim, LocalFleet(scenario) as fleet:
        run = _cli(sim, fleet, tmp_path, "--format", "json", "--verbose")
        out, err = run.communicate(timeout=120)
    assert run.returncode == 2, err
    report = json.loads(out)
    assert {f["id"] for f in report["findings"]} == {"VG103", "VG205", "VG306"}
    assert report["layers"]["machine"]["status"] == "ran"
    assert "volguard: machine: 2 Machines checked in 4 sessions" in err  # 2 each, at most
    assert sim.token not in out + err


def test_a_run_killed_midway_leaves_no_probe_behind(tmp_path):
    """Kill volguard after the visibility probe is written: the probe still goes away."""
    scenario = load_scenario("incident")
    (tmp_path / "fly.toml").write_text(scenario.fly_toml)
    writer = next(m.id for m in scenario.machines if m.group == "app")
    worker = next(m.id for m in scenario.machines if m.group == "worker")
    with SimServer(scenario) as sim, LocalFleet(scenario) as fleet:
        # a slow worker Machine: the run sits between writing the probe and removing it
        slow = tmp_path / "slow-bin"
        slow.mkdir()
        (slow / "flyctl").write_text(
            "#!/bin/sh\n"
            f'case " $* " in *" --machine {worker} "*) sleep 10;; esac\n'
            f'exec {fleet.flyctl_dir / "flyctl"} "$@"\n'
        )
        (slow / "flyctl").chmod(0o755)
        run = _cli(
            sim,
            fleet,
            tmp_path,
            env={
                "INVOKE_VOLGUARD_PROBE_TTL": "3",
                "INVOKE_VOLGUARD_VOLUME_FSTYPES": "ext4,tmpfs",
                "PATH": f"{slow}{os.pathsep}{fleet.flyctl_dir}{os.pathsep}{os.environ['PATH']}",
            },
            start_new_session=True,
        )
        deadline = time.monotonic() + 30
        seen: list[str] = []
        while time.monotonic() < deadline and not seen and run.poll() is None:
            seen = probes_left(fleet, writer, "/data/media")
            time.sleep(0.05)
        os.killpg(run.pid, signal.SIGKILL)
        run.communicate(timeout=30)
        still_there_at_kill = probes_left(fleet, writer, "/data/media")
        time.sleep(4.5)  # the probe's ttl (3 s), plus slack
        left = probes_left(fleet, writer, "/data/media")
    assert seen, "the visibility probe was never written"
    assert still_there_at_kill == seen  # the kill really interrupted the cleanup
    assert left == []
