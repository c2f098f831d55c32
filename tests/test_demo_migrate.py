"""`invoke demo-migrate`, run as a user runs it: the split fleet's uploads moved to a bucket,
ending with the worker reading what the web app wrote."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from volguard.demo_migrate import CONTENT, UPLOAD, demo_prerequisites

REPO = Path(__file__).resolve().parents[1]
WHY = demo_prerequisites()
if WHY and os.environ.get("CI"):
    raise RuntimeError(f"CI must be able to run the demo, but: {WHY}")


@pytest.fixture
def workdir() -> Iterator[Path]:
    """A work directory the Machines' app user can enter (pytest's tmp_path is 0700)."""
    path = Path(tempfile.mkdtemp(prefix="volguard-demo-migrate-test-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _section(out: str, number: int) -> str:
    start = out.index(f"== {number}.")
    end = out.find(f"== {number + 1}.", start)
    return out[start : end if end >= 0 else None]


@pytest.mark.skipif(WHY is not None, reason=WHY or "")
def test_after_the_move_the_worker_reads_the_bytes_the_web_app_wrote(workdir: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FLY_", "INVOKE_", "AWS_"))}
    done = subprocess.run(
        [str(Path(sys.executable).with_name("invoke")), "demo-migrate", "--workdir", str(workdir)],
        cwd=REPO,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    out = done.stdout
    assert done.returncode == 0, out[-3000:] + done.stderr
    split, plan, move, verify, read = (_section(out, n) for n in range(1, 6))
    # before: the web app saved the upload on its volume; the worker cannot open it
    assert f"saved {UPLOAD} ({len(CONTENT)} bytes) with FileSystemStorage" in split
    assert "FileNotFoundError" in split
    assert "error   VG103" in split
    # every step ran and exited as the runbook says (the demo stops on any other code)
    assert "merged: 2 Machine(s)" in plan
    assert "2 to copy" in plan
    # one --apply --setting: the copy, then the cutover performed, deployed and verified
    assert "migrate-media --apply: succeeded" in move
    assert "2 file(s) copied from 2 Machine(s)" in move
    assert re.search(r"cutover +changed .*fly\.toml \[env\]: MEDIA_FALLBACK=1 \(was absent\)", move)
    assert "deploy succeeded: test-blue-smoke-97" in move
    assert "[lint] ok" in move  # the gate judged media in object storage (VG115), not VG103
    assert re.search(r"verify +ok ", move)
    assert "rollback: flyctl deploy" in move
    assert "--env MEDIA_FALLBACK=0" in move
    assert re.search(r"2 row\(s\) audited against the storage the app now uses", verify)
    assert "verified: no row that had a file on a volume is missing" in verify
    # after: the worker, through Django's default storage, reads the web app's bytes
    assert f"read {len(CONTENT)} bytes with FallbackStorage: {CONTENT!r}" in read
    for section in (plan, move, verify, read):
        assert "(exit 1)" not in section
    assert "demo-migrate: done" in out
    assert "demo-secret" not in out + done.stderr  # the demo's S3 secret is never shown
    # the move left its run records in the work directory, as the runbook says, and wrote
    # the setting into fly.toml [env], where the next deploy keeps it
    assert list((workdir / ".volguard" / "runs").glob("migrate-media-*.json"))
    assert list((workdir / ".volguard" / "runs").glob("deploy-*.json"))
    assert 'MEDIA_FALLBACK = "1"' in (workdir / "fly.toml").read_text()
