"""Transports: how volguard reaches a Machine, each a pytest-testinfra backend.

- `fly`: `flyctl ssh console --machine=ID --command "sh -c '…'"`, stdin from
  /dev/null. flyctl runs no shell and collapses every remote failure to exit 1
  (fly-facts §0.5), so the probe prints its own exit status as a sentinel.
- `ssh`: testinfra's SSH backend with ControlMaster reuse, to a host built from
  a template (default `{id}.vm.{app}.internal`, over WireGuard). Host-key
  checking is whatever the user's ssh configuration says; volguard never
  turns it off.
- `local`: the checks run on this very Machine (a console session, a health
  endpoint).

Three promises hold on every transport:

- Values from the API are data. A Machine id must be 14 lowercase hex characters (flyctl's
  own test Machine is ``3d8d9d16f14683``, internal/command/ssh/console_test.go); an app name
  lowercase letters, digits and dashes (flyctl's validateAppName,
  internal/command/launch/plan_builder.go), not starting with a dash; a host name built from
  the template a DNS name or an IP literal. Each is checked before any program runs, values
  are bound to their flags (``--machine=ID``) or placed after ``--`` (ssh), and the ssh host
  is handed to testinfra already split, so it is never parsed as a host spec
  (``ssh://user@host?ssh_config=…``).
- Every session has a wall-clock deadline (`TransportOptions.timeout`): connect, run and
  output together. At the deadline the session's whole process group is killed, so a child
  that holds the output open cannot keep volguard waiting.
- A session's output is capped (`TransportOptions.max_output`); past the cap the session
  is stopped and the Machine is reported unreachable (VG300) naming the cap, so a Machine
  that floods its output cannot exhaust volguard's memory.
"""

from __future__ import annotations

import contextlib
import os
import re
import selectors
import shlex
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass
from typing import Any

import testinfra
from testinfra.backend.base import BaseBackend, CommandResult, HostSpec
from testinfra.backend.local import LocalBackend
from testinfra.backend.ssh import SshBackend

from volguard.errors import Unreachable, UsageError
from volguard.fly.models import Machine
from volguard.terminal import printable

TRANSPORTS = ("fly", "ssh", "local")
DEFAULT_HOST_TEMPLATE = "{id}.vm.{app}.internal"
#: The most a session may print. A probe's answer is kilobytes; a manage.py run brings back
#: at most 16 MiB of stdout (probe.MANAGE_MAX_OUTPUT), JSON-escaped inside the facts.
MAX_OUTPUT = 64 << 20
#: How much of a session's stderr is kept: its end, where the reason for a failure is.
MAX_STDERR = 64 << 10

MACHINE_ID = re.compile(r"[0-9a-f]{14}")
APP_NAME = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")
#: A DNS name (labels of letters, digits, `-`, `_`, not starting with `-`) or an IP literal.
HOST_NAME = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_-]*)(?:\.[A-Za-z0-9_][A-Za-z0-9_-]*)*\.?")
IP_LITERAL = re.compile(r"[0-9A-Fa-f]*:[0-9A-Fa-f:.]*")


@dataclass(frozen=True)
class TransportOptions:
    kind: str = "fly"
    app: str = ""
    user: str = "root"
    flyctl: str = "flyctl"
    host_template: str = DEFAULT_HOST_TEMPLATE
    ssh_config: str | None = None
    #: Seconds one session on a Machine may take in all: connect, run, output.
    timeout: float = 60.0
    #: Bytes of stdout one session may print before it is stopped.
    max_output: int = MAX_OUTPUT


def machine_id_or_error(machine_id: str) -> str:
    """``machine_id`` when it is a Fly Machine id; Unreachable (VG300) otherwise."""
    if not isinstance(machine_id, str) or not MACHINE_ID.fullmatch(machine_id):
        raise Unreachable(
            f"the Machines API gave the id {_shown(machine_id)}, which is not a Fly Machine id "
            "(14 hex characters); volguard does not put it on a command line"
        )
    return machine_id


def app_name_or_error(app: str) -> str:
    """``app`` when it is a Fly app name; Unreachable otherwise."""
    if not isinstance(app, str) or not APP_NAME.fullmatch(app):
        raise Unreachable(
            f"the app name {_shown(app)} is not a Fly app name (lowercase letters, digits "
            "and dashes); volguard does not put it on a command line"
        )
    return app


def host_name_or_error(host: str, template: str) -> str:
    """``host`` when it is a DNS name or an IP literal; Unreachable otherwise."""
    if not (HOST_NAME.fullmatch(host) or IP_LITERAL.fullmatch(host)) or len(host) > 253:
        raise Unreachable(
            f"the host name {_shown(host)} (from host_template {_shown(template)} and the "
            "Machines API) is not a DNS name or IP address; volguard does not give it to ssh"
        )
    return host


def run_bounded(
    command: list[str] | bytes, *, timeout: float, max_output: int, shell: bool = False
) -> tuple[int, bytes, bytes]:
    """Run ``command`` to its end or its deadline: (exit status, stdout, stderr's tail).

    Raises Unreachable when the deadline passes or stdout passes ``max_output`` bytes; the
    command's whole process group is killed then, so nothing it started keeps running.
    """
    deadline = time.monotonic() + timeout
    try:
        proc = subprocess.Popen(
            command,
            shell=shell,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,  # its own process group, to be killed as one
        )
    except FileNotFoundError:
        name = command[0] if isinstance(command, list) else "sh"
        raise Unreachable(f"{name} is not installed or not on PATH") from None
    assert proc.stdout is not None
    assert proc.stderr is not None
    # stdout as a list of chunks, joined once at the end: a bytearray grown 64 KiB at a time
    # is reallocated again and again, and the allocator's leftovers took the peak to 5x the
    # cap on some runs; chunks keep it at the cap (plus the one join when under it).
    stdout: list[bytes] = []
    stdout_size = 0
    stderr = bytearray()
    selector = selectors.DefaultSelector()
    selector.register(proc.stdout, selectors.EVENT_READ, stdout)
    selector.register(proc.stderr, selectors.EVENT_READ, stderr)
    try:
        # Until stdout ends: an ssh ControlMaster that forks into the background may keep
        # stderr open for as long as it persists, so stderr's end is not waited for.
        while proc.stdout in {key.fileobj for key in selector.get_map().values()}:
            left = deadline - time.monotonic()
            if left <= 0:
                raise Unreachable(f"no answer within the session's deadline of {timeout:g} s")
            for key, _ in selector.select(timeout=min(left, 1.0)):
                chunk = os.read(key.fd, 1 << 16)
                if not chunk:
                    selector.unregister(key.fileobj)
                    continue
                if key.data is stderr:
                    stderr.extend(chunk)
                    if len(stderr) > MAX_STDERR:
                        del stderr[: len(stderr) - MAX_STDERR]
                    continue
                stdout.append(chunk)
                stdout_size += len(chunk)
                if stdout_size > max_output:
                    stdout.clear()
                    raise Unreachable(
                        f"the session printed more than {_size(max_output)} (volguard's cap "
                        "on a Machine's output); it was stopped"
                    )
        try:
            returncode = proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            raise Unreachable(f"no answer within the session's deadline of {timeout:g} s") from None
        if proc.stderr in {key.fileobj for key in selector.get_map().values()}:
            for _ in selector.select(timeout=0.05):  # what stderr already holds
                stderr.extend(os.read(proc.stderr.fileno(), MAX_STDERR))
        return returncode, b"".join(stdout), bytes(stderr[-MAX_STDERR:])
    except BaseException:
        _kill_group(proc)
        raise
    finally:
        selector.close()
        proc.stdout.close()
        proc.stderr.close()
        if proc.returncode is None:
            _kill_group(proc)


class _Bounded:
    """testinfra's `run_local`, with volguard's deadline and output cap."""

    options: TransportOptions

    def run_local(self, command: str, *args: str) -> CommandResult:
        backend: Any = self
        cmd = backend.encode(backend.quote(command, *args))
        # testinfra's own shape: one command line, quoted by `quote`, run by /bin/sh
        rc, out, err = run_bounded(  # noqa: S604
            cmd,
            shell=True,
            timeout=self.options.timeout,
            max_output=self.options.max_output,
        )
        return backend.result(rc, cmd, out, err)


class FlyBackend(BaseBackend):
    """testinfra backend over `flyctl ssh console`: every command is one flyctl session."""

    NAME = "fly"

    def __init__(self, machine_id: str, options: TransportOptions, **kwargs: Any) -> None:
        self.machine_id = machine_id_or_error(machine_id)
        self.app = app_name_or_error(options.app)
        self.options = options
        super().__init__(machine_id, **kwargs)

    def run(self, command: str, *args: str, **kwargs: Any) -> CommandResult:
        command = self.get_command(command, *args)
        # `--flag=value`: a value can never be taken for a flag of its own.
        argv = [
            self.options.flyctl, "ssh", "console",
            f"--app={self.app}",
            f"--machine={self.machine_id}",
            f"--user={self.options.user}",
            f"--command=sh -c {shlex.quote(command)}",
        ]  # fmt: skip
        rc, out, err = run_bounded(
            argv, timeout=self.options.timeout, max_output=self.options.max_output
        )
        return self.result(rc, self.encode(command), out, err)


class BoundedLocalBackend(_Bounded, LocalBackend):
    """testinfra's local backend with a deadline and an output cap."""

    def __init__(self, options: TransportOptions) -> None:
        self.options = options
        super().__init__()


class BoundedSshBackend(_Bounded, SshBackend):
    """testinfra's ssh backend: a host already split (never parsed), after ``--``."""

    def __init__(self, host: HostSpec, options: TransportOptions, **kwargs: Any) -> None:
        self.options = options
        super().__init__(host, **kwargs)  # type: ignore[arg-type]

    @staticmethod
    def parse_hostspec(hostspec: Any) -> HostSpec:
        if not isinstance(hostspec, HostSpec):
            raise TypeError("volguard builds the HostSpec itself")
        return hostspec

    def _build_ssh_command(self, command: str) -> tuple[list[str], list[str]]:
        cmd, args = super()._build_ssh_command(command)
        if cmd[-1] != "%s %s":  # testinfra's shape: host and command last
            raise Unreachable("unexpected ssh command shape from testinfra")
        cmd[-1] = "-- %s %s"  # ssh takes nothing after `--` as an option
        return cmd, args


class Transport:
    """Runs commands on Machines; keeps one testinfra Host per Machine for reuse."""

    def __init__(self, options: TransportOptions) -> None:
        if options.kind not in TRANSPORTS:
            raise UsageError(
                f"unknown transport {options.kind!r} (choose from {', '.join(TRANSPORTS)})"
            )
        self.options = options
        self._hosts: dict[str, Any] = {}
        self._control_dir = tempfile.mkdtemp(prefix="volguard-ssh-")
        self.sessions: dict[str, int] = {}  # machine id -> commands run (for verbose output)

    def host(self, machine: Machine) -> Any:
        """The testinfra Host for ``machine`` (checks/ modules use it as `host`)."""
        if machine.id not in self._hosts:
            self._hosts[machine.id] = self._make_host(machine)
        return self._hosts[machine.id]

    def run(self, machine: Machine, command: str) -> CommandResult:
        self.sessions[machine.id] = self.sessions.get(machine.id, 0) + 1
        return self.host(machine).run(command)

    def stream(self, machine: Machine, command: str, *, timeout: float | None = None) -> Stream:
        """One session running ``command`` (a POSIX sh script) whose stdin and stdout the
        caller pipes through (`Stream`): for copying files without holding them in memory.

        The same command lines as `run` (flyctl's ``--command`` — stdin is piped to the
        remote command, fly-facts §4.1 —, ssh after ``--`` with the ControlMaster, or a local
        ``sh -c``), with a wall-clock deadline (``timeout``, default the options') after
        which the session's process group is killed.
        """
        self.sessions[machine.id] = self.sessions.get(machine.id, 0) + 1
        kind = self.options.kind
        if kind == "local":
            return Stream(["sh", "-c", command], timeout or self.options.timeout)
        if kind == "fly":
            backend = FlyBackend(machine.id, self.options)
            argv = [
                self.options.flyctl, "ssh", "console",
                f"--app={backend.app}",
                f"--machine={backend.machine_id}",
                f"--user={self.options.user}",
                f"--command=sh -c {shlex.quote(command)}",
            ]  # fmt: skip
            return Stream(argv, timeout or self.options.timeout)
        ssh: Any = self.host(machine).backend
        cmd, args = ssh._build_ssh_command(command)
        line = ssh.quote(" ".join(cmd), *args)  # testinfra's own quoting, as run_local does
        # testinfra's own shape: one command line, quoted by `quote`, run by /bin/sh
        return Stream(line, timeout or self.options.timeout, shell=True)  # noqa: S604

    def close(self) -> None:
        """End ssh ControlMaster connections (all at once) and remove their sockets."""
        exits = [
            subprocess.Popen(
                ["ssh", "-o", f"ControlPath={path}", "-O", "exit", "volguard-control"],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            for path in sorted(
                os.path.join(self._control_dir, n) for n in os.listdir(self._control_dir)
            )
        ]
        for proc in exits:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        # ssh removes its own socket on exit, possibly while we look: ignore what is gone
        shutil.rmtree(self._control_dir, ignore_errors=True)

    def __enter__(self) -> Transport:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _make_host(self, machine: Machine) -> Any:
        kind = self.options.kind
        if kind == "local":
            return testinfra.host.Host(BoundedLocalBackend(self.options))
        if kind == "fly":
            return testinfra.host.Host(FlyBackend(machine.id, self.options))
        machine_id_or_error(machine.id)
        template = self.options.host_template
        name = template.format(
            id=machine.id, app=self.options.app, region=machine.region, group=machine.group,
            name=machine.name, private_ip=machine.private_ip,
        )  # fmt: skip
        host = HostSpec(host_name_or_error(name, template), None, self.options.user, None)
        return testinfra.host.Host(
            BoundedSshBackend(
                host,
                self.options,
                ssh_config=self.options.ssh_config,
                controlpersist=120,
                # testinfra %-formats the ssh command line, so ssh's %C token is written %%C
                controlpath=os.path.join(self._control_dir, "%%C"),
                timeout=max(1, int(self.options.timeout)),
            )
        )


class Stream:
    """A running session with pipes: write to ``stdin``, read ``stdout``; stderr's tail kept.

    Bounded: the caller reads and writes a chunk at a time (the pipes hold 64 KiB each), and
    at the deadline the whole process group is killed, which ends every read and write.
    """

    def __init__(self, command: list[str] | str, timeout: float, *, shell: bool = False) -> None:
        try:
            self.proc = subprocess.Popen(
                command,
                shell=shell,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                start_new_session=True,  # its own process group, to be killed as one
            )
        except FileNotFoundError:
            name = command[0] if isinstance(command, list) else "sh"
            raise Unreachable(f"{name} is not installed or not on PATH") from None
        assert self.proc.stdin is not None
        assert self.proc.stdout is not None
        self.stdin = self.proc.stdin
        self.stdout = self.proc.stdout
        self.timeout = timeout
        self.expired = False
        self._stderr = bytearray()
        threading.Thread(target=self._read_stderr, daemon=True).start()
        self._timer = threading.Timer(timeout, self._expire)
        self._timer.daemon = True
        self._timer.start()

    def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        fd = self.proc.stderr.fileno()
        with contextlib.suppress(OSError, ValueError):
            while chunk := os.read(fd, 1 << 16):
                self._stderr.extend(chunk)
                if len(self._stderr) > MAX_STDERR:
                    del self._stderr[: len(self._stderr) - MAX_STDERR]

    def _expire(self) -> None:
        self.expired = True
        self.kill()

    @property
    def stderr_tail(self) -> str:
        return bytes(self._stderr[-MAX_STDERR:]).decode("utf-8", "replace")

    def close_stdin(self) -> None:
        with contextlib.suppress(OSError):
            self.stdin.close()

    def wait(self) -> int:
        """The session's exit status (after the deadline: Unreachable)."""
        left = max(0.0, self.timeout)
        try:
            returncode = self.proc.wait(timeout=left)
        except subprocess.TimeoutExpired:
            self._expire()
            returncode = self.proc.wait()
        if self.expired:
            raise Unreachable(f"no answer within the session's deadline of {self.timeout:g} s")
        return returncode

    def kill(self) -> None:
        if self.proc.returncode is None:
            _kill_group(self.proc)

    def __enter__(self) -> Stream:
        return self

    def __exit__(self, *exc: object) -> None:
        self._timer.cancel()
        self.close_stdin()
        if self.proc.poll() is None:
            self.kill()
        with contextlib.suppress(OSError):
            self.stdout.close()
        if self.proc.stderr is not None:
            with contextlib.suppress(OSError):
                self.proc.stderr.close()


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=5)


def _shown(value: object) -> str:
    text = printable(value)
    return repr(text[:60] + ("…" if len(text) > 60 else ""))


def _size(n: int) -> str:
    return f"{n >> 20} MiB" if n >= 1 << 20 and n % (1 << 20) == 0 else f"{n} bytes"
