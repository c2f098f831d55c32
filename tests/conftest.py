"""Shared fixtures and helpers. Keep it small: anything specific belongs in its test module."""

from __future__ import annotations

import contextlib
import importlib
import os
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from urllib.parse import urlsplit, urlunsplit

import pytest

from volguard.config import Settings
from volguard.lint import lint
from volguard.report import Report

#: The corpus of real fly.toml files, carried in the repository; its INDEX.md names each
#: file's source (repository, path, commit) and licence.
CORPUS = Path(__file__).resolve().parent / "data" / "flytoml"

#: Under CI (``CI`` set, as GitHub Actions sets it) every test that needs a real part — the
#: local fleet (root, sshd, namespaces), PostgreSQL, moto, the app user's python3 — must run:
#: a skip there is turned into a failure below. Outside CI such a test skips, and ``-ra``
#: (pyproject.toml's addopts) lists each skip with its reason in the summary.
IN_CI = bool(os.environ.get("CI"))

#: The only skip reasons CI accepts: conditions that root cannot meet, or tools that are
#: deliberately not dependencies. Anything else that skips under CI fails.
SKIPS_ALLOWED_IN_CI = (
    "root can read any file",  # an unreadable-file test cannot bite as root
    "actionlint is not on PATH",  # an optional linter of the shipped workflow, not a dependency
    "Django was configured by another module",  # test order within one process, not a part
    "volguard refuses this file (VG100)",  # a differential test with nothing to compare
)


def _skip_reason(longrepr: object) -> str:
    # A skip's longrepr is (path, line, "Skipped: reason"); anything else is shown as is.
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        return str(longrepr[2]).removeprefix("Skipped: ")
    return str(longrepr)


def _fail_a_skip_under_ci(report: pytest.TestReport | pytest.CollectReport) -> None:
    if not (IN_CI and report.skipped) or hasattr(report, "wasxfail"):
        return
    reason = _skip_reason(report.longrepr)
    if any(allowed in reason for allowed in SKIPS_ALLOWED_IN_CI):
        return
    report.outcome = "failed"
    report.longrepr = f"skipped under CI, where every real-part test must run: {reason}"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[None]:
    """Under CI, a test that skips (a skipif, a pytest.skip, an importorskip) fails instead."""
    outcome = yield
    _fail_a_skip_under_ci(outcome.get_result())


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector: pytest.Collector) -> Iterator[None]:
    """Under CI, a module that skips as a whole (a module-level skip) fails instead."""
    outcome = yield
    _fail_a_skip_under_ci(outcome.get_result())


@pytest.fixture
def write_toml(tmp_path: Path) -> Callable[..., Path]:
    """Write fly.toml text (to ``name`` under tmp_path) and return its path."""

    def write(text: str, name: str = "fly.toml", *, newline: str | None = "") -> Path:
        path = tmp_path / name
        with open(path, "w", encoding="utf-8", newline=newline) as fh:
            fh.write(text)
        return path

    return write


@pytest.fixture
def lint_text(write_toml: Callable[..., Path]) -> Callable[..., Report]:
    """Lint fly.toml text; keyword arguments other than the lint() options go to Settings.load."""

    def run(text: str, *, use_waivers: bool = True, today=None, **settings) -> Report:
        path = write_toml(text)
        return lint(
            Settings.load(None, **settings), str(path), use_waivers=use_waivers, today=today
        )

    return run


# -- shared by the Django-side tests (example app, audit, remediation) ----------------------

#: The PostgreSQL server of this machine (trust auth); VOLGUARD_TEST_POSTGRES overrides.
POSTGRES_URL = os.environ.get(
    "VOLGUARD_TEST_POSTGRES", "postgres://postgres@127.0.0.1:5432/postgres"
)


def require(module: str) -> ModuleType:
    """Import ``module``; skip without it, except under CI, where it must be installed."""
    if IN_CI:
        return importlib.import_module(module)
    return pytest.importorskip(
        module, reason=f"{module} is not installed (pip install -e '.[dev]')"
    )


@contextlib.contextmanager
def throwaway_postgres(prefix: str) -> Iterator[str]:
    """A DATABASE_URL to a fresh database on the local server, dropped afterwards.

    Skips when the server cannot be reached, except under CI, where it must be there.
    Also drops Django's ``test_<name>`` in case a run that created it was killed.
    """
    psycopg = require("psycopg")
    from psycopg import sql

    try:
        admin = psycopg.connect(POSTGRES_URL, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as e:
        if IN_CI:
            pytest.fail(f"CI needs the PostgreSQL server at {POSTGRES_URL}: {e}")
        pytest.skip(f"no PostgreSQL server at {POSTGRES_URL}: {e}")
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    with admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        try:
            yield urlunsplit(urlsplit(POSTGRES_URL)._replace(path=f"/{name}"))
        finally:
            for db in (name, f"test_{name}"):
                admin.execute(
                    sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(db))
                )


EXAMPLE = Path(__file__).resolve().parents[1] / "example"


def manage_example(
    env: dict[str, str], *args: str, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    """Run example/manage.py in a subprocess (settings are module-level: one process each)."""
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=EXAMPLE,
        env=env,
        capture_output=True,
        text=True,
        encoding="utf-8",
        timeout=timeout,
        check=False,
    )


def configure_django_in_process() -> None:
    """A minimal in-process Django (no database) for tests of volguard.django; idempotent."""
    import django
    from django.apps import apps
    from django.conf import settings

    if not settings.configured:
        settings.configure(
            INSTALLED_APPS=["volguard.django"],
            DATABASES={},
            SECRET_KEY="volguard-tests-only",
            USE_TZ=True,
        )
    if not apps.ready:
        django.setup()
