"""`flyctl deploy` in the simulation: the stand-in, the API simulator, the local fleet.

A deploy is how the incident gets fixed, so the simulator must deploy as Fly does,
traps included (FLYCTL internal/command/deploy, fly-facts §0, §2.2): Machines of groups
that left [processes] are destroyed and their volumes kept, unattached; the others get
the new config, a new instance and a restart, on the SAME volume; a refused or failed
deploy changes nothing. The local fleet follows: its Machines restart with the new plan
and the volume's files survive the restart.

The API-level tests run anywhere; the fleet tests need root (as in test_local_fleet.py).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest

from volguard.config import Settings
from volguard.fly.client import MachinesClient, Token
from volguard.sim.api import SimServer, load_scenario, parse_scenario
from volguard.sim.deployment import validate_config
from volguard.sim.local_fleet import LocalFleet, fleet_unavailable
from volguard.sim.local_machine import processes_in_namespace
from volguard.sim.state import ApiError
from volguard.verify import verify

WHY = fleet_unavailable()
if WHY is not None and os.environ.get("CI"):
    pytest.fail(f"CI must be able to run the local fleet, but: {WHY}", pytrace=False)
needs_fleet = pytest.mark.skipif(WHY is not None, reason=WHY or "")

ROOT = Path(__file__).resolve().parents[1]
APP = "test-blue-smoke-97"
WEB = "148e21ea4d3089"
WORKER = "e6482d84693162"
WEB_VOLUME = "vol_668we58kuhntaa1u"
WORKER_VOLUME = "vol_qtze732rf4dqo0ky"
INCIDENT = load_scenario("incident")
WORKER_LINE = '  worker = "celery -A config worker --loglevel=info"\n'
#: The fix: the worker runs inside the app Machine (honcho), so the group and its own
#: volume go, and the mount is the app group's only.
FIXED = (
    INCIDENT.fly_toml.replace(WORKER_LINE, "")
    .replace('processes = ["app", "worker"]', 'processes = ["app"]')
    .replace(
        '  app = "gunicorn config.wsgi:application --bind 0.0.0.0:8000 --workers 2"',
        '  app = "honcho start -f Procfile.fly"',
    )
)


def test_the_fixed_config_is_what_the_demo_deploys() -> None:
    config = tomllib.loads(FIXED)
    assert config["processes"] == {"app": "honcho start -f Procfile.fly"}
    assert config["mounts"]["processes"] == ["app"]
    assert validate_config(config) == []


# --- helpers --------------------------------------------------------------------------


def project(tmp_path: Path, fly_toml: str | None = FIXED) -> Path:
    directory = tmp_path / "project"
    directory.mkdir(exist_ok=True)
    if fly_toml is not None:
        (directory / "fly.toml").write_text(fly_toml, encoding="utf-8")
    return directory


def flyctl(
    cwd: Path,
    sim: SimServer | None,
    *args: str,
    fleet: LocalFleet | None = None,
    **env: str,
) -> subprocess.CompletedProcess[str]:
    """The stand-in as a caller runs it: the fleet's `flyctl` on PATH, or (no fleet)
    `python -m volguard.sim.flyctl`; the simulator's URL and token in the environment."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("FLY_", "VOLGUARD_"))}
    environ["PYTHONPATH"] = str(ROOT)
    if sim is not None:
        environ |= {"FLY_FLAPS_BASE_URL": sim.url, "FLY_API_TOKEN": sim.token}
    environ |= env
    if fleet is not None:
        command = [str(fleet.flyctl_dir / "flyctl")]
    else:
        command = [sys.executable, "-m", "volguard.sim.flyctl"]
    return subprocess.run(
        [*command, *args],
        cwd=cwd,
        env=environ,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def machines(sim: SimServer, *, include_deleted: bool = False) -> dict[str, dict[str, Any]]:
    """GET /machines over HTTP, by id."""
    params = {"include_deleted": "true"} if include_deleted else {}
    response = httpx.get(
        f"{sim.url}/v1/apps/{APP}/machines",
        params=params,
        headers={"Authorization": sim.auth_header},
        timeout=5,
    )
    response.raise_for_status()
    return {m["id"]: m for m in response.json()}


def volumes(sim: SimServer) -> dict[str, dict[str, Any]]:
    with MachinesClient(Token(sim.token), base_url=sim.url, backoff=0.01) as client:
        listed = client.list_volumes(APP)
    return {v.id: v for v in listed}


def snapshot(sim: SimServer) -> dict[str, Any]:
    """Everything the API shows, for "nothing changed" comparisons."""
    state = sim.state.to_json()
    return {k: state[k] for k in ("machines", "volumes", "fly_toml", "release_version")}


@pytest.fixture
def sim() -> Iterator[SimServer]:
    with SimServer(INCIDENT) as server:
        yield server


# --- the API: what a deploy does ----------------------------------------------------------


def test_deploying_the_fix_destroys_the_worker_and_keeps_the_app_volume(
    sim: SimServer, tmp_path: Path
) -> None:
    before = machines(sim)
    done = flyctl(project(tmp_path), sim, "deploy", "--remote-only", "--yes")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    for expected in (
        "==> Verifying app config",
        "--> Verified app config",
        ' * destroy 1 "worker" machine',
        f"Updating existing machines in '{APP}' with rolling strategy",
        f"✔ Machine {WEB} [app] update succeeded",
        f"Visit your newly deployed app at https://{APP}.fly.dev/",
    ):
        assert expected in lines, done.stdout
    assert sim.token not in done.stdout + done.stderr

    after = machines(sim)
    assert list(after) == [WEB]  # the destroyed worker is gone from the default list
    web, old = after[WEB], before[WEB]
    assert web["state"] == "started"
    assert web["instance_id"] != old["instance_id"]
    assert web["updated_at"] > old["updated_at"]
    assert web["config"]["mounts"] == old["config"]["mounts"]  # the same volume, same path
    assert web["config"]["mounts"][0]["volume"] == WEB_VOLUME
    assert web["config"]["init"]["cmd"] == ["honcho", "start", "-f", "Procfile.fly"]
    assert web["config"]["metadata"]["fly_process_group"] == "app"
    assert int(web["config"]["metadata"]["fly_release_version"]) == 13
    assert web["config"]["env"]["MEDIA_ROOT"] == "/data/media"
    assert web["config"]["env"]["FLY_PROCESS_GROUP"] == "app"

    worker = machines(sim, include_deleted=True)[WORKER]
    assert worker["state"] == "destroyed"
    vols = volumes(sim)
    assert vols[WEB_VOLUME].attached_machine_id == WEB
    assert vols[WORKER_VOLUME].attached_machine_id is None  # kept, unattached, with its data
    assert vols[WORKER_VOLUME].state == "created"
    assert vols[WORKER_VOLUME].blocks_free < vols[WORKER_VOLUME].blocks


def test_the_volguard_client_sees_the_deployed_app(sim: SimServer, tmp_path: Path) -> None:
    assert flyctl(project(tmp_path), sim, "deploy", "-y").returncode == 0
    with MachinesClient(Token(sim.token), base_url=sim.url, backoff=0.01) as client:
        listed = client.list_machines(APP)
    assert [(m.id, m.group, m.state) for m in listed] == [(WEB, "app", "started")]
    assert [(m.volume, m.path, m.name) for m in listed[0].mounts] == [(WEB_VOLUME, "/data", "data")]


def test_an_unchanged_config_deploys_idempotently(sim: SimServer, tmp_path: Path) -> None:
    cwd = project(tmp_path)
    assert flyctl(cwd, sim, "deploy", "-y").returncode == 0
    first_machines, first_volumes = machines(sim, include_deleted=True), volumes(sim)
    again = flyctl(cwd, sim, "deploy", "-y")
    assert again.returncode == 0, again.stderr
    assert "Process groups have changed" not in again.stdout
    second = machines(sim, include_deleted=True)
    assert list(second) == list(first_machines)  # nothing created
    assert [m["state"] for m in second.values()] == [m["state"] for m in first_machines.values()]
    assert second[WEB]["instance_id"] != first_machines[WEB]["instance_id"]  # updated
    assert second[WEB]["config"]["mounts"] == first_machines[WEB]["config"]["mounts"]
    assert {v.id: v.attached_machine_id for v in volumes(sim).values()} == {
        v.id: v.attached_machine_id for v in first_volumes.values()
    }
    deploys = [a for a in sim.state.actions if a["action"] == "deploy"]
    assert [(a["destroyed"], a["created"], a["updated"]) for a in deploys[1:]] == [([], [], [WEB])]


def test_a_failed_release_command_changes_nothing(sim: SimServer, tmp_path: Path) -> None:
    before = snapshot(sim)
    done = flyctl(project(tmp_path), sim, "deploy", "-y", VOLGUARD_SIM_DEPLOY_FAIL="1")
    assert done.returncode == 1
    assert done.stderr.startswith("Error: release command failed - aborting deployment. ")
    assert "exited with non-zero status of 1" in done.stderr
    assert "update succeeded" not in done.stdout
    assert snapshot(sim) == before


@pytest.mark.parametrize(
    ("args", "fly_toml", "message"),
    [
        (["deploy", "--frobnicate"], FIXED, "unknown flag: --frobnicate"),
        (["deploy", "--remote-only=maybe"], FIXED, 'invalid argument "maybe" for "--remote-only"'),
        (["deploy", "-Z"], FIXED, "unknown shorthand flag: 'Z' in -Z"),
        (["deploy", "--remote"], FIXED, "unknown flag: --remote"),  # no abbreviations
        (["deploy", "-c"], FIXED, "flag needs an argument: --config"),
        (["deploy", "a", "b"], FIXED, "accepts at most 1 arg(s), received 2"),
        (["deploy"], None, "the config for your app is missing an app name"),
        (["deploy", "-c", "elsewhere/fly.toml"], FIXED, "missing an app name"),
        (["deploy"], "app = [oops\n", "failed loading app config from "),
        (["deploy", "--strategy", "canary"], FIXED, "invalid app configuration"),
    ],
)
def test_flag_and_config_errors_are_flyctl_errors(
    sim: SimServer, tmp_path: Path, args: list[str], fly_toml: str | None, message: str
) -> None:
    before = snapshot(sim)
    done = flyctl(project(tmp_path, fly_toml), sim, *args)
    assert done.returncode == 1
    assert done.stderr.splitlines()[-1].startswith("Error: ")
    assert message in done.stderr
    assert snapshot(sim) == before


def test_a_toml_error_names_the_file_and_prints_nothing_else(
    sim: SimServer, tmp_path: Path
) -> None:
    cwd = project(tmp_path, FIXED + "\n[mounts]\nsource = 'again'\n")
    done = flyctl(cwd, sim, "deploy", "--config", str(cwd / "fly.toml"))
    assert done.returncode == 1
    assert done.stdout == ""
    assert done.stderr.startswith(
        f"Error: failed loading app config from {cwd / 'fly.toml'}: toml:"
    )


def test_canary_with_a_volume_is_refused_with_flyctls_words(sim: SimServer, tmp_path: Path) -> None:
    done = flyctl(project(tmp_path), sim, "deploy", "--strategy", "canary")
    assert "canary deployment strategy is not supported when using mounted volumes" in done.stderr
    assert done.returncode == 1


def test_without_the_simulator_the_stand_in_refuses(tmp_path: Path) -> None:
    done = flyctl(project(tmp_path), None, "deploy", FLY_API_TOKEN="fm2_x")
    assert done.returncode == 1
    assert done.stderr.startswith("Error: FLY_FLAPS_BASE_URL is not set")
    done = flyctl(project(tmp_path), None, "deploy", FLY_FLAPS_BASE_URL="http://127.0.0.1:9")
    assert (
        done.stderr == "Error: No access token available. Please login with 'flyctl auth login'\n"
    )


def test_a_wrong_token_or_app_is_refused(sim: SimServer, tmp_path: Path) -> None:
    done = flyctl(project(tmp_path), sim, "deploy", FLY_API_TOKEN="fm2_wrong")
    assert done.stderr.endswith("Error: You must be authenticated to view this.\n")
    done = flyctl(project(tmp_path), sim, "deploy", "-a", "other-app")
    assert 'Could not find App "other-app"' in done.stderr
    assert done.returncode == 1


def test_without_a_config_file_the_deployed_config_is_redeployed(
    sim: SimServer, tmp_path: Path
) -> None:
    done = flyctl(project(tmp_path, None), sim, "deploy", "-a", APP, "-y")
    assert done.returncode == 0, done.stderr
    after = machines(sim)
    assert list(after) == [WEB, WORKER]  # the incident's own config: nothing destroyed
    assert after[WORKER]["config"]["mounts"][0]["volume"] == WORKER_VOLUME


def test_the_deploy_endpoint_is_not_public_api(sim: SimServer) -> None:
    body = {"app": APP, "fly_toml": FIXED, "yes": True}
    with httpx.Client(base_url=sim.url, timeout=5) as http:
        assert http.post("/__sim/deploy", json=body).status_code == 401
        wrong = {"Authorization": "Bearer fm2_lJPECAAAAAAAAMLtxBBzaW11bGF0ZWQtbWFjYXJvb24"}
        assert http.post("/__sim/deploy", json=body, headers=wrong).status_code == 401
        auth = {"Authorization": sim.auth_header}
        assert http.get("/__sim/deploy", headers=auth).status_code == 405
        for path in (f"/v1/apps/{APP}/deploy", f"/v1/apps/{APP}/machines/deploy"):
            assert http.post(path, json=body, headers=auth).status_code in (404, 405)
        assert http.post("/__sim/deploy", json=body, headers=auth).status_code == 200
    assert all(not r["path"].startswith("/__sim") for r in sim.requests())  # not logged


# --- the API: Fly's rules for mounts and groups ---------------------------------------------


def test_removing_the_mount_needs_a_confirmation_then_replaces_the_machine(
    sim: SimServer, tmp_path: Path
) -> None:
    no_mount = INCIDENT.fly_toml.replace("[mounts]", "[unused_mounts]")
    cwd = project(tmp_path, no_mount)
    before = snapshot(sim)
    refused = flyctl(cwd, sim, "deploy")
    assert refused.returncode == 1
    assert f"Warning! machine {WEB} [app] has a volume mounted" in refused.stderr
    assert refused.stderr.endswith(
        "Error: yes flag must be specified when not running interactively\n"
    )
    assert snapshot(sim) == before
    done = flyctl(cwd, sim, "deploy", "--yes")
    assert done.returncode == 0, done.stderr
    after = machines(sim)
    assert WEB not in after  # replaced by Machines without volumes
    assert WORKER not in after
    assert sorted(m["config"]["metadata"]["fly_process_group"] for m in after.values()) == [
        "app",
        "worker",
    ]
    assert all(not m["config"].get("mounts") for m in after.values())
    assert all(v.attached_machine_id is None for v in volumes(sim).values())


def test_renaming_the_mount_source_is_refused(sim: SimServer, tmp_path: Path) -> None:
    renamed = FIXED.replace('source = "data"', 'source = "media"')
    before = snapshot(sim)
    done = flyctl(project(tmp_path, renamed), sim, "deploy", "-y")
    assert done.returncode == 1
    assert f"Error: machine {WEB} [app] can't update the attached volume media" in done.stderr
    assert snapshot(sim) == before


def test_a_new_destination_moves_the_mount_path_not_the_volume(
    sim: SimServer, tmp_path: Path
) -> None:
    moved = FIXED.replace('destination = "/data"', 'destination = "/srv/data"')
    done = flyctl(project(tmp_path, moved), sim, "deploy", "-y")
    assert done.returncode == 0, done.stderr
    assert f"Updating the mount path for volume {WEB_VOLUME} on machine {WEB}" in done.stderr
    mount = machines(sim)[WEB]["config"]["mounts"][0]
    assert (mount["volume"], mount["path"]) == (WEB_VOLUME, "/srv/data")


def test_a_new_group_gets_machines_and_gaining_a_mount_replaces_them(
    sim: SimServer, tmp_path: Path
) -> None:
    beat = FIXED.replace(
        '  app = "honcho start -f Procfile.fly"',
        '  app = "honcho start -f Procfile.fly"\n  beat = "celery -A config beat"',
    )
    done = flyctl(project(tmp_path, beat), sim, "deploy", "-y")
    assert done.returncode == 0, done.stderr
    assert "No machines in group beat, launching a new machine" in done.stdout
    beats = [
        m for m in machines(sim).values() if m["config"]["metadata"]["fly_process_group"] == "beat"
    ]
    # --ha (the default): a group with no services and no mount gets a stopped standby too
    assert [(m["state"], bool(m["config"].get("standbys"))) for m in beats] == [
        ("started", False),
        ("stopped", True),
    ]
    assert all(not m["config"].get("mounts") for m in beats)

    # The group gains the mount: a volume cannot be attached to a Machine, so both are
    # replaced, each needing an unattached "data" volume in its region (fly-facts §0.6).
    mounted = beat.replace('processes = ["app"]', 'processes = ["app", "beat"]')
    before = snapshot(sim)
    short = flyctl(project(tmp_path, mounted), sim, "deploy", "-y")
    assert short.returncode == 1
    assert short.stderr.endswith(
        "Error: Process group 'beat' needs volumes with name 'data' to fulfill mounts defined "
        "in fly.toml; Run `fly volume create data -r REGION -n COUNT` for the following "
        "regions and counts: syd=1\n"
    )  # the worker's old volume covers one of the two
    assert snapshot(sim) == before
    sim.state.create_volume({"name": "data", "region": "syd", "size_gb": 1})
    done = flyctl(project(tmp_path, mounted), sim, "deploy", "-y")
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("  Replacing ") == 2
    new = [
        m for m in machines(sim).values() if m["config"]["metadata"]["fly_process_group"] == "beat"
    ]
    assert {m["id"] for m in new}.isdisjoint(m["id"] for m in beats)
    used = {m["config"]["mounts"][0]["volume"] for m in new}
    assert WORKER_VOLUME in used
    assert len(used) == 2


def test_a_new_mounted_group_without_a_spare_volume_is_refused(tmp_path: Path) -> None:
    with SimServer(INCIDENT) as server:
        adding = INCIDENT.fly_toml.replace(
            WORKER_LINE, WORKER_LINE + '  clamav = "clamd"\n'
        ).replace('processes = ["app", "worker"]', 'processes = ["app", "worker", "clamav"]')
        before = snapshot(server)
        done = flyctl(project(tmp_path, adding), server, "deploy", "-y")
        assert done.returncode == 1
        assert (
            "Error: creating a new machine in group 'clamav' requires an unattached 'data' "
            "volume. Create it with `fly volume create data`"
        ) in done.stderr
        assert snapshot(server) == before
        server.state.create_volume({"name": "data", "region": "syd", "size_gb": 1})
        done = flyctl(project(tmp_path, adding), server, "deploy", "-y")
        assert done.returncode == 0, done.stderr
        clamav = [
            m for m in machines(server).values()
            if m["config"]["metadata"]["fly_process_group"] == "clamav"
        ]  # fmt: skip
        assert len(clamav) == 1  # one Machine only: the group has a mount
        assert clamav[0]["config"]["mounts"][0]["name"] == "data"


def test_a_first_deploy_creates_the_volume_in_the_primary_region(tmp_path: Path) -> None:
    empty = parse_scenario(
        {"app": APP, "primary_region": "syd", "tokens": ["fm2_first"], "fly_toml": FIXED}
    )
    with SimServer(empty) as server:
        done = flyctl(project(tmp_path), server, "deploy", "-y")
        assert done.returncode == 0, done.stderr
        assert "Creating a 1 GB volume named 'data' for process group 'app'." in done.stdout
        (machine,) = machines(server).values()
        (volume,) = volumes(server).values()
    assert machine["region"] == volume.region == "syd"
    assert machine["config"]["mounts"][0]["volume"] == volume.id
    assert volume.attached_machine_id == machine["id"]
    assert volume.size_gb == 1  # flyctl's default, not the API's 3


def test_a_stopped_auto_stop_machine_stays_stopped(tmp_path: Path) -> None:
    scenario = load_scenario("machine-stopped")
    with SimServer(scenario) as server:
        done = flyctl(project(tmp_path, scenario.fly_toml), server, "deploy", "-y")
        assert done.returncode == 0, done.stderr
        states = {m["id"]: m["state"] for m in machines(server).values()}
    stopped = [m.id for m in scenario.machines if m.state == "stopped" and m.group == "app"]
    assert [states[m] for m in stopped] == ["stopped"]  # flyctl's skipLaunch
    assert states[WEB] == "started"


def test_in_process_deploy_raises_the_refusal() -> None:
    with SimServer(INCIDENT) as server:
        with pytest.raises(ApiError, match="release command failed") as refused:
            server.deploy(FIXED, yes=True, fail_release_command=True)
        assert refused.value.status == 422
        result = server.deploy(FIXED, yes=True)
    assert [m["id"] for m in result["destroyed"]] == [WORKER]
    assert [m["id"] for m in result["updated"]] == [WEB]


# --- the local fleet follows ----------------------------------------------------------------


def running(pid: int) -> bool:
    """The process exists and is not a zombie (a killed Machine's init can stay one until
    this host's PID 1 reaps it)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return "\nState:\tZ" not in status


def started_from(workdir: Path) -> list[int]:
    """Pids of processes whose command line names the fleet's workdir (its sshds)."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if str(workdir).encode() in (entry / "cmdline").read_bytes():
                found.append(int(entry.name))
        except (OSError, ValueError):
            continue
    return found


def write_upload(fleet: LocalFleet, machine: str, name: str, text: str) -> None:
    done = fleet.exec(machine, ["sh", "-c", f"echo {text} > /data/media/{name}"], user="app")
    assert done.returncode == 0, done.stderr


def read(fleet: LocalFleet, machine: str, path: str) -> str | None:
    done = fleet.exec(machine, ["cat", path])
    return done.stdout if done.returncode == 0 else None


@needs_fleet
def test_the_fleet_follows_flyctl_deploy_and_keeps_the_volume(tmp_path: Path) -> None:
    mounts_before = Path("/proc/self/mountinfo").read_text()
    with SimServer(INCIDENT) as sim, LocalFleet(INCIDENT, workdir=tmp_path / "fleet") as fleet:
        write_upload(fleet, WEB, "upload.txt", "kept")
        assert fleet.exec(WEB, ["sh", "-c", "echo gone > /app/scratch"]).returncode == 0
        old_pid = fleet.app_pid(WEB)
        old_processes = {
            m: processes_in_namespace(fleet.mount_namespace(m)) for m in fleet.machines
        }
        done = flyctl(project(tmp_path), sim, "deploy", "--yes", fleet=fleet)
        assert done.returncode == 0, done.stderr
        assert fleet.machines == [WEB]  # the worker Machine stopped
        for machine in (WEB, WORKER):  # WEB restarted: none of the old processes is left
            assert old_processes[machine]
            assert not any(running(pid) for pid in old_processes[machine])
        assert fleet.app_pid(WEB) not in (None, old_pid)
        assert read(fleet, WEB, "/data/media/upload.txt") == "kept\n"  # the volume survived
        assert read(fleet, WEB, "/app/scratch") is None  # the root filesystem did not
        owner = fleet.exec(WEB, ["stat", "-c", "%U", "/data/media/upload.txt"]).stdout
        assert owner.strip() == "app"
        api = machines(sim)[WEB]
        state = json.loads(fleet.state_file.read_text())
        assert [m["id"] for m in state["machines"]] == [WEB]
        assert state["machines"][0]["api"]["instance_id"] == api["instance_id"]
        environ = Path(f"/proc/{fleet.app_pid(WEB)}/environ").read_bytes().split(b"\0")
        assert b"FLY_PROCESS_GROUP=app" in environ
        # flyctl reaches the restarted Machine, with its kept host key
        cat = flyctl(tmp_path, sim, "ssh", "console", "-a", APP, "-C", "cat /data/media/upload.txt",
                     fleet=fleet)  # fmt: skip
        assert (cat.returncode, cat.stdout) == (0, "kept\n"), cat.stderr
        run_dir, workdir = fleet.control_socket.parent, fleet.workdir
    assert not run_dir.exists()  # saved volumes, control socket and rootfs: all gone
    assert not [pid for pid in started_from(workdir) if running(pid)]  # no sshd, no app
    assert Path("/proc/self/mountinfo").read_text() == mounts_before


@needs_fleet
def test_after_the_fix_verify_finds_no_split_uploads(tmp_path: Path) -> None:
    cwd = project(tmp_path)
    with SimServer(INCIDENT) as sim, LocalFleet(INCIDENT) as fleet:
        assert flyctl(cwd, sim, "deploy", "-y", fleet=fleet).returncode == 0
        report = verify(
            Settings.load(
                None,
                transport="ssh",
                ssh_config=str(fleet.ssh_config),
                volume_fstypes=["ext4", "tmpfs"],
            ),
            str(cwd / "fly.toml"),
            token=Token(sim.token),
            client_factory=partial(MachinesClient, base_url=sim.url, backoff=0.01),
        )
    assert report.layers["machine"].status == "ran", report.layers["machine"].reason
    assert not [f.id for f in report.findings if f.id.startswith("VG3")]
    assert report.stats["machines_checked"] == 1


@needs_fleet
def test_an_unchanged_deploy_restarts_the_machine_and_keeps_its_files(tmp_path: Path) -> None:
    healthy = load_scenario("healthy")
    cwd = project(tmp_path, healthy.fly_toml)
    with SimServer(healthy) as sim, LocalFleet(healthy) as fleet:
        write_upload(fleet, WEB, "a.txt", "one")
        pid = fleet.app_pid(WEB)
        for _ in range(2):
            done = flyctl(cwd, sim, "deploy", "-y", fleet=fleet)
            assert done.returncode == 0, done.stderr
            assert f"✔ Machine {WEB} [app] update succeeded" in done.stdout
            assert fleet.machines == [WEB]
            assert fleet.app_pid(WEB) != pid
            pid = fleet.app_pid(WEB)
            assert read(fleet, WEB, "/data/media/a.txt") == "one\n"
        assert [v.attached_machine_id for v in volumes(sim).values()] == [WEB]


@needs_fleet
def test_a_failed_deploy_leaves_the_fleet_alone(tmp_path: Path) -> None:
    with SimServer(INCIDENT) as sim, LocalFleet(INCIDENT) as fleet:
        pids = {m: fleet.app_pid(m) for m in fleet.machines}
        done = flyctl(
            project(tmp_path), sim, "deploy", "-y", fleet=fleet, VOLGUARD_SIM_DEPLOY_FAIL="1"
        )
        assert done.returncode == 1
        assert {m: fleet.app_pid(m) for m in fleet.machines} == pids
        assert fleet.machines == [WEB, WORKER]


@needs_fleet
def test_a_destroyed_machines_volume_keeps_its_files_for_the_next_machine(tmp_path: Path) -> None:
    """Remove the worker group, then bring it back: the new worker Machine gets the old
    worker's volume (unattached, same name and region) with the files on it."""
    with SimServer(INCIDENT) as sim, LocalFleet(INCIDENT) as fleet:
        write_upload(fleet, WORKER, "report.pdf", "worker-made")
        assert flyctl(project(tmp_path), sim, "deploy", "-y", fleet=fleet).returncode == 0
        assert WORKER not in fleet.machines
        back = flyctl(project(tmp_path, INCIDENT.fly_toml), sim, "deploy", "-y", fleet=fleet)
        assert back.returncode == 0, back.stderr
        (worker,) = [m for m in fleet.machines if m != WEB]
        assert fleet.plan(worker).volume == WORKER_VOLUME
        assert read(fleet, worker, "/data/media/report.pdf") == "worker-made\n"
        assert read(fleet, WEB, "/data/media/report.pdf") is None  # still not shared


@needs_fleet
def test_sync_is_the_in_process_interface(tmp_path: Path) -> None:
    with SimServer(INCIDENT) as sim, LocalFleet(INCIDENT) as fleet:
        write_upload(fleet, WEB, "x.txt", "x")
        assert fleet.sync(sim) == {"restarted": [], "started": [], "stopped": []}  # in step
        sim.deploy(FIXED.replace('MEDIA_ROOT = "/data/media"', 'MEDIA_ROOT = "/data/uploads"'))
        assert fleet.sync(sim) == {"restarted": [WEB], "started": [], "stopped": [WORKER]}
        assert fleet.plan(WEB).media_root == "/data/uploads"
        assert fleet.exec(WEB, ["test", "-d", "/data/uploads"]).returncode == 0
        assert read(fleet, WEB, "/data/media/x.txt") == "x\n"
