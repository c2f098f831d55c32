"""One simulated Fly Machine: a real sshd in its own Linux mount, PID and UTS namespaces.

The Machine checks of issue #4 are meant to be impossible to fool, so they need a real
kernel view to be tested against, not a mock: a real separate filesystem at the mount
path (or a bind mount of the root filesystem when the volume is "not mounted"), a mount
that really is read-only, a real process of an unprivileged user with its real
environment, and a real OpenSSH server that `ssh` and the flyctl stand-in reach.

- A private mount namespace gives each Machine its own mount path, /app and MEDIA_ROOT
  while it shares the host's binaries (which is what makes it cheap: no image to build).
- A PID namespace gives it its own /proc, so a check looking for "the app process" finds
  this Machine's and not its neighbour's, and one SIGKILL of its init ends everything in
  it, including every SSH session, which is what frees its mounts.
- A UTS namespace gives it its id as hostname, as on Fly.
- Its SSH server is sshd configured to look like hallpass from outside: sessions run in
  /bin/sh (root's shell inside the namespace; the host's own dotfiles never run) and it
  offers the key exchanges of golang.org/x/crypto/ssh (`GO_SSH_KEX`).

Everything that reaches the setup shell script is quoted with shlex.quote; everything
else is passed as argv.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import pwd
import shlex
import signal
import socket
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any

from volguard.sim.objects import build_machine
from volguard.sim.scenario import MachineSpec, Scenario

SSHD = "/usr/sbin/sshd"
#: The key exchanges a Machine's SSH server offers: golang.org/x/crypto/ssh's defaults
#: (its ssh/common.go; mlkem768x25519 since Go 1.24) less SHA-1. flyctl talks to hallpass
#: with that library and sets no KeyExchanges (FLYCTL ssh/client.go, `ssh.ClientConfig`), so
#: a real `fly ssh console` never negotiates OpenSSH 9's default sntrup761x25519, whose key
#: generation costs the client ~70 ms of CPU per connection here (docs/BENCHMARKS.md, #4).
#: Which exchanges hallpass itself offers to a plain OpenSSH client is UNVERIFIED.
GO_SSH_KEX = (
    "mlkem768x25519-sha256",
    "curve25519-sha256",
    "curve25519-sha256@libssh.org",
    "ecdh-sha2-nistp256",
    "ecdh-sha2-nistp384",
    "ecdh-sha2-nistp521",
    "diffie-hellman-group14-sha256",
)
PR_SET_PDEATHSIG = 1
SSH_PORT = 2222
APP_PORT = 8000  # where the `app` group's web server listens, on the Machine's address
APP_DIR = "/app"
DEFAULT_MOUNT = "/data"
TMPFS_SIZE = "64m"
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
#: Mounting over these would break the Machine's own sshd or tools, so a scenario that
#: puts the volume or MEDIA_ROOT there is refused rather than simulated wrongly.
SYSTEM_PATHS = frozenset(
    ["/", "/bin", "/boot", "/dev", "/etc", "/lib", "/lib64", "/proc", "/root", "/run",
     "/sbin", "/sys", "/tmp", "/usr", "/var"]  # noqa: S108 - a path, not a temp file
)  # fmt: skip
#: The worker: waits forever, its comm set to its group name so that `ps` shows it.
WORKER_CODE = (
    "import sys, threading; "
    "open('/proc/self/comm', 'w').write(sys.argv[2][:15]); "
    "threading.Event().wait()"
)


class MachineError(RuntimeError):
    """A simulated Machine that could not be set up or did not come up."""


@dataclass(frozen=True)
class Mount:
    """One mount the setup script makes: a tmpfs (a volume) or a bind of a rootfs dir."""

    target: str
    source: Path | None  # None: a fresh tmpfs
    name: str = "tmpfs"  # the tmpfs's source name, shown by findmnt: the volume id
    inside: bool = False  # True: the target lies in an earlier mount, made in the namespace


@dataclass(frozen=True)
class MachinePlan:
    """Everything needed to build one Machine, decided before anything runs."""

    id: str
    app: str
    group: str
    region: str
    address: str
    reachable: bool
    volume: str | None
    mount_path: str
    separate_fs: bool  # the volume is really mounted (a tmpfs), not a rootfs directory
    read_only: bool
    media_root: str | None
    media_uid: int
    media_gid: int
    media_mode: int
    app_user: str
    app_uid: int
    app_gid: int
    env: Mapping[str, str]
    mounts: tuple[Mount, ...]
    files: Path  # this Machine's files in the fleet's workdir (configs, keys, logs)
    rootfs: Path  # this Machine's directories on the host's root filesystem
    python: str
    port: int = SSH_PORT
    #: The volume's saved files (host side), copied into its fresh tmpfs at setup: what
    #: makes a volume outlive a restart (see volguard.sim.local_fleet). None: an empty volume.
    volume_store: Path | None = None

    @property
    def host_mountpoints(self) -> list[str]:
        """Mount targets that must exist as directories on the host before setup."""
        return [m.target for m in self.mounts if not m.inside]

    @property
    def rootfs_dirs(self) -> list[Path]:
        return [m.source for m in self.mounts if m.source is not None]


def mount_destination(fly_config: Mapping[str, Any], group: str) -> str | None:
    """Where fly.toml mounts a volume for `group`, by flyctl's rule (fly-facts §0.1): a
    mount without `processes` goes to the default group only, "app" if it exists, else
    the first group name in sorted order; flyctl uses only the first mount."""
    processes = fly_config.get("processes") or {}
    names = sorted(processes) if isinstance(processes, Mapping) and processes else ["app"]
    default = "app" if "app" in names else names[0]
    mounts = fly_config.get("mounts") or fly_config.get("mount") or []
    if isinstance(mounts, Mapping):
        mounts = [mounts]
    for mount in mounts:
        if not isinstance(mount, Mapping):
            continue
        groups = mount.get("processes") or []
        if (group in groups) if groups else group == default:
            return str(mount.get("destination") or DEFAULT_MOUNT)
    return None


def plan_machine(
    spec: MachineSpec,
    scenario: Scenario,
    *,
    address: str,
    files: Path,
    rootfs: Path,
    python: str,
    users: Mapping[str, tuple[int, int]],
    api: Mapping[str, Any] | None = None,
    fly_config: Mapping[str, Any] | None = None,
    volume_store: Path | None = None,
) -> MachinePlan:
    """Decide one started Machine: its mounts, MEDIA_ROOT, user and environment.

    The environment, the volume and its mount path are the Machine's `config` exactly as
    the API simulator serves it — `api`, the Machine's JSON (after a deploy), or else
    `build_machine` of the scenario's spec — so both simulators tell the same story,
    plus what Fly's init adds. `fly_config` is the app's current fly.toml (default: the
    scenario's). What the API cannot show (reachable, mounted, users, modes) comes from
    `spec`. `users` maps a user name to (uid, gid) for the app user and MEDIA_ROOT's
    owner. `volume_store`: the volume's saved files, restored into it at setup.
    """
    fly_config = scenario.fly_config() if fly_config is None else fly_config
    if api is None:
        names = {v.id: v.name for v in scenario.volumes}
        api = build_machine(spec, scenario, fly_config, names, datetime.now(UTC))
    config = api.get("config") or api.get("incomplete_config") or {}
    attached = config.get("mounts") or []
    volume = str(attached[0]["volume"]) if attached and attached[0].get("volume") else None
    env = {str(k): str(v) for k, v in (config.get("env") or {}).items()}
    env |= scenario.secrets  # injected at boot, not part of the Machine's config
    env |= {
        "FLY_APP_NAME": scenario.app,
        "FLY_MACHINE_ID": spec.id,
        "FLY_REGION": spec.region,
        "PATH": PATH,
    }
    # A volume is where the Machine config mounts it; without one, the path fly.toml
    # would have mounted it at is a plain directory of the ephemeral root filesystem.
    if volume:
        mount_path = str(attached[0].get("path") or DEFAULT_MOUNT)
    else:
        mount_path = mount_destination(fly_config, spec.group) or DEFAULT_MOUNT
    media_root = env.get("MEDIA_ROOT") or None
    if media_root is not None and not media_root.startswith("/"):
        media_root = str(PurePosixPath(APP_DIR) / media_root)  # relative to the app's cwd
    separate = bool(volume) and spec.mounted
    mounts = _mounts(spec.id, volume, mount_path, separate, media_root, rootfs)
    app_uid, app_gid = users[spec.app_user]
    media_uid, media_gid = users[spec.media_root_owner]
    return MachinePlan(
        id=spec.id,
        app=scenario.app,
        group=spec.group,
        region=spec.region,
        address=address,
        reachable=spec.reachable,
        volume=volume,
        mount_path=_normal(mount_path),
        separate_fs=separate,
        read_only=spec.mount_options == "ro",
        media_root=_normal(media_root) if media_root else None,
        media_uid=media_uid,
        media_gid=media_gid,
        media_mode=int(spec.media_root_mode, 8),
        app_user=spec.app_user,
        app_uid=app_uid,
        app_gid=app_gid,
        env=env,
        mounts=mounts,
        files=files,
        rootfs=rootfs,
        python=python,
        volume_store=volume_store if separate else None,
    )


def _normal(path: str) -> str:
    return os.path.normpath("/" + path.lstrip("/"))


def _mounts(
    machine_id: str,
    volume: str | None,
    mount_path: str,
    separate: bool,
    media_root: str | None,
    rootfs: Path,
) -> tuple[Mount, ...]:
    """The mounts, parents first; a target inside an earlier one is made in the namespace,
    any other needs a directory on the host (the fleet creates it and removes it)."""
    wanted: list[Mount] = []
    mount_path = _normal(mount_path)
    if separate:
        wanted.append(Mount(mount_path, None, name=volume or "tmpfs"))
    else:
        wanted.append(Mount(mount_path, rootfs / "volume"))
    if mount_path != APP_DIR:
        wanted.append(Mount(APP_DIR, rootfs / "app"))
    if media_root and not any(_within(_normal(media_root), m.target) for m in wanted):
        wanted.append(Mount(_normal(media_root), rootfs / "media"))
    for m in wanted:
        if m.target in SYSTEM_PATHS:
            raise MachineError(f"machine {machine_id}: refusing to mount over {m.target}")
    wanted.sort(key=lambda m: len(PurePosixPath(m.target).parts))
    placed: list[Mount] = []
    for m in wanted:
        inside = any(_within(m.target, p.target) for p in placed)
        placed.append(Mount(m.target, m.source, m.name, inside))
    return tuple(placed)


def _within(path: str, parent: str) -> bool:
    return PurePosixPath(path).is_relative_to(PurePosixPath(parent))


def app_argv(plan: MachinePlan) -> list[str]:
    """The group's process: a web server for `app`, a long-running worker otherwise.

    The system Python runs it, so it works without volguard being importable, as an app
    on a real Machine would."""
    if plan.group == "app":
        return [
            plan.python, "-m", "http.server", str(APP_PORT),
            "--bind", plan.address, "--directory", APP_DIR,
        ]  # fmt: skip
    return [plan.python, "-c", WORKER_CODE, "volguard-sim-worker", plan.group]


def setup_script(plan: MachinePlan) -> str:
    """The POSIX sh script that runs as the namespace's init: mounts, MEDIA_ROOT, the app
    process, then `exec sshd -D` (or, for an unreachable Machine, a process that only
    holds the namespace), so every SSH session lives in this namespace."""
    q = shlex.quote
    files = plan.files
    passwd = q(str(files / "passwd"))
    lines = [
        "set -eu",
        f"echo {q(plan.id)} > /proc/sys/kernel/hostname",
        # Fly's SSH server (hallpass) runs sessions with /bin/sh, not a login shell
        # (fly-facts.md, 4.1): root's shell here is /bin/sh too, so no host dotfile (a
        # ~/.bashrc that runs `pyenv init` costs ~100 ms of CPU) runs in a session.
        f"sed 's#^\\(root:[^:]*:[^:]*:[^:]*:[^:]*:[^:]*:\\).*#\\1/bin/sh#' /etc/passwd > {passwd}",
        f"mount --bind {passwd} /etc/passwd",
    ]
    for m in plan.mounts:
        if m.inside:
            lines.append(f"mkdir -p {q(m.target)}")
        if m.source is None:
            options = f"size={TMPFS_SIZE},mode=0755"
            lines.append(f"mount -t tmpfs -o {options} {q(m.name)} {q(m.target)}")
            if plan.volume_store is not None:  # the volume's files, saved at the last stop
                lines.append(f"cp -a {q(str(plan.volume_store))}/. {q(m.target)}/")
        else:
            lines.append(f"mount --bind {q(str(m.source))} {q(m.target)}")
    if plan.media_root:
        media = q(plan.media_root)
        lines += [
            f"mkdir -p {media}",
            f"chown {plan.media_uid}:{plan.media_gid} {media}",
            f"chmod {plan.media_mode:04o} {media}",
        ]
    if plan.read_only:  # after MEDIA_ROOT exists: a volume that was written, then went ro
        bind = "" if plan.separate_fs else ",bind"
        lines.append(f"mount -o remount{bind},ro {q(plan.mount_path)}")
    env = [f"{k}={v}" for k, v in sorted(plan.env.items())]
    app = [
        "env", "-i", *env,
        "setpriv", f"--reuid={plan.app_uid}", f"--regid={plan.app_gid}", "--init-groups", "--",
        *app_argv(plan),
    ]  # fmt: skip
    lines += [
        f"cd {q(APP_DIR)}",
        f"{shlex.join(app)} </dev/null >>{q(str(files / 'app.log'))} 2>&1 &",
        f"echo $! > {q(str(files / 'app.pid'))}",
        "cd /",
        f": > {q(str(files / 'ready'))}",
    ]
    if plan.reachable:
        lines.append(f"exec {q(SSHD)} -D -e -f {q(str(files / 'sshd_config'))}")
    else:  # started, but nothing answers SSH: the platform's "connection refused"
        lines.append("exec sleep infinity")
    return "\n".join(lines) + "\n"


def sshd_config(plan: MachinePlan, *, authorized_keys: Path) -> str:
    """A minimal sshd: key-only root login on the Machine's own address and port."""
    return "\n".join(
        [
            f"ListenAddress {plan.address}:{plan.port}",
            f"HostKey {config_path(plan.files / 'ssh_host_ed25519_key')}",
            "PermitRootLogin prohibit-password",
            f"AuthorizedKeysFile {config_path(authorized_keys)}",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            "UsePAM no",
            f"PidFile {config_path(plan.files / 'sshd.pid')}",
            "StrictModes no",
            "AcceptEnv none",
            "MaxStartups 50",
            "MaxSessions 50",  # testinfra multiplexes sessions over one connection
            "PrintMotd no",
            "Subsystem sftp internal-sftp",
            *([f"KexAlgorithms {','.join(kex)}"] if (kex := machine_kex()) else []),
            "",
        ]
    )


@functools.cache
def machine_kex() -> tuple[str, ...]:
    """`GO_SSH_KEX` as far as this OpenSSH has them (``ssh -Q kex``); () if it cannot say."""
    try:
        done = subprocess.run(
            ["ssh", "-Q", "kex"], capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return ()
    known = set(done.stdout.split()) if done.returncode == 0 else set()
    return tuple(k for k in GO_SSH_KEX if k in known)


def config_path(path: Path) -> str:
    """A path for sshd_config/ssh_config, double-quoted only when it holds whitespace
    (some ssh_config readers, paramiko's among them, keep quotes as part of the value).
    The fleet refuses paths with a quote, '%' (a token there) or a newline."""
    text = str(path)
    return f'"{text}"' if any(c.isspace() for c in text) else text


@dataclass
class MachineProcess:
    """A running Machine: `unshare` (kept as the parent) and the namespace's init."""

    plan: MachinePlan
    proc: subprocess.Popen[bytes] | None = None
    init_pid: int | None = None  # the namespace's init, in the host's PID namespace
    mnt_ns: int | None = None  # inode of its mount namespace, to find anything left in it
    # An open fd on that namespace, held until stop() is done: while it is open the
    # namespace lives, so its inode cannot be given to a namespace made since (another
    # fleet's new Machine), whose processes stop() would otherwise kill as its own.
    _ns_fd: int | None = field(default=None, repr=False)
    _log: Any = field(default=None, repr=False)

    def start(self) -> None:
        """Start `unshare … -- sh setup.sh`; returns at once (see wait_ready)."""
        files = self.plan.files
        (files / "setup.sh").write_text(setup_script(self.plan), encoding="utf-8")
        _libc()  # loaded now: the child calls it between fork and exec
        self._log = open(files / "machine.log", "ab")  # noqa: SIM115 - closed in stop()
        argv = [
            "unshare", "--mount", "--propagation", "private", "--uts",
            "--pid", "--fork", "--mount-proc", "--kill-child=SIGKILL",
            "--", "/bin/sh", str(files / "setup.sh"),
        ]  # fmt: skip
        self.proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            cwd="/",
            env={"PATH": PATH, "LANG": "C.UTF-8"},
            preexec_fn=_die_with_parent,  # a killed test must not leak Machines
        )

    def wait_ready(self, deadline: float) -> None:
        """Block until setup finished, sshd accepts TCP (if reachable) and so does the
        web server of an `app` Machine; raise MachineError naming the Machine if not."""
        ready = self.plan.files / "ready"
        while not ready.exists():
            self._check_alive()
            self._timeout(deadline, "did not finish its setup")
            time.sleep(0.01)
        self._find_init()
        if self.plan.reachable:
            self._wait_tcp(self.plan.port, deadline, "sshd does not accept connections")
        if self.plan.group == "app":
            self._wait_tcp(APP_PORT, deadline, "the app's web server does not listen")

    def _wait_tcp(self, port: int, deadline: float, what: str) -> None:
        while True:
            self._check_alive()
            try:
                with socket.create_connection((self.plan.address, port), timeout=0.5):
                    return
            except OSError:
                self._timeout(deadline, what)
                time.sleep(0.02)

    def _find_init(self) -> None:
        assert self.proc is not None
        children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children")
        pids = [int(p) for p in children.read_text().split()]
        if not pids:
            raise MachineError(self._failure("lost its init process"))
        self.init_pid = pids[0]
        try:
            fd = os.open(f"/proc/{self.init_pid}/ns/mnt", os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:  # the init has already exited (sshd refused its config)
            raise MachineError(self._failure("lost its init process")) from None
        self._release_namespace()
        self._ns_fd, self.mnt_ns = fd, os.fstat(fd).st_ino

    def _release_namespace(self) -> None:
        if self._ns_fd is not None:
            os.close(self._ns_fd)
        self._ns_fd = self.mnt_ns = None

    def _check_alive(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            raise MachineError(self._failure(f"exited with status {self.proc.returncode}"))

    def _timeout(self, deadline: float, what: str) -> None:
        if time.monotonic() > deadline:
            raise MachineError(self._failure(what))

    def _failure(self, what: str) -> str:
        """The message: which Machine, what went wrong, and the tail of its logs (sshd
        and the setup script log to machine.log, the app process to app.log)."""
        parts = []
        for name in ("machine.log", "app.log"):
            try:
                text = (self.plan.files / name).read_text(encoding="utf-8", errors="replace")
            except OSError:
                continue
            tail = text.strip().splitlines()[-15:]
            if tail:
                parts.append(f"{name}:\n  " + "\n  ".join(tail))
        who = f"simulated Machine {self.plan.id} ({self.plan.address})"
        return f"{who}: {what}; " + ("\n".join(parts) if parts else "no log output")

    def app_pid(self) -> int | None:
        """The app process's pid in the host's PID namespace (None once it is gone)."""
        try:
            ns_pid = int((self.plan.files / "app.pid").read_text())
        except (OSError, ValueError):
            return None
        for pid in self.pids():
            if _ns_pids(pid)[-1:] == [ns_pid]:
                return pid
        return None

    def pids(self) -> list[int]:
        """Every process in this Machine's mount namespace (host pids)."""
        return processes_in_namespace(self.mnt_ns) if self.mnt_ns else []

    def exec(
        self,
        argv: Sequence[str],
        *,
        user: str = "root",
        env: Mapping[str, str] | None = None,
        **kwargs: Any,
    ) -> subprocess.CompletedProcess[Any]:
        """Run argv inside the Machine (its mount, PID and UTS namespaces), as `user`."""
        if self.init_pid is None:
            raise MachineError(f"machine {self.plan.id} is not running")
        command = ["nsenter", f"--target={self.init_pid}", "--mount", "--pid", "--uts", "--"]
        if user != "root":
            entry = pwd.getpwnam(user)
            command += [
                "setpriv", f"--reuid={entry.pw_uid}", f"--regid={entry.pw_gid}",
                "--init-groups", "--",
            ]  # fmt: skip
        kwargs.setdefault("capture_output", True)
        kwargs.setdefault("text", True)
        kwargs.setdefault("timeout", 30)
        return subprocess.run(
            [*command, *argv],
            env=dict(env) if env is not None else {"PATH": PATH, "LANG": "C.UTF-8"},
            cwd="/",
            check=False,
            **kwargs,
        )

    def stop(self) -> None:
        """Kill the namespace's init: the kernel then kills every process in its PID
        namespace, the mount namespace dies with its last process, and its mounts go."""
        if self.proc is not None:
            if self.init_pid is None and self.proc.poll() is None:
                with contextlib.suppress(OSError, MachineError):
                    self._find_init()
            for pid in self.pids():  # the init among them (not its pid alone: reusable)
                _kill(pid)
            _kill(self.proc.pid)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=10)
            for pid in self.pids():  # e.g. an `nsenter --mount` without --pid
                _kill(pid)
            # SIGKILL is delivered at once but processes exit asynchronously: wait until
            # the namespace is empty, then let it go, so "stopped" means its mounts are gone.
            deadline = time.monotonic() + 10
            while self.pids() and time.monotonic() < deadline:
                time.sleep(0.01)
            self._release_namespace()
            self.proc = None
        if self._log is not None:
            self._log.close()
            self._log = None


def processes_in_namespace(mnt_ns: int) -> list[int]:
    """Host pids of the processes whose mount namespace has inode `mnt_ns`."""
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            if os.stat(f"/proc/{entry.name}/ns/mnt").st_ino == mnt_ns:
                found.append(int(entry.name))
        except OSError:  # gone, or a kernel thread
            continue
    return found


def _ns_pids(pid: int) -> list[int]:
    """The NSpid line of /proc/<pid>/status: its pid in each nested PID namespace."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("NSpid:"):
                return [int(p) for p in line.split()[1:]]
    except OSError:
        pass
    return []


def _kill(pid: int | None) -> None:
    if pid is None:
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, signal.SIGKILL)


@functools.cache
def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def _die_with_parent() -> None:
    """In the child before exec: PR_SET_PDEATHSIG, so a test process killed with SIGKILL
    takes its Machines with it (`unshare --kill-child` passes it on to the init).

    The "parent" is the thread that started the fleet: start fleets from a thread that
    outlives them (the main thread, normally). libc is loaded before the fork, not here.
    """
    _libc().prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
