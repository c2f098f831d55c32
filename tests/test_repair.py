"""Remediation: ``check_missing_files --fix`` / ``--delete`` (`volguard.django.repair`).

End to end like tests/test_missing_files.py, whose project, databases (SQLite always, PostgreSQL
when reachable and always under CI), seeding and ``manage.py`` helpers are reused here, so
both modules exercise one test project. The command runs with stdin closed (no TTY), and
always with ``--audit-log``/``--export`` under the test's tmp_path, never the defaults.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import test_missing_files as ta

# The fixtures of tests/test_missing_files.py, registered in this module too.
project = ta.project
database = ta.database
site = ta.site

MESSAGE = "File missing from storage. Please re-upload your file."
DUMP = """\
import json
from apps.services.models import UserDataFile
rows = list(UserDataFile.objects.order_by("pk").values())
print("VG_ROWS=" + json.dumps(rows, default=str))
"""


def _run(site: ta.Site, *args: str) -> subprocess.CompletedProcess[str]:
    """``check_missing_files`` with stdin closed, so never at a terminal."""
    return _run_env(site.env(), *args)


def _rows(site: ta.Site) -> dict[int, dict[str, Any]]:
    out = site.shell(DUMP)
    rows = json.loads(out.split("VG_ROWS=", 1)[1])
    return {r["id"]: r for r in rows}


def _log(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines()]


def _seed_mixed(site: ta.Site) -> dict[str, int]:
    """Present, missing (two), empty, invalid-name, and shared-present rows."""
    pks = site.seed(
        users=["alice"],
        rows={
            "ok": {"owner": "alice", "name": "ok.csv", "status": "done"},
            "gone": {"owner": "alice", "name": "gone.csv", "status": "done"},
            "gone2": {"owner": "alice", "name": "sub/gone 2 é.csv"},
            "empty": {"owner": "alice", "name": ""},
            "bad": {"owner": "alice", "name": "../outside.csv"},
            "s1": {"owner": "alice", "name": "same.csv"},
            "s2": {"owner": "alice", "name": "same.csv"},
        },
    )
    site.files("ok.csv", "same.csv")
    # A log with history on one row: the message must become a new last line.
    site.shell(
        "from apps.services.models import UserDataFile\n"
        f"UserDataFile.objects.filter(pk={pks['gone']}).update(processing_log='run 1: ok')\n"
    )
    return pks


def test_fix_marks_exactly_the_missing_rows_and_is_idempotent(
    site: ta.Site, tmp_path: Path
) -> None:
    pks = _seed_mixed(site)
    log = tmp_path / "audit.jsonl"
    before = _rows(site)

    proc = _run(site, "--fix", "--max-missing", "100%", "--audit-log", str(log))
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Plan (--fix): missing 2, empty 1" in proc.stdout
    assert "left alone: invalid_name 1, shared 2" in proc.stdout
    assert "Marked failed: 3 rows" in proc.stdout

    after = _rows(site)
    fixed = {pks["gone"], pks["gone2"], pks["empty"]}
    assert after[pks["gone"]]["processing_log"] == "run 1: ok\n" + MESSAGE
    assert after[pks["gone2"]]["processing_log"] == MESSAGE
    assert after[pks["empty"]]["processing_log"] == MESSAGE
    for pk in fixed:
        assert after[pk]["processing_status"] == "failed"
    for pk in set(before) - fixed:  # present, invalid name, shared: untouched
        assert after[pk] == before[pk]

    entries = _log(log)
    assert len(entries) == 3
    assert {e["target"] for e in entries} == {f"services.UserDataFile#pk={pk}" for pk in fixed}
    gone = next(e for e in entries if e["target"].endswith(f"={pks['gone']}"))
    assert gone["action"] == "mark_failed"
    assert gone["before"] == {"status": "done", "log_tail": "run 1: ok"}
    assert gone["after"] == {"status": "failed"}
    assert gone["forced"] is False
    assert "--fix" in gone["command"]

    # Again: nothing changes, nothing is logged.
    proc = _run(site, "--fix", "--json", "--max-missing", "100%", "--audit-log", str(log))
    assert proc.returncode == 2, proc.stdout + proc.stderr
    section = json.loads(proc.stdout)["remediation"]
    assert section["action"] == "fix"
    assert section["planned"] == {"empty": 1, "missing": 2}
    assert section["changed"] == 0
    assert section["already_done"] == 3
    assert _rows(site) == after
    assert len(_log(log)) == 3


def test_delete_refuses_without_a_terminal_or_yes(site: ta.Site, tmp_path: Path) -> None:
    _seed_mixed(site)
    before = _rows(site)
    proc = _run(site, "--delete", "--max-missing", "100%", "--audit-log", str(tmp_path / "l"))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "--delete needs a terminal to confirm, or --yes" in proc.stderr
    assert _rows(site) == before
    assert not (tmp_path / "l").exists()


def test_delete_asks_at_a_terminal_naming_count_and_model(site: ta.Site, tmp_path: Path) -> None:
    pks = site.seed(
        users=["alice"],
        rows={"ok": {"owner": "alice", "name": "ok.csv"}, "gone": {"owner": "alice", "name": "g"}},
    )
    site.files("ok.csv")
    export = tmp_path / "export.json"
    args = ["--delete", "--max-missing", "100%", "--audit-log", str(tmp_path / "l")]
    for answer, remaining in (("no", {pks["ok"], pks["gone"]}), ("yes", {pks["ok"]})):
        primary, secondary = os.openpty()
        try:
            os.write(primary, f"{answer}\n".encode())
            proc = subprocess.run(
                [
                    sys.executable,
                    "manage.py",
                    "check_missing_files",
                    *args,
                    "--export",
                    str(export),
                ],
                cwd=ta.EXAMPLE,
                env=site.env(),
                stdin=secondary,
                capture_output=True,
                text=True,
                encoding="utf-8",
                timeout=300,
                check=False,
            )
        finally:
            os.close(primary)
            os.close(secondary)
        assert "Delete 1 UserDataFile row whose file is missing? Type yes: " in proc.stdout
        assert proc.returncode == (1 if answer == "no" else 2), proc.stdout + proc.stderr
        assert set(_rows(site)) == remaining
    assert export.exists()


def test_delete_exports_first_and_loaddata_restores_the_rows(site: ta.Site, tmp_path: Path) -> None:
    pks = site.seed(
        users=["alice"],
        rows={
            "ok": {"owner": "alice", "name": "ok.csv"},
            "gone": {"owner": "alice", "name": "gone.csv", "status": "done"},
            "gone2": {"owner": "alice", "name": "gone2.csv"},
            "lost1": {"owner": "alice", "name": "lost.csv"},  # shared and missing
            "lost2": {"owner": "alice", "name": "lost.csv"},
        },
    )
    site.files("ok.csv")
    before = _rows(site)
    log, export = tmp_path / "audit.jsonl", tmp_path / "out" / "export.json"

    proc = _run(
        site,
        "--delete",
        "--yes",
        "--max-missing",
        "100%",
        "--audit-log",
        str(log),
        "--export",
        str(export),
    )
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Deleted: 2 rows" in proc.stdout
    after = _rows(site)
    assert set(after) == set(before) - {pks["gone"], pks["gone2"]}
    assert {e["target"] for e in _log(log)} == {
        f"services.UserDataFile#pk={pks['gone']}",
        f"services.UserDataFile#pk={pks['gone2']}",
    }
    assert all(e["action"] == "delete" and e["export"] == str(export) for e in _log(log))
    assert len(json.loads(export.read_text())) == 2

    restore = ta._manage(site.env(), "loaddata", str(export))
    assert restore.returncode == 0, restore.stdout + restore.stderr
    assert _rows(site) == before


def test_interlock_refuses_on_an_empty_or_missing_root(site: ta.Site, tmp_path: Path) -> None:
    pks = site.seed(
        users=["alice"],
        rows={"a": {"owner": "alice", "name": "a.csv"}, "b": {"owner": "alice", "name": "b.csv"}},
    )
    log = tmp_path / "audit.jsonl"
    before = _rows(site)
    for args in (["--fix"], ["--delete", "--yes"]):
        proc = _run(site, *args, "--max-missing", "100%", "--audit-log", str(log))
        assert proc.returncode == 2, proc.stdout + proc.stderr
        assert proc.stderr.count("\n") == 1, proc.stderr
        assert "VG404" in proc.stderr
        assert f"the storage root {site.media} holds no files" in proc.stderr
    site.media.rmdir()
    proc = _run(site, "--fix", "--max-missing", "100%", "--audit-log", str(log))
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert f"the storage root {site.media} does not exist" in proc.stderr
    assert _rows(site) == before
    assert not log.exists()

    proc = _run(site, "--fix", "--force", "--audit-log", str(log))
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "--force overrides VG404" in proc.stderr
    entries = _log(log)
    assert {e["target"] for e in entries} == {
        f"services.UserDataFile#pk={pks['a']}",
        f"services.UserDataFile#pk={pks['b']}",
    }
    assert all(e["forced"] is True for e in entries)
    assert any("does not exist" in reason for reason in entries[0]["overridden"])


def test_interlock_refuses_more_than_max_missing(site: ta.Site, tmp_path: Path) -> None:
    names = [f"f{i}.csv" for i in range(4)]
    site.seed(users=["alice"], rows={n: {"owner": "alice", "name": n} for n in names})
    site.files("f0.csv", "f1.csv")  # 2 of 4 missing: 50%
    log = tmp_path / "audit.jsonl"
    for limit, why in (
        ("10%", "2 of 4 audited rows of services.UserDataFile.file that name a file are missing"),
        ("1", "2 of 4 audited rows are missing their file"),
    ):
        proc = _run(site, "--fix", "--max-missing", limit, "--audit-log", str(log))
        assert proc.returncode == 2, proc.stdout + proc.stderr
        assert "VG404" in proc.stderr
        assert f"{why}{' it' if '%' in limit else ''}, more than --max-missing {limit}" in (
            proc.stderr
        )
    assert not log.exists()
    for limit in ("50%", "2"):
        proc = _run(site, "--fix", "--max-missing", limit, "--audit-log", str(log))
        assert proc.returncode == 2, proc.stdout + proc.stderr
        assert "VG404" not in proc.stderr
    assert len(_log(log)) == 2  # marked once, by the first run that was allowed


def test_a_refusal_under_json_is_a_structured_object_on_stdout(
    site: ta.Site, tmp_path: Path
) -> None:
    names = [f"f{i}.csv" for i in range(4)]
    site.seed(users=["alice"], rows={n: {"owner": "alice", "name": n} for n in names})
    site.files("f0.csv", "f1.csv")  # 2 of 4 missing: 50%
    log = tmp_path / "audit.jsonl"
    proc = _run(site, "--fix", "--json", "--max-missing", "1", "--audit-log", str(log))
    assert proc.returncode == 2, proc.stdout + proc.stderr
    document = json.loads(proc.stdout)
    refused = document["refused"]
    assert refused["id"] == "VG404"
    assert refused["reasons"] == [
        "2 of 4 audited rows are missing their file, more than --max-missing 1"
    ]
    assert refused["message"] in proc.stderr  # the one CommandError line, as in text mode
    assert "remediation" not in document
    assert document["problem_rows"] == 2
    assert not log.exists()


def test_a_file_that_arrives_before_the_fix_is_not_marked(site: ta.Site, tmp_path: Path) -> None:
    """In-process: audit, then the upload lands, then fix (the subprocess cannot time it).

    Also a row re-uploaded under a new name and a row deleted between the audit and the
    fix: the batch's locked re-read sees both and leaves them alone.
    """
    pks = site.seed(
        users=["alice"],
        rows={
            "late": {"owner": "alice", "name": "late.csv"},
            "gone": {"owner": "alice", "name": "gone.csv"},
            "renamed": {"owner": "alice", "name": "old.csv"},
            "deleted": {"owner": "alice", "name": "deleted.csv"},
        },
    )
    log = tmp_path / "audit.jsonl"
    code = textwrap.dedent(f"""
        import json
        from pathlib import Path
        from apps.services.models import UserDataFile
        from volguard.audit_log import AuditLog
        from volguard.django import repair
        from volguard.django.missing_files import audit

        result = audit()
        report, rows = repair.plan(result, "fix")
        Path({str(site.media / "late.csv")!r}).write_text("arrived")
        UserDataFile.objects.filter(pk={pks["renamed"]}).update(file="new.csv")
        UserDataFile.objects.filter(pk={pks["deleted"]}).delete()
        repair.fix(report, rows, log=AuditLog({str(log)!r}), batch_size=2)
        print("VG_OUT=" + json.dumps(report.as_dict()))
    """)
    out = site.shell(code)
    report = json.loads(out.split("VG_OUT=", 1)[1])
    assert report["changed"] == 1
    assert report["rechecked_away"] == 3
    rows = _rows(site)
    assert rows[pks["late"]]["processing_status"] == "pending"
    assert rows[pks["renamed"]]["processing_status"] == "pending"
    assert pks["deleted"] not in rows
    assert rows[pks["gone"]]["processing_status"] == "failed"
    assert [e["target"] for e in _log(log)] == [f"services.UserDataFile#pk={pks['gone']}"]


def test_bad_max_missing_exits_1(site: ta.Site) -> None:
    proc = _run(site, "--fix", "--max-missing", "lots")
    assert proc.returncode == 1
    assert "bad --max-missing 'lots'" in proc.stderr


def _seed_one_missing(site: ta.Site) -> None:
    site.seed(
        users=["alice"],
        rows={"a": {"owner": "alice", "name": "a.csv"}, "b": {"owner": "alice", "name": "b.csv"}},
    )
    site.files("a.csv")


def test_interlock_refuses_media_on_the_root_filesystem_on_fly(
    site: ta.Site, tmp_path: Path
) -> None:
    """On a Machine (FLY_MACHINE_ID set) a media root on ``/``'s device is an unmounted volume."""
    if os.stat(site.media).st_dev != os.stat("/").st_dev:
        pytest.skip("the test's tmp_path is not on the root filesystem here")
    _seed_one_missing(site)
    log = tmp_path / "audit.jsonl"
    before = _rows(site)
    env = site.env(FLY_MACHINE_ID="e784079b449483")
    proc = _run_env(env, "--fix", "--max-missing", "100%", "--audit-log", str(log))
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert f"the storage root {site.media} is on the root filesystem, not on a volume" in (
        proc.stderr
    )
    # Off Fly there is no such expectation, and VOLGUARD_EXPECT_MOUNT=false turns it off.
    assert _rows(site) == before
    env["VOLGUARD_EXPECT_MOUNT"] = "false"
    proc = _run_env(env, "--fix", "--max-missing", "100%", "--audit-log", str(log))
    assert "VG404" not in proc.stderr
    assert len(_log(log)) == 1


def test_interlock_wants_the_configured_mount_point_mounted(
    database: str, project: Path, tmp_path: Path
) -> None:
    """``VOLGUARD_EXPECT_MOUNT=/data``: refused until a filesystem is really mounted there."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    volume = tmp_path / "data"
    media = volume / "media"
    media.mkdir(parents=True)
    (tmp_path / "scans").mkdir()
    site = ta.Site(database, project, media, tmp_path / "scans")
    _seed_one_missing(site)
    log = tmp_path / "audit.jsonl"
    env = site.env(VOLGUARD_EXPECT_MOUNT=str(volume))
    proc = _run_env(env, "--fix", "--max-missing", "100%", "--audit-log", str(log))
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert f"{volume} is not a mount point (volume not mounted?)" in proc.stderr
    assert not log.exists()

    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(volume)])
    if mounted.returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    try:
        media.mkdir()
        site.files("a.csv")
        proc = _run_env(env, "--fix", "--max-missing", "100%", "--audit-log", str(log))
        assert "VG404" not in proc.stderr, proc.stderr
        assert "Marked failed: 1 row" in proc.stdout
        # A media root outside the expected mount point is refused too.
        outside = site.env(VOLGUARD_EXPECT_MOUNT=str(tmp_path / "elsewhere"))
        proc = _run_env(outside, "--fix", "--max-missing", "100%", "--audit-log", str(log))
        assert f"is not under the volume's mount point {tmp_path / 'elsewhere'}" in proc.stderr
    finally:
        subprocess.run(["umount", str(volume)], check=True)


def test_fix_with_export_writes_the_rows_first(site: ta.Site, tmp_path: Path) -> None:
    _seed_one_missing(site)
    log, export = tmp_path / "audit.jsonl", tmp_path / "before-fix.json"
    before = _rows(site)
    proc = _run(
        site, "--fix", "--max-missing", "100%", "--export", str(export), "--audit-log", str(log)
    )
    assert proc.returncode == 2, proc.stdout + proc.stderr
    exported = json.loads(export.read_text())
    assert [o["fields"]["file"] for o in exported] == ["b.csv"]
    assert (
        exported[0]["fields"]["processing_status"] == before[exported[0]["pk"]]["processing_status"]
    )
    assert [e["export"] for e in _log(log)] == [str(export)]


def _run_env(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """``check_missing_files`` in ``env`` with stdin closed, so never at a terminal."""
    return subprocess.run(
        [sys.executable, "manage.py", "check_missing_files", *args],
        cwd=ta.EXAMPLE,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        encoding="utf-8",
        timeout=300,
        check=False,
    )


# -- what --fix and --delete may touch (#8 items 1, 3, 4, 5, 7) -----------------------------


def test_max_missing_is_a_share_of_the_rows_that_name_a_file(site: ta.Site, tmp_path: Path) -> None:
    """1 of the 2 scans that exist is missing: 50%, not 1 in 20 beside 8 empty optional scans."""
    names = [f"docs/d{i}.pdf" for i in range(10)]
    scans = {0: "scans/lost.png", 1: "scans/here.png"}
    site.seed(
        users=["alice"],
        attachments={
            f"a{i}": {
                "document": name,
                "scan": scans.get(i, ""),
            }
            for i, name in enumerate(names)
        },
    )
    site.files(*names)
    site.files("scans/here.png", root=site.scans)
    before = _rows(site)
    log = tmp_path / "audit.jsonl"

    proc = _run_env(
        site.env(ta.TEST_SETTINGS),  # the settings that install the Attachment model
        "--delete",
        "--yes",
        "--max-missing",
        "10%",
        "--audit-log",
        str(log),
        "--export",
        str(tmp_path / "export.json"),
    )

    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "VG404" in proc.stderr
    assert "1 of 2 audited rows of vg_audit_testapp.Attachment.scan that name a file" in (
        proc.stderr
    )
    assert _rows(site) == before
    count = (
        "from vg_audit_testapp.models import Attachment as A\nprint(f'VG_N={A.objects.count()}')"
    )
    assert "VG_N=10" in site.shell(count)
    assert not log.exists()


def test_a_file_uploaded_while_fix_waits_for_the_row_lock_is_not_marked(
    site: ta.Site, tmp_path: Path
) -> None:
    """The upload lands while the batch waits for its lock: the re-check must come after."""
    pks = site.seed(
        users=["alice"],
        rows={
            "back": {"owner": "alice", "name": "back.csv"},
            "gone": {"owner": "alice", "name": "gone.csv"},
        },
    )
    log = tmp_path / "audit.jsonl"
    code = textwrap.dedent(f"""
        import json
        from pathlib import Path
        from volguard.audit_log import AuditLog
        from volguard.django import repair
        from volguard.django.missing_files import audit

        result = audit()
        report, rows = repair.plan(result, "fix")
        locked = repair._locked
        def upload_then_lock(queryset, using):
            Path({str(site.media / "back.csv")!r}).write_text("uploaded again")
            return locked(queryset, using)
        repair._locked = upload_then_lock
        repair.fix(report, rows, log=AuditLog({str(log)!r}), batch_size=10)
        print("VG_OUT=" + json.dumps(report.as_dict()))
    """)
    out = site.shell(code)
    report = json.loads(out.split("VG_OUT=", 1)[1])
    rows = _rows(site)
    assert rows[pks["back"]]["processing_status"] == "pending"
    assert rows[pks["gone"]]["processing_status"] == "failed"
    assert report["changed"] == 1
    assert [e["target"] for e in _log(log)] == [f"services.UserDataFile#pk={pks['gone']}"]


def test_an_existing_export_path_is_refused_and_exports_are_owner_only(
    site: ta.Site, tmp_path: Path
) -> None:
    _seed_one_missing(site)
    before = _rows(site)
    export, log = tmp_path / "export.json", tmp_path / "audit.jsonl"
    export.write_text("earlier export")
    for action in (["--fix"], ["--delete", "--yes"]):
        proc = _run(
            site,
            *action,
            "--max-missing",
            "100%",
            "--export",
            str(export),
            "--audit-log",
            str(log),
        )
        assert proc.returncode == 1, proc.stdout + proc.stderr
        assert f"the export path {export} already exists" in proc.stderr
        assert export.read_text() == "earlier export"
        assert _rows(site) == before
        assert not log.exists()

    fresh = tmp_path / "private" / "export.json"
    proc = _run(
        site,
        "--delete",
        "--yes",
        "--max-missing",
        "100%",
        "--export",
        str(fresh),
        "--audit-log",
        str(log),
    )
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert f"exported first to {fresh}" in proc.stdout
    assert fresh.stat().st_mode & 0o777 == 0o600
    assert fresh.parent.stat().st_mode & 0o777 == 0o700


def test_write_new_never_replaces_anything(tmp_path: Path) -> None:
    from volguard.safeio import write_new

    target = tmp_path / "target.txt"
    target.write_text("keep")
    link = tmp_path / "link.json"
    link.symlink_to(target)
    for path in (target, link):
        with pytest.raises(FileExistsError):
            write_new(str(path), "new")
    assert target.read_text() == "keep"
    write_new(str(tmp_path / "new.json"), "text")
    assert (tmp_path / "new.json").read_text() == "text"
    assert (tmp_path / "new.json").stat().st_mode & 0o777 == 0o600
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".volguard-")]


# A project of its own for what a delete takes along: cascades, links, inheritance, receivers.

GRAPH_SETTINGS = "vg_repair_settings"
GRAPH_SETTINGS_PY = """\
from config.settings import *  # noqa: F403

INSTALLED_APPS = [*INSTALLED_APPS, "vg_repair_testapp"]  # noqa: F405
"""
GRAPH_MODELS_PY = '''\
from django.contrib.contenttypes.fields import GenericForeignKey, GenericRelation
from django.contrib.contenttypes.models import ContentType
from django.db import models
from django.db.models.signals import post_delete


class Tag(models.Model):
    content_type = models.ForeignKey(ContentType, on_delete=models.CASCADE)
    object_id = models.PositiveIntegerField()
    target = GenericForeignKey("content_type", "object_id")
    label = models.CharField(max_length=20)


class LiveManager(models.Manager):
    """A default manager that hides rows, as soft-delete apps do."""

    def get_queryset(self):
        return super().get_queryset().filter(archived=False)


class Report(models.Model):
    file = models.FileField(upload_to="reports/")
    processing_status = models.CharField(max_length=20, default="done")
    processing_log = models.TextField(blank=True)
    archived = models.BooleanField(default=False)
    tags = GenericRelation(Tag)

    objects = LiveManager()
    every = models.Manager()


class Invoice(Report):
    number = models.CharField(max_length=20)


class Page(models.Model):
    report = models.ForeignKey(Report, on_delete=models.CASCADE, related_name="pages")
    number = models.IntegerField()


class Binder(models.Model):
    title = models.CharField(max_length=20)
    reports = models.ManyToManyField(Report, related_name="binders")


class Draft(models.Model):
    file = models.FileField(upload_to="drafts/")


class Remark(models.Model):
    draft = models.ForeignKey(Draft, null=True, on_delete=models.SET_NULL)


class Picture(models.Model):
    file = models.FileField(upload_to="pictures/")


def remove_picture_files(sender, instance, **kwargs):
    """As django-cleanup does: the row's file, and here its thumbnail too."""
    instance.file.storage.delete(instance.file.name)
    instance.file.storage.delete("thumbs/" + instance.file.name)


post_delete.connect(remove_picture_files, sender=Picture)
'''

GRAPH_STATE = """\
import json
from vg_repair_testapp.models import Binder, Draft, Invoice, Page, Picture, Remark, Report, Tag
state = {
    "reports": sorted([r.pk, r.file.name, r.processing_status, r.archived]
                      for r in Report.every.all()),
    "invoices": sorted([i.pk, i.number] for i in Invoice.objects.all()),
    "pages": sorted(Page.objects.values_list("pk", "report_id", "number")),
    "tags": sorted(Tag.objects.values_list("pk", "object_id", "label")),
    "binders": {b.title: sorted(b.reports.values_list("pk", flat=True))
                for b in Binder.objects.all()},
    "drafts": sorted(Draft.objects.values_list("pk", flat=True)),
    "remarks": sorted(Remark.objects.values_list("pk", "draft_id")),
    "pictures": sorted(Picture.objects.values_list("pk", flat=True)),
}
print("VG_STATE=" + json.dumps(state))
"""

GRAPH_SEED = """\
import json
from django.contrib.contenttypes.models import ContentType
from vg_repair_testapp.models import Binder, Draft, Invoice, Page, Picture, Remark, Report, Tag
for model in (Tag, Page, Binder, Remark, Draft, Picture, Invoice, Report):
    model._base_manager.all().delete()
gone = Report.objects.create(file="reports/gone.pdf")
kept = Report.objects.create(file="reports/kept.pdf")
invoice = Invoice.objects.create(file="reports/invoice.pdf", number="INV-1")
hidden = Report.objects.create(file="reports/hidden.pdf", archived=True)
for report, n in ((gone, 2), (kept, 1), (invoice, 1)):
    for i in range(n):
        Page.objects.create(report=report, number=i)
Tag.objects.create(target=gone, label="urgent")
Tag.objects.create(target=kept, label="fine")
binder = Binder.objects.create(title="2026")
binder.reports.add(gone, kept, invoice)
draft = Draft.objects.create(file="drafts/gone.txt")
Remark.objects.create(draft=draft)
picture = Picture.objects.create(file="pictures/gone.png")
Picture.objects.create(file="pictures/kept.png")
print("VG_PKS=" + json.dumps({"gone": gone.pk, "kept": kept.pk, "invoice": invoice.pk,
      "hidden": hidden.pk, "draft": draft.pk, "picture": picture.pk}))
"""


@dataclass
class Graph:
    env: dict[str, str]
    media: Path
    pks: dict[str, int]

    def manage(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "manage.py", *args],
            cwd=ta.EXAMPLE,
            env=self.env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            encoding="utf-8",
            timeout=300,
            check=False,
        )

    def delete(self, model: str, tmp_path: Path, *more: str) -> subprocess.CompletedProcess[str]:
        return self.manage(
            "check_missing_files",
            "--model",
            model,
            "--delete",
            "--yes",
            "--max-missing",
            "100%",
            "--audit-log",
            str(tmp_path / "audit.jsonl"),
            *more,
        )

    def shell(self, code: str) -> str:
        proc = self.manage("shell", "-c", code)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        return proc.stdout

    def state(self) -> dict[str, Any]:
        return json.loads(self.shell(GRAPH_STATE).split("VG_STATE=", 1)[1])


@pytest.fixture(scope="module")
def graph_database(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    root = tmp_path_factory.mktemp("graph")
    (root / f"{GRAPH_SETTINGS}.py").write_text(GRAPH_SETTINGS_PY)
    (root / "vg_repair_testapp").mkdir()
    (root / "vg_repair_testapp" / "__init__.py").write_text("")
    (root / "vg_repair_testapp" / "models.py").write_text(GRAPH_MODELS_PY)
    url = f"sqlite:///{root / 'graph.sqlite3'}"
    env = ta._env(url, root, GRAPH_SETTINGS, root / "unused")
    for args in (["migrate", "--noinput"], ["migrate", "--run-syncdb", "--noinput"]):
        proc = ta._manage(env, *args)
        assert proc.returncode == 0, proc.stdout + proc.stderr
    return root, url


@pytest.fixture
def graph(graph_database: tuple[Path, str], tmp_path: Path) -> Graph:
    """Reports with pages, tags, a binder and an Invoice child; a draft with a SET_NULL
    remark; pictures with a file-deleting receiver. The files of the 'kept' rows exist."""
    root, url = graph_database
    media = tmp_path / "media"
    media.mkdir()
    env = ta._env(url, root, GRAPH_SETTINGS, media)
    g = Graph(env, media, {})
    g.pks = json.loads(g.shell(GRAPH_SEED).split("VG_PKS=", 1)[1])
    # After the seed, whose wipe of the last test's pictures runs their receiver.
    for name in ("reports/kept.pdf", "pictures/kept.png", "thumbs/pictures/gone.png"):
        (media / name).parent.mkdir(parents=True, exist_ok=True)
        (media / name).write_bytes(b"data")
    return g


def test_delete_exports_and_logs_every_row_it_takes_along_and_loaddata_restores_them(
    graph: Graph, tmp_path: Path
) -> None:
    """Pages (CASCADE), tags (generic relation), binder links (many-to-many declared on the
    Binder) and the Invoice child row go with the deleted Reports: all exported, logged."""
    before = graph.state()
    export = tmp_path / "export.json"

    run = graph.delete("vg_repair_testapp.Report", tmp_path, "--export", str(export))

    assert run.returncode == 2, run.stdout + run.stderr
    assert "Deleted: 3 rows" in run.stdout, run.stdout  # the hidden one too: a row is a row
    assert "vg_repair_testapp.Page 3" in run.stdout, run.stdout
    after = graph.state()
    assert [r[0] for r in after["reports"]] == [graph.pks["kept"]]
    targets = {e["target"] for e in _log(tmp_path / "audit.jsonl")}
    assert f"vg_repair_testapp.Invoice#pk={graph.pks['invoice']}" in targets
    assert sum(t.startswith("vg_repair_testapp.Page#") for t in targets) == 3
    assert sum(t.startswith("vg_repair_testapp.Tag#") for t in targets) == 1
    assert sum(t.startswith("vg_repair_testapp.Binder_reports#") for t in targets) == 2

    restore = graph.manage("loaddata", str(export))
    assert restore.returncode == 0, restore.stdout + restore.stderr
    assert graph.state() == before


def test_delete_refuses_a_receiver_that_may_delete_files_unless_allowed(
    graph: Graph, tmp_path: Path
) -> None:
    before, thumb = graph.state(), graph.media / "thumbs" / "pictures" / "gone.png"

    refused = graph.delete("vg_repair_testapp.Picture", tmp_path)

    assert refused.returncode == 1, refused.stdout + refused.stderr
    assert "vg_repair_testapp.models.remove_picture_files (post_delete of " in refused.stderr
    assert "--allow-delete-receivers" in refused.stderr
    assert graph.state() == before
    assert thumb.exists()

    allowed = graph.delete("vg_repair_testapp.Picture", tmp_path, "--allow-delete-receivers")
    assert "Deleted: 1 row" in allowed.stdout, allowed.stdout + allowed.stderr
    assert graph.pks["picture"] not in graph.state()["pictures"]


def test_delete_refuses_rows_whose_delete_would_change_other_rows(
    graph: Graph, tmp_path: Path
) -> None:
    before = graph.state()

    run = graph.delete("vg_repair_testapp.Draft", tmp_path)

    assert run.returncode == 1, run.stdout + run.stderr
    assert "SET_NULL" in run.stderr
    assert "vg_repair_testapp.Remark 1" in run.stderr
    assert graph.state() == before


def test_fix_and_delete_read_rows_a_default_manager_hides(graph: Graph, tmp_path: Path) -> None:
    """A row the app's default manager filters out is still a row: read as stored."""
    pk = graph.pks["hidden"]
    log, export = tmp_path / "audit.jsonl", tmp_path / "export.json"
    code = textwrap.dedent(f"""
        import json
        from volguard.audit_log import AuditLog
        from volguard.django import repair
        from volguard.django.audit_result import AuditRow

        row = AuditRow("vg_repair_testapp.Report", {pk}, "file", "reports/hidden.pdf", "missing")
        fixed = repair.Remediation(action="fix")
        repair.fix(fixed, [row], log=AuditLog({str(log)!r}), batch_size=10)
        deleted = repair.Remediation(action="delete")
        plan = repair.plan_delete(deleted, [row])
        repair.delete(deleted, plan, log=AuditLog({str(log)!r}), batch_size=10,
                      export={str(export)!r})
        print("VG_OUT=" + json.dumps([fixed.changed, deleted.changed]))
    """)
    out = graph.shell(code)
    assert json.loads(out.split("VG_OUT=", 1)[1]) == [1, 1]
    exported = json.loads(export.read_text())
    assert [(o["pk"], o["fields"]["processing_status"]) for o in exported] == [(pk, "failed")]


def test_fix_leaves_alone_a_row_changed_since_its_export(site: ta.Site, tmp_path: Path) -> None:
    """The export must hold each changed row as it was when it changed."""
    pks = site.seed(
        users=["alice"],
        rows={
            "edited": {"owner": "alice", "name": "edited.csv"},
            "gone": {"owner": "alice", "name": "gone.csv"},
        },
    )
    log, export = tmp_path / "audit.jsonl", tmp_path / "export.json"
    code = textwrap.dedent(f"""
        import json
        from apps.services.models import UserDataFile
        from volguard.audit_log import AuditLog
        from volguard.django import repair
        from volguard.django.missing_files import audit

        report, rows = repair.plan(audit(), "fix")
        repair.export_rows(report, rows, {str(export)!r})
        UserDataFile.objects.filter(pk={pks["edited"]}).update(processing_log="edited meanwhile")
        repair.fix(report, rows, log=AuditLog({str(log)!r}), batch_size=10)
        print("VG_OUT=" + json.dumps(report.as_dict()))
    """)
    report = json.loads(site.shell(code).split("VG_OUT=", 1)[1])
    rows = _rows(site)
    assert rows[pks["edited"]]["processing_status"] == "pending"
    assert rows[pks["gone"]]["processing_status"] == "failed"
    assert report["changed"] == 1
    assert any("changed since the export" in note for note in report["notes"])
