"""A `flyctl` stand-in for the local fleet (simulator only): `ssh console`, `machines
list` and `deploy`.

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

`flyctl deploy [WORKING_DIRECTORY] [-c fly.toml] [-a APP] [-y] [--strategy S] [--image I]
[--detach] [--remote-only|--local-only] …` reads fly.toml like flyctl (-c, else
./fly.toml; a file that is not there is no config, and then the app's deployed config is
used; a TOML error is `Error: failed loading app config from …`), validates it, and
sends it to the API simulator — FLY_FLAPS_BASE_URL, with FLY_API_TOKEN — at the
simulator-only POST /__sim/deploy (see volguard.sim.deployment for what that does), printing
flyctl's progress lines on stdout. Then it asks the local fleet (state.json's `control`
socket) to follow, and waits for it (not with --detach), so the simulated Machines run
the new config before it prints `✔ Machine <id> [<group>] update succeeded`. Without
--fleet it only deploys to the API. VOLGUARD_SIM_DEPLOY_FAIL=1 makes the release
command fail (`Error: release command failed - aborting deployment. …`, exit 1) and
nothing changes. No build happens: the image is only a new tag (or --image).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import socket
import subprocess
import sys
import tempfile
import tomllib
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NoReturn

from volguard.sim import ids
from volguard.sim.auth import authorization_header
from volguard.sim.deployment import REQUIRE_APP_NAME, release_command, validate_config
from volguard.sim.objects import FLYCTL_VERSION
from volguard.sim.scenario import CONSOLE_GROUP, RELEASE_GROUP

DEFAULT_USER = "root"  # DefaultSshUsername, FLYCTL internal/command/ssh/connect.go
SHELL = "/bin/sh"  # hallpass's shell when no command is given: not a login shell
FAIL_ENV = "VOLGUARD_SIM_DEPLOY_FAIL"  # set (not 0/false/empty): the release command fails
API_TIMEOUT = 60.0
FOLLOW_TIMEOUT = 300.0  # the fleet restarts the Machines a deploy changed
#: deploy's boolean flags, which cobra also takes as --flag=true|false.
DEPLOY_BOOLS = (
    "--yes", "--detach", "--remote-only", "--local-only", "--now", "--ha", "--update-only",
    "--build-only", "--push", "--no-cache", "--nixpacks", "--smoke-checks", "--dns-checks",
    "--no-public-ips",
)  # fmt: skip


class FlyctlError(Exception):
    """Printed as `Error: <message>`; flyctl then exits 1."""


class _Parser(argparse.ArgumentParser):
    """argparse that reports like cobra (`Error: …`, exit 1) instead of exiting 2, and
    takes no abbreviated long flags (cobra does not)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        if "invalid choice" in message:
            word = message.split("invalid choice: ", 1)[1].split(" ", 1)[0].strip("'")
            raise FlyctlError(f'unknown command "{word}" for "{self.prog}"')
        needs = re.fullmatch(r"argument (\S+): expected one argument", message)
        if needs:
            raise FlyctlError(f"flag needs an argument: {_long_name(needs[1])}")
        invalid = re.fullmatch(r"argument (\S+): invalid (\w+) value: '(.*)'", message)
        if invalid:
            flag, kind, value = _long_name(invalid[1]), invalid[2], invalid[3]
            parse = {"float": "ParseFloat", "int": "ParseInt"}.get(kind, "Parse")
            raise FlyctlError(
                f'invalid argument "{value}" for "{flag}" flag: strconv.{parse}: parsing '
                f'"{value}": invalid syntax'
            )
        raise FlyctlError(message)


def _long_name(names: str) -> str:
    """ "-c/--config" -> "--config"."""
    parts = names.split("/")
    return next((p for p in parts if p.startswith("--")), parts[0])


def main(argv: Sequence[str] | None = None) -> int:
    try:
        argv, bools = _bool_values(list(sys.argv[1:] if argv is None else argv))
        args, extra = _parser().parse_known_args(argv)
        if extra:
            raise FlyctlError(_unknown(extra, args))
        if args.command is None:
            raise FlyctlError(
                'unknown command: try "flyctl ssh console", "flyctl machines list" or '
                '"flyctl deploy"'
            )
        if bools and args.command != "deploy":
            raise FlyctlError(f"unknown flag: --{next(iter(bools)).replace('_', '-')}")
        for dest, value in bools.items():
            setattr(args, dest, value)
        if not args.fleet and args.command != "deploy":
            raise FlyctlError("the following arguments are required: --fleet")
        state = json.loads(Path(args.fleet).read_text(encoding="utf-8")) if args.fleet else None
        return args.run(args, state)
    except FlyctlError as e:
        sys.stdout.flush()
        print(f"Error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # flyctl: a cancelled context exits 127
        return 127


def _bool_values(argv: list[str]) -> tuple[list[str], dict[str, bool]]:
    """Take out cobra's `--flag=true|false` forms of deploy's boolean flags (argparse
    has no such form); answer the rest of argv and {dest: value}."""
    rest: list[str] = []
    values: dict[str, bool] = {}
    for i, arg in enumerate(argv):
        if arg == "--":
            rest += argv[i:]
            break
        flag, eq, value = arg.partition("=")
        if eq and flag in DEPLOY_BOOLS:
            truth = {"1": True, "t": True, "true": True, "0": False, "f": False, "false": False}
            if value.lower() not in truth or value not in (value.lower(), value.upper(),
                                                           value.capitalize()):  # fmt: skip
                raise FlyctlError(
                    f'invalid argument "{value}" for "{flag}" flag: strconv.ParseBool: '
                    f'parsing "{value}": invalid syntax'
                )
            values[flag.removeprefix("--").replace("-", "_")] = truth[value.lower()]
        else:
            rest.append(arg)
    return rest, values


def _unknown(extra: list[str], args: argparse.Namespace) -> str:
    """cobra's words for what argparse did not recognise."""
    first = extra[0]
    if first.startswith("--"):
        return f"unknown flag: {first.split('=', 1)[0]}"
    if first.startswith("-") and len(first) > 1:
        return f"unknown shorthand flag: '{first[1]}' in {first}"
    if args.command == "deploy":
        return f"accepts at most 1 arg(s), received {len(extra) + 1}"
    return f'unknown command {json.dumps(first)} for "flyctl"'


def _parser() -> _Parser:
    parser = _Parser(prog="flyctl", description="flyctl stand-in of a volguard local fleet")
    parser.add_argument("--fleet", default="", help="the fleet's state.json")
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

    deploy = commands.add_parser("deploy", help="deploy fly.toml to the API simulator")
    deploy.add_argument("working_directory", nargs="?", default="")
    deploy.add_argument("-a", "--app", default="")
    deploy.add_argument("-c", "--config", default="", help="path to fly.toml")
    deploy.add_argument("-t", "--access-token", default="")
    deploy.add_argument("-y", "--yes", action="store_true", help="accept all confirmations")
    deploy.add_argument("--detach", action="store_true", help="do not wait for the Machines")
    deploy.add_argument("--strategy", default="", help="canary, rolling, bluegreen, immediate")
    deploy.add_argument("-i", "--image", default="", help="deploy this image (no build)")
    deploy.add_argument("-e", "--env", action="append", default=[], help="NAME=VALUE")
    deploy.add_argument("-r", "--region", default="", help="the primary region")
    deploy.add_argument("--ha", action="store_true", default=True)
    deploy.add_argument("--update-only", action="store_true")
    deploy.add_argument("--build-only", action="store_true")
    for flag in ("--remote-only", "--local-only", "--now", "--push", "--no-cache",
                 "--nixpacks", "--no-public-ips"):  # fmt: skip
        deploy.add_argument(flag, action="store_true", help="accepted; nothing is built")
    for flag in ("--smoke-checks", "--dns-checks"):
        deploy.add_argument(flag, action="store_true", default=True)
    for flag in ("--dockerfile", "--build-target", "--image-label", "--ignorefile",
                 "--wait-timeout", "--lease-timeout", "--release-command-timeout",
                 "--vm-size", "--vm-cpu-kind", "--vm-memory", "--host-dedication-id"):  # fmt: skip
        deploy.add_argument(flag, default="", help="accepted and ignored")
    for flag in ("--build-arg", "--build-secret", "--label", "--file-local",
                 "--file-literal", "--file-secret"):  # fmt: skip
        deploy.add_argument(flag, action="append", default=[], help="accepted and ignored")
    deploy.add_argument("--max-unavailable", type=float, default=0.33)
    deploy.add_argument("--max-concurrent", type=int, default=16)
    deploy.add_argument("--vm-cpus", type=int, default=0)
    deploy.add_argument("--volume-initial-size", type=int, default=0)
    deploy.set_defaults(run=deploy_app)
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


# --- deploy ----------------------------------------------------------------------------


def deploy_app(args: argparse.Namespace, state: Mapping[str, Any] | None) -> int:
    """`fly deploy`, against the API simulator; the local fleet follows (see the module
    docstring). Progress on stdout, warnings on stderr, like flyctl."""
    if args.working_directory:
        try:
            os.chdir(args.working_directory)
        except OSError as e:
            raise FlyctlError(
                f"failed changing working directory: chdir {args.working_directory}: "
                f"{(e.strerror or str(e)).lower()}"
            ) from e
    path, config, text = _load_app_config(args.config)
    app = args.app or os.environ.get("FLY_APP", "") or str((config or {}).get("app") or "")
    if not app:
        raise FlyctlError(REQUIRE_APP_NAME)
    token = (
        args.access_token
        or os.environ.get("FLY_ACCESS_TOKEN", "")
        or os.environ.get("FLY_API_TOKEN", "")
    ).strip()
    if not token:
        raise FlyctlError("No access token available. Please login with 'flyctl auth login'")
    base = os.environ.get("FLY_FLAPS_BASE_URL", "").rstrip("/")
    if not base:
        raise FlyctlError(
            "FLY_FLAPS_BASE_URL is not set: this flyctl stand-in deploys only to the "
            "volguard API simulator (python -m volguard.sim)"
        )
    env = _env_flags(args.env)
    _out("==> Verifying app config")
    if config is not None:
        _out(f"Validating {path}")
        problems = validate_config(config, args.strategy)
        if problems:
            _out("✘ Configuration is invalid")
            for problem in problems:
                print(f"  {problem}", file=sys.stderr)
            raise FlyctlError("invalid app configuration")
        _out("✓ Configuration is valid")
    _out("--> Verified app config")
    image = args.image or (
        f"registry.fly.io/{app}:deployment-{ids.random_string(26, ids.CROCKFORD)}"
    )
    _out("==> Building image")
    if args.image:
        _out(f"Searching for image '{image}' remotely...")
        _out(f"image found: img_{ids.derive(image, 16, ids.LOWER_ALNUM)}")
    else:  # the simulator builds nothing: the "image" is a new tag
        _out(f"--> Building image done (simulated: nothing was built)\nimage: {image}")
    if args.build_only:
        return 0
    _out(f"\nWatch your deployment at https://fly.io/apps/{app}/monitoring\n")
    command = release_command(config or {})
    if command:
        _out(f"Running {app} release_command: {command}")
    body = {
        "app": app,
        "fly_toml": text,
        "strategy": args.strategy,
        "image": image,
        "yes": args.yes,
        "ha": args.ha,
        "update_only": args.update_only,
        "env": env,
        "primary_region": args.region,
        "fail_release_command": os.environ.get(FAIL_ENV, "").strip().lower()
        not in ("", "0", "false", "no"),
    }
    result = _post_deploy(base, token, body, yes=args.yes)
    if command:
        _out(f"✔ release_command {ids.random_string(14, ids.HEX)} completed successfully")
    _print_plan(result)
    _follow(state, result, detach=args.detach)
    for warning in result["warnings"]:
        print(f"WARN {warning}", file=sys.stderr)
    _print_outcome(result, waited=not args.detach)
    _out(f"\nVisit your newly deployed app at https://{app}.fly.dev/")
    return 0


def _out(line: str) -> None:
    print(line, flush=True)


def _load_app_config(flag: str) -> tuple[str | None, dict[str, Any] | None, str | None]:
    """(path, parsed, text) of the app config, as LoadAppConfigIfPresent finds it: -c
    PATH (or PATH/fly.toml), else ./fly.toml; a missing file is no config, any other
    problem an error."""
    candidates = [Path(flag), Path(flag) / "fly.toml"] if flag else [Path.cwd() / "fly.toml"]
    for candidate in candidates:
        try:
            raw = candidate.read_text(encoding="utf-8")
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            continue
        except (OSError, UnicodeDecodeError) as e:
            raise FlyctlError(f"failed loading app config from {candidate}: {e}") from e
        text = raw.removeprefix("\ufeff")  # flyctl takes a byte-order mark
        try:
            return str(candidate.absolute()), tomllib.loads(text), text
        except tomllib.TOMLDecodeError as e:
            raise FlyctlError(f"failed loading app config from {candidate}: toml: {e}") from e
    return None, None, None


def _env_flags(values: list[str]) -> dict[str, str]:
    env = {}
    for value in values:
        name, eq, setting = value.partition("=")
        if not eq or not name:
            raise FlyctlError(
                f"failed parsing environment: '{value}' should be of the format NAME=VALUE"
            )
        env[name] = setting
    return env


def _post_deploy(base: str, token: str, body: dict[str, Any], *, yes: bool) -> dict[str, Any]:
    """POST /__sim/deploy; a needed confirmation is asked for (a TTY) or refused."""
    status, answer = _api(base, token, "/__sim/deploy", body)
    if status == 409 and answer.get("status") == "confirmation_required" and not yes:
        for mid, group in answer.get("machines") or []:
            print(
                f"Warning! machine {mid} [{group}] has a volume mounted but app config "
                "does not specify a volume.\nThis usually indicates a misconfiguration.",
                file=sys.stderr,
            )
        if not sys.stdin.isatty():
            raise FlyctlError("yes flag must be specified when not running interactively")
        print("? Continue with the deployment? (y/N) ", end="", file=sys.stderr, flush=True)
        if sys.stdin.readline().strip().lower() not in ("y", "yes"):
            raise FlyctlError(f"deployment cancelled: {answer.get('error', '')}")
        status, answer = _api(base, token, "/__sim/deploy", body | {"yes": True})
    if status == 200:
        return answer
    message = str(answer.get("error") or f"HTTP {status}")
    if status == 401:
        raise FlyctlError("You must be authenticated to view this.")
    if status == 404 and message == "app not found":
        raise FlyctlError(f'failed to get app: Could not find App "{body["app"]}"')
    for problem in answer.get("problems") or []:
        print(f"  {problem}", file=sys.stderr)
    raise FlyctlError(message)


def _api(base: str, token: str, path: str, body: Mapping[str, Any]) -> tuple[int, dict[str, Any]]:
    request = urllib.request.Request(  # noqa: S310 - the simulator's URL, http on purpose
        base + path,
        data=json.dumps(body).encode(),
        method="POST",
        headers={
            "Authorization": authorization_header(token),
            "Content-Type": "application/json",
            "User-Agent": f"fly-cli/{FLYCTL_VERSION} (volguard stand-in)",
        },
    )
    try:
        with urllib.request.urlopen(request, timeout=API_TIMEOUT) as response:  # noqa: S310
            status, raw = response.status, response.read()
    except urllib.error.HTTPError as e:
        status, raw = e.code, e.read()
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise FlyctlError(f"failed to reach the Machines API at {base}: {reason}") from e
    try:
        answer = json.loads(raw or b"{}")
    except ValueError:
        answer = {"error": raw[:200].decode(errors="replace")}
    return status, answer if isinstance(answer, dict) else {"error": str(answer)}


def _print_plan(result: Mapping[str, Any]) -> None:
    """warnAboutProcessGroupChanges, then what a deploy launches (flyctl's words)."""
    changes = result.get("process_groups_changed") or {}
    destroy, create = changes.get("destroy") or {}, changes.get("create") or {}
    if destroy or create:
        _out("This deployment will:" if result.get("first_deploy") else
             "Process groups have changed. This will:")  # fmt: skip
        for group, count in destroy.items():
            _out(f' * destroy {count} "{group}" machine{"" if count == 1 else "s"}')
        for group, count in create.items():
            what = f'1 "{group}" machine' if count == 1 else f'2 "{group}" machines'
            _out(f" * create {what}")
        _out("")
    for volume in result.get("volumes_created") or []:
        _out(
            f"Creating a {volume['size_gb']} GB volume named '{volume['name']}' for process "
            f"group '{volume['group']}'. Use 'fly vol extend' to increase its size"
        )
    launched = set()
    for machine in result.get("created") or []:
        if machine["group"] not in launched:
            launched.add(machine["group"])
            _out(f"No machines in group {machine['group']}, launching a new machine")
        elif machine.get("standby_for"):
            _out(f"Creating a standby machine for {machine['standby_for']}")
        else:
            _out("Creating a second machine to increase service availability")
        _out(f"  Machine {machine['id']} [{machine['group']}] was created")
    if launched:
        print("Finished launching new machines", file=sys.stderr, flush=True)


def _follow(state: Mapping[str, Any] | None, result: Mapping[str, Any], *, detach: bool) -> bool:
    """Ask the local fleet (if any) to run what the API now says, and wait until it has
    (not with --detach); True if it was waited for."""
    control = (state or {}).get("control")
    if not control:
        return False
    request = {
        "op": "sync",
        "state": {k: result[k] for k in ("app", "machines", "fly_toml")},
    }
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(FOLLOW_TIMEOUT)
        try:
            sock.connect(str(control))
            sock.sendall(json.dumps(request).encode() + b"\n")
            if detach:
                return False
            reply = b""
            while not reply.endswith(b"\n"):
                chunk = sock.recv(65536)
                if not chunk:
                    break
                reply += chunk
        except OSError as e:
            raise FlyctlError(f"the local fleet did not follow the deploy ({control}): {e}") from e
    try:
        answer = json.loads(reply)
    except ValueError as e:
        raise FlyctlError(f"the local fleet gave no answer ({control})") from e
    if not answer.get("ok"):
        raise FlyctlError(f"timeout reached waiting for machines to update: {answer.get('error')}")
    return True


def _print_outcome(result: Mapping[str, Any], *, waited: bool) -> None:
    """The new Machines, then the rolling update, once the Machines run (not --detach)."""
    for machine in result.get("created") or []:
        if waited and machine["state"] == "started":
            _out(f"✔ Machine {machine['id']} [{machine['group']}] update succeeded")
    replaced, updated = result.get("replaced") or [], result.get("updated") or []
    if not (replaced or updated):
        return
    strategy = result.get("strategy", "rolling")
    _out(f"Updating existing machines in '{result['app']}' with {strategy} strategy")
    for machine in replaced:
        _out(f"  Replacing {machine['old']} [{machine['group']}] by new machine")
        _out(f"  Created machine {machine['new']} [{machine['group']}]")
        if waited:
            _out(f"✔ Machine {machine['new']} [{machine['group']}] update succeeded")
    for machine in updated:
        if waited:
            _out(f"✔ Machine {machine['id']} [{machine['group']}] update succeeded")
    print("  Finished deploying", file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main())
