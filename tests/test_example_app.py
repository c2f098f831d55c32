"""The example app (example/), on SQLite and on PostgreSQL.

Django reads its settings once, at import, from the environment (DATABASE_URL,
MEDIA_ROOT, …), so each database gets its own ``manage.py`` subprocess, as on a real
Machine. The Django-side tests live in example/apps/services/tests.py; this module runs
them on both databases, checks that the committed migration matches the model and applies
on both, and that the app has volguard's system checks installed.

PostgreSQL is the server on this machine (``VOLGUARD_TEST_POSTGRES``, default
``postgres://postgres@127.0.0.1:5432/postgres``, trust auth). Each session creates a
throwaway database and drops it afterwards. Without a server the PostgreSQL tests skip,
except under CI (``CI`` set), where they fail.
"""

from __future__ import annotations

import os
import re
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from conftest import require, throwaway_postgres

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "example"

#: Tests of example/apps/services/tests.py that this issue requires; each must have run.
REQUIRED_TESTS = [
    "test_upload_goes_to_the_users_dated_directory",
    "test_happy_path_marks_done_writes_the_log_and_removes_the_copy",
    "test_missing_file_fails_with_the_user_message_and_no_exception",
    "test_one_missing_file_does_not_stop_the_others",
]


require("django")
require("celery")


# -- databases ----------------------------------------------------------------------------


@pytest.fixture(scope="session")
def postgresql_url() -> Iterator[str]:
    """A DATABASE_URL to a throwaway database on the local server, dropped after the session."""
    with throwaway_postgres("vg_example") as url:
        yield url


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'example.sqlite3'}"  # absolute: sqlite:////tmp/…


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest) -> str:
    return request.getfixturevalue(f"{request.param}_url")


@pytest.fixture
def manage(tmp_path: Path, database_url: str):
    """Run ``example/manage.py`` against ``database_url`` with a private media and temp dir."""
    media, tmp = tmp_path / "media", tmp_path / "tmp"
    media.mkdir()
    tmp.mkdir()

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        env = {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "config.settings",
            "DATABASE_URL": database_url,
            "MEDIA_ROOT": str(media),
            "TMPDIR": str(tmp),
            "CELERY_BROKER_URL": "memory://",
            "CELERY_TASK_ALWAYS_EAGER": "1",
            "PYTHONDONTWRITEBYTECODE": "1",
        }
        return subprocess.run(
            [sys.executable, "manage.py", *args],
            cwd=EXAMPLE,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )

    run.tmp = tmp  # type: ignore[attr-defined]
    return run


# -- tests --------------------------------------------------------------------------------


def test_example_app_tests_pass(manage, database_url: str) -> None:
    proc = manage("test", "apps.services", "--noinput", "-v", "2")
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output

    ran = re.search(r"^Ran (\d+) tests? ", output, re.MULTILINE)
    assert ran, output
    assert int(ran.group(1)) >= len(REQUIRED_TESTS)
    for name in REQUIRED_TESTS:
        assert re.search(rf"^{name} \(.*\) \.\.\. ok$", output, re.MULTILINE), name
    # They ran on the database asked for, not on a default.
    if database_url.startswith("postgres"):
        assert f"('test_{urlsplit(database_url).path.lstrip('/')}')" in output, output
    else:
        assert "memorydb_default" in output, output
    # No temporary copy of an upload was left behind in the process's temp directory.
    assert not [p.name for p in manage.tmp.iterdir() if p.name.startswith("volguard-")]


def test_committed_migration_applies(manage, database_url: str) -> None:
    proc = manage("migrate", "--noinput")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Applying services.0001_initial... OK" in proc.stdout

    columns = _columns(database_url, "services_userdatafile")
    assert {
        "id",
        "owner_id",
        "file",
        "processing_status",
        "processing_log",
        "created_at",
        "updated_at",
    } <= columns


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_migration_matches_the_model(manage) -> None:
    proc = manage("makemigrations", "--check", "--dry-run", "services")
    assert proc.returncode == 0, f"the model changed without a migration:\n{proc.stdout}"


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_deploy_checks_include_volguard(manage) -> None:
    # The example lints the repository's incident fly.toml, which has the web/worker
    # volume split: volguard's system check reports it as an error.
    proc = manage("check", "--deploy")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "volguard.E103" in proc.stderr


def _columns(database_url: str, table: str) -> set[str]:
    if database_url.startswith("sqlite"):
        with sqlite3.connect(urlsplit(database_url).path[1:]) as db:
            return {row[0] for row in db.execute("SELECT name FROM pragma_table_info(?)", [table])}
    psycopg = require("psycopg")
    with psycopg.connect(database_url) as db:
        rows = db.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_name = %s", [table]
        ).fetchall()
    return {row[0] for row in rows}
