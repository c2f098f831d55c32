"""Renderers: a Report to text (people), JSON, JUnit XML, SARIF 2.1.0 or GitHub annotations.

Each format lives in its own module, imported only when asked for, so that
a plain `volguard lint` pays for none of them.
"""

from __future__ import annotations

import importlib

from volguard.errors import UsageError
from volguard.findings import Severity
from volguard.report import Report

FORMATS = ("text", "json", "junit", "sarif", "github")


def render(report: Report, fmt: str, *, fail_on: Severity | None, color: bool = False) -> str:
    """The report in format ``fmt`` as a string ending in a newline."""
    check_format(fmt)
    module = importlib.import_module(f"volguard.render.{fmt}")
    return module.render(report, fail_on=fail_on, color=color)


def check_format(fmt: str) -> str:
    if fmt not in FORMATS:
        raise UsageError(f"unknown format {fmt!r} (choose from {', '.join(FORMATS)})")
    return fmt
