"""Transports: how volguard reaches a Machine, each a pytest-testinfra backend.

- `fly`: `flyctl ssh console --machine ID --command "sh -c '…'"`, stdin from
  /dev/null. flyctl runs no shell and collapses every remote failure to exit 1
  (fly-facts §0.5), so the probe prints its own exit status as a sentinel.
- `ssh`: testinfra's SSH backend with ControlMaster reuse, to a host built from
  a template (default `{id}.vm.{app}.internal`, over WireGuard). Host-key
  checking is whatever the user's ssh configuration says; volguard never
  turns it off.
- `local`: the checks run on this very Machine (a console session, a health
  endpoint).
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from typing import Any

import testinfra
from testinfra.backend.base import BaseBackend, CommandResult

from volguard.errors import Unreachable, UsageError
from volguard.fly.models import Machine

TRANSPORTS = ("fly", "ssh", "local")
DEFAULT_HOST_TEMPLATE = "{id}.vm.{app}.internal"


@dataclass(frozen=True)
class TransportOptions:
    kind: str = "fly"
    app: str = ""
    user: str = "root"
    flyctl: str = "flyctl"
    host_template: str = DEFAULT_HOST_TEMPLATE
    ssh_config: str | None = None
    timeout: float = 60.0


class FlyBackend(BaseBackend):
    """testinfra backend over `flyctl ssh console`: every command is one flyctl session."""

    NAME = "fly"

    def __init__(self, machine_id: str, options: TransportOptions, **kwargs: Any) -> None:
        self.machine_id = machine_id
        self.options = options
        super().__init__(machine_id, **kwargs)

    def run(self, command: str, *args: str, **kwargs: Any) -> CommandResult:
        command = self.get_command(command, *args)
        argv = [
            self.options.flyctl, "ssh", "console",
            "--app", self.options.app,
            "--machine", self.machine_id,
            "--user", self.options.user,
            "--command", f"sh -c {shlex.quote(command)}",
        ]  # fmt: skip
        try:
            done = subprocess.run(
                argv,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                timeout=self.options.timeout,
                check=False,
            )
        except FileNotFoundError:
            raise Unreachable(f"{self.options.flyctl} is not installed or not on PATH") from None
        except subprocess.TimeoutExpired:
            raise Unreachable(
                f"flyctl ssh console timed out after {self.options.timeout:g} s"
            ) from None
        return self.result(done.returncode, self.encode(command), done.stdout, done.stderr)


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
        if kind == "fly":
            return testinfra.host.Host(FlyBackend(machine.id, self.options))
        if kind == "local":
            return testinfra.get_host("local://")
        name = self.options.host_template.format(
            id=machine.id, app=self.options.app, region=machine.region, group=machine.group,
            name=machine.name, private_ip=machine.private_ip,
        )  # fmt: skip
        return testinfra.get_host(
            f"ssh://{self.options.user}@{name}",
            ssh_config=self.options.ssh_config,
            controlpersist=120,
            # testinfra %-formats the ssh command line, so ssh's %C token is written %%C
            controlpath=os.path.join(self._control_dir, "%%C"),
            timeout=int(self.options.timeout),
        )
