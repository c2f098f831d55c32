"""The local fleet: each started Machine of a scenario as a real local "Machine" with sshd.

Fly cannot be reached from here, and the Machine checks (VG300–VG307) must be proved
against real mounts, users, processes and SSH, so `LocalFleet` builds what the platform
would run for a scenario — the same scenario file that drives the API simulator — on this
host, and tears it down again::

    why = fleet_unavailable()            # None, or why this host cannot (for pytest.skip)
    with LocalFleet("incident", workdir=tmp_path) as fleet:
        subprocess.run(["ssh", "-F", fleet.ssh_config, fleet.machines[0], "true"])
        env = {**os.environ, "PATH": f"{fleet.flyctl_dir}:{os.environ['PATH']}"}
        fleet.exec(machine_id, ["ls", "/data/media"])

Each Machine is described in `volguard.sim.machine`; this module does what concerns the
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
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any, TextIO

from volguard.sim.machine import (
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
from volguard.sim.scenario import Scenario, load_scenario

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
        except BaseException as e:  # KeyboardInterrupt too: leave nothing behind
            self.close()
            if isinstance(e, MachineError):
                raise FleetError(str(e)) from e
            raise
        return self

    def close(self) -> None:
        """Stop every Machine (their mounts go with their namespaces), then remove the
        per-run directories, and the mountpoints this fleet created once no other fleet
        uses them. Safe to call twice."""
        if self._closed or not self._started:
            return
        self._closed = True
        atexit.unregister(self.close)
        try:
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
        """What the flyctl stand-in reads: the app and its Machines."""
        return self.workdir / "state.json"

    @property
    def machines(self) -> list[str]:
        """Ids of the Machines that were started, in scenario order."""
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
        names = {m.app_user for m in started} | {m.media_root_owner for m in started}
        users = {name: _ensure_user(name) for name in sorted(names)}
        if any(m.reachable for m in started):
            self._host.ensure_dir("/run/sshd")  # sshd's privilege separation directory
        slot = self._host.claim_slot(len(started))
        self._run_dir = self._host.run_dir()
        python = system_python()
        assert python is not None  # fleet_unavailable() said so
        _keygen(self.identity, "volguard-fleet-client")
        authorized = workdir / "authorized_keys"
        authorized.write_text(self.identity.with_suffix(".pub").read_text())
        for n, spec in enumerate(started, start=1):
            files = workdir / "machines" / spec.id
            if files.exists():
                shutil.rmtree(files)  # a reused workdir: stale logs and markers
            files.mkdir(parents=True)
            plan = plan_machine(
                spec,
                scenario,
                address=f"127.0.{slot}.{n}",
                files=files,
                rootfs=self._run_dir / spec.id,
                python=python,
                users=users,
            )
            for path in plan.host_mountpoints:
                self._host.ensure_dir(path)
            for path in plan.rootfs_dirs:
                path.mkdir(parents=True, mode=0o755)
            index = plan.rootfs / "app" / "index.html"  # what the web server serves
            if index.parent.is_dir():
                index.write_text(f"volguard simulated Machine {spec.id} ({spec.group})\n")
            if plan.reachable:
                _keygen(files / "ssh_host_ed25519_key", f"{spec.id}-host")
                (files / "sshd_config").write_text(sshd_config(plan, authorized_keys=authorized))
            self._procs[spec.id] = MachineProcess(plan)
        self.known_hosts.write_text(self._known_hosts())
        self.ssh_config.write_text(self._ssh_config())
        self.state_file.write_text(json.dumps(self._state(), indent=2) + "\n")
        self._write_flyctl()

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
        scenario = self.scenario
        fly_config = scenario.fly_config()
        names = {v.id: v.name for v in scenario.volumes}
        now = datetime.now(UTC)
        machines = []
        for spec in scenario.machines:
            api = build_machine(spec, scenario, fly_config, names, now)
            proc = self._procs.get(spec.id)
            machines.append(
                {
                    "id": spec.id,
                    "name": api["name"],
                    "group": spec.group,
                    "region": spec.region,
                    "state": spec.state,
                    "private_ip": api["private_ip"],
                    "ssh_host": spec.id if proc else None,
                    "address": proc.plan.address if proc else None,
                    "port": proc.plan.port if proc else None,
                    "api": api,
                }
            )
        return {
            "scenario": scenario.name,
            "app": scenario.app,
            "ssh_config": str(self.ssh_config),
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
