"""The missing-file audit (`volguard.django.missing_files`, `manage.py check_missing_files`).

End to end, the way an operator meets it: rows are seeded with ``manage.py shell -c`` and
audited with ``manage.py check_missing_files`` in subprocesses of the example project
(example/), on SQLite and on PostgreSQL. Subprocesses because Django reads its settings
once per process, and other test modules (test_django_checks.py, test_django_helpers.py)
configure Django in this one.

Besides the example app, a test-only app written to a temporary directory adds a model
with two file fields, one of them a FileField subclass on its own FileSystemStorage, and
settings that make the per-row threshold small (``VG_PER_ROW_MAX``).

PostgreSQL is the server on this machine (``VOLGUARD_TEST_POSTGRES``, default
``postgres://postgres@127.0.0.1:5432/postgres``, trust auth): each run creates a throwaway
database and drops it afterwards. Without a server those tests skip, except under CI.
"""

from __future__ import annotations

import json
import os
import subprocess
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from conftest import manage_example, require, throwaway_postgres

from volguard.django.management.commands.check_missing_files import (
    format_duration,
    parse_duration,
    parse_filter,
)
from volguard.django.storage_index import invalid_name_reason
from volguard.errors import UsageError

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "example"
TEST_SETTINGS = "vg_audit_settings"
UDF = "services.UserDataFile.file"


# -- the test project: settings and a test-only app -----------------------------------

SETTINGS_PY = """\
import os

from config.settings import *  # noqa: F403

INSTALLED_APPS = [*INSTALLED_APPS, "vg_audit_testapp"]  # noqa: F405
VOLGUARD_AUDIT_PER_ROW_MAX = int(os.environ.get("VG_PER_ROW_MAX", "1000"))
"""

MODELS_PY = '''\
import os

from django.conf import settings
from django.core.files.storage import FileSystemStorage
from django.db import models

scans = FileSystemStorage(location=os.environ.get("VG_SCANS_ROOT", "/nonexistent-scans"))


class ScanField(models.FileField):
    """A FileField subclass: the audit must find subclasses (ImageField is one)."""


class Attachment(models.Model):
    """Two file fields on two storages, no timestamps (so no grace period)."""

    owner = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.CASCADE)
    document = models.FileField(upload_to="docs/", max_length=100)
    scan = ScanField(storage=scans, upload_to="scans/", blank=True, max_length=100)
'''

# Run by ``manage.py shell -c``: wipe the tables, then create VG_SEED's users and rows.
# Rows are an hour old unless "recent"; prints the primary keys as one VG_PKS= line.
SEED = """\
import datetime, json, os
from django.contrib.auth import get_user_model
from django.utils import timezone
from apps.services.models import UserDataFile
from vg_audit_testapp.models import Attachment

spec = json.loads(os.environ["VG_SEED"])
User = get_user_model()
Attachment.objects.all().delete()
UserDataFile.objects.all().delete()
User.objects.all().delete()
users = {n: User.objects.create(username=n) for n in spec.get("users", [])}
pks = {f"user:{n}": u.pk for n, u in users.items()}
recent = []
for key, row in spec.get("rows", {}).items():
    obj = UserDataFile(owner=users[row["owner"]], processing_status=row.get("status", "pending"))
    obj.file.name = row["name"]
    obj.save()
    pks[key] = obj.pk
    if row.get("recent"):
        recent.append(obj.pk)
for bulk in spec.get("bulk", []):
    UserDataFile.objects.bulk_create(
        [UserDataFile(owner=users[bulk["owner"]], file=n) for n in bulk["names"]], batch_size=500
    )
for key, row in spec.get("attachments", {}).items():
    obj = Attachment(owner=users.get(row.get("owner")), document=row.get("document", ""),
                     scan=row.get("scan", ""))
    obj.save()
    pks[key] = obj.pk
old = timezone.now() - datetime.timedelta(hours=1)
UserDataFile.objects.exclude(pk__in=recent).update(created_at=old, updated_at=old)
print("VG_PKS=" + json.dumps(pks))
"""


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory on PYTHONPATH with the test settings module and the test-only app."""
    require("django")
    require("celery")
    root = tmp_path_factory.mktemp("project")
    (root / f"{TEST_SETTINGS}.py").write_text(SETTINGS_PY)
    app = root / "vg_audit_testapp"
    app.mkdir()
    (app / "__init__.py").write_text("")
    (app / "models.py").write_text(MODELS_PY)
    return root


# -- databases ----------------------------------------------------------------------------


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def database(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, project: Path
) -> Iterator[str]:
    """A migrated database (both apps' tables) for the module, dropped afterwards."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path_factory.mktemp('db') / 'audit.sqlite3'}"
        _migrate(url, project)
        yield url
        return

    with throwaway_postgres("vg_audit") as url:
        _migrate(url, project)
        yield url


def _migrate(url: str, project: Path) -> None:
    env = _env(url, project, TEST_SETTINGS, media=project / "unused-media")
    # The migrations first: the test app's table (made by --run-syncdb, it has no
    # migrations) refers to auth_user, which PostgreSQL requires to exist already.
    for args in (["migrate", "--noinput"], ["migrate", "--run-syncdb", "--noinput"]):
        proc = _manage(env, *args)
        assert proc.returncode == 0, proc.stdout + proc.stderr


def _env(url: str, project: Path, settings: str, media: Path, **extra: str) -> dict[str, str]:
    return {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": settings,
        "PYTHONPATH": os.pathsep.join([str(project), str(REPO)]),
        "DATABASE_URL": url,
        "MEDIA_ROOT": str(media),
        "CELERY_BROKER_URL": "memory://",
        "PYTHONIOENCODING": "utf-8",
        "PYTHONDONTWRITEBYTECODE": "1",
        **extra,
    }


def _manage(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return manage_example(env, *args, timeout=300)


# -- one test's site: a media root, a seeded database, the command --------------------


@dataclass
class Site:
    url: str
    project: Path
    media: Path
    scans: Path
    per_row_max: int = 1000

    @property
    def vendor(self) -> str:
        return "postgresql" if self.url.startswith("postgres") else "sqlite"

    def env(self, settings: str = "config.settings", **extra: str) -> dict[str, str]:
        return _env(
            self.url,
            self.project,
            settings,
            self.media,
            VG_SCANS_ROOT=str(self.scans),
            VG_PER_ROW_MAX=str(self.per_row_max),
            **extra,
        )

    def seed(self, **spec: Any) -> dict[str, int]:
        """Replace the tables' rows with ``spec``'s; the primary keys by key (users too)."""
        proc = _manage(self.env(TEST_SETTINGS, VG_SEED=json.dumps(spec)), "shell", "-c", SEED)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        line = next(x for x in proc.stdout.splitlines() if x.startswith("VG_PKS="))
        return json.loads(line.removeprefix("VG_PKS="))

    def files(self, *names: str, root: Path | None = None) -> None:
        for name in names:
            path = (root or self.media) / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(b"data")

    def check(self, *args: str, settings: str = "config.settings") -> subprocess.CompletedProcess:
        return _manage(self.env(settings), "check_missing_files", *args)

    def check_json(self, *args: str, settings: str = "config.settings", code: int = 2) -> dict:
        proc = self.check("--json", *args, settings=settings)
        assert proc.returncode == code, proc.stdout + proc.stderr
        return json.loads(proc.stdout)

    def shell(self, code: str) -> str:
        proc = _manage(self.env(TEST_SETTINGS), "shell", "-c", code)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        return proc.stdout


@pytest.fixture
def site(database: str, project: Path, tmp_path: Path) -> Site:
    media, scans = tmp_path / "media", tmp_path / "scans"
    media.mkdir()
    scans.mkdir()
    return Site(database, project, media, scans)


def _reasons(document: dict) -> set[tuple[Any, str]]:
    return {(r["pk"], r["reason"]) for r in document["rows"]}


def _field(document: dict, label: str) -> dict:
    return next(f for f in document["fields"] if f"{f['model']}.{f['field']}" == label)


# -- the familiar command's interface and output ----------------------------------------------


def test_all_present_prints_the_all_good_line(site: Site) -> None:
    site.seed(
        users=["alice"],
        rows={
            "a": {"owner": "alice", "name": "user_data/user_1/2024/01/02/a.csv"},
            "b": {"owner": "alice", "name": "user_data/user_1/2024/01/02/b.csv"},
        },
    )
    site.files("user_data/user_1/2024/01/02/a.csv", "user_data/user_1/2024/01/02/b.csv")

    proc = site.check()
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.splitlines() == [
        "Total file records in database: 2",
        "✓ All 2 files are present in storage.",
    ]


def test_missing_files_grouped_by_user_with_status_reason_and_path(site: Site) -> None:
    pks = site.seed(
        users=["alice", "bob"],
        rows={
            "a_ok": {"owner": "alice", "name": "user_data/user_1/a.csv"},
            "a_gone": {"owner": "alice", "name": "user_data/user_1/gone.csv", "status": "done"},
            "b_gone": {"owner": "bob", "name": "user_data/user_2/x.csv", "status": "failed"},
        },
    )
    site.files("user_data/user_1/a.csv")

    proc = site.check()
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == "Total file records in database: 3"
    assert lines[1] == "✗ Found 2 missing files:"
    alice = lines.index(f"User: alice (ID: {pks['user:alice']})")
    assert lines[alice + 1 : alice + 3] == [
        f"  ID {pks['a_gone']}: user_data/user_1/gone.csv (status=done, reason=missing)",
        f"    Path: {site.media / 'user_data/user_1/gone.csv'}",
    ]
    bob = lines.index(f"User: bob (ID: {pks['user:bob']})")
    assert lines[bob + 1 : bob + 3] == [
        f"  ID {pks['b_gone']}: user_data/user_2/x.csv (status=failed, reason=missing)",
        f"    Path: {site.media / 'user_data/user_2/x.csv'}",
    ]
    assert "a.csv" not in proc.stdout.replace("gone.csv", "")
    assert proc.stderr == ""


def test_json_is_one_document_with_totals_reasons_strategy_and_rows(site: Site) -> None:
    pks = site.seed(
        users=["alice"],
        rows={
            "ok": {"owner": "alice", "name": "user_data/ok.csv"},
            "gone": {"owner": "alice", "name": "user_data/gone.csv", "status": "processing"},
            "empty": {"owner": "alice", "name": ""},
        },
    )
    site.files("user_data/ok.csv")

    document = site.check_json()
    assert document["total_rows"] == 3
    assert document["audited_rows"] == 3
    assert document["skipped_recent"] == 0
    assert document["older_than_seconds"] == 600
    assert document["problem_rows"] == 2
    assert document["per_reason"] == {
        "missing": 1,
        "empty": 1,
        "empty_file": 0,
        "invalid_name": 0,
        "shared": 0,
    }
    assert document["strategy"] == {UDF: "exists"}
    assert document["storage_requests"] == 2  # one check per row that names a file
    assert isinstance(document["duration_seconds"], float)
    field = _field(document, UDF)
    assert field["storage"] == f"FileSystemStorage ({site.media})"
    assert field["timestamp_field"] == "updated_at"
    assert field["owner_field"] == "owner"
    gone = next(r for r in document["rows"] if r["pk"] == pks["gone"])
    assert gone == {
        "model": "services.UserDataFile",
        "pk": pks["gone"],
        "field": "file",
        "name": "user_data/gone.csv",
        "reason": "missing",
        "detail": "not in storage",
        "owner": pks["user:alice"],
        "status": "processing",
        "path": str(site.media / "user_data/gone.csv"),
        "shared_with": None,
    }
    empty = next(r for r in document["rows"] if r["pk"] == pks["empty"])
    assert (empty["reason"], empty["name"], empty["path"]) == ("empty", "", "")


def test_empty_required_field_is_reported(site: Site) -> None:
    pks = site.seed(users=["alice"], rows={"empty": {"owner": "alice", "name": ""}})

    proc = site.check()
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert f"  ID {pks['empty']}: (empty) (status=pending, reason=empty)" in proc.stdout
    assert "    Path: (empty file field)" in proc.stdout


# -- names --------------------------------------------------------------------------------


def test_adversarial_names_are_invalid_and_never_looked_up(site: Site, tmp_path: Path) -> None:
    # A real file outside the storage root: were "../outside.txt" followed, it would exist.
    (tmp_path / "outside.txt").write_text("secret")
    names = {
        "dotdot": "../../etc/passwd",
        "outside": "../outside.txt",
        "absolute": "/etc/passwd",
        "absolute_in_root": "/here.csv",  # MEDIA_ROOT/here.csv exists: still absolute
        "backslash": "..\\..\\etc\\passwd",
        "drive": "C:\\Windows\\win.ini",
        "inner_dotdot": "user_data/../user_data/x.csv",
        "directory": "user_data/",
        "long_component": "user_data/" + "é" * 200 + ".csv",  # 214 characters, 404 bytes
    }
    if site.vendor == "sqlite":  # PostgreSQL stores neither: text has no NUL, varchar(255)
        names["nul"] = "user_data/a\x00b.csv"
        names["too_long"] = "user_data/" + "x" * 300
    pks = site.seed(
        users=["mallory"], rows={k: {"owner": "mallory", "name": n} for k, n in names.items()}
    )
    site.files("user_data/x.csv", "here.csv")

    document = site.check_json("--strategy", "list")
    by_pk = {r["pk"]: r for r in document["rows"]}
    assert {by_pk[pks[k]]["reason"] for k in names} == {"invalid_name"}
    assert len(document["rows"]) == len(names)
    details = {k: by_pk[pks[k]]["detail"] for k in names}
    assert details["dotdot"] == "escapes the storage root ('..')"
    assert details["outside"] == "escapes the storage root ('..')"
    assert details["absolute"] == details["absolute_in_root"] == "is an absolute path"
    assert details["backslash"] == "escapes the storage root ('..')"
    assert details["drive"] == "is an absolute path"
    assert details["inner_dotdot"] == "contains a '..' component"
    assert details["directory"] == "names a directory, not a file"
    assert details["long_component"] == "has a path component longer than 255 bytes"
    if site.vendor == "sqlite":
        assert details["nul"] == "contains a NUL byte"
        assert details["too_long"] == "is longer than the field's max_length (310 > 255 characters)"
    assert all(by_pk[pks[k]]["path"] == "" for k in names)
    assert _reasons(site.check_json("--strategy", "exists")) == _reasons(document)

    # Every path either strategy touched is inside the storage root.
    code = textwrap.dedent("""
        import json, os
        from datetime import timedelta
        from volguard.django import missing_files as audit, storage_index, targets

        seen = []
        real_scandir, real_stat = os.scandir, os.stat
        def scandir(path="."):
            seen.append(os.fspath(path))
            return real_scandir(path)
        def stat(path, *args, **kwargs):
            seen.append(os.fspath(path))
            return real_stat(path, *args, **kwargs)
        storage_index.os.scandir, storage_index.os.stat = scandir, stat
        for strategy in ("list", "exists"):
            fields = targets.discover(["services.UserDataFile"])
            audit.audit(fields, older_than=timedelta(0), strategy=strategy)
        storage_index.os.scandir, storage_index.os.stat = real_scandir, real_stat
        print("VG_SEEN=" + json.dumps(seen))
    """)
    seen = json.loads(site.shell(code).split("VG_SEEN=", 1)[1])
    assert seen  # the valid names' directory was looked at
    root = str(site.media)
    assert [p for p in seen if os.path.commonpath([root, os.path.abspath(p)]) != root] == []

    proc = site.check()
    assert proc.returncode == 2
    assert "    Path: (not looked up: the name escapes the storage root ('..'))" in proc.stdout
    if site.vendor == "sqlite":  # the NUL is escaped, not written to the terminal
        assert f"  ID {pks['nul']}: user_data/a\\x00b.csv (" in proc.stdout
        assert "\x00" not in proc.stdout


def test_unicode_spaces_and_newlines_in_names(site: Site) -> None:
    present = ["user_data/user_1/résumé final.csv", "user_data/用户/データ 1.txt", " lead.csv"]
    pks = site.seed(
        users=["zoë"],
        rows={
            **{f"p{i}": {"owner": "zoë", "name": n} for i, n in enumerate(present)},
            "gone": {"owner": "zoë", "name": "user_data/用户/missing file.txt"},
            "forged": {"owner": "zoë", "name": "user_data/x.csv\n  ID 999: forged.csv"},
        },
    )
    site.files(*present)

    document = site.check_json("--strategy", "list")
    assert _reasons(document) == {(pks["gone"], "missing"), (pks["forged"], "missing")}
    gone = next(r for r in document["rows"] if r["pk"] == pks["gone"])
    assert gone["name"] == "user_data/用户/missing file.txt"
    assert document["strategy"] == {UDF: "listdir"}
    # Both strategies agree.
    assert _reasons(site.check_json("--strategy", "exists")) == _reasons(document)

    proc = site.check()
    assert f"User: zoë (ID: {pks['user:zoë']})" in proc.stdout
    assert f"  ID {pks['gone']}: user_data/用户/missing file.txt (" in proc.stdout
    assert "\\n  ID 999: forged.csv (status=pending" in proc.stdout
    assert not [line for line in proc.stdout.splitlines() if line.startswith("  ID 999")]


def test_shared_files_are_reported_whether_or_not_they_exist(site: Site) -> None:
    pks = site.seed(
        users=["alice", "bob"],
        rows={
            "a": {"owner": "alice", "name": "shared/here.csv"},
            "b": {"owner": "bob", "name": "shared/here.csv"},
            "c": {"owner": "alice", "name": "shared/gone.csv"},
            "d": {"owner": "bob", "name": "shared/gone.csv"},
            "e": {"owner": "bob", "name": "shared/gone.csv"},
            "solo": {"owner": "alice", "name": "solo.csv"},
        },
    )
    site.files("shared/here.csv", "solo.csv")

    document = site.check_json()
    assert _reasons(document) == {
        (pks["a"], "shared"),
        (pks["b"], "shared"),
        (pks["c"], "shared"),
        (pks["d"], "shared"),
        (pks["e"], "shared"),
        (pks["c"], "missing"),
        (pks["d"], "missing"),
        (pks["e"], "missing"),
    }
    shared_with = {r["pk"]: r["shared_with"] for r in document["rows"] if r["reason"] == "shared"}
    assert shared_with == {pks["a"]: 2, pks["b"]: 2, pks["c"]: 3, pks["d"]: 3, pks["e"]: 3}
    assert document["problem_rows"] == 3

    # One user's audit still sees that their file is shared with a row outside the filter.
    alice = site.check_json("--user-id", str(pks["user:alice"]))
    assert _reasons(alice) == {(pks["a"], "shared"), (pks["c"], "shared"), (pks["c"], "missing")}

    # A shared file that exists is a warning: exit 0, with the rows listed.
    site.files("shared/gone.csv")
    proc = site.check()
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "✓ All 6 files are present in storage." in proc.stdout
    assert "! 5 rows share a file with another row (VG403)" in proc.stdout
    assert f"  ID {pks['a']}: shared/here.csv (status=pending, reason=shared, 2 rows)" in (
        proc.stdout
    )


# -- grace period, filters, models ----------------------------------------------------------


def test_grace_period_skips_rows_in_flight(site: Site) -> None:
    pks = site.seed(
        users=["alice"],
        rows={
            "old": {"owner": "alice", "name": "user_data/old.csv"},
            "new": {"owner": "alice", "name": "user_data/new.csv", "recent": True},
        },
    )

    proc = site.check()
    assert proc.returncode == 2
    lines = proc.stdout.splitlines()
    assert lines[:3] == [
        "Total file records in database: 2",
        "Skipped 1 row created or changed in the last 10m (grace period for uploads in "
        "flight; --older-than 0 includes them).",
        "✗ Found 1 missing file:",
    ]
    assert "new.csv" not in proc.stdout

    document = site.check_json()
    assert (document["total_rows"], document["audited_rows"], document["skipped_recent"]) == (
        2,
        1,
        1,
    )
    assert _reasons(document) == {(pks["old"], "missing")}
    everything = site.check_json("--older-than", "0")
    assert _reasons(everything) == {(pks["old"], "missing"), (pks["new"], "missing")}
    assert everything["skipped_recent"] == 0
    # The old row is an hour old: a 2-hour grace period skips it too.
    both_skipped = site.check_json("--older-than", "2h", code=0)
    assert (both_skipped["skipped_recent"], both_skipped["rows"]) == (2, [])


def test_user_id_and_filters_narrow_the_rows(site: Site) -> None:
    pks = site.seed(
        users=["alice", "bob"],
        rows={
            "a1": {"owner": "alice", "name": "a1.csv", "status": "failed"},
            "a2": {"owner": "alice", "name": "a2.csv", "status": "done"},
            "b1": {"owner": "bob", "name": "b1.csv", "status": "failed"},
        },
    )
    alice = str(pks["user:alice"])

    def found(*args: str) -> set[int]:
        return {r["pk"] for r in site.check_json(*args)["rows"]}

    assert found("--user-id", alice) == {pks["a1"], pks["a2"]}
    assert found("--filter", f"owner={alice}") == {pks["a1"], pks["a2"]}
    assert found("--filter", "owner__username=bob") == {pks["b1"]}
    assert found("--filter", "processing_status=failed") == {pks["a1"], pks["b1"]}
    assert found("--user-id", alice, "--filter", "processing_status=failed") == {pks["a1"]}
    assert found("--filter", "processing_status__in=done,failed", "--filter", "pk__gt=0") == {
        pks["a1"],
        pks["a2"],
        pks["b1"],
    }
    proc = site.check("--user-id", alice)
    assert proc.stdout.startswith("Total file records in database: 2\n")

    nobody = site.check_json("--user-id", "999999", code=0)
    assert (nobody["total_rows"], nobody["rows"]) == (0, [])


def test_every_file_field_with_its_own_storage(site: Site) -> None:
    pks = site.seed(
        users=["alice"],
        attachments={
            # The scan exists, but in MEDIA_ROOT: its field's storage is the scans root.
            "a1": {"owner": "alice", "document": "docs/d1.pdf", "scan": "scans/s1.png"},
            "a2": {"owner": "alice", "document": "docs/d2.pdf", "scan": ""},
            "a3": {"owner": "alice", "document": "", "scan": "scans/s3.png"},
        },
    )
    site.files("docs/d1.pdf", "scans/s1.png")
    site.files("scans/s3.png", root=site.scans)

    document = site.check_json(settings=TEST_SETTINGS)
    labels = [f"{f['model']}.{f['field']}" for f in document["fields"]]
    assert labels == [
        "services.UserDataFile.file",
        "vg_audit_testapp.Attachment.document",
        "vg_audit_testapp.Attachment.scan",
    ]
    assert _field(document, "vg_audit_testapp.Attachment.scan")["storage"] == (
        f"FileSystemStorage ({site.scans})"
    )
    assert _field(document, "vg_audit_testapp.Attachment.document")["storage"] == (
        f"FileSystemStorage ({site.media})"
    )
    rows = {(r["field"], r["pk"], r["reason"]): r for r in document["rows"]}
    assert set(rows) == {
        ("scan", pks["a1"], "missing"),
        ("document", pks["a2"], "missing"),
        ("document", pks["a3"], "empty"),  # required; a2's empty scan is optional
    }
    assert rows[("scan", pks["a1"], "missing")]["path"] == str(site.scans / "scans/s1.png")
    scan = _field(document, "vg_audit_testapp.Attachment.scan")
    assert (scan["empty_allowed"], scan["timestamp_field"]) == (1, None)
    assert "no auto_now/auto_now_add field: no grace period" in scan["notes"]

    proc = site.check(settings=TEST_SETTINGS)
    assert f"vg_audit_testapp.Attachment.scan — User: alice (ID: {pks['user:alice']})" in (
        proc.stdout
    )

    def fields(*models: str) -> set[str]:
        args = [a for m in models for a in ("--model", m)]
        document = site.check_json(*args, settings=TEST_SETTINGS)
        return {f"{f['model']}.{f['field']}" for f in document["fields"]}

    assert fields("vg_audit_testapp.Attachment") == {
        "vg_audit_testapp.Attachment.document",
        "vg_audit_testapp.Attachment.scan",
    }
    assert fields("vg_audit_testapp.Attachment.scan") == {"vg_audit_testapp.Attachment.scan"}
    assert fields("vg_audit_testapp.attachment.scan", "services.UserDataFile") == {
        "vg_audit_testapp.Attachment.scan",
        UDF,
    }
    only_udf = site.check_json("--model", "services.UserDataFile", settings=TEST_SETTINGS, code=0)
    assert only_udf["strategy"] == {UDF: "exists"}


def test_a_filter_leaves_out_models_without_the_field(site: Site) -> None:
    site.seed(users=["alice"], attachments={"a": {"owner": "alice", "document": "d.pdf"}})

    proc = site.check("--filter", "processing_status=failed", settings=TEST_SETTINGS)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "note: left out vg_audit_testapp.Attachment.document: no field 'processing_status'" in (
        proc.stderr
    )


# -- strategies and what they cost -----------------------------------------------------------


def test_one_users_few_rows_are_checked_per_row_without_listing(site: Site) -> None:
    site.per_row_max = 10
    day1, day2, mine = "user_data/user_b/2024/01/01", "user_data/user_b/2024/01/02", "user_data/a"
    bob = [f"{day1}/f{i}.csv" for i in range(15)] + [f"{day2}/f{i}.csv" for i in range(15)]
    pks = site.seed(
        users=["alice", "bob"],
        rows={
            "a1": {"owner": "alice", "name": f"{mine}/1.csv"},
            "a2": {"owner": "alice", "name": f"{mine}/2.csv"},
            "a3": {"owner": "alice", "name": f"{mine}/3.csv"},
        },
        bulk=[{"owner": "bob", "names": bob}],
    )
    site.files(f"{mine}/1.csv", f"{mine}/2.csv", *bob[:-2])
    unrelated = site.media / "unrelated"
    unrelated.mkdir()
    for i in range(3000):
        (unrelated / f"{i}.bin").touch()

    # One user's three rows: three stats, no listing at all (not even their directory).
    alice = site.check_json("--user-id", str(pks["user:alice"]), settings=TEST_SETTINGS)
    assert alice["strategy"][UDF] == "exists"
    assert _field(alice, UDF)["storage_requests"] == 3
    assert alice["storage_requests"] == 3
    assert _reasons(alice) == {(pks["a3"], "missing")}

    # Everyone's 33 rows (over the threshold of 10): one listing per directory the rows
    # point into, three, and never the 3,000-file directory no row points into.
    everyone = site.check_json(settings=TEST_SETTINGS)
    udf = _field(everyone, UDF)
    assert (udf["strategy"], udf["storage_requests"], udf["audited_rows"]) == ("listdir", 3, 33)
    assert udf["strategy_detail"] == "3 directories listed"
    assert everyone["problem_rows"] == 3

    per_row = site.check_json("--strategy", "exists", settings=TEST_SETTINGS)
    assert _field(per_row, UDF)["storage_requests"] == 33
    assert _reasons(per_row) == _reasons(everyone)

    # The default threshold (1,000) checks 33 rows one by one.
    assert site.check_json()["strategy"] == {UDF: "exists"}


def test_a_missing_storage_root_is_noted(site: Site) -> None:
    site.seed(users=["alice"], rows={"a": {"owner": "alice", "name": "a.csv"}})
    site.media.rmdir()

    for strategy in ("exists", "list"):
        document = site.check_json("--strategy", strategy)
        assert document["per_reason"]["missing"] == 1
        assert (
            f"the storage root {site.media} does not exist (volume not mounted?)"
            in (_field(document, UDF)["notes"])
        )


# -- the Python API: findings and re-checks ---------------------------------------------------


def test_findings_and_recheck(site: Site) -> None:
    pks = site.seed(
        users=["alice"],
        rows={
            "gone": {"owner": "alice", "name": "gone.csv"},
            "bad": {"owner": "alice", "name": "../x.csv"},
            "s1": {"owner": "alice", "name": "same.csv"},
            "s2": {"owner": "alice", "name": "same.csv"},
        },
    )
    site.files("same.csv")
    code = textwrap.dedent(f"""
        import json
        from datetime import timedelta
        from pathlib import Path
        from django.db import transaction
        from volguard.django.missing_files import audit, recheck

        result = audit(older_than=timedelta(0))
        with transaction.atomic():  # shared files found without the worker thread
            inline = audit(older_than=timedelta(0))
        assert [r.as_dict() for r in inline.rows] == [r.as_dict() for r in result.rows]
        streamed = []
        lean = audit(older_than=timedelta(0), on_row=streamed.append, keep_rows=False)
        assert lean.rows == [] and streamed == result.rows
        assert lean.problem_count == result.problem_count == 2
        findings = [f.as_dict() for f in result.to_findings()]
        before = [(r.pk, r.reason) for r in recheck(result.problems)]
        Path({str(site.media / "gone.csv")!r}).write_text("back")
        after = [(r.pk, r.reason) for r in recheck(result.problems)]
        print("VG_OUT=" + json.dumps([findings, before, after], default=str))
    """)
    out = site.shell(code)
    findings, before, after = json.loads(out.split("VG_OUT=", 1)[1])

    by_object = {(f["location"]["object"], f["id"]): f for f in findings}
    assert set(by_object) == {
        (f"services.UserDataFile.file#pk={pks['gone']}", "VG401"),
        (f"services.UserDataFile.file#pk={pks['bad']}", "VG402"),
        (f"services.UserDataFile.file#pk={pks['s1']}", "VG403"),
        (f"services.UserDataFile.file#pk={pks['s2']}", "VG403"),
    }
    gone = by_object[(f"services.UserDataFile.file#pk={pks['gone']}", "VG401")]
    assert gone["severity"] == "error"
    assert "gone.csv" in gone["message"]
    assert gone["evidence"]["reason"] == "missing"
    assert by_object[(f"services.UserDataFile.file#pk={pks['s1']}", "VG403")]["severity"] == (
        "warning"
    )
    # recheck: the file that came back is no longer a problem; the bad name still is.
    assert sorted(map(tuple, before)) == sorted(
        [(pks["gone"], "missing"), (pks["bad"], "invalid_name")]
    )
    assert [tuple(x) for x in after] == [(pks["bad"], "invalid_name")]


# -- bad input ---------------------------------------------------------------------------


@pytest.mark.parametrize("database", ["sqlite"], indirect=True)
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--model", "nope.Model"], "unknown model 'nope.Model'"),
        (["--model", "auth.User"], "auth.User has no FileField or ImageField to audit"),
        (["--model", "services.UserDataFile.owner"], "has no field 'owner' to audit"),
        (["--filter", "nope=1"], "bad filter: services.UserDataFile has no field 'nope'"),
        (["--filter", "processing_status"], "bad filter 'processing_status'"),
        (["--filter", "created_at__lt=yesterday"], "bad filter for services.UserDataFile"),
        (["--user-id", "alice"], "expected a number but got 'alice'"),
        (["--older-than", "10"], "bad duration '10'"),
        (["--batch-size", "many"], "argument --batch-size: invalid int value: 'many'"),
        (["--batch-size", "0"], "batch size must be from 1 to 1,000,000, not 0"),
        (["--batch-size", "99999999999999999999999"], "batch size must be from 1 to 1,000,000"),
        (["--older-than", "99999999999999999999d"], "at most 36500d"),
        (["--bogus-flag"], "unrecognized arguments: --bogus-flag"),
        (["--user-id", "99999999999999999999999"], "bad filter for services.UserDataFile"),
        (["--filter", "owner=99999999999999999999999"], "bad filter for services.UserDataFile"),
        (["--filter", "processing_status__nope=1"], "Unsupported lookup 'nope'"),
        (["--filter", "owner__username__nope=1"], "Unsupported lookup 'nope'"),
        (["--filter", "pk__in=1,x"], "services.UserDataFile"),
    ],
)
def test_bad_input_exits_1_with_one_line(site: Site, args: list[str], message: str) -> None:
    proc = site.check(*args)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert proc.stdout == ""
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("CommandError: ")
    assert message in lines[0]


@pytest.mark.parametrize("database", ["sqlite"], indirect=True)
def test_a_broken_setting_exits_1(site: Site) -> None:
    env = site.env("vg_broken_settings")
    (site.project / "vg_broken_settings.py").write_text(
        "from config.settings import *  # noqa: F403\n"
        "VOLGUARD_MISSING_FILES = {'services.UserDataFile': {'owner_field': 'nobody'}}\n"
    )
    proc = _manage(env, "check_missing_files")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert proc.stderr.strip() == (
        "CommandError: VOLGUARD_MISSING_FILES['services.UserDataFile']['owner_field']: "
        "services.UserDataFile has no field 'nobody'"
    )


# -- pure functions (no Django needed) ------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("user_data/user_1/2024/01/02/a.csv", None),
        ("a..b/c...csv", None),
        ("résumé final.csv", None),
        ("../x", "escapes the storage root ('..')"),
        ("a/../../x", "escapes the storage root ('..')"),
        ("a/../x", "contains a '..' component"),
        ("/etc/passwd", "is an absolute path"),
        ("\\\\server\\share", "is an absolute path"),
        ("c:/x", "is an absolute path"),
        ("a\x00b", "contains a NUL byte"),
        ("a/", "names a directory, not a file"),
        ("a/.", "names a directory, not a file"),
        ("x" * 256, "is longer than the field's max_length (256 > 255 characters)"),
        ("é" * 120 + "/" + "é" * 120, None),
        ("é" * 128 + "/x", "has a path component longer than 255 bytes"),
    ],
)
def test_invalid_name_reason(name: str, reason: str | None) -> None:
    assert invalid_name_reason(name, max_length=255, max_component_bytes=255) == reason


def test_over_1024_bytes_is_invalid_even_without_a_max_length() -> None:
    assert invalid_name_reason("a/" * 600) is not None
    assert invalid_name_reason("é/" * 400) == "is longer than 1024 bytes"
    assert invalid_name_reason("é" * 300) is None  # 600 bytes, one component, no limit given


@pytest.mark.parametrize(
    ("text", "seconds"), [("0", 0), ("30s", 30), ("10m", 600), ("2h", 7200), ("1d", 86400)]
)
def test_parse_duration(text: str, seconds: int) -> None:
    assert parse_duration(text) == timedelta(seconds=seconds)
    assert parse_duration(format_duration(timedelta(seconds=seconds))).total_seconds() == seconds


@pytest.mark.parametrize("text", ["", "10", "m", "-1m", "1w", "1.5h", "36501d", "9" * 30 + "s"])
def test_parse_duration_rejects(text: str) -> None:
    with pytest.raises(UsageError, match="bad duration"):
        parse_duration(text)


def test_parse_filter() -> None:
    assert parse_filter("processing_status=failed") == ("processing_status", "failed")
    assert parse_filter("name=a=b") == ("name", "a=b")
    assert parse_filter("status__in=a, b") == ("status__in", ["a", "b"])
    assert parse_filter("file__isnull=true") == ("file__isnull", True)
    for bad in ("status", "=x", "a b=1", "x;drop=1", "f__isnull=maybe"):
        with pytest.raises(UsageError, match="bad filter"):
            parse_filter(bad)


def test_the_json_document_has_the_shape_both_sides_share() -> None:
    from volguard.audit_document import AuditDocumentJSON, AuditRowJSON, candidates
    from volguard.django.audit_result import AuditResult, AuditRow

    rows = [
        AuditRow("m.M", 1, "file", "a.csv", "missing"),
        AuditRow("m.M", 2, "file", "s.csv", "missing"),
        AuditRow("m.M", 2, "file", "s.csv", "shared", shared_with=2),
        AuditRow("m.M", 3, "file", "", "empty"),
        AuditRow("m.M", 4, "file", "/etc/x", "invalid_name"),
    ]
    result = AuditResult(rows=rows, audited_rows=9)
    result.per_reason.update(r.reason for r in rows)
    document = result.as_dict()
    assert set(document) == AuditDocumentJSON.__required_keys__
    assert set(document["rows"][0]) == set(AuditRowJSON.__annotations__)
    # problem_rows counts rows without a usable file; per_reason.missing only the missing
    assert document["problem_rows"] == 4
    assert document["per_reason"] == {
        "missing": 2,
        "empty": 1,
        "empty_file": 0,
        "invalid_name": 1,
        "shared": 1,
    }

    # the Fly side applies the same candidate rule to the document's rows
    def key(r: dict) -> tuple:
        return (r["model"], r["field"], r["pk"])

    def reason(r: dict) -> str:
        return r["reason"]

    fix = candidates(document["rows"], reason=reason, key=key)
    delete = candidates(document["rows"], reason=reason, key=key, for_delete=True)
    assert [r["pk"] for r in fix] == [1, 2, 3]
    assert [r["pk"] for r in delete] == [1, 3]  # never a row whose file another row uses


@pytest.mark.parametrize(
    ("text", "limit"), [("10%", 1.0), (" 50 ", 50.0), ("100%", 10.0), ("0", 0.0), ("2.5%", 0.25)]
)
def test_max_missing_is_a_count_or_a_percentage(text: str, limit: float) -> None:
    from volguard.audit_document import parse_max_missing

    assert parse_max_missing(text).limit(10) == pytest.approx(limit)


@pytest.mark.parametrize("text", ["lots", "1.5", "101%", "-3", "", "5x"])
def test_max_missing_rejects(text: str) -> None:
    from volguard.audit_document import parse_max_missing

    with pytest.raises(UsageError, match="bad --max-missing"):
        parse_max_missing(text)


# -- shapes real apps give their files (#8 items 2, 3, 9, 10) ---------------------------------

SHAPES_SETTINGS = "vg_shapes_settings"
SHAPES_SETTINGS_PY = """\
from config.settings import *  # noqa: F403

INSTALLED_APPS = [*INSTALLED_APPS, "vg_audit_shapes"]  # noqa: F405
"""
SHAPES_MODELS_PY = '''\
import os

from django.core.files.storage import FileSystemStorage
from django.db import models
from django.db.models.fields.files import FieldFile

private = FileSystemStorage(location=os.environ.get("VG_SCANS_ROOT", "/nonexistent-scans"))


class Visible(models.Manager):
    """A default manager that hides rows: the audit must still see them."""

    def get_queryset(self):
        return super().get_queryset().filter(hidden=False)


class Folder(models.Model):
    hidden = models.BooleanField(default=False)
    file = models.FileField(upload_to="folders/")
    processing_status = models.CharField(max_length=20, default="ready")
    objects = Visible()


class Report(Folder):
    pages = models.IntegerField(default=1)


class RowFieldFile(FieldFile):
    """The row's file on the private storage when the row says so (django-filer's split)."""

    def __init__(self, instance, field, name):
        super().__init__(instance, field, name)
        if instance.where == "private":
            self.storage = private
        elif instance.where == "unknown":
            raise LookupError("no storage configured for this row")


class RowFileField(models.FileField):
    attr_class = RowFieldFile


class Scan(models.Model):
    where = models.CharField(max_length=10, default="public")
    file = RowFileField(upload_to="scans/")
    processing_status = models.CharField(max_length=20, default="ready")
'''


@pytest.fixture
def shapes(site: Site) -> Site:
    """The site with the shapes app's tables (made by --run-syncdb: no migrations)."""
    root = site.project
    if not (root / "vg_audit_shapes").exists():
        (root / f"{SHAPES_SETTINGS}.py").write_text(SHAPES_SETTINGS_PY)
        (root / "vg_audit_shapes").mkdir()
        (root / "vg_audit_shapes" / "__init__.py").write_text("")
        (root / "vg_audit_shapes" / "models.py").write_text(SHAPES_MODELS_PY)
    proc = _manage(site.env(SHAPES_SETTINGS), "migrate", "--run-syncdb", "--noinput")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return site


def _shapes_seed(site: Site, code: str) -> dict[str, Any]:
    script = (
        "import json\n"
        "from vg_audit_shapes.models import Folder, Report, Scan\n"
        "Scan.objects.all().delete(); Report.objects.all().delete()\n"
        "Folder._base_manager.all().delete()\n"
        "pks = {}\n" + code + "\nprint('VG_PKS=' + json.dumps(pks))\n"
    )
    proc = _manage(site.env(SHAPES_SETTINGS), "shell", "-c", script)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    line = next(x for x in proc.stdout.splitlines() if x.startswith("VG_PKS="))
    return json.loads(line.removeprefix("VG_PKS="))


def test_an_inherited_file_field_is_audited_from_the_child_and_hidden_rows_too(
    shapes: Site,
) -> None:
    pks = _shapes_seed(
        shapes,
        "for key, cls, hidden in [('f1', Folder, False), ('r1', Report, False),\n"
        "                         ('r2', Report, True), ('r3', Report, False)]:\n"
        "    obj = cls(hidden=hidden, file=f'folders/{key}.pdf'); obj.save(); pks[key] = obj.pk",
    )
    shapes.files("folders/f1.pdf", "folders/r3.pdf")

    child = shapes.check_json("--model", "vg_audit_shapes.Report", settings=SHAPES_SETTINGS)
    assert _reasons(child) == {(pks["r1"], "missing"), (pks["r2"], "missing")}
    assert child["total_rows"] == 3  # the hidden row is a row of the table all the same
    assert {r["model"] for r in child["rows"]} == {"vg_audit_shapes.Report"}

    parent = shapes.check_json("--model", "vg_audit_shapes.Folder", settings=SHAPES_SETTINGS)
    assert _reasons(parent) == {(pks["r1"], "missing"), (pks["r2"], "missing")}
    assert parent["total_rows"] == 4


def test_each_row_is_checked_on_the_storage_its_row_chooses(shapes: Site) -> None:
    pks = _shapes_seed(
        shapes,
        "for i, where in enumerate(['public', 'private', 'public', 'private']):\n"
        "    obj = Scan(where=where, file=f'scans/s{i}.png'); obj.save(); pks[f's{i}'] = obj.pk",
    )
    shapes.files("scans/s0.png")  # public, intact
    shapes.files("scans/s1.png", root=shapes.scans)  # private, intact
    shapes.files("scans/s3.png")  # private row, its file only on the public storage: missing

    for strategy in ("auto", "exists", "list"):
        document = shapes.check_json(
            "--model", "vg_audit_shapes.Scan", "--strategy", strategy, settings=SHAPES_SETTINGS
        )
        assert _reasons(document) == {(pks["s2"], "missing"), (pks["s3"], "missing")}, strategy
    paths = {r["pk"]: r["path"] for r in document["rows"]}
    assert paths[pks["s3"]] == str(shapes.scans / "scans/s3.png")
    assert paths[pks["s2"]] == str(shapes.media / "scans/s2.png")
    assert (
        "each row's own storage" in _field(document, "vg_audit_shapes.Scan.file")["strategy_detail"]
    )

    # --fix re-checks each row on its own storage too: both rows, and only they, marked.
    proc = shapes.check(
        "--model", "vg_audit_shapes.Scan", "--fix", "--max-missing", "100%",
        "--audit-log", str(shapes.media.parent / "log.jsonl"), settings=SHAPES_SETTINGS,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Marked failed: 2 rows" in proc.stdout


def test_a_row_whose_storage_cannot_be_told_refuses_its_model(shapes: Site) -> None:
    pks = _shapes_seed(
        shapes,
        "for i in range(2):\n"
        "    obj = Scan(file=f'scans/s{i}.png'); obj.save(); pks[f's{i}'] = obj.pk\n"
        "Scan.objects.filter(pk=pks['s1']).update(where='unknown')",
    )
    shapes.files("scans/s0.png", "scans/s1.png")

    proc = shapes.check("--model", "vg_audit_shapes.Scan", settings=SHAPES_SETTINGS)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert proc.stderr.startswith("CommandError: vg_audit_shapes.Scan: cannot tell which storage")
    assert f"row {pks['s1']}" in proc.stderr
    assert len(proc.stderr.splitlines()) == 1


def test_a_zero_byte_file_is_reported_as_empty_file_and_fix_marks_it(site: Site) -> None:
    pks = site.seed(
        users=["alice"],
        rows={
            "full": {"owner": "alice", "name": "u/full.csv"},
            "zero": {"owner": "alice", "name": "u/zero.csv"},
            "gone": {"owner": "alice", "name": "u/gone.csv"},
        },
    )
    site.files("u/full.csv")
    (site.media / "u/zero.csv").write_bytes(b"")

    for args in (["--strategy", "exists"], ["--strategy", "list", "--sizes"]):
        document = site.check_json(*args)
        assert _reasons(document) == {(pks["zero"], "empty_file"), (pks["gone"], "missing")}
        assert document["per_reason"]["empty_file"] == 1
        assert document["problem_rows"] == 2
    # A volume's listing holds names only: without --sizes it reads none (it stays fast).
    listed = site.check_json("--strategy", "list")
    assert _reasons(listed) == {(pks["gone"], "missing")}
    assert _field(listed, UDF)["strategy_detail"] == "1 directories listed"
    zero = next(r for r in document["rows"] if r["reason"] == "empty_file")
    assert zero["path"] == str(site.media / "u/zero.csv")
    assert "ID {}: u/zero.csv (status=pending, reason=empty_file)".format(pks["zero"]) in (
        site.check().stdout
    )

    log = site.media.parent / "log.jsonl"
    fixed = site.check_json("--fix", "--max-missing", "100%", "--audit-log", str(log))
    assert fixed["remediation"]["changed"] == 2
    # --delete leaves a row whose file is there, if empty: its file would stay behind.
    plan = site.check("--delete", "--yes", "--max-missing", "100%", "--audit-log", str(log))
    assert "Plan (--delete): missing 1" in plan.stdout
    assert "empty_file 1" in plan.stdout.split("left alone:")[1].splitlines()[0]


def test_an_empty_file_found_by_the_audit_but_filled_since_is_not_fixed(site: Site) -> None:
    from volguard.audit_document import EMPTY_FILE, MISSING, candidates

    rows = [{"reason": EMPTY_FILE, "k": 1}, {"reason": MISSING, "k": 2}]
    assert candidates(rows, reason=lambda r: r["reason"], key=lambda r: r["k"]) == rows
    chosen = candidates(rows, reason=lambda r: r["reason"], key=lambda r: r["k"], for_delete=True)
    assert chosen == [rows[1]]


def test_a_zero_byte_file_is_finding_vg405_distinct_from_a_missing_one() -> None:
    from volguard.django.audit_result import AuditRow

    row = AuditRow("app.Photo", 7, "image", "p/7.jpg", "empty_file", path="/m/p/7.jpg")
    missing = AuditRow("app.Photo", 8, "image", "p/8.jpg", "missing", path="/m/p/8.jpg")

    found = row.to_finding()
    assert found.id == "VG405"
    assert found.message == "row 7 of app.Photo.image: file 'p/7.jpg' holds 0 bytes (/m/p/7.jpg)"
    assert missing.to_finding().id == "VG401"


def test_boolean_filters_take_the_spellings_isnull_takes(shapes: Site) -> None:
    pks = _shapes_seed(
        shapes,
        "for key, hidden in [('shown', False), ('hidden', True)]:\n"
        "    obj = Folder(hidden=hidden, file=f'folders/{key}.pdf'); obj.save(); pks[key] = obj.pk",
    )
    folder = ("--model", "vg_audit_shapes.Folder")
    for spelling, expected in [("true", "hidden"), ("TRUE", "hidden"), ("1", "hidden"),
                               ("False", "shown"), ("0", "shown")]:  # fmt: skip
        document = shapes.check_json(
            *folder, "--filter", f"hidden={spelling}", settings=SHAPES_SETTINGS
        )
        assert _reasons(document) == {(pks[expected], "missing")}, spelling
    bad = shapes.check(*folder, "--filter", "hidden=maybe", settings=SHAPES_SETTINGS)
    assert bad.returncode == 1
    assert bad.stderr.startswith("CommandError: bad filter for vg_audit_shapes.Folder")


@pytest.mark.parametrize("database", ["sqlite"], indirect=True)
def test_fix_on_a_model_without_a_status_field_is_refused_up_front(site: Site) -> None:
    pks = site.seed(
        users=["alice"],
        rows={"r": {"owner": "alice", "name": "gone.csv"}},
        attachments={"a": {"owner": "alice", "document": "docs/gone.pdf"}},
    )
    log = site.media.parent / "log.jsonl"
    setting = "VOLGUARD_MISSING_FILES['vg_audit_testapp.Attachment']['status_field']"

    for args in (["--model", "vg_audit_testapp.Attachment"], []):
        proc = site.check(
            *args, "--fix", "--max-missing", "100%", "--audit-log", str(log),
            settings=TEST_SETTINGS,
        )  # fmt: skip
        assert proc.returncode == 1, proc.stdout + proc.stderr
        line = proc.stderr.strip().splitlines()[-1]
        assert line.startswith(
            "CommandError: --fix cannot mark rows of vg_audit_testapp.Attachment"
        )
        assert setting in line
        assert "unmounted" not in proc.stdout + proc.stderr
    assert not log.exists()
    status = site.shell(
        "from apps.services.models import UserDataFile as U\n"
        f"print(U.objects.get(pk={pks['r']}).processing_status)"
    )
    assert status.split()[-1] == "pending"  # nothing marked, not even the model that could be


@pytest.mark.parametrize("database", ["sqlite"], indirect=True)
def test_a_database_error_mid_run_is_one_line(site: Site) -> None:
    site.seed(users=["alice"], rows={"r": {"owner": "alice", "name": "gone.csv"}})
    rename = "from django.db import connection\nconnection.cursor().execute({!r})"
    # The audit reads the rows; the text output then asks the users' table for names.
    site.shell(rename.format("ALTER TABLE auth_user RENAME TO auth_user_gone"))
    try:
        proc = site.check()
    finally:
        site.shell(rename.format("ALTER TABLE auth_user_gone RENAME TO auth_user"))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert proc.stderr.strip().splitlines() == [
        "CommandError: database error: no such table: auth_user"
    ]


@pytest.mark.parametrize("database", ["sqlite"], indirect=True)
def test_a_primary_key_beyond_any_integer_matches_nothing(site: Site) -> None:
    site.seed(users=["alice"], rows={"r": {"owner": "alice", "name": "gone.csv"}})
    document = site.check_json("--filter", "pk=99999999999999999999999", code=0)
    assert (document["total_rows"], document["rows"]) == (0, [])


@pytest.mark.parametrize("database", ["sqlite"], indirect=True)
def test_fix_acts_only_on_the_confirmed_plan_and_refuses_a_changed_one(site: Site) -> None:
    from volguard.audit_document import Plan

    pks = site.seed(
        users=["alice"],
        rows={k: {"owner": "alice", "name": f"u/{k}.csv"} for k in ("a", "b", "c", "ok")},
    )
    site.files("u/ok.csv", "u/c.csv")
    log = site.media.parent / "log.jsonl"
    confirmed = Plan.of([(UDF.rsplit(".", 1)[0], "file", str(pks[k])) for k in ("a", "b")])
    (site.media / "u/c.csv").unlink()  # after the operator confirmed a and b, c goes too

    args = ("--fix", "--max-missing", "100%", "--audit-log", str(log))
    refused = site.check("--json", *args, "--plan", confirmed.encode())
    assert refused.returncode == 2, refused.stdout + refused.stderr
    document = json.loads(refused.stdout)
    assert document["refused"]["id"] == "plan_changed"
    assert document["refused"]["reasons"] == [
        f"1 row appeared (services.UserDataFile.file#pk={pks['c']})"
    ]
    assert "nothing changed" in refused.stderr
    assert not log.exists()
    digest = site.check(*args, "--plan", confirmed.encode(max_chars=0))
    assert digest.returncode == 2
    assert "2 rows confirmed, 3 rows found now" in digest.stderr
    assert not log.exists()

    site.files("u/c.csv")  # as confirmed again: exactly a and b are marked
    done = site.check_json(*args, "--plan", confirmed.encode())
    assert done["remediation"]["changed"] == 2
    assert len(log.read_text().splitlines()) == 2
