"""The local fleet: each started Machine of a scenario as a real local "Machine" with sshd.

Fly cannot be reached from here, and the Machine checks (VG300–VG311) must be proved
against real mounts, users, processes and SSH, so `LocalFleet` builds what the platform
would run for a scenario — the same scenario file that drives the API simulator — on this
host, and tears it down again::

    why = fleet_unavailable()            # None, or why this host cannot (for pytest.skip)
    with LocalFleet("incident", workdir=tmp_path) as fleet:
        subprocess.run(["ssh", "-F", fleet.ssh_config, fleet.machines[0], "true"])
        env = {**os.environ, "PATH": f"{fleet.flyctl_dir}:{os.environ['PATH']}"}
        fleet.exec(machine_id, ["ls", "/data/media"])

Deploys: with FLY_FLAPS_BASE_URL and FLY_API_TOKEN of a running SimServer in the
environment, ``flyctl deploy -c fly.toml -y`` (the stand-in) deploys to the API
simulator and makes the fleet follow through its control socket: restarted Machines run
the new config on the same volume, with the volume's files kept. In-process:
``sim.deploy(fly_toml, yes=True); fleet.sync(sim)`` (see `LocalFleet.sync`).

Recovery (#10): ``fleet.follow(sim)`` makes the fleet follow the API simulator by itself,
before each answer: a snapshot keeps the volume's files as they are when it is asked for,
a fork (or a restore) starts with its source's files (or the snapshot's), a Machine made
through the API (a temporary one) starts as a namespace with sshd like the others, in
ssh_config, and a destroyed one stops. A volume's files live in a host directory per
volume while no Machine runs it (`volume_dir`, which tests may fill with `seed_volume`).

Each Machine is described in `volguard.sim.local_machine`; this module does what concerns the
host and the fleet as a whole: SSH keys, ssh_config and known_hosts (host-key checking
stays on), addresses on loopback, the flyctl stand-in, and sharing the host safely with
other fleets running at the same time (other test sessions): address slots and
the shared mountpoint directories are guarded by locks under /var/lib/volguard-sim.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import functools
import json
import os
import pwd
import re
import secrets
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any, TextIO

from volguard.sim.local_machine import (
    APP_PORT,
    SSH_PORT,
    SSHD,
    MachineError,
    MachinePlan,
    MachineProcess,
    config_path,
    plan_machine,
    sshd_config,
)
from volguard.sim.objects import build_machine
from volguard.sim.scenario import MachineSpec, Scenario, load_scenario

#: Host state shared by all fleets. On the root filesystem on purpose: a Machine whose
#: volume is not mounted must see its mount path on the same device as "/" (its ephemeral
#: root filesystem), and /tmp may be another filesystem.
STATE_DIR = Path("/var/lib/volguard-sim")
#: Fleets take 127.0.<slot>.<n>; loopback answers for all of 127.0.0.0/8 on Linux.
SLOTS = range(77, 255)
MAX_MACHINES = 250
START_TIMEOUT = 20.0
TOOLS = (
    "unshare", "nsenter", "mount", "setpriv", "runuser", "useradd", "ssh", "ssh-keygen", "env",
    "sleep",
)  # fmt: skip
_RUN_ID = re.compile(r"\d+-[0-9a-f]{6}")


class FleetError(RuntimeError):
    """The fleet could not be built on this host."""


@functools.cache
def fleet_unavailable() -> str | None:
    """None when this host can run a fleet; otherwise a one-line reason (for a skip)."""
    if not sys.platform.startswith("linux"):
        return "the local fleet needs Linux namespaces"
    if os.geteuid() != 0:
        return "the local fleet needs root (it mounts filesystems and creates namespaces)"
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if not os.access(SSHD, os.X_OK):
        missing.append(SSHD)
    if missing:
        return f"the local fleet needs {', '.join(missing)} (apt-get install openssh-server …)"
    if system_python() is None:
        return "the local fleet needs a system python3 for the Machines' app processes"
    existing = next(p for p in (STATE_DIR, *STATE_DIR.parents) if p.exists())
    if os.stat(existing).st_dev != os.stat("/").st_dev:
        return f"{existing} is not on the root filesystem"
    probe = ["unshare", "--mount", "--uts", "--pid", "--fork", "--mount-proc", "--", "true"]
    try:
        done = subprocess.run(probe, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"cannot create namespaces: {e}"
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no reason given"])[-1]
        return f"cannot create namespaces here: {last}"
    return None


def system_python() -> str | None:
    """The Python outside any virtualenv: the app process must not need volguard."""
    for candidate in (Path("/usr/bin/python3"), Path(sys.base_prefix) / "bin" / "python3"):
        if os.access(candidate, os.X_OK):
            return str(candidate)
    return None


class LocalFleet:
    """The started Machines of a scenario, each a namespace with its own sshd.

    Use it as a context manager; it is also torn down at interpreter exit. Start it from
    a thread that outlives it: its Machines die with the thread that started them, so
    that a test process killed midway leaves nothing running.

    Deploys. The fleet follows the API simulator: `sync(source)` makes the running
    Machines what the API says — a Machine whose `instance_id` changed (a deploy updated
    it) restarts with its new config (env, MEDIA_ROOT, mounts, process), a Machine that
    is no longer `started` (destroyed, stopped) stops, and a new started Machine starts.
    `flyctl deploy` (the stand-in in `flyctl_dir`) calls it by itself, through the
    fleet's control socket (see `control_socket`), so a deploy alone is enough; tests and
    callers that deploy in-process (`SimServer.deploy`) call ``fleet.sync(sim)``.

    Volumes outlive restarts. A volume is a fresh tmpfs in each Machine's namespace, so
    before a Machine stops for a sync its volume's files are copied out (``cp -a``, owners
    and modes kept) to a host directory per volume id, under this run's directory; a
    Machine that mounts that volume later gets them copied into its tmpfs at setup. The
    ephemeral root filesystem does not survive: files written outside the volume are
    gone after a restart, as on Fly. `close()` removes the saved volumes with the rest.
    """

    def __init__(
        self,
        scenario: Scenario | str | Path,
        *,
        workdir: Path | None = None,
        start_timeout: float = START_TIMEOUT,
    ) -> None:
        self.scenario = scenario if isinstance(scenario, Scenario) else load_scenario(scenario)
        self._given_workdir = workdir
        self._start_timeout = start_timeout
        self._workdir: Path | None = None
        self._procs: dict[str, MachineProcess] = {}
        self._host: _Host | None = None
        self._run_dir: Path | None = None
        self._started = False
        self._closed = False
        self._lock = threading.RLock()  # sync() from a caller and from the control socket
        self._specs: dict[str, MachineSpec] = {}  # what the API cannot show, per Machine
        self._api: dict[str, dict[str, Any]] = {}  # each Machine as the API shows it
        self._fly_config: dict[str, Any] = {}  # the app's current fly.toml
        self._numbers: dict[str, int] = {}  # Machine id -> last octet of its address
        self._slot = 0
        self._users: dict[str, tuple[int, int]] = {}
        self._python = ""
        self._control: _Control | None = None

    # -- lifecycle ------------------------------------------------------------------------

    def __enter__(self) -> LocalFleet:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def start(self) -> LocalFleet:
        if self._started:
            raise FleetError("a LocalFleet starts once")
        why = fleet_unavailable()
        if why is not None:
            raise FleetError(why)
        self._started = True
        atexit.register(self.close)
        try:
            self._prepare()
            for proc in self._procs.values():
                proc.start()
            deadline = time.monotonic() + self._start_timeout
            for proc in self._procs.values():
                proc.wait_ready(deadline)
            self._control = _Control(self.control_socket, self._on_request)
        except BaseException as e:  # KeyboardInterrupt too: leave nothing behind
            self.close()
            if isinstance(e, MachineError):
                raise FleetError(str(e)) from e
            raise
        return self

    def close(self) -> None:
        """Stop the control socket and every Machine (their mounts go with their
        namespaces), then remove the per-run directories (saved volumes included), and
        the mountpoints this fleet created once no other fleet uses them. Safe to call
        twice."""
        if self._closed or not self._started:
            return
        self._closed = True
        atexit.unregister(self.close)
        try:
            if self._control is not None:
                self._control.close()  # waits for a sync in progress
            with self._lock:
                for proc in self._procs.values():
                    proc.stop()
        finally:
            if self._run_dir is not None:
                shutil.rmtree(self._run_dir, ignore_errors=True)
            if self._host is not None:
                self._host.release()
            if self._given_workdir is None and self._workdir is not None:
                shutil.rmtree(self._workdir, ignore_errors=True)

    # -- what tests and transports use --------------------------------------------------

    @property
    def workdir(self) -> Path:
        return self._require(self._workdir)

    @property
    def ssh_config(self) -> Path:
        """An ssh_config with one `Host <machine id>` block per started Machine."""
        return self.workdir / "ssh_config"

    @property
    def known_hosts(self) -> Path:
        """The real host keys of the Machines' sshd (host-key checking stays on)."""
        return self.workdir / "known_hosts"

    @property
    def identity(self) -> Path:
        """The client's private key (ed25519)."""
        return self.workdir / "id_ed25519"

    @property
    def flyctl_dir(self) -> Path:
        """A directory with the `flyctl` stand-in: put it first on PATH."""
        return self.workdir / "bin"

    @property
    def state_file(self) -> Path:
        """What the flyctl stand-in reads: the app, its Machines, the control socket."""
        return self.workdir / "state.json"

    @property
    def control_socket(self) -> Path:
        """A Unix socket (root only) on which the fleet takes one JSON line,
        ``{"op": "sync", "state": <the /__sim/state JSON, or a deploy's answer>}``, runs
        `sync` and answers one JSON line: ``{"ok": true, "restarted": [...],
        "started": [...], "stopped": [...]}`` or ``{"ok": false, "error": "..."}``.
        `flyctl deploy` uses it; its path is in state.json as `control`."""
        return self._require(self._run_dir) / "control.sock"

    @property
    def machines(self) -> list[str]:
        """Ids of the Machines running now (in the API's order)."""
        return list(self._procs)

    def address(self, machine_id: str) -> tuple[str, int]:
        """Where the Machine's sshd listens (nothing answers if it is unreachable)."""
        plan = self._proc(machine_id).plan
        return plan.address, plan.port

    def plan(self, machine_id: str) -> MachinePlan:
        """How the Machine was built: mounts, MEDIA_ROOT, users, environment."""
        return self._proc(machine_id).plan

    def exec(
        self, machine_id: str, argv: Sequence[str], user: str = "root", **kwargs: Any
    ) -> subprocess.CompletedProcess[Any]:
        """Run argv inside the Machine (not over SSH), for test assertions."""
        return self._proc(machine_id).exec(argv, user=user, **kwargs)

    def app_pid(self, machine_id: str) -> int | None:
        """Host pid of the Machine's app process."""
        return self._proc(machine_id).app_pid()

    def mount_namespace(self, machine_id: str) -> int:
        """Inode of the Machine's mount namespace (to prove later that it is gone)."""
        return self._require(self._proc(machine_id).mnt_ns)

    def sync(self, source: Any) -> dict[str, list[str]]:
        """Make the running Machines what the API simulator says, after a deploy.

        `source`: a SimServer, a SimState, or their JSON (GET /__sim/state, or the answer
        of POST /__sim/deploy): "machines" (each as the API shows it) and, optionally,
        "fly_toml" (the app's config now). A started Machine whose instance_id changed
        restarts with its new plan, keeping its volume's files; one no longer started
        stops (its volume's files are kept for the next Machine that mounts it); a new
        started one starts. Answers the ids restarted, started and stopped. Raises
        FleetError if a Machine does not come up; call it from a thread that outlives the
        fleet (the Machines it starts die with that thread).
        """
        data = _api_view(source)
        with self._lock:
            self._require(self._run_dir)
            if data.get("app", self.scenario.app) != self.scenario.app:
                raise FleetError(f"that state is of app {data['app']}, not {self.scenario.app}")
            if data.get("fly_toml") is not None:
                self._fly_config = tomllib.loads(str(data["fly_toml"]))
            listed = [m for m in data["machines"] if m.get("state") != "destroyed"]
            wanted = {m["id"]: m for m in listed if m.get("state") == "started"}
            done: dict[str, list[str]] = {"restarted": [], "started": [], "stopped": []}
            for mid in list(self._procs):
                api = wanted.get(mid)
                if api is not None and api.get("instance_id") == self._api[mid].get("instance_id"):
                    continue
                proc = self._procs.pop(mid)
                self._save_volume(proc)
                proc.stop()
                done["restarted" if api is not None else "stopped"].append(mid)
                if api is None:
                    del self._numbers[mid]
            fresh: list[MachineProcess] = []
            try:
                for mid, api in wanted.items():
                    if mid in self._procs:
                        continue
                    spec = self._spec_for(api)
                    if mid not in self._numbers:
                        self._numbers[mid] = self._free_number()
                        done["started"].append(mid)
                    proc = self._build(spec, api, keep_keys=mid in done["restarted"])
                    self._procs[mid] = proc
                    fresh.append(proc)
                    proc.start()
                deadline = time.monotonic() + self._start_timeout
                for proc in fresh:
                    proc.wait_ready(deadline)
            except MachineError as e:
                raise FleetError(str(e)) from e
            finally:
                self._api = {m["id"]: m for m in listed}
                order = list(self._api)
                self._procs = dict(sorted(self._procs.items(), key=lambda i: order.index(i[0])))
                self._write_host_files()
            return done

    # -- following the API simulator (#10) ----------------------------------------------

    def follow(self, sim: Any) -> None:
        """Follow `sim` (a SimServer or SimState) from now on: each event its API calls
        make (see `SimState.add_listener`) is applied here before the API answers.
        Machine starts run on the control socket's thread, which outlives them."""
        state = getattr(sim, "state", sim)
        state.add_listener(self._follow_event)

    def volume_dir(self, volume_id: str) -> Path:
        """The host directory holding the files of a volume no running Machine mounts."""
        return self._volume_store(volume_id)

    def seed_volume(
        self, volume_id: str, files: Mapping[str, bytes], *, owner: str = "app"
    ) -> None:
        """Put files (relative path -> bytes) on a volume no running Machine mounts, owned
        by `owner`, as if an earlier Machine had written them."""
        with self._lock:
            if any(p.plan.volume == volume_id and p.plan.separate_fs for p in self._procs.values()):
                raise FleetError(f"volume {volume_id} is mounted by a running Machine")
            uid, gid = self._user(owner)
            root = self._volume_store(volume_id)
            root.mkdir(parents=True, exist_ok=True)
            for name, data in files.items():
                path = root / name
                if root not in path.resolve().parents:
                    raise FleetError(f"{name!r} is not inside the volume")
                for parent in reversed(path.relative_to(root).parents[:-1]):
                    (root / parent).mkdir(exist_ok=True)
                    os.chown(root / parent, uid, gid)
                path.write_bytes(data)
                os.chown(path, uid, gid)

    def _follow_event(self, event: Mapping[str, Any]) -> None:
        """One SimState event; a failure is raised to the API request (a 500 there)."""
        op = event.get("op")
        if op == "sync":  # Machines die with the thread that starts them: the control one
            reply = _send_control(self.control_socket, {"op": "sync", "state": event["state"]})
            if not reply.get("ok"):
                raise FleetError(f"the fleet did not follow: {reply.get('error')}")
            return
        with self._lock:
            if op == "snapshot":
                self._copy_contents(self._current_files(event["volume"]), self._snapshot_store(
                    event["snapshot"]))  # fmt: skip
            elif op == "fork":
                source = self._current_files(event["source_volume_id"])
                self._copy_contents(source, self._volume_store(event["volume"]))
            elif op == "restore":
                store = self._snapshot_store(event["snapshot_id"])
                self._copy_contents(store if store.is_dir() else None,
                                    self._volume_store(event["volume"]))  # fmt: skip
            elif op == "drop_volume":
                shutil.rmtree(self._volume_store(event["volume"]), ignore_errors=True)

    def _current_files(self, volume_id: str) -> Path | None:
        """Where a volume's files are now: in the tmpfs of the Machine running it (seen
        through /proc/<init>/root), else its host directory; None: it has none."""
        for proc in self._procs.values():
            plan = proc.plan
            if plan.volume == volume_id and plan.separate_fs and proc.init_pid:
                path = Path(f"/proc/{proc.init_pid}/root") / plan.mount_path.lstrip("/")
                if path.is_dir():
                    return path
        store = self._volume_store(volume_id)
        return store if store.is_dir() else None

    def _snapshot_store(self, snapshot_id: str) -> Path:
        if not re.fullmatch(r"[A-Za-z0-9_-]+", snapshot_id):
            raise FleetError(f"unexpected snapshot id {snapshot_id!r}")
        return self._require(self._run_dir) / "snapshots" / snapshot_id

    def _copy_contents(self, source: Path | None, target: Path) -> None:
        """`cp -a` source's files into a fresh `target` (owners, modes, times kept); an
        empty directory when there is no source. The source is only read."""
        staging = target.with_name(f"{target.name}.copying")
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        if source is not None:
            done = subprocess.run(
                ["cp", "-a", f"{source}/.", f"{staging}/"], capture_output=True, text=True,
                check=False,
            )  # fmt: skip
            if done.returncode != 0:
                shutil.rmtree(staging, ignore_errors=True)
                raise FleetError(f"could not copy {source}: {done.stderr.strip()}")
        shutil.rmtree(target, ignore_errors=True)
        staging.rename(target)

    def _proc(self, machine_id: str) -> MachineProcess:
        try:
            return self._procs[machine_id]
        except KeyError:
            raise KeyError(f"{machine_id} is not a started Machine of this fleet") from None

    def _require(self, value: Any) -> Any:
        if value is None or self._closed:
            raise FleetError("the fleet is not running")
        return value

    # -- building -----------------------------------------------------------------------

    def _prepare(self) -> None:
        scenario = self.scenario
        started = [m for m in scenario.machines if m.state == "started"]
        if len(started) > MAX_MACHINES:
            raise FleetError(f"at most {MAX_MACHINES} started Machines per fleet")
        workdir = self._given_workdir or Path(tempfile.mkdtemp(prefix="volguard-fleet-"))
        workdir = workdir.resolve()
        _check_config_path(workdir)
        workdir.mkdir(parents=True, exist_ok=True)
        self._workdir = workdir
        self._host = _Host()
        self._fly_config = scenario.fly_config()
        names = {v.id: v.name for v in scenario.volumes}
        now = datetime.now(UTC)
        self._specs = {m.id: m for m in scenario.machines}
        self._api = {
            m.id: build_machine(m, scenario, self._fly_config, names, now)
            for m in scenario.machines
            if m.state != "destroyed"
        }
        for name in sorted({m.app_user for m in started} | {m.media_root_owner for m in started}):
            self._user(name)
        self._slot = self._host.claim_slot(len(started))
        self._run_dir = self._host.run_dir()
        python = system_python()
        assert python is not None  # fleet_unavailable() said so
        self._python = python
        _keygen(self.identity, "volguard-fleet-client")
        authorized = workdir / "authorized_keys"
        authorized.write_text(self.identity.with_suffix(".pub").read_text())
        for n, spec in enumerate(started, start=1):
            self._numbers[spec.id] = n
            self._procs[spec.id] = self._build(spec, self._api[spec.id])
        self._write_host_files()
        self._write_flyctl()

    def _build(
        self, spec: MachineSpec, api: dict[str, Any], *, keep_keys: bool = False
    ) -> MachineProcess:
        """One Machine, ready to start: its files, root filesystem directories, plan.

        A restarted Machine (`keep_keys`) keeps its host key and logs; its root
        filesystem starts empty again, as an ephemeral one does."""
        files = self.workdir / "machines" / spec.id
        if keep_keys:
            for stale in ("ready", "app.pid", "sshd.pid"):
                (files / stale).unlink(missing_ok=True)
        else:
            if files.exists():
                shutil.rmtree(files)  # a reused workdir: stale logs and markers
            files.mkdir(parents=True)
        rootfs = self._require(self._run_dir) / spec.id
        if rootfs.exists():
            shutil.rmtree(rootfs)
        mounts = (api.get("config") or api.get("incomplete_config") or {}).get("mounts") or []
        volume = mounts[0].get("volume") if mounts else None
        store = self._volume_store(volume) if volume else None
        plan = plan_machine(
            spec,
            self.scenario,
            address=f"127.0.{self._slot}.{self._numbers[spec.id]}",
            files=files,
            rootfs=rootfs,
            python=self._python,
            users={spec.app_user: self._user(spec.app_user),
                   spec.media_root_owner: self._user(spec.media_root_owner)},
            api=api,
            fly_config=self._fly_config,
            volume_store=store if store is not None and store.is_dir() else None,
        )  # fmt: skip
        host = self._require(self._host)
        if plan.reachable:
            host.ensure_dir("/run/sshd")  # sshd's privilege separation directory
        for path in plan.host_mountpoints:
            host.ensure_dir(path)
        for path in plan.rootfs_dirs:
            path.mkdir(parents=True, mode=0o755)
        index = plan.rootfs / "app" / "index.html"  # what the web server serves
        if index.parent.is_dir():
            index.write_text(f"volguard simulated Machine {spec.id} ({spec.group})\n")
        if plan.reachable:
            key = files / "ssh_host_ed25519_key"
            if not (keep_keys and key.exists()):
                _keygen(key, f"{spec.id}-host")
            authorized = self.workdir / "authorized_keys"
            (files / "sshd_config").write_text(sshd_config(plan, authorized_keys=authorized))
        return MachineProcess(plan)

    def _spec_for(self, api: Mapping[str, Any]) -> MachineSpec:
        """The Machine as the API now shows it, with what the API cannot show (users,
        modes, reachable, mounted) kept from the scenario; a new Machine is healthy."""
        config = api.get("config") or api.get("incomplete_config") or {}
        metadata = config.get("metadata") or {}
        group = metadata.get("fly_process_group") or metadata.get("process_group") or "app"
        mounts = config.get("mounts") or []
        base = self._specs.get(api["id"]) or MachineSpec(id=api["id"], region=api["region"])
        spec = replace(
            base,
            group=str(group),
            region=str(api.get("region", base.region)),
            state=str(api.get("state", "started")),
            host_status=str(api.get("host_status", "ok")),
            volume=str(mounts[0]["volume"]) if mounts and mounts[0].get("volume") else None,
            mount_path=str(mounts[0].get("path") or base.mount_path) if mounts else "/data",
            env=None,
            cmd=None,
        )
        self._specs[spec.id] = spec
        return spec

    def _user(self, name: str) -> tuple[int, int]:
        if name not in self._users:
            self._users[name] = _ensure_user(name)
        return self._users[name]

    def _free_number(self) -> int:
        """The lowest free last octet of this fleet's slot whose ports are free."""
        taken = set(self._numbers.values())
        for n in range(1, 255):
            address = f"127.0.{self._slot}.{n}"
            if n not in taken and all(_port_free(address, p) for p in (SSH_PORT, APP_PORT)):
                return n
        raise FleetError(f"no free address left in 127.0.{self._slot}.*")

    def _volume_store(self, volume_id: str) -> Path:
        """Where a volume's files wait between two Machines (or two boots)."""
        if not re.fullmatch(r"[A-Za-z0-9_-]+", volume_id):
            raise FleetError(f"unexpected volume id {volume_id!r}")
        return self._require(self._run_dir) / "volumes" / volume_id

    def _save_volume(self, proc: MachineProcess) -> None:
        """Copy a running Machine's volume out of its tmpfs (through /proc/<init>/root,
        the namespace's own view), replacing what was saved before."""
        plan = proc.plan
        if not (plan.separate_fs and plan.volume and proc.init_pid):
            return  # no volume, or "not mounted": its files are on the ephemeral rootfs
        source = Path(f"/proc/{proc.init_pid}/root") / plan.mount_path.lstrip("/")
        if not source.is_dir():
            return  # the Machine died: nothing to save
        store = self._volume_store(plan.volume)
        saving = store.with_name(f"{store.name}.saving")
        shutil.rmtree(saving, ignore_errors=True)
        saving.mkdir(parents=True)
        done = subprocess.run(
            ["cp", "-a", f"{source}/.", f"{saving}/"], capture_output=True, text=True, check=False
        )
        if done.returncode != 0:
            shutil.rmtree(saving, ignore_errors=True)
            raise FleetError(
                f"could not save volume {plan.volume} of Machine {plan.id}: {done.stderr.strip()}"
            )
        shutil.rmtree(store, ignore_errors=True)
        saving.rename(store)

    def _on_request(self, request: Mapping[str, Any]) -> dict[str, Any]:
        """One control-socket request (see `control_socket`)."""
        if request.get("op") != "sync" or not isinstance(request.get("state"), Mapping):
            return {"ok": False, "error": 'expected {"op": "sync", "state": {...}}'}
        try:
            return {"ok": True, **self.sync(request["state"])}
        except (FleetError, KeyError, TypeError, ValueError) as e:
            return {"ok": False, "error": str(e)}

    def _write_host_files(self) -> None:
        self.known_hosts.write_text(self._known_hosts())
        self.ssh_config.write_text(self._ssh_config())
        self.state_file.write_text(json.dumps(self._state(), indent=2) + "\n")

    def _known_hosts(self) -> str:
        lines = []
        for proc in self._procs.values():
            plan = proc.plan
            if plan.reachable:
                key = (plan.files / "ssh_host_ed25519_key.pub").read_text().split()[:2]
                lines.append(f"[{plan.address}]:{plan.port} {' '.join(key)}")
        return "".join(f"{line}\n" for line in lines)

    def _ssh_config(self) -> str:
        out = [f"# volguard local fleet: scenario {self.scenario.name}, app {self.scenario.app}"]
        for proc in self._procs.values():
            plan = proc.plan
            out += [
                f"Host {plan.id}{_dns_alias(plan)}",
                f"  HostName {plan.address}",
                f"  Port {plan.port}",
                "  User root",
                f"  IdentityFile {config_path(self.identity)}",
                f"  UserKnownHostsFile {config_path(self.known_hosts)}",
                "  GlobalKnownHostsFile /dev/null",
                "  StrictHostKeyChecking yes",
                "  UpdateHostKeys no",
                "  CheckHostIP no",
                "  IdentitiesOnly yes",
                "  BatchMode yes",
                "  ConnectTimeout 3",
                "  LogLevel ERROR",
            ]
        return "\n".join(out) + "\n"

    def _state(self) -> dict[str, Any]:
        """state.json: each Machine as the API shows it, plus where its sshd is."""
        machines = []
        for mid, api in self._api.items():
            config = api.get("config") or api.get("incomplete_config") or {}
            metadata = config.get("metadata") or {}
            proc = self._procs.get(mid)
            machines.append(
                {
                    "id": mid,
                    "name": api["name"],
                    "group": metadata.get("fly_process_group")
                    or metadata.get("process_group")
                    or "app",
                    "region": api["region"],
                    "state": api["state"],
                    "private_ip": api["private_ip"],
                    "ssh_host": mid if proc else None,
                    "address": proc.plan.address if proc else None,
                    "port": proc.plan.port if proc else None,
                    "api": api,
                }
            )
        return {
            "scenario": self.scenario.name,
            "app": self.scenario.app,
            "ssh_config": str(self.ssh_config),
            "control": str(self.control_socket),
            "machines": machines,
        }

    def _write_flyctl(self) -> None:
        """`flyctl`: a sh script running volguard.sim.flyctl from this same source tree."""
        root = Path(__file__).resolve().parents[2]
        script = "\n".join(
            [
                "#!/bin/sh",
                "# flyctl stand-in of a volguard local fleet (simulator only; see",
                "# volguard/sim/flyctl.py). It reaches the simulated Machines, never Fly.",
                f"PYTHONPATH={shlex.quote(str(root))}${{PYTHONPATH:+:$PYTHONPATH}}",
                "export PYTHONPATH",
                f"exec {shlex.quote(sys.executable)} -m volguard.sim.flyctl "
                f'--fleet {shlex.quote(str(self.state_file))} "$@"',
                "",
            ]
        )
        self.flyctl_dir.mkdir(exist_ok=True)
        path = self.flyctl_dir / "flyctl"
        path.write_text(script)
        path.chmod(0o755)


def _send_control(path: Path, request: Mapping[str, Any]) -> dict[str, Any]:
    """One request on a fleet's control socket, its one-line JSON answer."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(120)
        sock.connect(str(path))
        sock.sendall(json.dumps(request).encode() + b"\n")
        data = b""
        while not data.endswith(b"\n"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    answer = json.loads(data) if data.strip() else {"ok": False, "error": "no answer"}
    return answer if isinstance(answer, dict) else {"ok": False, "error": "bad answer"}


def _api_view(source: Any) -> Mapping[str, Any]:
    """The API's state from a SimServer, a SimState, or their JSON."""
    source = getattr(source, "state", source)  # SimServer -> SimState
    if hasattr(source, "to_json"):
        source = source.to_json()
    if not isinstance(source, Mapping) or not isinstance(source.get("machines"), list):
        raise FleetError("sync needs the API state: a SimServer, a SimState or its JSON")
    return source


class _Control:
    """The fleet's control socket: one JSON request, one JSON answer, per connection.

    One long-lived thread accepts and serves connections one at a time, so the Machines
    a sync starts have that thread as their parent, which lives until the fleet closes
    (a Machine dies with the thread that started it)."""

    def __init__(self, path: Path, handler: Callable[[Mapping[str, Any]], dict[str, Any]]):
        self.path = path
        self._handler = handler
        self._stop = threading.Event()
        path.unlink(missing_ok=True)
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.bind(str(path))
        path.chmod(0o600)
        self._sock.listen(8)
        self._sock.settimeout(0.05)
        self._thread = threading.Thread(
            target=self._serve, name=f"volguard-fleet-control:{path.parent.name}", daemon=True
        )
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with conn:
                self._answer(conn)

    def _answer(self, conn: socket.socket) -> None:
        conn.settimeout(30)
        data = b""
        with contextlib.suppress(OSError):
            while not data.endswith(b"\n") and len(data) < 64 * 1024 * 1024:
                chunk = conn.recv(65536)
                if not chunk:
                    break
                data += chunk
        try:
            request = json.loads(data)
            reply = self._handler(request if isinstance(request, dict) else {})
        except ValueError as e:
            reply = {"ok": False, "error": f"not a JSON request: {e}"}
        with contextlib.suppress(OSError):
            conn.sendall(json.dumps(reply).encode() + b"\n")

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=120)
        self._sock.close()
        self.path.unlink(missing_ok=True)


class _Host:
    """This host, shared with any other fleet running at the same time.

    - Every fleet holds a shared lock on STATE_DIR/.lock while it runs.
    - Mountpoint directories a fleet creates on the host (/data, /app, /run/sshd, …) are
      listed in STATE_DIR/created-dirs; they are removed, if empty, by whichever fleet
      exits while no other runs (it can take the lock exclusively). Removing one earlier
      would tear the mounts out of the other fleets' Machines.
    - Each fleet holds an exclusive lock on its address slot (127.0.<slot>.*).
    """

    def __init__(self) -> None:
        STATE_DIR.mkdir(parents=True, exist_ok=True)
        self._lock: TextIO | None = open(STATE_DIR / ".lock", "a")  # noqa: SIM115
        fcntl.flock(self._lock, fcntl.LOCK_SH)
        self._slot_lock: TextIO | None = None
        self._run_dir: Path | None = None

    def run_dir(self) -> Path:
        """This run's directories, on the root filesystem (checked: same st_dev as /)."""
        if self._run_dir is None:
            path = STATE_DIR / f"{os.getpid()}-{secrets.token_hex(3)}"
            path.mkdir(mode=0o755)
            if os.stat(path).st_dev != os.stat("/").st_dev:
                raise FleetError(f"{path} is not on the root filesystem")
            self._run_dir = path
        return self._run_dir

    def claim_slot(self, machines: int) -> int:
        """A third octet whose addresses no other fleet (or anything else) uses."""
        (STATE_DIR / "slots").mkdir(exist_ok=True)
        for slot in SLOTS:
            lock = open(STATE_DIR / "slots" / f"{slot}.lock", "a")  # noqa: SIM115
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                lock.close()
                continue
            addresses = [f"127.0.{slot}.{n}" for n in range(1, machines + 1)]
            if all(_port_free(a, p) for a in addresses for p in (SSH_PORT, APP_PORT)):
                self._slot_lock = lock
                return slot
            lock.close()
        raise FleetError("no free loopback address slot (127.0.77-254.*) for the fleet")

    def ensure_dir(self, path: str) -> None:
        """Create `path` (and missing parents) on the host, listing what was created."""
        missing = []
        for p in (Path(path), *Path(path).parents):
            if p.exists():
                if not p.is_dir():
                    raise FleetError(f"{p} exists on this host and is not a directory")
                break
            missing.append(p)
        for p in reversed(missing):
            with contextlib.suppress(FileExistsError):
                p.mkdir(mode=0o755)
            with open(STATE_DIR / "created-dirs", "a") as fh:  # one short line: atomic
                fh.write(f"{json.dumps(str(p))}\n")

    def release(self) -> None:
        if self._slot_lock is not None:
            self._slot_lock.close()
            self._slot_lock = None
        if self._lock is None:
            return
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pass  # another fleet runs: it (or the last one) cleans up
        else:
            self._clean_up()
        finally:
            self._lock.close()
            self._lock = None

    def _clean_up(self) -> None:
        """No other fleet runs: remove the listed mountpoints (only empty directories,
        deepest first) and run directories left by runs that were killed."""
        listing = STATE_DIR / "created-dirs"
        with contextlib.suppress(FileNotFoundError):
            paths = [json.loads(line) for line in listing.read_text().splitlines() if line]
            for path in sorted(set(paths), key=lambda p: -len(Path(p).parts)):
                with contextlib.suppress(OSError):  # gone, or not empty: not ours to remove
                    os.rmdir(path)
            listing.unlink()
        for entry in STATE_DIR.iterdir():
            if _RUN_ID.fullmatch(entry.name) and entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)


def _ensure_user(name: str) -> tuple[int, int]:
    """(uid, gid) of `name`, creating it as a system user if missing. It is left in place
    at exit: a locked, home-less system account is harmless, and removing it could pull
    it from under another fleet running at the same time."""
    for attempt in range(10):
        try:
            entry = pwd.getpwnam(name)
            return entry.pw_uid, entry.pw_gid
        except KeyError:
            pass
        command = ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin"]
        done = subprocess.run([*command, name], capture_output=True, text=True, check=False)
        if done.returncode not in (0, 9, 10):  # 9: exists now, 10: /etc/passwd locked
            raise FleetError(f"useradd {name} failed: {done.stderr.strip()}")
        time.sleep(0.05 * attempt)
    raise FleetError(f"could not create user {name}")


def _keygen(path: Path, comment: str) -> None:
    for stale in (path, path.with_suffix(".pub")):
        stale.unlink(missing_ok=True)
    command = ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise FleetError(f"ssh-keygen failed: {done.stderr.strip()}")


def _port_free(address: str, port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as sshd binds
        try:
            sock.bind((address, port))
        except OSError:
            return False
    return True


def _dns_alias(plan: MachinePlan) -> str:
    """ " <id>.vm.<app>.internal": the name Fly's private DNS gives the Machine, which is
    the ssh transport's default host template, so it reaches the simulated one too."""
    if re.fullmatch(r"[a-z0-9][a-z0-9-]*", plan.app):
        return f" {plan.id}.vm.{plan.app}.internal"
    return ""


def _check_config_path(path: Path) -> None:
    """ssh_config and sshd_config cannot carry every path: refuse rather than misquote."""
    if any(c in str(path) for c in '"%\n\r') or str(path).startswith("~"):
        raise FleetError(f"workdir {path} has a character ssh config files cannot hold")
