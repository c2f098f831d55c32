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
            print(f"volguard: error: {e}", file=sys.stderr)
            raise Exit(code=e.exit_code) from None
        except (Exit, KeyboardInterrupt):
            raise
        except Exception as e:  # a bug of ours: say so in one line, traceback on request
            if os.environ.get("VOLGUARD_DEBUG"):
                raise
            print(
                f"volguard: internal error: {type(e).__name__}: {e} "
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

    path = path or None  # volguard fills a left-out path with ""
    if path and path.startswith("-"):
        raise UsageError(f"lint: unknown option {path!r} (see `volguard lint --help`)")
    settings = Settings.load(
        c.config.get("volguard"), media_root=media_root, media_groups=media_groups
    )
    threshold, targets = _report_options(format, output or [], fail_on)
    report = run_lint(settings, path, use_waivers=not no_waivers)
    _emit(report, format, targets, threshold)
    if not report_only:
        code = report.exit_code(threshold)
        if code:
            raise Exit(code=code)


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


ns = Collection(lint)
ns.configure({"volguard": dict(DEFAULTS)})
#: Tasks whose positional argument may be left out (`volguard lint` = `volguard lint fly.toml`).
OPTIONAL_POSITIONALS = {"lint": "path"}
