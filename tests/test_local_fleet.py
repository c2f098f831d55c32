"""The local fleet simulator: real namespaces, real sshd, and the flyctl stand-in.

The Machine checks are only as true as the fleet they are tested against, so this pins
the fleet to what a scenario says (a real separate filesystem only where a volume is
mounted, a read-only mount that refuses writes, the app user's real process and
environment) and the stand-in to flyctl's documented behaviour (fly-facts §0.5, §4.1).

The fleet needs root and namespaces: these tests skip elsewhere, with the reason, but
fail under CI, which is root and must run them. The scenario-key tests run everywhere.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import pwd
import shutil
import socket
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from volguard.sim import local_fleet as fleet_module
from volguard.sim.local_fleet import FleetError, LocalFleet, fleet_unavailable
from volguard.sim.local_machine import mount_destination, processes_in_namespace
from volguard.sim.objects import build_machine
from volguard.sim.scenario import (
    ScenarioError,
    load_scenario,
    parse_scenario,
    shipped_scenarios,
)

WHY = fleet_unavailable()
if WHY is not None and os.environ.get("CI"):
    pytest.fail(f"CI must be able to run the local fleet, but: {WHY}", pytrace=False)
needs_fleet = pytest.mark.skipif(WHY is not None, reason=WHY or "")

APP = "test-blue-smoke-97"
WEB = "148e21ea4d3089"  # the app Machine of every shipped scenario
WORKER = "e6482d84693162"  # the worker Machine of incident and worker-media-root-wrong
STOPPED = "a17ab76fb85284"  # machine-stopped's stopped app Machine
RELEASE = "4441ecb5402efb"  # the stopped release_command Machine


# --- scenario keys (no root needed) -------------------------------------------------------


def _scenario(**machine: Any) -> dict[str, Any]:
    return {
        "app": APP,
        "primary_region": "syd",
        "tokens": ["t"],
        "fly_toml": f'app = "{APP}"\n[mounts]\nsource = "data"\ndestination = "/data"\n',
        "machines": [{"id": WEB, "volume": "vol_1", **machine}],
        "volumes": [{"id": "vol_1", "name": "data"}],
    }


def test_machine_keys_default_to_a_healthy_machine() -> None:
    (machine,) = parse_scenario(_scenario()).machines
    assert machine.reachable
    assert machine.mounted
    assert (machine.mount_options, machine.media_root_mode) == ("rw", "0755")
    assert machine.app_user == machine.media_root_owner == "app"


def test_media_root_owner_defaults_to_the_app_user() -> None:
    (machine,) = parse_scenario(_scenario(app_user="web")).machines
    assert machine.media_root_owner == "web"


@pytest.mark.parametrize(
    "bad",
    [
        {"mount_options": "rx"},
        {"reachable": "no"},
        {"mounted": 0},
        {"media_root_mode": "999"},
        {"media_root_mode": "rwxr-xr-x"},
        {"app_user": "Bad User"},
        {"media_root_owner": "app; rm -rf /"},
        {"mount_point": "/data"},  # a typo is an error, not a silent default
    ],
)
def test_machine_keys_are_checked(bad: dict[str, Any]) -> None:
    with pytest.raises(ScenarioError):
        parse_scenario(_scenario(**bad))


def test_not_mounted_needs_a_volume_the_api_shows() -> None:
    data = _scenario(mounted=False)
    del data["machines"][0]["volume"]
    with pytest.raises(ScenarioError, match="mounted = false"):
        parse_scenario(data)


@pytest.mark.parametrize("name", shipped_scenarios())
def test_every_scenario_states_its_machine_findings(name: str) -> None:
    description = load_scenario(name).description.strip()
    assert "Expected platform findings: " in description
    assert description.splitlines()[-1].startswith("Expected machine findings: ")


def test_the_brief_machine_scenarios_are_shipped() -> None:
    assert set(shipped_scenarios()) >= {
        "healthy", "machine-not-mounted", "machine-read-only", "worker-media-root-wrong",
        "root-owned-media", "incident", "machine-stopped", "machine-unreachable",
    }  # fmt: skip


def test_mount_destination_follows_flyctl() -> None:
    """A mount without `processes` reaches the default group only (fly-facts §0.1)."""
    healthy = load_scenario("healthy").fly_config()
    assert mount_destination(healthy, "app") == "/data"
    assert mount_destination(healthy, "worker") is None
    incident = load_scenario("incident").fly_config()
    assert mount_destination(incident, "worker") == "/data"
    no_app = {"processes": {"web": "x", "celery": "y"}, "mounts": {"destination": "/m"}}
    assert mount_destination(no_app, "celery") == "/m"  # sorted first, not "web"
    assert mount_destination(no_app, "web") is None


def test_the_api_shows_the_worker_its_own_media_root() -> None:
    """One scenario, two views: the API's config.env is what the Machine's app runs with."""
    scenario = load_scenario("worker-media-root-wrong")
    config = scenario.fly_config()
    names = {v.id: v.name for v in scenario.volumes}
    env = {
        m.id: build_machine(m, scenario, config, names, datetime.now(UTC))["config"]["env"]
        for m in scenario.machines
    }
    assert env[WEB]["MEDIA_ROOT"] == "/data/media"
    assert env[WORKER]["MEDIA_ROOT"] == "/srv/media"


# --- helpers for the fleet ------------------------------------------------------------


@pytest.fixture(scope="module")
def fleets(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[[str], LocalFleet]]:
    """A scenario's fleet, started once for the module."""
    started: dict[str, LocalFleet] = {}

    def get(name: str) -> LocalFleet:
        if name not in started:
            workdir = tmp_path_factory.mktemp(name)
            started[name] = LocalFleet(name, workdir=workdir).start()
        return started[name]

    yield get
    for fleet in started.values():
        fleet.close()


def ssh(fleet: LocalFleet, *args: str) -> subprocess.CompletedProcess[str]:
    """``ssh -F <the fleet's ssh_config> <args>``: options, the host, the command."""
    argv = ["ssh", "-F", str(fleet.ssh_config), *args]
    return subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)


def flyctl(fleet: LocalFleet, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PATH": f"{fleet.flyctl_dir}{os.pathsep}{os.environ['PATH']}"}
    env.pop("FLY_APP", None)
    return subprocess.run(
        ["flyctl", *args],
        input=stdin,
        capture_output=True,
        text=True,
        env=env,
        cwd="/",
        timeout=30,
        check=False,
    )


def console(fleet: LocalFleet, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return flyctl(fleet, "ssh", "console", "-a", APP, *args, stdin=stdin)


def st_dev(fleet: LocalFleet, machine: str, path: str) -> int:
    done = fleet.exec(machine, ["stat", "-c", "%d", path])
    assert done.returncode == 0, done.stderr
    return int(done.stdout)


def leftovers(workdir: Path) -> list[int]:
    """Pids of any process started from this fleet's workdir (sshd -f <workdir>/…)."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if str(workdir).encode() in cmdline:
            found.append(int(entry.name))
    return found


# --- lifecycle ------------------------------------------------------------------------


@needs_fleet
@pytest.mark.parametrize("name", shipped_scenarios())
def test_each_scenario_starts_and_stops_cleanly(name: str, tmp_path: Path) -> None:
    scenario = load_scenario(name)
    mounts_before = Path("/proc/self/mountinfo").read_text()
    with LocalFleet(scenario, workdir=tmp_path) as fleet:
        assert fleet.machines == [m.id for m in scenario.machines if m.state == "started"]
        namespaces = [fleet.mount_namespace(m) for m in fleet.machines]
        rootfs = [fleet.plan(m).rootfs for m in fleet.machines]
        for machine in fleet.machines:
            assert fleet.exec(machine, ["true"]).returncode == 0
            assert processes_in_namespace(fleet.mount_namespace(machine))
        assert leftovers(tmp_path)
    assert all(processes_in_namespace(ns) == [] for ns in namespaces)  # the mounts went too
    assert leftovers(tmp_path) == []
    assert not any(path.exists() for path in rootfs)
    assert Path("/proc/self/mountinfo").read_text() == mounts_before


def _held_namespaces() -> set[int]:
    """Inodes of the mount namespaces this process holds open (``mnt:[…]`` fds)."""
    held = set()
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            target = os.readlink(f"/proc/self/fd/{fd}")
            if target.startswith("mnt:["):
                held.add(int(target[5:-1]))
    return held


@needs_fleet
def test_a_running_machines_namespace_is_held_until_it_stops(tmp_path: Path) -> None:
    """Held, so its inode is never reused while stop() may still kill by it: with worlds
    running in parallel, another fleet's new Machine once got a stopping Machine's freed
    inode and was killed as its leftover (exit -9, no log output)."""
    with LocalFleet("incident", workdir=tmp_path) as fleet:
        namespaces = {fleet.mount_namespace(m) for m in fleet.machines}
        assert namespaces <= _held_namespaces()
    assert not namespaces & _held_namespaces()
    assert all(processes_in_namespace(ns) == [] for ns in namespaces)


@needs_fleet
def test_an_interrupted_fleet_leaves_nothing(tmp_path: Path) -> None:
    namespaces: list[int] = []

    def interrupted() -> None:
        with LocalFleet("incident", workdir=tmp_path) as fleet:
            namespaces.extend(fleet.mount_namespace(m) for m in fleet.machines)
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        interrupted()
    assert len(namespaces) == 2
    assert all(processes_in_namespace(ns) == [] for ns in namespaces)
    assert leftovers(tmp_path) == []


@needs_fleet
def test_a_machine_that_cannot_start_is_named_with_sshds_words(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = fleet_module.sshd_config
    monkeypatch.setattr(
        fleet_module, "sshd_config", lambda plan, **kw: real(plan, **kw) + "NoSuchOption yes\n"
    )
    with pytest.raises(FleetError) as failure:
        LocalFleet("healthy", workdir=tmp_path, start_timeout=30).start()  # room under load
    assert WEB in str(failure.value)
    assert "NoSuchOption" in str(failure.value)  # sshd's own complaint, from its stderr
    assert leftovers(tmp_path) == []


@needs_fleet
def test_a_scenario_that_would_hide_system_paths_is_refused(tmp_path: Path) -> None:
    scenario = load_scenario("healthy")
    (web, *rest) = scenario.machines
    bad = replace(scenario, machines=(replace(web, env={"MEDIA_ROOT": "/etc"}), *rest))
    with pytest.raises(FleetError, match="/etc"):
        LocalFleet(bad, workdir=tmp_path).start()


# --- SSH ---------------------------------------------------------------------------------


@needs_fleet
def test_ssh_works_with_host_key_checking_on(fleets: Callable[[str], LocalFleet]) -> None:
    fleet = fleets("healthy")
    for host in (WEB, f"{WEB}.vm.{APP}.internal"):  # the id, and Fly's private DNS name
        done = ssh(fleet, host, "hostname")
        assert (done.returncode, done.stdout) == (0, f"{WEB}\n"), done.stderr
    config = fleet.ssh_config.read_text()
    assert "StrictHostKeyChecking yes" in config
    assert f"HostName {fleet.address(WEB)[0]}" in config
    saved = fleet.known_hosts.read_text()
    try:
        fleet.known_hosts.write_text("")
        refused = ssh(fleet, WEB, "true")
    finally:
        fleet.known_hosts.write_text(saved)
    assert refused.returncode == 255
    assert "Host key verification failed" in refused.stderr


HOST_ROOT_SHELL = pwd.getpwnam("root").pw_shell  # read before any fleet starts


@needs_fleet
def test_sessions_run_in_bin_sh_as_hallpass_does(fleets: Callable[[str], LocalFleet]) -> None:
    """fly-facts 4.1: hallpass's shell is /bin/sh, not a login shell. So no dotfile of this
    host's root (a ~/.bashrc running `pyenv init`) runs in a session; the host keeps its own."""
    fleet = fleets("healthy")
    done = ssh(fleet, WEB, "readlink /proc/$$/exe; getent passwd root")
    shell, entry = done.stdout.splitlines()
    assert shell == os.path.realpath("/bin/sh")
    assert entry.endswith(":/bin/sh")
    assert pwd.getpwnam("root").pw_shell == HOST_ROOT_SHELL


@needs_fleet
def test_the_machines_offer_the_go_ssh_key_exchanges(fleets: Callable[[str], LocalFleet]) -> None:
    """The key exchanges of golang.org/x/crypto/ssh (flyctl's SSH library): curve25519
    yes, OpenSSH's sntrup761x25519 (not in that library) no."""
    fleet = fleets("healthy")
    ok = ssh(fleet, "-o", "KexAlgorithms=curve25519-sha256", WEB, "true")
    assert ok.returncode == 0, ok.stderr
    sntrup = "KexAlgorithms=sntrup761x25519-sha512@openssh.com"
    refused = ssh(fleet, "-o", "LogLevel=INFO", "-o", sntrup, WEB, "true")
    assert refused.returncode == 255
    assert "no matching key exchange method" in refused.stderr


@needs_fleet
def test_ssh_config_lists_started_machines_only(fleets: Callable[[str], LocalFleet]) -> None:
    fleet = fleets("machine-stopped")
    assert fleet.machines == [WEB]
    assert f"Host {WEB} " in fleet.ssh_config.read_text()
    assert STOPPED not in fleet.ssh_config.read_text()
    with pytest.raises(KeyError):
        fleet.address(STOPPED)


@needs_fleet
def test_an_unreachable_machine_refuses_ssh_but_runs(fleets: Callable[[str], LocalFleet]) -> None:
    fleet = fleets("machine-unreachable")
    assert f"Host {WEB} " in fleet.ssh_config.read_text()
    done = ssh(fleet, WEB, "true")
    assert done.returncode == 255
    assert "Connection refused" in done.stderr
    assert fleet.app_pid(WEB) is not None  # the Machine runs; only SSH is down
    assert fleet.exec(WEB, ["test", "-d", "/data/media"]).returncode == 0


# --- what is inside a Machine ----------------------------------------------------------


@needs_fleet
@pytest.mark.parametrize(
    ("name", "machine", "separate"),
    [
        ("healthy", WEB, True),
        ("incident", WORKER, True),
        ("machine-not-mounted", WEB, False),
        ("missing-volume", WEB, False),
    ],
)
def test_data_is_a_separate_filesystem_only_when_mounted(
    fleets: Callable[[str], LocalFleet], name: str, machine: str, separate: bool
) -> None:
    fleet = fleets(name)
    assert (st_dev(fleet, machine, "/data") != st_dev(fleet, machine, "/")) is separate
    assert st_dev(fleet, machine, "/") == os.stat("/").st_dev
    if not separate:  # a directory of the root filesystem, not of /tmp
        assert os.stat(fleet.plan(machine).rootfs).st_dev == os.stat("/").st_dev


@needs_fleet
def test_a_read_only_volume_refuses_every_write(fleets: Callable[[str], LocalFleet]) -> None:
    fleet = fleets("machine-read-only")
    probe = "import os; os.open('/data/media/probe', os.O_CREAT | os.O_EXCL | os.O_WRONLY)"
    for user in ("app", "root"):
        done = fleet.exec(WEB, ["python3", "-c", probe], user=user)
        assert done.returncode != 0
        assert f"[Errno {errno.EROFS}]" in done.stderr
    options = fleet.exec(WEB, ["findmnt", "-n", "-o", "OPTIONS", "/data"]).stdout
    assert options.split(",")[0] == "ro"


@needs_fleet
def test_root_owned_media_root_is_not_writable_by_the_app_user(
    fleets: Callable[[str], LocalFleet],
) -> None:
    fleet = fleets("root-owned-media")
    owner = fleet.exec(WEB, ["stat", "-c", "%U %a", "/data/media"]).stdout.split()
    assert owner == ["root", "755"]
    denied = fleet.exec(WEB, ["touch", "/data/media/probe"], user="app")
    assert denied.returncode != 0
    assert "Permission denied" in denied.stderr
    assert fleet.exec(WEB, ["ls", "-A", "/data/media"]).stdout == ""


@needs_fleet
def test_a_healthy_media_root_is_the_app_users(fleets: Callable[[str], LocalFleet]) -> None:
    fleet = fleets("healthy")
    assert fleet.exec(WEB, ["stat", "-c", "%U %a", "/data/media"]).stdout.split() == [
        "app",
        "755",
    ]
    probe = "/data/media/.volguard-test-probe"
    assert fleet.exec(WEB, ["touch", probe], user="app").returncode == 0
    assert fleet.exec(WEB, ["rm", probe]).returncode == 0


@needs_fleet
@pytest.mark.parametrize(
    ("name", "machine", "group", "media_root"),
    [
        ("healthy", WEB, "app", "/data/media"),
        ("incident", WORKER, "worker", "/data/media"),
        ("worker-media-root-wrong", WORKER, "worker", "/srv/media"),
    ],
)
def test_the_app_process_runs_as_the_app_user_with_its_environment(
    fleets: Callable[[str], LocalFleet], name: str, machine: str, group: str, media_root: str
) -> None:
    fleet = fleets(name)
    pid = fleet.app_pid(machine)
    assert pid is not None
    app = pwd.getpwnam("app")
    status = Path(f"/proc/{pid}/status").read_text().splitlines()
    uids = next(line for line in status if line.startswith("Uid:")).split()[1:]
    assert uids == [str(app.pw_uid)] * 4  # real, effective, saved, fs: no way back to root
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    env = dict(item.decode().split("=", 1) for item in raw if item)
    assert env["MEDIA_ROOT"] == media_root
    assert env["FLY_PROCESS_GROUP"] == group
    assert (env["FLY_MACHINE_ID"], env["FLY_APP_NAME"], env["FLY_REGION"]) == (machine, APP, "syd")
    assert env["PRIMARY_REGION"] == "syd"
    assert os.readlink(f"/proc/{pid}/cwd") == "/app"
    if group == "worker":
        assert Path(f"/proc/{pid}/comm").read_text().strip() == "worker"
    inside = fleet.exec(machine, ["stat", "-c", "%U", media_root]).stdout.strip()
    assert inside == "app"


@needs_fleet
def test_the_web_machine_serves_http(fleets: Callable[[str], LocalFleet]) -> None:
    fleet = fleets("healthy")
    address, _ = fleet.address(WEB)
    with urllib.request.urlopen(f"http://{address}:8000/", timeout=5) as reply:
        assert WEB in reply.read().decode()


@needs_fleet
def test_the_workers_media_root_is_on_its_root_filesystem(
    fleets: Callable[[str], LocalFleet],
) -> None:
    fleet = fleets("worker-media-root-wrong")
    assert st_dev(fleet, WORKER, "/srv/media") == st_dev(fleet, WORKER, "/")
    assert st_dev(fleet, WORKER, "/data") != st_dev(fleet, WORKER, "/")
    probe = "/srv/media/.volguard-test-probe"
    assert fleet.exec(WORKER, ["touch", probe], user="app").returncode == 0
    try:  # the worker's own root filesystem: not the host's /srv/media, not the web's
        assert not Path(probe).exists()
        assert fleet.exec(WEB, ["test", "-e", probe]).returncode == 1
    finally:
        fleet.exec(WORKER, ["rm", "-f", probe])


@needs_fleet
def test_app_and_worker_volumes_are_not_shared(fleets: Callable[[str], LocalFleet]) -> None:
    """The incident, empirically: what the web Machine saves, the worker never sees."""
    fleet = fleets("incident")
    probe = "/data/media/.volguard-test-shared"
    assert fleet.exec(WEB, ["touch", probe], user="app").returncode == 0
    try:
        assert fleet.exec(WORKER, ["test", "-e", probe]).returncode == 1
    finally:
        fleet.exec(WEB, ["rm", "-f", probe])
    assert fleet.exec(WEB, ["ls", "-A", "/data/media"]).stdout == ""


# --- the flyctl stand-in ---------------------------------------------------------------


@needs_fleet
def test_flyctl_runs_the_command_without_a_shell(fleets: Callable[[str], LocalFleet]) -> None:
    done = console(fleets("incident"), "--machine", WEB, "-C", "ls && pwd")
    assert done.returncode == 1
    assert "ls: cannot access '&&'" in done.stderr
    assert done.stderr.splitlines()[-1] == "Error: ssh shell: Process exited with status 2"
    assert done.stdout == ""


@needs_fleet
def test_flyctl_collapses_the_exit_status(fleets: Callable[[str], LocalFleet]) -> None:
    done = console(fleets("incident"), "--machine", WEB, "-C", "sh -c 'exit 3'")
    assert done.returncode == 1
    assert "Error: ssh shell: Process exited with status 3" in done.stderr.splitlines()
    assert done.stdout == ""


@needs_fleet
def test_flyctl_keeps_stdout_clean_with_machine(fleets: Callable[[str], LocalFleet]) -> None:
    fleet = fleets("incident")
    done = console(fleet, "--machine", WORKER, "-C", "sh -c 'hostname; echo \"$1\"' sh 'two words'")
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"{WORKER}\ntwo words\n"
    address, _ = fleet.address(WORKER)
    assert done.stderr == f"Connecting to {address}... complete\n"
    quiet = console(fleet, "--machine", WORKER, "-q", "-C", "true")
    assert (quiet.returncode, quiet.stdout, quiet.stderr) == (0, "", "")


@needs_fleet
def test_flyctl_says_which_machine_on_stdout_without_machine(
    fleets: Callable[[str], LocalFleet],
) -> None:
    done = console(fleets("incident"), "-C", "hostname")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [f"No machine specified, using {WEB} in region syd", WEB]
    single = console(fleets("healthy"), "-C", "hostname")  # one started Machine: no line
    assert single.stdout == f"{WEB}\n"


@needs_fleet
def test_flyctl_passes_stdin_and_switches_user(fleets: Callable[[str], LocalFleet]) -> None:
    fleet = fleets("incident")
    piped = console(fleet, "--machine", WEB, "-C", "cat", stdin="uploaded\nbytes\n")
    assert piped.stdout == "uploaded\nbytes\n"
    who = console(fleet, "--machine", WEB, "-u", "app", "-C", "id -un")
    assert who.stdout == "app\n"
    shell = console(fleet, "--machine", WEB, stdin="echo $((6 * 7))\n")  # no -C: /bin/sh
    assert shell.stdout == "42\n"


@needs_fleet
def test_flyctl_cannot_select_a_stopped_machine(fleets: Callable[[str], LocalFleet]) -> None:
    fleet = fleets("machine-stopped")
    for machine in (STOPPED, RELEASE):
        done = console(fleet, "--machine", machine, "-C", "true")
        assert done.returncode == 1
        assert done.stderr == f'Error: --machine="{machine}" not found/started\n'
    only = console(fleet, "-C", "hostname")  # the stopped one does not count
    assert only.stdout == f"{WEB}\n"


@needs_fleet
def test_flyctl_reports_an_unreachable_machine(fleets: Callable[[str], LocalFleet]) -> None:
    done = console(fleets("machine-unreachable"), "--machine", WEB, "-C", "true")
    assert done.returncode == 1
    assert done.stderr.startswith("Error: ssh shell: ")
    assert "connection refused" in done.stderr
    assert done.stdout == ""


@needs_fleet
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["ssh", "console", "-a", "other-app", "-C", "true"], "Could not find App"),
        (["ssh", "console", "-a", APP, "-s"], "TTY"),
        (["ssh", "console", "-a", APP, "-s", "--machine", WEB], "can't be used with"),
        (["frobnicate"], "unknown command"),
        (["ssh", "console", "-a", APP, "-g", "worker", "-C", "true"], "no VMs in process group"),
    ],
)
def test_flyctl_errors_exit_1(
    fleets: Callable[[str], LocalFleet], args: list[str], message: str
) -> None:
    done = flyctl(fleets("healthy"), *args)
    assert done.returncode == 1
    assert done.stderr.startswith("Error: ")
    assert message in done.stderr
    assert done.stdout == ""


@needs_fleet
def test_flyctl_machines_list_json(fleets: Callable[[str], LocalFleet]) -> None:
    fleet = fleets("machine-stopped")
    done = flyctl(fleet, "machines", "list", "--json", "-a", APP)
    assert done.returncode == 0, done.stderr
    machines = json.loads(done.stdout)
    assert [m["id"] for m in machines] == [WEB, STOPPED, RELEASE]  # release ones included
    assert [m["state"] for m in machines] == ["started", "stopped", "stopped"]
    groups = [m["config"]["metadata"]["fly_process_group"] for m in machines]
    assert groups == ["app", "app", "fly_app_release_command"]
    assert all(m["region"] == "syd" and m["name"] for m in machines)


@needs_fleet
def test_flyctl_with_no_started_machine(tmp_path: Path) -> None:
    scenario = load_scenario("machine-stopped")
    stopped = tuple(replace(m, state="stopped") for m in scenario.machines)
    with LocalFleet(replace(scenario, machines=stopped), workdir=tmp_path) as fleet:
        assert fleet.machines == []
        done = console(fleet, "-C", "true")
    assert done.returncode == 1
    assert done.stderr.startswith(f"Error: app {APP} has no started VMs.")


@needs_fleet
def test_the_stand_in_is_a_small_quoted_script(fleets: Callable[[str], LocalFleet]) -> None:
    fleet = fleets("healthy")
    script = (fleet.flyctl_dir / "flyctl").read_text()
    assert script.startswith("#!/bin/sh\n")
    assert '"$@"' in script
    assert os.access(fleet.flyctl_dir / "flyctl", os.X_OK)
    assert shutil.which("flyctl", path=str(fleet.flyctl_dir)) == str(fleet.flyctl_dir / "flyctl")


@needs_fleet
def test_fleet_addresses_are_loopback_and_answer(fleets: Callable[[str], LocalFleet]) -> None:
    fleet = fleets("incident")
    addresses = [fleet.address(m) for m in fleet.machines]
    assert len(set(addresses)) == len(addresses)
    for host, port in addresses:
        assert host.startswith("127.")
        assert port == 2222
        deadline = time.monotonic() + 5
        with socket.create_connection((host, port), timeout=deadline - time.monotonic()) as s:
            assert s.recv(64).startswith(b"SSH-2.0-OpenSSH")
