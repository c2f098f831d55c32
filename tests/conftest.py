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

#: The shared corpus of real fly.toml files, beside the clone (<root>/main, <root>/shared);
#: VOLGUARD_CORPUS overrides. Tests skip without it, except under CI, where it must exist.
CORPUS = Path(
    os.environ.get("VOLGUARD_CORPUS")
    or Path(__file__).resolve().parents[2] / "shared" / "corpus" / "flytoml"
)
if os.environ.get("CI") and not CORPUS.is_dir():
    raise RuntimeError(f"CI must see the fly.toml corpus at {CORPUS} (set VOLGUARD_CORPUS)")


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

IN_CI = bool(os.environ.get("CI"))
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
