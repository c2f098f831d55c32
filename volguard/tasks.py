"""volguard's tasks: one collection behind both `invoke` (tasks.py) and `volguard`.

Each task is a thin edge: parse flags, call the library, render, exit with
the documented code (0 ok, 2 findings at or above --fail-on, 1 volguard could
not do its job). Heavy imports stay inside the task bodies.
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from typing import Any

from invoke import Collection, Context, task
from invoke.exceptions import Exit

from volguard.config import DEFAULTS
from volguard.errors import UsageError, VolguardError
from volguard.terminal import printable

_REPORT_HELP = {
    "format": "stdout format: text, json, junit, sarif or github (default: text)",
    "output": "also write FORMAT:PATH, e.g. sarif:volguard.sarif (repeatable)",
    "fail_on": "lowest severity that fails the run: error, warning, info or never (default: error)",
    "report_only": "always exit 0, whatever is found",
    "no_waivers": "ignore every waiver (inline and configured)",
}


def _edge(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn volguard's own errors into one line on stderr and exit code 1; never a traceback."""

    @functools.wraps(fn)
    def wrapper(c: Context, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(c, *args, **kwargs)
        except VolguardError as e:
            print(f"volguard: error: {printable(e)}", file=sys.stderr)
            raise Exit(code=e.exit_code) from None
        except (Exit, KeyboardInterrupt):
            raise
        except Exception as e:  # a bug of ours: say so in one line, traceback on request
            if os.environ.get("VOLGUARD_DEBUG"):
                raise
            print(
                f"volguard: internal error: {type(e).__name__}: {printable(e)} "
                "(set VOLGUARD_DEBUG=1 for the traceback)",
                file=sys.stderr,
            )
            raise Exit(code=1) from None

    return wrapper


@task(
    positional=["path"],
    iterable=["output"],
    auto_shortflags=False,
    help={
        "path": "fly.toml to check (default: volguard.fly_toml, i.e. fly.toml)",
        **_REPORT_HELP,
        "media_root": "MEDIA_ROOT to check (default: volguard.media_root, else fly.toml "
        "[env] MEDIA_ROOT)",
        "media_groups": "comma-separated process groups that read or write media "
        "(default: every group)",
    },
)
@_edge
def lint(
    c: Context,
    path: str | None = None,
    format: str = "text",
    output: list[str] | None = None,
    fail_on: str = "error",
    report_only: bool = False,
    no_waivers: bool = False,
    media_root: str | None = None,
    media_groups: str | None = None,
) -> None:
    """Check fly.toml and MEDIA_ROOT offline: the pre-deploy CI gate (VG100-VG112)."""
    from volguard.config import Settings
    from volguard.lint import lint as run_lint

    path = _path_argument(path)
    settings = Settings.load(
        c.config.get("volguard"), media_root=media_root, media_groups=media_groups
    )
    threshold, targets = _report_options(format, output or [], fail_on)
    report = run_lint(settings, path, use_waivers=not no_waivers)
    _finish(report, format, targets, threshold, report_only)


def _report_options(
    fmt: str, outputs: list[str], fail_on: str
) -> tuple[Any, list[tuple[str, str]]]:
    from volguard.render import check_format
    from volguard.report import parse_fail_on

    check_format(fmt)
    try:
        threshold = parse_fail_on(fail_on)
    except ValueError as e:
        raise UsageError(str(e)) from None
    targets = []
    for spec in outputs:
        out_fmt, sep, out_path = spec.partition(":")
        if not sep or not out_path:
            raise UsageError(f"--output {spec!r}: write it as FORMAT:PATH, e.g. sarif:out.sarif")
        targets.append((check_format(out_fmt), out_path))
    return threshold, targets


def _finish(
    report: Any, fmt: str, targets: list[tuple[str, str]], threshold: Any, report_only: bool
) -> None:
    """Publish the report, then exit with the documented code (2 for findings, unless told)."""
    _emit(report, fmt, targets, threshold)
    code = report.exit_code(threshold)
    if code and not report_only:
        raise Exit(code=code)


def _emit(report: Any, fmt: str, targets: list[tuple[str, str]], threshold: Any) -> None:
    """Write the report files first (all or nothing), then stdout, then the step summary."""
    from volguard.render import render
    from volguard.safeio import write_files

    rendered = {f: render(report, f, fail_on=threshold) for f in {f for f, _ in targets}}
    write_files((out_path, rendered[out_fmt]) for out_fmt, out_path in targets)
    color = fmt == "text" and sys.stdout.isatty() and "NO_COLOR" not in os.environ
    sys.stdout.write(render(report, fmt, fail_on=threshold, color=color))
    sys.stdout.flush()
    summary = os.environ.get("GITHUB_STEP_SUMMARY")
    if summary and "github" in {fmt, *rendered}:
        from volguard.render.github import step_summary

        try:
            with open(summary, "a", encoding="utf-8") as fh:
                fh.write(step_summary(report, threshold))
        except OSError as e:
            print(f"volguard: warning: cannot append to $GITHUB_STEP_SUMMARY: {e}", file=sys.stderr)


@task(
    positional=["path"],
    iterable=["output"],
    auto_shortflags=False,
    help={
        "path": "fly.toml to check (default: volguard.fly_toml, i.e. fly.toml)",
        **_REPORT_HELP,
        "offline": "run only the checks that need no network (the static layer)",
        "app": "Fly app name (default: volguard.app, else fly.toml `app`)",
        "media_root": "MEDIA_ROOT to check (default: volguard.media_root, else fly.toml "
        "[env] MEDIA_ROOT)",
        "media_groups": "comma-separated process groups that read or write media "
        "(default: every group)",
        "verbose": "print what each layer did, and the API calls made, on stderr",
        "transport": "how to reach each Machine: fly (flyctl ssh console), ssh or local "
        "(default: volguard.transport, fly)",
        "machine": "check only this Machine id",
        "group": "check only the Machines of this process group",
    },
)
@_edge
def verify_volume(
    c: Context,
    path: str | None = None,
    format: str = "text",
    output: list[str] | None = None,
    fail_on: str = "error",
    report_only: bool = False,
    no_waivers: bool = False,
    offline: bool = False,
    app: str | None = None,
    media_root: str | None = None,
    media_groups: str | None = None,
    verbose: bool = False,
    transport: str | None = None,
    machine: str | None = None,
    group: str | None = None,
) -> None:
    """Verify the deployment: fly.toml, then the Machines API (FLY_API_TOKEN), then each Machine."""
    from volguard.config import Settings
    from volguard.fly.client import Token
    from volguard.verify import verify

    path = _path_argument(path)
    settings = Settings.load(
        c.config.get("volguard"),
        app=app,
        media_root=media_root,
        media_groups=media_groups,
        transport=transport,
    )
    threshold, targets = _report_options(format, output or [], fail_on)
    token = None if offline else Token.from_env()
    report = verify(
        settings,
        path,
        offline=offline,
        token=token,
        use_waivers=not no_waivers,
        machine_ids=(machine,) if machine else (),
        groups=(group,) if group else (),
    )
    if verbose:
        for name, layer in report.layers.items():
            why = f" ({printable(layer.reason)})" if layer.reason else ""
            print(f"volguard: {name}: {layer.status}{why}", file=sys.stderr)
        if "api_calls" in report.stats:
            print(f"volguard: platform: {report.stats['api_calls']} API calls", file=sys.stderr)
        if "machines_checked" in report.stats:
            print(
                f"volguard: machine: {report.stats['machines_checked']} Machines checked in "
                f"{report.stats['machine_sessions']} sessions",
                file=sys.stderr,
            )
    _finish(report, format, targets, threshold, report_only)


@task(
    auto_shortflags=False,
    help={
        "path": "fly.toml to plan from (default: volguard.fly_toml)",
        "app": "Fly app name (default: volguard.app, else fly.toml `app`)",
        "apply": "create the planned volumes (without it, only the plan is printed)",
        "yes": "do not ask for confirmation (for CI)",
        "count": "volumes wanted per group and region (default: one per Machine)",
        "size": "size in GB (default: [mounts] initial_size, else 1 like flyctl)",
        "group": "only this process group (default: every group with a mount)",
        "require_unique_zone": "spread volumes over hardware zones (default: on; "
        "--no-require-unique-zone when a region needs more volumes than it has zones)",
        "audit_log": "append-only JSONL log of every change (default: .volguard/audit.jsonl)",
    },
)
@_edge
def create_volume(
    c: Context,
    path: str | None = None,
    app: str | None = None,
    apply: bool = False,
    yes: bool = False,
    count: str = "",
    size: str = "",
    group: str | None = None,
    require_unique_zone: bool = True,
    audit_log: str | None = None,
) -> None:
    """Plan, then (--apply) create the volumes the app's Machines need; safe to repeat."""
    from volguard.audit_log import DEFAULT_PATH, AuditLog
    from volguard.fly.volumes import ensure_volumes

    count_n = _whole_number("--count", count, 1, 1000)
    size_gb = _whole_number("--size", size, 1, 500)
    _, config, app_name, token = _platform_inputs(c, path, app)
    groups = None
    if group:
        if group not in config.group_names:
            raise UsageError(
                f"--group: {config.path} has no process group {group!r} "
                f"(its groups: {', '.join(config.group_names)})"
            )
        groups = (group,)
    ensure_volumes(
        config,
        app_name,
        token,
        apply=apply,
        confirm=None if yes else _confirm,
        count=count_n,
        size_gb=size_gb,
        groups=groups,
        require_unique_zone=require_unique_zone,
        audit=AuditLog(audit_log or DEFAULT_PATH, command="create-volume"),
        out=print,
    )


@task(
    auto_shortflags=False,
    help={
        "path": "fly.toml naming the media mounts (default: volguard.fly_toml)",
        "app": "Fly app name (default: volguard.app, else fly.toml `app`)",
        "apply": "take the snapshots (without it, only the plan is printed)",
        "timeout": "seconds to wait for each snapshot to be listed (default: 300)",
        "audit_log": "append-only JSONL log of every change (default: .volguard/audit.jsonl)",
    },
)
@_edge
def snapshot_volumes(
    c: Context,
    path: str | None = None,
    app: str | None = None,
    apply: bool = False,
    timeout: str = "300",
    audit_log: str | None = None,
) -> None:
    """Take an on-demand snapshot of each media volume and wait until Fly lists it."""
    from volguard.audit_log import DEFAULT_PATH, AuditLog
    from volguard.fly.volumes import snapshot_media_volumes

    settings, config, app_name, token = _platform_inputs(c, path, app)
    snapshot_media_volumes(
        config,
        settings,
        app_name,
        token,
        apply=apply,
        timeout=_whole_number("--timeout", timeout, 1, 86400) or 300,
        audit=AuditLog(audit_log or DEFAULT_PATH, command="snapshot-volumes"),
        out=print,
    )


@task(
    auto_shortflags=False,
    help={
        "path": "fly.toml naming the media mounts (default: volguard.fly_toml)",
        "app": "Fly app name (default: volguard.app, else fly.toml `app`)",
        "fix": "mark the rows whose file is missing failed (after the gate, a snapshot and "
        "an export)",
        "delete": "delete those rows instead (asks, naming the app and the count)",
        "yes": "--delete without asking (for CI)",
        "json": "print one JSON document instead of text",
        "transport": "how to reach the Machine: fly (flyctl ssh console), ssh or local "
        "(default: volguard.transport, fly)",
        "machine": "run on this Machine (default: the first started one of the web group)",
        "manage_py": "how to run manage.py in the app's directory (default: volguard.manage_py, "
        "else 'python3 manage.py')",
        "max_missing": "passed to check_missing_files: refuse (VG404) above this many missing "
        "rows, a count or a percentage (its default: 10%)",
        "force": "passed to check_missing_files: override the VG404 interlock",
        "allow_delete_receivers": "passed to check_missing_files: let --delete run the app's "
        "pre_delete/post_delete receivers, which may delete files (refused by default)",
        "timeout": "seconds manage.py may run on the Machine (default: 900)",
        "samples": "sample rows shown per reason (default: 3)",
    },
)
@_edge
def remediate(
    c: Context,
    path: str | None = None,
    app: str | None = None,
    fix: bool = False,
    delete: bool = False,
    yes: bool = False,
    json: bool = False,
    transport: str | None = None,
    machine: str | None = None,
    manage_py: str | None = None,
    max_missing: str = "",
    force: bool = False,
    allow_delete_receivers: bool = False,
    timeout: str = "",
    samples: str = "",
) -> None:
    """Audit the app's rows whose file is missing, on one Machine; --fix/--delete repair them."""

    from volguard.audit_document import parse_max_missing
    from volguard.audit_log import AuditLog
    from volguard.config import Settings
    from volguard.remediate import RemediateContext, RemediateOptions, render_text
    from volguard.remediate import remediate as run_remediate

    if fix and delete:
        raise UsageError("--fix and --delete exclude each other")
    action = "fix" if fix else "delete" if delete else None
    if action is None:
        for flag, given in (("--yes", yes), ("--force", force), ("--max-missing", max_missing)):
            if given:
                raise UsageError(f"{flag} needs --fix or --delete")
    if allow_delete_receivers and action != "delete":
        raise UsageError("--allow-delete-receivers needs --delete")
    seconds = _whole_number("--timeout", timeout, 10, 86400) or 900
    per_reason = _whole_number("--samples", samples, 0, 100)
    if max_missing:
        parse_max_missing(max_missing)
    _, config, app_name, token = _platform_inputs(c, path, app)
    settings = Settings.load(
        c.config.get("volguard"), app=app, transport=transport, manage_py=manage_py
    )

    def note(line: str) -> None:
        print(line, file=sys.stderr if json else sys.stdout)

    options = RemediateOptions(
        action=action,
        fly_toml=path or settings.fly_toml,
        machine_id=machine or None,
        max_missing=max_missing or None,
        force=force,
        allow_delete_receivers=allow_delete_receivers,
        timeout=seconds,
        samples=3 if per_reason is None else per_reason,
    )
    outcome = run_remediate(
        RemediateContext(
            settings,
            config,
            app_name,
            token,
            options,
            confirm=None if yes else _confirm,
            audit=AuditLog(command="remediate"),
            out=note,
        )
    )
    _end_with(outcome, json, render_text)


def _end_with(
    outcome: Any,
    as_json: bool,
    render_text: Callable[[Any], str],
    mask: Callable[[str], str] = lambda text: text,
) -> None:
    """Print a runbook command's outcome (its JSON document, or its text for people), then
    end with the command's exit code or its error (one line, exit 1, by `_edge`)."""
    import json

    if as_json:
        print(mask(json.dumps(outcome.as_dict(), indent=2, default=str)))
    else:
        sys.stdout.write(mask(render_text(outcome)))
    sys.stdout.flush()
    if outcome.error is not None:
        raise outcome.error
    if outcome.exit_code:
        raise Exit(code=outcome.exit_code)


def _whole_number(flag: str, value: str, low: int, high: int) -> int | None:
    """Parse a numeric flag ourselves: Invoke's parser ends in a traceback on `--count abc`."""
    if value in ("", None):
        return None
    try:
        number = int(str(value).strip())
    except ValueError:
        raise UsageError(f"{flag} must be a whole number, not {value!r}") from None
    if not low <= number <= high:
        raise UsageError(f"{flag} must be between {low} and {high}, not {number}")
    return number


def _path_argument(path: str | None) -> str | None:
    path = path or None  # `volguard` fills a left-out positional with ""
    if path and path.startswith("-"):
        raise UsageError(f"unknown option {path!r} (see --help)")
    return path


def _platform_inputs(
    c: Context, path: str | None, app: str | None, settings: Any = None
) -> tuple[Any, Any, str, Any]:
    """Settings, a readable fly.toml, the app name and a token, or a one-line error."""
    from volguard.config import Settings
    from volguard.fly.client import Token
    from volguard.flytoml import read_fly_toml

    if settings is None:
        settings = Settings.load(c.config.get("volguard"), app=app)
    fly_toml = path or settings.fly_toml
    config, problems = read_fly_toml(fly_toml)
    if config is None or problems:
        raise VolguardError(problems[0].message if problems else f"cannot read {fly_toml}")
    app_name = settings.app or config.app
    if not app_name:
        raise UsageError(f"no app name: set `app` in {fly_toml} or pass --app")
    token = Token.from_env()
    if token is None:
        raise UsageError("FLY_API_TOKEN is not set (make one with `fly tokens create deploy`)")
    return settings, config, app_name, token


def _confirm(question: str) -> bool:
    if not sys.stdin.isatty():
        raise UsageError(f"{question} Not asked: stdin is not a terminal; pass --yes to proceed")
    answer = input(f"{question} Type yes to continue: ")
    return answer.strip().lower() == "yes"


ns = Collection(lint, verify_volume, create_volume, snapshot_volumes, remediate)
ns.configure({"volguard": dict(DEFAULTS)})
#: Tasks whose positional argument may be left out (`volguard lint` = `volguard lint fly.toml`).
OPTIONAL_POSITIONALS = {"lint": "path", "verify-volume": "path"}


@task(
    positional=["path"],
    auto_shortflags=False,
    help={
        "path": "fly.toml to deploy (default: volguard.fly_toml, i.e. fly.toml)",
        "app": "Fly app name (default: volguard.app, else fly.toml `app`)",
        "apply": "create the volumes the plan calls for (without it a shortfall fails the run)",
        "yes": "no confirmation prompts (for CI)",
        "no_deploy": "skip `flyctl deploy` (verify and audit what is deployed)",
        "fix": "when the audit finds rows without their file, run remediate --fix",
        "no_audit": "skip the missing-file audit (and the fix)",
        "resume": "continue the latest deploy run of this app from its first failed step",
        "wait_timeout": "seconds to wait for the media groups' Machines to start (default 300)",
        "max_missing": "passed to check_missing_files --max-missing (default 10%)",
        "transport": "how to reach each Machine: fly, ssh or local (default: volguard.transport)",
    },
)
@_edge
def deploy(
    c: Context,
    path: str | None = None,
    app: str | None = None,
    apply: bool = False,
    yes: bool = False,
    no_deploy: bool = False,
    fix: bool = False,
    no_audit: bool = False,
    resume: bool = False,
    wait_timeout: str = "300",
    max_missing: str | None = None,
    transport: str | None = None,
) -> None:
    """The runbook: lint → volumes → flyctl deploy → wait → verify → audit → fix; resumable.

    Each step ends ok, changed, failed or skipped; the run record goes to .volguard/runs/
    and, in GitHub Actions, a summary to $GITHUB_STEP_SUMMARY. Exit 0 when every step
    succeeded, 2 when a step failed on what it found, 1 when volguard could not run.
    """
    from volguard.config import Settings
    from volguard.deploy import DeployContext, DeployOptions, run_deploy
    from volguard.runs import write_step_summary

    path = _path_argument(path)
    timeout = _whole_number("--wait-timeout", wait_timeout, 1, 86400) or 300
    base = Settings.load(c.config.get("volguard"), app=app, transport=transport)
    settings, config, app_name, token = _platform_inputs(c, path, app, base)
    options = DeployOptions(
        fly_toml=path or settings.fly_toml,
        apply=apply,
        yes=yes,
        deploy=not no_deploy,
        fix=fix,
        audit=not no_audit,
        resume=resume,
        wait_timeout=float(timeout),
        max_missing=max_missing,
    )
    record = run_deploy(
        DeployContext(
            settings=settings,
            config=config,
            app=app_name,
            token=token,
            options=options,
            out=print,
            confirm=_confirm,
        )
    )
    print(f"\ndeploy {record.status}: {app_name} (run record {record.path})")
    print(record.text())
    write_step_summary(record)
    if record.status != "succeeded":
        raise Exit(code=2)


ns.add_task(deploy)
OPTIONAL_POSITIONALS["deploy"] = "path"


@task(
    auto_shortflags=False,
    help={
        "path": "fly.toml naming the media mounts (default: volguard.fly_toml, i.e. fly.toml)",
        "app": "Fly app (default: volguard.app, else fly.toml `app`)",
        "apply": "copy the found files to the target Machine (after the gate and a snapshot)",
        "yes": "--apply without asking (for CI)",
        "sources": "where to look, comma-separated: machines, volumes, snapshots (default: "
        "all, searched in that order of cost)",
        "snapshot_before": "search only snapshots taken before this ISO 8601 time, newest first",
        "format": "stdout format: text or json (default: text)",
        "resume": "continue the latest recover --apply run of this app; nothing verified is "
        "copied again",
        "prefer": "settle a conflict between copies that differ: newest or largest",
        "transport": "how to reach each Machine: fly, ssh or local (default: volguard.transport)",
        "machine": "the target: this started Machine of a media group (default: the first "
        "started Machine of the web group)",
        "manage_py": "how to run manage.py in the app's directory (default: volguard.manage_py, "
        "else python3 manage.py)",
        "timeout": "seconds one audit or search session may take (default 900)",
    },
)
@_edge
def recover(
    c: Context,
    path: str | None = None,
    app: str | None = None,
    apply: bool = False,
    yes: bool = False,
    sources: str = "",
    snapshot_before: str = "",
    format: str = "text",
    resume: bool = False,
    prefer: str = "",
    transport: str | None = None,
    machine: str | None = None,
    manage_py: str | None = None,
    timeout: str = "",
) -> None:
    """Find the app's lost uploads on its other Machines, unattached volumes and snapshots;
    --apply copies them back, verified.

    Plan by default: the rows whose file is missing (the audit on the target Machine), and
    for each, the copies on every other started Machine, then on a fork of each unattached
    volume and a restore of each snapshot (found, conflict or not_found).
    Exit 0 when every missing row is found (or restored with --apply), 2 when some remain,
    1 when volguard could not run. See docs/recover.md.
    """

    from volguard.audit_log import AuditLog
    from volguard.config import Settings
    from volguard.recover import (
        RecoverContext,
        RecoverOptions,
        parse_before,
        parse_sources,
        render_text,
    )
    from volguard.recover import recover as run_recover
    from volguard.recover_document import PREFERENCES

    if format not in ("text", "json"):
        raise UsageError(f"--format {format!r}: choose text or json")
    if prefer and prefer not in PREFERENCES:
        raise UsageError(f"--prefer {prefer!r}: choose {' or '.join(PREFERENCES)}")
    for flag, given in (("--yes", yes), ("--resume", resume)):
        if given and not apply:
            raise UsageError(f"{flag} needs --apply")
    kinds, _ = parse_sources(sources)
    before = parse_before(snapshot_before)
    seconds = _whole_number("--timeout", timeout, 10, 86400) or 900
    _, config, app_name, token = _platform_inputs(c, path, app)
    settings = Settings.load(
        c.config.get("volguard"), app=app, transport=transport, manage_py=manage_py
    )
    as_json = format == "json"

    def note(line: str) -> None:
        print(line, file=sys.stderr if as_json else sys.stdout)

    options = RecoverOptions(
        apply=apply,
        sources=kinds,
        snapshot_before=before,
        prefer=prefer or None,
        resume=resume,
        fly_toml=path or settings.fly_toml,
        machine_id=machine or None,
        timeout=float(seconds),
    )
    outcome = run_recover(
        RecoverContext(
            settings,
            config,
            app_name,
            token,
            options,
            confirm=None if yes else _confirm,
            audit=AuditLog(command="recover"),
            out=note,
        )
    )
    _end_with(outcome, as_json, render_text)


ns.add_task(recover)


@task(
    auto_shortflags=False,
    iterable=["setting", "rollback"],
    help={
        "path": "fly.toml naming the media mounts (default: volguard.fly_toml, i.e. fly.toml)",
        "app": "Fly app (default: volguard.app, else fly.toml `app`)",
        "to": "the STORAGES alias of the object store to copy to (required)",
        "from": "the STORAGES alias to copy from (default: migrate_media's, the default "
        "storage; required with --apply --setting: after the deploy the default is the new one)",
        "apply": "snapshot the media volumes, then copy on each Machine, one at a time; with "
        "--setting, then the cutover: fly.toml [env], volguard deploy, the delta, the verify",
        "resume": "continue the latest migrate-media --apply run of this app",
        "verify": "after the cutover: the missing-file audit against the storage the app now "
        "uses finds no row that had a file on a volume missing",
        "setting": "NAME=VALUE the cutover sets (repeatable): with --apply, written into "
        "fly.toml [env] and deployed; without --apply, shown in the printed commands",
        "rollback": "NAME=VALUE that switches the storage back, printed as the exact command "
        "(repeatable; volguard never rolls back by itself)",
        "workers": "parallel copies on each Machine (migrate_media --workers)",
        "format": "stdout format: text or json (default: text)",
        "transport": "how to reach each Machine: fly, ssh or local (default: volguard.transport)",
        "machine": "--verify: audit on this started Machine (default: the first of the web group)",
        "manage_py": "how to run manage.py in the app's directory (default: volguard.manage_py, "
        "else python3 manage.py)",
        "timeout": "seconds one migrate_media run may take on a Machine (default 3600)",
    },
)
@_edge
def migrate_media(
    c: Context,
    path: str | None = None,
    app: str | None = None,
    to: str = "",
    from_: str = "",
    apply: bool = False,
    resume: bool = False,
    verify: bool = False,
    setting: list[str] | None = None,
    rollback: list[str] | None = None,
    workers: str = "",
    format: str = "text",
    transport: str | None = None,
    machine: str | None = None,
    manage_py: str | None = None,
    timeout: str = "",
) -> None:
    """Move the app's uploads from its volumes to object storage, from EVERY media Machine.

    Plan by default: manage.py migrate_media on every started Machine of the media groups,
    merged (a row is missing only when its file is on no volume; the same name with other
    bytes is a conflict: volguard chooses no copy). --apply snapshots the media volumes,
    copies on each Machine and checks that nothing is left; then, with --setting (and
    --from), performs the cutover: the settings into fly.toml [env], the deploy runbook, the
    copy of what arrived meanwhile and the verification; without --setting it prints them.
    The rollback is printed, never run; volguard never deletes the files on the volumes.
    Exit 0 all verified, 2 conflicts, missing rows or a failed step, 1 could not run. See
    runbooks/moving-media-to-object-storage.md.
    """

    from volguard.audit_log import AuditLog
    from volguard.config import Settings
    from volguard.media_move import MigrateContext, MigrateOptions, render_text
    from volguard.media_move import migrate_media as run_migrate

    if format not in ("text", "json"):
        raise UsageError(f"--format {format!r}: choose text or json")
    if not to:
        raise UsageError("--to is required: the STORAGES alias of the object store")
    count = _whole_number("--workers", workers, 1, 64)
    seconds = _whole_number("--timeout", timeout, 10, 86400) or 3600
    _, config, app_name, token = _platform_inputs(c, path, app)
    settings = Settings.load(
        c.config.get("volguard"), app=app, transport=transport, manage_py=manage_py
    )
    as_json = format == "json"

    def note(line: str) -> None:
        print(line, file=sys.stderr if as_json else sys.stdout)

    options = MigrateOptions(
        to=to,
        source=from_ or None,
        apply=apply,
        resume=resume,
        verify=verify,
        workers=count,
        settings=tuple(setting or ()),
        rollback=tuple(rollback or ()),
        fly_toml=path or settings.fly_toml,
        machine_id=machine or None,
        timeout=float(seconds),
    )
    ctx = MigrateContext(
        settings, config, app_name, token, options, audit=AuditLog(command="migrate-media"),
        out=note,
    )  # fmt: skip
    outcome = run_migrate(ctx)
    _end_with(outcome, as_json, render_text, mask=ctx.mask)


ns.add_task(migrate_media)


@task(
    auto_shortflags=False,
    help={
        "workdir": "where the demo's project, database and run records go "
        "(default: a new temporary directory, kept afterwards)",
    },
)
@_edge
def demo(c: Context, workdir: str = "") -> None:
    """The incident (uploads missing for the worker), end to end in a local simulation.

    Builds the Fly API simulator, a local fleet of simulated Machines (Linux namespaces with
    sshd; needs root) and the example Django app with uploads, some lost; then runs lint,
    verify-volume, remediate, deploy --fix and a final verify-volume, showing each command.
    Exit 0 when the final verify is clean.
    """
    from pathlib import Path

    from volguard.demo import run_demo

    code = run_demo(print, Path(workdir).resolve() if workdir else None)
    if code:
        raise Exit(code=code)


ns.add_task(demo)


@task(
    name="demo-migrate",
    auto_shortflags=False,
    help={
        "workdir": "where the demo's project, database and run records go "
        "(default: a new temporary directory, kept afterwards)",
    },
)
@_edge
def demo_migrate(c: Context, workdir: str = "") -> None:
    """The incident's uploads moved to object storage, end to end in a local simulation.

    Builds the Fly API simulator, a local fleet (web app and worker on their own volumes;
    needs root), the example Django app and moto's S3 server on loopback; shows the worker
    failing to open the web app's upload, then runs migrate-media (plan, --apply), the
    cutover (fly.toml [env], volguard deploy) and --verify, showing each command. Exit 0
    when the worker reads, through Django's default storage, the bytes the web app wrote.
    """
    from pathlib import Path

    from volguard.demo_migrate import run_demo_migrate

    code = run_demo_migrate(print, Path(workdir).resolve() if workdir else None)
    if code:
        raise Exit(code=code)


ns.add_task(demo_migrate)
