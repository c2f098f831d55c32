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
