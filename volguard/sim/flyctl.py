"""A `flyctl` stand-in for the local fleet (simulator only): `ssh console`, `machines list`.

volguard's `fly` transport is only as right as what it is tested against, so the
stand-in copies flyctl's documented behaviour, traps included (fly-facts §0.5, §4.1):

- `-C/--command` runs WITHOUT a shell, as hallpass does: the string is split with shlex
  and exactly that argv runs (`ls && pwd` gives ls a literal `&&`);
- the remote exit status is not propagated: any failure exits 1, with
  `Error: ssh shell: Process exited with status N` on stderr;
- only started Machines can be selected (`--machine="<id>" not found/started`);
- without --machine, the first started Machine is used and, when there are several,
  `No machine specified, using <id> in region <r>` goes to STDOUT, polluting it;
- the "Connecting to … complete" spinner line goes to stderr (not with -q).

It reaches the Machines over real OpenSSH with the fleet's ssh_config (host-key checking
on). The fleet writes a `flyctl` script that runs
``python -m volguard.sim.flyctl --fleet <state.json> ARGS…``.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NoReturn

from volguard.sim.objects import FLYCTL_VERSION
from volguard.sim.scenario import CONSOLE_GROUP, RELEASE_GROUP

DEFAULT_USER = "root"  # DefaultSshUsername, FLYCTL internal/command/ssh/connect.go
SHELL = "/bin/sh"  # hallpass's shell when no command is given: not a login shell


class FlyctlError(Exception):
    """Printed as `Error: <message>`; flyctl then exits 1."""


class _Parser(argparse.ArgumentParser):
    """argparse that reports like cobra (`Error: …`, exit 1) instead of exiting 2."""

    def error(self, message: str) -> NoReturn:
        if "invalid choice" in message:
            word = message.split("invalid choice: ", 1)[1].split(" ", 1)[0].strip("'")
            raise FlyctlError(f'unknown command "{word}" for "{self.prog}"')
        raise FlyctlError(message)


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = _parser().parse_args(argv)
        if args.command is None:
            raise FlyctlError('unknown command: try "flyctl ssh console" or "flyctl machines list"')
        state = json.loads(Path(args.fleet).read_text(encoding="utf-8"))
        return args.run(args, state)
    except FlyctlError as e:
        print(f"Error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # flyctl: a cancelled context exits 127
        return 127


def _parser() -> _Parser:
    parser = _Parser(prog="flyctl", description="flyctl stand-in of a volguard local fleet")
    parser.add_argument("--fleet", required=True, help="the fleet's state.json")
    commands = parser.add_subparsers(dest="command", parser_class=_Parser)

    ssh = commands.add_parser("ssh", help="ssh console")
    ssh_commands = ssh.add_subparsers(dest="ssh_command", required=True, parser_class=_Parser)
    console = ssh_commands.add_parser("console", help="run a command on a Machine")
    _app_flags(console)
    console.add_argument("-C", "--command", default="", help="command to run (no shell)")
    console.add_argument("--machine", default="", help="id of a started Machine")
    console.add_argument("-u", "--user", default=DEFAULT_USER)
    console.add_argument("-s", "--select", action="store_true")
    console.add_argument("-q", "--quiet", action="store_true")
    console.add_argument("--pty", action="store_true", help="accepted and ignored")
    console.add_argument("-r", "--region", default="")
    console.add_argument("-g", "--process-group", "--group", dest="group", default="")
    console.add_argument("-A", "--address", default="")
    console.add_argument("--container", default="", help="accepted and ignored")
    console.add_argument("positional_address", nargs="?", default="")
    console.set_defaults(run=ssh_console)

    machines = commands.add_parser("machines", aliases=["machine", "m"], help="machines list")
    machine_commands = machines.add_subparsers(
        dest="machines_command", required=True, parser_class=_Parser
    )
    listing = machine_commands.add_parser("list", aliases=["ls"])
    _app_flags(listing)
    listing.add_argument("--json", "-j", action="store_true")
    listing.add_argument("-q", "--quiet", action="store_true", help="ids only")
    listing.set_defaults(run=machines_list)

    version = commands.add_parser("version")
    version.set_defaults(run=show_version)
    return parser


def _app_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-a", "--app", default="")
    parser.add_argument("-c", "--config", default="", help="path to fly.toml")
    parser.add_argument("-o", "--org", default="", help="accepted and ignored")


def _check_app(args: argparse.Namespace, state: Mapping[str, Any]) -> str:
    """The app name as flyctl finds it: -a, then FLY_APP, then fly.toml's `app`."""
    name = args.app or os.environ.get("FLY_APP", "") or _fly_toml_app(args.config)
    if not name:
        raise FlyctlError(
            "the config for your app is missing an app name, add an app field to the "
            "fly.toml file or specify with the -a flag"
        )
    if name != state["app"]:
        raise FlyctlError(f'get app: Could not find App "{name}" (app {name} not found)')
    return name


def _fly_toml_app(config: str) -> str:
    path = Path(config or "fly.toml")
    try:
        return str(tomllib.loads(path.read_text(encoding="utf-8")).get("app", ""))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return ""


def ssh_console(args: argparse.Namespace, state: Mapping[str, Any]) -> int:
    """`fly ssh console`: pick a started Machine as flyctl does, run the command there."""
    app = _check_app(args, state)
    machine = _select(args, state, app)
    try:
        argv = shlex.split(args.command)
    except ValueError as e:
        raise FlyctlError(f"ssh shell: cannot split the command: {e}") from e
    return _run_ssh(machine, argv, state, user=args.user, quiet=args.quiet)


def _select(args: argparse.Namespace, state: Mapping[str, Any], app: str) -> dict[str, Any]:
    """The Machine, following FLYCTL internal/command/ssh/console.go addrForMachines."""
    machines = [
        m
        for m in state["machines"]
        if m["group"] not in (RELEASE_GROUP, CONSOLE_GROUP) and m["state"] == "started"
    ]  # flaps ListActive, then state == "started"
    if not machines:
        raise FlyctlError(
            f"app {app} has no started VMs.\nIt may be unhealthy or not have been deployed "
            "yet.\nTry the following command to verify:\n\nfly status"
        )
    if args.region:
        machines = [m for m in machines if m["region"] == args.region]
        if not machines:
            raise FlyctlError(f"app {app} has no VMs in region {args.region}")
    if args.group:
        machines = [m for m in machines if m["group"] == args.group]
        if not machines:
            raise FlyctlError(f"app {app} has no VMs in process group {args.group}")
    chosen = next((m for m in machines if m["id"] == args.machine), None)
    if args.machine and chosen is None:
        raise FlyctlError(f"--machine={json.dumps(args.machine)} not found/started")
    if args.select:
        if args.machine:
            raise FlyctlError("--machine can't be used with -s/--select")
        raise FlyctlError("selecting VM: -s/--select needs an interactive terminal (a TTY)")
    address = args.address or args.positional_address
    if address:
        keys = ("address", "private_ip", "id")
        found = [m for m in machines if address in (m[k] for k in keys)]
        if not found:
            raise FlyctlError(f"host unavailable at {address}: not a started Machine of {app}")
        return found[0]
    if chosen is None:
        chosen = machines[0]
        if len(machines) > 1:  # to STDOUT, as flyctl does
            print(f"No machine specified, using {chosen['id']} in region {chosen['region']}")
            sys.stdout.flush()
    return chosen


def _run_ssh(
    machine: Mapping[str, Any],
    argv: list[str],
    state: Mapping[str, Any],
    *,
    user: str,
    quiet: bool,
) -> int:
    """Run argv over ssh without letting the remote shell reinterpret it; collapse the
    exit status to flyctl's 0/1. ssh's own messages go to a log file (-E), so that only
    the remote command's output reaches stdout and stderr.

    The simulator always logs in as root (the app user has no login shell, as in most
    images) and switches user with runuser, which execs argv without a shell."""
    address, port = machine["address"], machine["port"]
    argv = argv or [SHELL]
    if user != "root":  # hallpass runs argv as that user, with no shell: so does runuser
        argv = ["runuser", "-u", user, "--", *argv]
    remote = shlex.join(argv)  # the remote login shell turns it back into exactly argv
    command = ["ssh", "-F", state["ssh_config"], "-l", "root"]
    command += ["-tt"] if sys.stdin.isatty() and argv == [SHELL] else ["-T"]
    if not quiet:  # runs once connected and authenticated: the spinner's "complete"
        line = shlex.quote(f"Connecting to {address}... complete")
        command += ["-o", "PermitLocalCommand=yes", "-o", f"LocalCommand=echo {line} >&2"]
    with tempfile.NamedTemporaryFile(prefix="flyctl-ssh-", suffix=".log") as log:
        command += ["-E", log.name, "--", machine["ssh_host"], remote]
        sys.stdout.flush()
        status = subprocess.run(command, check=False).returncode
        ssh_said = Path(log.name).read_text(encoding="utf-8", errors="replace").strip()
    if status == 0:
        return 0
    if status == 255 and ssh_said:
        raise FlyctlError(f"ssh shell: {_ssh_failure(ssh_said, address, port)}")
    if status < 0:
        raise FlyctlError(f"ssh shell: ssh was killed by signal {-status}")
    raise FlyctlError(f"ssh shell: Process exited with status {status}")


def _ssh_failure(log: str, address: str, port: int) -> str:
    """ssh's own error, in flyctl's lower-case Go style."""
    if "connection refused" in log.lower():
        return f"connect to {address} port {port}: connection refused"
    if "timed out" in log.lower():
        return f"connect to {address} port {port}: i/o timeout"
    last = log.splitlines()[-1].removeprefix("ssh: ").rstrip(".")
    return last[:1].lower() + last[1:]


def show_version(args: argparse.Namespace, state: Mapping[str, Any]) -> int:
    print(f"flyctl v{FLYCTL_VERSION} (volguard local fleet stand-in)")
    return 0


def machines_list(args: argparse.Namespace, state: Mapping[str, Any]) -> int:
    """`fly machines list`: every Machine as the API lists it (release ones included)."""
    _check_app(args, state)
    machines = [m["api"] for m in state["machines"]]
    if args.json:
        print(json.dumps(machines, indent=4))  # render.JSON: 4-space indent
    elif args.quiet:
        for m in machines:
            print(m["id"])
    else:
        print(f"{'ID':<16}{'NAME':<24}{'STATE':<10}{'REGION':<8}PROCESS GROUP")
        for m, entry in zip(machines, state["machines"], strict=True):
            print(f"{m['id']:<16}{m['name']:<24}{m['state']:<10}{m['region']:<8}{entry['group']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
