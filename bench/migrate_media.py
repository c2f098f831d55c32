"""``manage.py migrate_media`` against ``rclone copy --checksum`` + ``rclone check``.

Issue #11's figures. ``--files`` files (default 20,000; ``--quick``: 2,000) under a directory,
sizes from 1 KB to 5 MB (log-uniform 1-64 KB, and one file in 400 of 1-5 MB: about 22 KB
and 300 MB per 20,000 files, mostly small files as a media volume holds), each referenced by
a row of the example app's ``UserDataFile`` (SQLite). Three phases, each against a fresh
moto S3 server (``python -m moto.server`` on loopback, as tests/s3_server.py starts it), the
same concurrency (``--workers``, default 8) for both tools:

1. **rclone**: Debian's ``rclone copy --checksum --transfers N --checkers N`` of the
   directory to the bucket, then ``rclone check --checkers N`` (hashes compared), timed
   together; configured by ``RCLONE_CONFIG_BENCH_*`` environment variables.
2. **volguard**: ``manage.py migrate_media --to bucket --apply --workers N`` (copy, verify,
   the delta pass), timed, peak RSS from ``wait4``; once with ``--verify read`` (every object
   read back and hashed: the default) and once with ``--verify checksum`` (each upload's
   ``Content-MD5``, which a store such as S3 checks on receipt; moto's server does not check
   it, so this run measures the client's work only).
3. **kill and resume**: the same command, SIGKILLed once the server has seen half the
   uploads, then run again; the server's request log says which keys the second run PUT,
   the manifest which were verified before it: re-uploads of verified objects must be 0.

Goals: volguard's copy + verify wall time <= 1.0x rclone's copy + check; zero re-uploads of
verified objects; peak RSS <= 300 MB. Exit 0 when all hold, 1 when one fails (``--quick``:
always 0), 2 when the bench cannot run (no rclone, no moto or django-storages).

    .venv/bin/python bench/migrate_media.py [--quick] [--files N] [--workers N] [--json]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "example"
sys.path.insert(0, str(REPO / "tests"))

from s3_server import ACCESS_KEY, SECRET_KEY, moto_server  # noqa: E402

BUCKET = "vg-bench"
LOCATION = "media"
GOAL_RATIO = 1.0
GOAL_RSS_MB = 300


class CannotRun(Exception):
    pass


def sizes(count: int, rng: random.Random) -> Iterator[int]:
    for _ in range(count):
        if rng.random() < 1 / 400:
            yield rng.randint(1 << 20, 5 << 20)
        else:
            yield int(math.exp(rng.uniform(math.log(1024), math.log(64 << 10))))


def make_files(media: Path, count: int, seed: int) -> tuple[list[str], int]:
    rng = random.Random(seed)
    names, total = [], 0
    block = os.urandom(1 << 20)
    for i, size in enumerate(sizes(count, rng)):
        name = f"user_data/user_{i % 50}/2026/11/{i % 28 + 1:02d}/upload_{i:06d}.bin"
        path = media / name
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as f:
            f.write(i.to_bytes(8, "big"))  # every file distinct
            left = size - 8
            while left > 0:
                f.write(block[: min(left, len(block))])
                left -= len(block)
        names.append(name)
        total += max(size, 8)
    return names, total


def environment(root: Path, endpoint: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "RCLONE_"))}
    return env | {
        "DJANGO_SETTINGS_MODULE": "config.settings",
        "PYTHONPATH": str(REPO),
        "DATABASE_URL": f"sqlite:///{root / 'db.sqlite3'}",
        "MEDIA_ROOT": str(root / "media"),
        "CELERY_BROKER_URL": "memory://",
        "MIGRATE_MEDIA_BUCKET": BUCKET,
        "MEDIA_LOCATION": LOCATION,
        "AWS_ENDPOINT_URL_S3": endpoint,
        "AWS_ACCESS_KEY_ID": ACCESS_KEY,
        "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
        "AWS_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",
        "RCLONE_CONFIG_BENCH_TYPE": "s3",
        "RCLONE_CONFIG_BENCH_PROVIDER": "Other",
        "RCLONE_CONFIG_BENCH_ENV_AUTH": "false",
        "RCLONE_CONFIG_BENCH_ACCESS_KEY_ID": ACCESS_KEY,
        "RCLONE_CONFIG_BENCH_SECRET_ACCESS_KEY": SECRET_KEY,
        "RCLONE_CONFIG_BENCH_ENDPOINT": endpoint,
        "RCLONE_CONFIG_BENCH_REGION": "us-east-1",
        "RCLONE_CONFIG_BENCH_FORCE_PATH_STYLE": "true",
    }


def seed_database(root: Path, names: list[str]) -> None:
    env = environment(root, "http://127.0.0.1:1")
    for args in (
        ("migrate", "--noinput"),
        ("shell", "-c", "from django.contrib.auth.models import User; User.objects.create()"),
    ):
        proc = subprocess.run(
            [sys.executable, "manage.py", *args],
            cwd=EXAMPLE,
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
        if proc.returncode:
            raise CannotRun(f"manage.py {args[0]} failed: {proc.stderr[-2000:]}")
    with sqlite3.connect(root / "db.sqlite3") as db:
        db.executemany(
            "INSERT INTO services_userdatafile (owner_id, file, processing_status, "
            "processing_log, created_at, updated_at) VALUES (1, ?, 'done', '', "
            "'2026-11-01', '2026-11-01')",
            ((n,) for n in names),
        )


@contextmanager
def server(root: Path, label: str) -> Iterator[tuple[str, Path]]:
    """A fresh moto server with the bucket; yields its URL and request log."""
    import boto3

    log = root / f"moto-{label}.log"
    with moto_server(log) as endpoint:
        boto3.client(
            "s3",
            endpoint_url=endpoint,
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY,
            region_name="us-east-1",
        ).create_bucket(Bucket=BUCKET)
        yield endpoint, log


_PUT = re.compile(rf'"PUT /{BUCKET}/([^ ?"]+)[^"]* HTTP/1\.1" 200')


def puts(log: Path, start: int = 0) -> list[str]:
    """The object keys the server stored (200 to a PUT), from its request log."""
    with open(log, "rb") as f:
        f.seek(start)
        text = f.read().decode("utf-8", "replace")
    from urllib.parse import unquote

    return [unquote(m.group(1)) for m in _PUT.finditer(text)]


def run_rclone(root: Path, endpoint: str, workers: int) -> dict[str, float]:
    env = environment(root, endpoint)
    common = ["--transfers", str(workers), "--checkers", str(workers), "-q"]
    target = f"bench:{BUCKET}/{LOCATION}"
    started = time.monotonic()
    copy = subprocess.run(
        ["rclone", "copy", "--checksum", *common, str(root / "media"), target],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    copied = time.monotonic()
    if copy.returncode:
        raise CannotRun(f"rclone copy failed: {copy.stderr[-2000:]}")
    check = subprocess.run(
        ["rclone", "check", *common, str(root / "media"), target],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    checked = time.monotonic()
    if check.returncode:
        raise CannotRun(f"rclone check failed: {check.stderr[-2000:]}")
    return {"copy_s": copied - started, "check_s": checked - copied, "total_s": checked - started}


def migrate_command(workers: int, manifest: Path, verify: str = "read") -> list[str]:
    return [
        sys.executable,
        "manage.py",
        "migrate_media",
        "--to",
        "bucket",
        "--apply",
        "--json",
        "--workers",
        str(workers),
        "--manifest",
        str(manifest),
        "--verify",
        verify,
    ]


def run_volguard(root: Path, endpoint: str, workers: int, verify: str) -> dict[str, Any]:
    manifest = root / f"manifest-{verify}.jsonl"
    started = time.monotonic()
    proc = subprocess.Popen(
        migrate_command(workers, manifest, verify),
        cwd=EXAMPLE,
        env=environment(root, endpoint),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    # wait4 gives this child's own peak RSS (not the largest of all children).
    out = proc.stdout.read()  # type: ignore[union-attr]
    err = proc.stderr.read()  # type: ignore[union-attr]
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    elapsed = time.monotonic() - started
    if proc.returncode != 0:
        raise CannotRun(f"migrate_media exited {proc.returncode}: {err.decode()[-2000:]}")
    report = json.loads(out)
    return {
        "total_s": elapsed,
        "peak_rss_mb": usage.ru_maxrss / 1024,
        "verified": report["files"]["verified"],
        "bytes_verified": report["bytes"]["verified"],
    }


def verified_in(manifest: Path) -> set[str]:
    names = set()
    for line in manifest.read_bytes().splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if entry.get("state") == "verified":
            names.add(entry["name"])
    return names


def run_kill_resume(root: Path, endpoint: str, log: Path, workers: int, count: int) -> dict:
    manifest = root / "manifest-kill.jsonl"
    env = environment(root, endpoint)
    proc = subprocess.Popen(
        migrate_command(workers, manifest),
        cwd=EXAMPLE,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    while proc.poll() is None and len(puts(log)) < count // 2:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = len(puts(log))
    verified = verified_in(manifest)
    offset = log.stat().st_size
    resume = subprocess.run(
        migrate_command(workers, manifest),
        cwd=EXAMPLE,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if resume.returncode != 0:
        raise CannotRun(f"the resumed run exited {resume.returncode}: {resume.stderr[-2000:]}")
    again = puts(log, offset)
    keys = {f"{LOCATION}/{n}" for n in verified}
    return {
        "killed_after_puts": killed_at,
        "verified_before_resume": len(verified),
        "resume_puts": len(again),
        "reuploads_of_verified": sum(1 for k in again if k in keys),
        "resume_verified": json.loads(resume.stdout)["files"]["verified"],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--files", type=int, default=20_000)
    parser.add_argument("--quick", action="store_true", help="2,000 files, a first look")
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    count = 2_000 if args.quick else args.files
    if shutil.which("rclone") is None:
        print("cannot run: rclone is not on PATH (apt-get install rclone)", file=sys.stderr)
        return 2
    try:
        import boto3  # noqa: F401
        import moto.server  # noqa: F401
        import storages  # noqa: F401
    except ImportError as e:
        print(f"cannot run: {e}", file=sys.stderr)
        return 2

    root = Path(tempfile.mkdtemp(prefix="vg-bench-migrate-"))
    try:
        names, total = make_files(root / "media", count, args.seed)
        seed_database(root, names)
        with server(root, "rclone") as (endpoint, _):
            rclone = run_rclone(root, endpoint, args.workers)
        volguard = {}
        for verify in ("read", "checksum"):
            with server(root, f"volguard-{verify}") as (endpoint, log):
                volguard[verify] = run_volguard(root, endpoint, args.workers, verify)
                volguard[verify]["server_puts"] = len(puts(log))
        with server(root, "kill") as (endpoint, log):
            kill = run_kill_resume(root, endpoint, log, args.workers, count)
    except CannotRun as e:
        print(f"cannot run: {e}", file=sys.stderr)
        return 2
    finally:
        shutil.rmtree(root, ignore_errors=True)

    ratio = {k: v["total_s"] / rclone["total_s"] for k, v in volguard.items()}
    result = {
        "files": count,
        "bytes": total,
        "workers": args.workers,
        "load_average": os.getloadavg(),
        "rclone": rclone,
        "volguard": volguard,
        "kill_resume": kill,
        "ratio": ratio,
        "goals": {
            "ratio_le_1 (--verify read, the default)": ratio["read"] <= GOAL_RATIO,
            "ratio_le_1 (--verify checksum)": ratio["checksum"] <= GOAL_RATIO,
            "zero_reuploads": kill["reuploads_of_verified"] == 0,
            "rss_le_300mb": max(v["peak_rss_mb"] for v in volguard.values()) <= GOAL_RSS_MB,
        },
    }
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"{count} files, {total / 1e6:.0f} MB, {args.workers} workers")
        print(
            f"rclone copy --checksum + check: {rclone['total_s']:.1f} s "
            f"(copy {rclone['copy_s']:.1f} s, check {rclone['check_s']:.1f} s)"
        )
        for verify, figures in volguard.items():
            print(
                f"migrate_media --apply --verify {verify} (copy, verify, delta pass): "
                f"{figures['total_s']:.1f} s, {ratio[verify]:.2f}x rclone, peak RSS "
                f"{figures['peak_rss_mb']:.0f} MB, {figures['server_puts']} PUTs"
            )
        print(
            f"SIGKILL after {kill['killed_after_puts']} PUTs, "
            f"{kill['verified_before_resume']} verified; resume: {kill['resume_puts']} PUTs, "
            f"{kill['reuploads_of_verified']} re-uploads of verified objects"
        )
        print(
            "goals: "
            + ", ".join(f"{k} {'ok' if v else 'FAIL'}" for k, v in result["goals"].items())
        )
    return 0 if args.quick or all(result["goals"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
