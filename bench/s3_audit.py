"""The missing-file audit on S3: HTTP requests and wall time against per-row ``exists()``.

Issue #5's third figure. moto's standalone S3 server (``python -m moto.server``, from
``moto[server]`` in the dev extra) on 127.0.0.1 and a free port, as in
tests/test_audit_s3.py; the example project talks to it over HTTP through
django-storages' ``S3Storage`` and boto3 (bucket ``volguard-media``, location ``media``).
The bucket holds ``--objects`` objects (default 20,000): the files of ``--rows`` rows
(default 20,000, the example app's ``user_data/user_<id>/YYYY/MM/DD/`` names, 20 to a
"directory") less ``--missing-pct`` (default 1%) never uploaded, plus unrelated keys under
``media/cache/`` to make up the count. The database is SQLite (the S3 side is what is
measured; tests/test_missing_files.py covers PostgreSQL).

In one child process, ``--rounds`` rounds (default 3, after one discarded) of:

- **engine**: ``volguard.django.missing_files.audit(discover(["services.UserDataFile"]))``;
- **command**: ``call_command("check_missing_files", "--json")``, stdout to /dev/null;

then once **per-row**: the usual loop, ``for df in UserDataFile.objects.all(): if
df.file and not default_storage.exists(df.file.name)`` (one ``HEAD`` per row).

HTTP requests are counted twice: by the client (a boto3 ``before-send`` hook on the
storage's S3 client, so retries count too) and by the server (its request log lines).
Each run's missing count is checked against the seeded one.

Goals (issue #5): the audit makes >= 50x fewer requests and is >= 10x faster (best
round) than the per-row loop. Exit status 0 when both pass, 1 when one fails
(``--quick``: always 0), 2 when the bench cannot run (no moto, no django-storages).

    .venv/bin/python bench/s3_audit.py [--rows 20000] [--objects 20000] [--rounds 3]
        [--quick] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path
from typing import Any

from audit_scale import (
    MODEL,
    CannotRun,
    Layout,
    add_child_arguments,
    child_result,
    install_sigterm_cleanup,
    load_average,
    migrate_and_seed,
    run_child,
    run_script,
    setup_django,
)

BUCKET = "volguard-media"
LOCATION = "media"
MIN_FEWER_REQUESTS = 50.0
MIN_SPEEDUP = 10.0
#: A request line in the server's log (werkzeug): ``"GET /bucket?list-type=2 HTTP/1.1" 200``,
#: colored (ANSI escapes) for errors such as the 404 of a HEAD.
_ANSI = r"(?:\x1b\[[0-9;]*m)*"
REQUEST_LINE = re.compile(rf'"{_ANSI}(?:GET|HEAD|PUT|POST|DELETE) \S+ HTTP/1\.[01]{_ANSI}"')

#: The example app's own settings put its uploads on S3 when these are set (as `fly storage
#: create` sets them on Fly; example/config/settings.py).
S3_ENVIRONMENT = {
    "BUCKET_NAME": BUCKET,
    "MEDIA_LOCATION": LOCATION,
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",
}


def log(message: str) -> None:
    print(f"[s3_audit] {message}", file=sys.stderr, flush=True)


# -- the server -----------------------------------------------------------------------------


def start_moto(logfile: Path) -> tuple[subprocess.Popen, str]:
    try:
        import moto.server  # noqa: F401
    except ImportError as e:
        raise CannotRun(f"moto[server] is not installed: {e}") from None
    with open(logfile, "wb") as out:
        # Port 0: the OS picks a free one and the server prints it. Its log goes to a file,
        # not a pipe: it logs every request, and a full pipe would block it.
        server = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", "0"],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        text = logfile.read_text("utf-8", "replace")
        match = re.search(r"Running on (http://127\.0\.0\.1:\d+)", text)
        if match:
            return server, match.group(1)
        if server.poll() is not None:
            break
        time.sleep(0.1)
    stop(server)
    raise CannotRun(f"moto's S3 server did not start: {logfile.read_text()[-2000:]}")


def stop(server: subprocess.Popen) -> None:
    server.terminate()
    try:
        server.wait(timeout=10)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait()


def fill_bucket(endpoint: str, layout: Layout, objects: int) -> int:
    try:
        import boto3
    except ImportError as e:
        raise CannotRun(f"boto3 is not installed: {e}") from None
    client = boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        region_name="us-east-1",
    )
    client.create_bucket(Bucket=BUCKET)
    missing = layout.missing()
    keys = [f"{LOCATION}/{name}" for pk, _u, name, _c in layout.entries() if pk not in missing]
    keys += [f"{LOCATION}/cache/{i:06d}.bin" for i in range(max(0, objects - len(keys)))]
    with ThreadPoolExecutor(max_workers=16) as pool:
        list(pool.map(lambda key: client.put_object(Bucket=BUCKET, Key=key, Body=b""), keys))
    return len(keys)


# -- the child ------------------------------------------------------------------------------


class Requests:
    """HTTP requests seen by the storage's S3 client and in the server's log."""

    def __init__(self, server_log: str) -> None:
        from django.core.files.storage import default_storage

        from volguard.django.storage_index import unwrap

        self.server_log = server_log
        self.client = 0
        events = unwrap(default_storage).connection.meta.client.meta.events
        events.register("before-send.s3", self._sent)

    def _sent(self, **_: Any) -> None:
        self.client += 1

    def mark(self) -> tuple[int, int]:
        return self.client, os.path.getsize(self.server_log)

    def since(self, mark: tuple[int, int]) -> dict[str, int]:
        client, offset = mark
        time.sleep(0.2)  # the server writes its log line after answering
        with open(self.server_log, "rb") as fh:
            fh.seek(offset)
            text = fh.read().decode("utf-8", "replace")
        return {"client": self.client - client, "server": len(REQUEST_LINE.findall(text))}


def engine() -> dict[str, Any]:
    from volguard.django.missing_files import audit
    from volguard.django.targets import discover

    result = audit(discover([MODEL]))
    field = result.fields[0]
    return {
        "missing": result.problem_count,
        "strategy": field.strategy,
        "detail": field.strategy_detail,
        "counted": result.storage_requests,
    }


def command() -> dict[str, Any]:
    from django.core.management import call_command

    with open(os.devnull, "w", encoding="utf-8") as out:
        call_command("check_missing_files", "--json", stdout=out, stderr=out)
    return {}


def per_row() -> dict[str, Any]:
    from apps.services.models import UserDataFile
    from django.core.files.storage import default_storage

    missing = [
        df
        for df in UserDataFile.objects.all()
        if df.file and not default_storage.exists(df.file.name)
    ]
    return {"missing": len(missing)}


def child_time(spec: dict[str, Any]) -> dict[str, Any]:
    requests = Requests(spec["server_log"])
    expected = spec["expected_missing"]
    out: dict[str, Any] = {"engine": [], "command": []}
    for round_ in range(spec["rounds"] + 1):  # round 0: connections and caches, discarded
        for name, fn in (("engine", engine), ("command", command)):
            mark = requests.mark()
            started = time.perf_counter()
            value = fn()
            seconds = time.perf_counter() - started
            counts = requests.since(mark)
            if name == "engine" and value["missing"] != expected:
                raise CannotRun(f"the audit found {value['missing']} missing, not {expected}")
            if round_:
                out[name].append({"seconds": seconds, **counts, **value})
    mark = requests.mark()
    started = time.perf_counter()
    value = per_row()
    seconds = time.perf_counter() - started
    if value["missing"] != expected:
        raise CannotRun(f"the per-row loop found {value['missing']} missing, not {expected}")
    out["per_row"] = {"seconds": seconds, **requests.since(mark), **value}
    return out


def child_main(mode: str, spec: dict[str, Any]) -> None:
    setup_django()
    if mode == "seed":
        child_result(migrate_and_seed(Layout(**spec["layout"])))
    elif mode == "time":
        child_result(child_time(spec))
    else:
        raise SystemExit(f"unknown child mode {mode}")


# -- the parent -----------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--objects", type=int, default=20_000)
    parser.add_argument("--missing-pct", type=float, default=1.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="smoke run: 2,000 rows, 1 round")
    add_child_arguments(parser)
    args = parser.parse_args()
    if args.child:
        child_main(args.child, json.loads(args.spec))
        return 0
    install_sigterm_cleanup()
    if args.quick:
        args.rows, args.objects, args.rounds = 2000, 2000, 1
    layout = Layout(args.rows, missing_pct=args.missing_pct)
    workdir = Path(tempfile.mkdtemp(prefix="vg-s3-audit-"))
    server = None
    try:
        server_log = workdir / "moto.log"
        server, endpoint = start_moto(server_log)
        log(f"moto at {endpoint}; uploading {args.objects:,} objects")
        started = time.perf_counter()
        objects = fill_bucket(endpoint, layout, args.objects)
        log(f"{objects:,} objects in {time.perf_counter() - started:.1f} s")
        env = {
            "DATABASE_URL": f"sqlite:///{workdir / 'bench.sqlite3'}",
            "MEDIA_ROOT": str(workdir / "unused-media"),
            "AWS_ENDPOINT_URL_S3": endpoint,
            **S3_ENVIRONMENT,
        }
        run_child(__file__, "seed", {"layout": asdict(layout)}, env)
        log(f"timing {args.rounds} rounds, then the per-row loop")
        spec = {
            "rounds": args.rounds,
            "expected_missing": len(layout.missing()),
            "server_log": str(server_log),
        }
        result = run_child(__file__, "time", spec, env)
    except CannotRun as e:
        print(f"s3_audit: cannot run: {e}", file=sys.stderr)
        return 2
    finally:
        if server is not None:
            stop(server)
        shutil.rmtree(workdir, ignore_errors=True)
    ok = print_report(layout, objects, result, args)
    if args.json:
        print(json.dumps({"rows": layout.rows, "objects": objects, **result}))
    return 0 if args.quick or ok else 1


def print_report(
    layout: Layout, objects: int, result: dict[str, Any], args: argparse.Namespace
) -> bool:
    print(
        f"{layout.rows:,} rows of {MODEL} ({layout.missing_pct:g}% missing = "
        f"{len(layout.missing()):,}), {objects:,} objects in the bucket; moto's S3 server "
        f"on 127.0.0.1 via django-storages; SQLite; nproc {os.cpu_count()}"
    )
    print(f"{args.rounds} rounds after 1 discarded (audit), 1 run (per-row)")
    print(f"{'what':34} {'best s':>8} {'median s':>9} {'requests':>9} {'server log':>11}")
    for name, label in (
        ("engine", "volguard audit() engine"),
        ("command", "check_missing_files --json"),
    ):
        runs = result[name]
        seconds = [r["seconds"] for r in runs]
        print(
            f"{label:34} {min(seconds):8.3f} {statistics.median(seconds):9.3f} "
            f"{runs[-1]['client']:9,} {runs[-1]['server']:11,}"
        )
    loop = result["per_row"]
    print(
        f"{'per-row default_storage.exists()':34} {loop['seconds']:8.3f} {'':9} "
        f"{loop['client']:9,} {loop['server']:11,}"
    )
    engine = result["engine"][-1]
    print(
        f"   audit strategy {engine['strategy']} ({engine['detail']}); "
        f"storage_requests reported by the audit: {engine['counted']}"
    )
    ok = True
    print()
    for name, label in (("engine", "audit() engine"), ("command", "check_missing_files")):
        runs = result[name]
        fewer = loop["client"] / max(1, max(r["client"] for r in runs))
        faster = loop["seconds"] / min(r["seconds"] for r in runs)
        for text, value, limit in (
            (
                f"{label}: per-row requests / audit requests >= {MIN_FEWER_REQUESTS:g}x",
                fewer,
                MIN_FEWER_REQUESTS,
            ),
            (f"{label}: per-row wall / audit wall >= {MIN_SPEEDUP:g}x", faster, MIN_SPEEDUP),
        ):
            passed = value >= limit
            ok = ok and passed
            print(f"{text}: {value:.1f} {'PASS' if passed else 'FAIL'}")
    if args.quick:
        print("(--quick: a smoke run; the goals are set for 20,000 objects)")
    print(f"1-min load average after the run: {load_average():.2f}")
    return ok


if __name__ == "__main__":
    run_script("s3_audit", main)
