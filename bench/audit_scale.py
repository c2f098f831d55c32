"""The missing-file audit at scale on a volume, against the usual per-row loop and the I/O floor.

Issue #5's first figure. N rows (default 1,000,000) of the example app's
``apps.services.UserDataFile`` on a local FileSystemStorage: a temporary MEDIA_ROOT whose
files (one byte each) are spread over ``user_data/user_<id>/YYYY/MM/DD/`` directories
(``--files-per-dir``, default 20, and ``--rows-per-user``, default 1,000: at 1M rows
1,000 users and 50,000 directories), with ``--missing-pct`` (default 1%) of the rows'
files never created. Rows are inserted in upload order (day by day, the users
interleaved), as a real table grows, and are all a day or more old (no grace-period
skips). Seeding is raw: ``COPY`` on PostgreSQL, ``executemany`` on SQLite.

Per database, in one process, warm cache (one discarded round first), ``--rounds``
rounds (default 3) of, interleaved:

- **floor**: streaming ``values_list("pk", "file").iterator(chunk_size=2000)`` (with the
  model's default ordering cleared, as the audit does) plus one ``os.scandir`` walk of
  the media tree keeping each directory's set of file names;
- **engine**: ``volguard.django.missing_files.audit(discover(["services.UserDataFile"]))``, what
  the command calls;
- **command**: ``call_command("check_missing_files", "--json")`` in-process with stdout
  to /dev/null (what a user runs, less Python and Django start-up);

then once, **per-row loop**: the usual check,
``for df in UserDataFile.objects.all(): if df.file and not default_storage.exists(df.file.name)``
over all rows (``--seed-rows`` to time a subset). Each run's missing count is checked
against the seeded one.

Peak memory: a fresh child process per measurement sets Django up, connects, notes
``ru_maxrss`` (Django alone), runs the engine (or the command) once and notes
``ru_maxrss`` again.

Goals (issue #5): engine and command within 1.3x of the floor (best of rounds); peak RSS
of the audit at 1M rows <= 300 MB. Exit status 0 when every goal passes, 1 when one fails
(``--quick``: always 0, its figures are only a smoke test), 2 when the bench cannot run
(no PostgreSQL server, a wrong count).

    .venv/bin/python bench/audit_scale.py [--rows 1000000] [--db sqlite|postgres|both]
        [--rounds 3] [--seed-rows N] [--quick] [--json]

PostgreSQL: the server at ``VOLGUARD_TEST_POSTGRES`` (default
``postgres://postgres@127.0.0.1:5432/postgres``); a throwaway database is created per
run and dropped afterwards. The helpers here (Django in a child process, throwaway
databases) are shared with ``fix_scale.py`` and ``s3_audit.py``.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import random
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "example"
POSTGRES_URL = os.environ.get(
    "VOLGUARD_TEST_POSTGRES", "postgres://postgres@127.0.0.1:5432/postgres"
)
MODEL = "services.UserDataFile"
BATCH = 2000  # the command's default --batch-size, and the floor's chunk_size
MAX_FLOOR_RATIO = 1.3
MAX_RSS_MB = 300
RESULT_PREFIX = "BENCH-RESULT "
#: Uploads start here; every row is at least a day old when audited.
EPOCH = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)


class CannotRun(Exception):
    """The bench cannot run here (exit 2)."""


# -- the data set -------------------------------------------------------------------------


@dataclass(frozen=True)
class Layout:
    """Which rows exist and which of their files: deterministic, so the parent makes the
    media tree and a child seeds the table from the same description."""

    rows: int
    files_per_dir: int = 20
    rows_per_user: int = 1000
    missing_pct: float = 1.0
    seed: int = 5

    @property
    def users(self) -> int:
        return max(1, -(-self.rows // self.rows_per_user))

    @property
    def per_day(self) -> int:
        return self.users * self.files_per_dir

    @property
    def directories(self) -> int:
        days, rest = divmod(self.rows, self.per_day)
        return days * self.users + -(-rest // self.files_per_dir)

    def missing(self) -> set[int]:
        count = round(self.rows * self.missing_pct / 100)
        return set(random.Random(self.seed).sample(range(1, self.rows + 1), count))

    def entries(self) -> Iterator[tuple[int, int, str, dt.datetime]]:
        """``(pk, owner id, name, created)`` in insertion (upload) order."""
        per_day, per_dir = self.per_day, self.files_per_dir
        for pk in range(1, self.rows + 1):
            day, rest = divmod(pk - 1, per_day)
            user = rest // per_dir + 1
            created = EPOCH + dt.timedelta(days=day, seconds=rest)
            yield pk, user, f"user_data/user_{user}/{created:%Y/%m/%d}/data_{pk:07d}.csv", created


def make_media(layout: Layout, root: Path, *, skip: set[int] | None = None) -> int:
    """Create the layout's files (one byte each) under ``root``, but not those of ``skip``."""
    skip = layout.missing() if skip is None else skip
    made: set[str] = set()
    created = 0
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
    base = os.fspath(root)
    for pk, _user, name, _when in layout.entries():
        if pk in skip:
            continue
        directory, _, _base = name.rpartition("/")
        if directory not in made:
            os.makedirs(os.path.join(base, directory), exist_ok=True)
            made.add(directory)
        fd = os.open(os.path.join(base, name), flags, 0o644)
        os.write(fd, b"x")  # one byte: a 0-byte file is a truncated upload (VG405)
        os.close(fd)
        created += 1
    return created


# -- databases ----------------------------------------------------------------------------


@contextlib.contextmanager
def throwaway_database(kind: str, workdir: Path) -> Iterator[str]:
    """A DATABASE_URL for a fresh database: a file in ``workdir``, or a PostgreSQL
    database on the local server, dropped afterwards."""
    if kind == "sqlite":
        yield f"sqlite:///{workdir / f'bench-{uuid.uuid4().hex[:8]}.sqlite3'}"
        return
    try:
        import psycopg
        from psycopg import sql
    except ImportError as e:
        raise CannotRun(f"psycopg is not installed: {e}") from None
    try:
        admin = psycopg.connect(POSTGRES_URL, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as e:
        raise CannotRun(f"no PostgreSQL server at {POSTGRES_URL}: {e}") from None
    name = f"vg_bench_{uuid.uuid4().hex[:12]}"
    with admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        try:
            yield urlunsplit(urlsplit(POSTGRES_URL)._replace(path=f"/{name}"))
        finally:
            admin.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


def db_kind(url: str) -> str:
    return "sqlite" if url.startswith("sqlite:") else "postgres"


def setup_django() -> None:
    """The example project in this process (DATABASE_URL, MEDIA_ROOT, BUCKET_NAME, … from
    the environment: example/config/settings.py)."""
    import django

    sys.path.insert(0, str(EXAMPLE))
    os.environ["DJANGO_SETTINGS_MODULE"] = "config.settings"
    django.setup()


def migrate_and_seed(layout: Layout, *, status: str = "done", log: str = "") -> dict[str, Any]:
    """Create the tables and the layout's users and rows (in a child with Django set up)."""
    from apps.services.models import UserDataFile
    from django.contrib.auth import get_user_model
    from django.core.management import call_command
    from django.db import connection, transaction

    started = time.perf_counter()
    call_command("migrate", verbosity=0)
    user_model = get_user_model()
    user_model.objects.bulk_create(
        [user_model(id=u, username=f"user{u}") for u in range(1, layout.users + 1)],
        batch_size=1000,
    )
    table = UserDataFile._meta.db_table
    columns = "id, owner_id, file, processing_status, processing_log, created_at, updated_at"
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            raw = cursor.cursor
            with raw.copy(f"COPY {table} ({columns}) FROM STDIN") as copy:
                for pk, user, name, created in layout.entries():
                    copy.write_row((pk, user, name, status, log, created, created))
            for model in (user_model, UserDataFile):
                cursor.execute(
                    f"SELECT setval(pg_get_serial_sequence('{model._meta.db_table}', 'id'), "
                    f"(SELECT MAX(id) FROM {model._meta.db_table}))"
                )
            cursor.execute(f"VACUUM ANALYZE {table}")
    else:
        connection.ensure_connection()
        raw = connection.connection
        rows = (
            (pk, user, name, status, log, created.strftime("%Y-%m-%d %H:%M:%S"))
            for pk, user, name, created in layout.entries()
        )
        with transaction.atomic():
            raw.executemany(
                f"INSERT INTO {table} ({columns}) VALUES (?, ?, ?, ?, ?, ?, ?)",
                ((pk, u, n, s, lg, c, c) for pk, u, n, s, lg, c in rows),
            )
        with connection.cursor() as cursor:
            cursor.execute("ANALYZE")
    count = UserDataFile.objects.count()
    if count != layout.rows:
        raise CannotRun(f"seeded {count} rows, expected {layout.rows}")
    return {"seconds": time.perf_counter() - started, "rows": count}


def run_child(
    script: str,
    mode: str,
    spec: dict[str, Any],
    env: dict[str, str],
    *,
    timeout: float = 3600,
) -> dict[str, Any]:
    """Run ``script --child MODE`` with ``spec``; its result is the line it prints last."""
    full_env = {**os.environ, **env, "PYTHONPATH": str(EXAMPLE)}
    proc = subprocess.run(
        [sys.executable, script, "--child", mode, "--spec", json.dumps(spec)],
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    results = [ln for ln in proc.stdout.splitlines() if ln.startswith(RESULT_PREFIX)]
    if proc.returncode != 0 or not results:
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-15:])
        raise CannotRun(f"child {mode} failed (exit {proc.returncode}):\n{tail}")
    return json.loads(results[-1][len(RESULT_PREFIX) :])


def child_result(value: dict[str, Any]) -> None:
    print(RESULT_PREFIX + json.dumps(value, default=str), flush=True)


def maxrss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def install_sigterm_cleanup() -> None:
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so that finally blocks run


def add_child_arguments(parser: argparse.ArgumentParser) -> None:
    """``--json`` and the hidden ``--child``/``--spec`` every benchmark script takes."""
    parser.add_argument("--json", action="store_true", help="also print the raw figures as JSON")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--spec", help=argparse.SUPPRESS)


def run_script(name: str, main: Callable[[], int]) -> None:
    """Exit with ``main()``'s code; a `CannotRun` (raised in a child) is one line and exit 2."""
    try:
        sys.exit(main())
    except CannotRun as e:
        print(f"{name}: cannot run: {e}", file=sys.stderr)
        sys.exit(2)


def load_average() -> float:
    return os.getloadavg()[0]


# -- what is timed (in the child) -----------------------------------------------------------


def floor_db() -> int:
    from apps.services.models import UserDataFile

    rows = 0
    qs = UserDataFile.objects.order_by().values_list("pk", "file")
    for _pk, _name in qs.iterator(chunk_size=BATCH):
        rows += 1
    return rows


def floor_fs(root: str) -> int:
    """One scandir walk: each directory's file names as a set (what an index holds)."""
    listings: dict[str, frozenset[str]] = {}
    stack = [root]
    files = 0
    while stack:
        directory = stack.pop()
        names = []
        with os.scandir(directory) as entries:
            for entry in entries:
                if entry.is_dir(follow_symlinks=False):
                    stack.append(entry.path)
                elif entry.is_file():
                    names.append(entry.name)
        listings[directory] = frozenset(names)
        files += len(names)
    return files


def engine() -> dict[str, Any]:
    from volguard.django.missing_files import audit
    from volguard.django.targets import discover

    result = audit(discover([MODEL]))
    return {
        "missing": result.problem_count,
        "audited": result.audited_rows,
        "requests": result.storage_requests,
        "strategy": result.strategies.get(f"{MODEL}.file"),
    }


def command() -> dict[str, Any]:
    from django.core.management import call_command

    with open(os.devnull, "w", encoding="utf-8") as out:
        call_command("check_missing_files", "--json", stdout=out, stderr=out)
    return {}


def seed_loop(limit: int | None) -> dict[str, Any]:
    """The usual per-row loop, as commonly written (model instances, one exists() per row)."""
    from apps.services.models import UserDataFile
    from django.core.files.storage import default_storage

    files = UserDataFile.objects.all()
    if limit is not None:
        files = files[:limit]
    missing = []
    checked = 0
    for df in files:
        checked += 1
        if df.file and not default_storage.exists(df.file.name):
            missing.append(df)
    return {"missing": len(missing), "checked": checked}


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    started = time.perf_counter()
    value = fn()
    return time.perf_counter() - started, value


def timed_cpu(fn: Callable[[], Any]) -> tuple[float, float, Any]:
    """Wall seconds, this process's CPU seconds (all its threads), and ``fn()``."""
    cpu, started = time.process_time(), time.perf_counter()
    value = fn()
    return time.perf_counter() - started, time.process_time() - cpu, value


def child_time(spec: dict[str, Any]) -> dict[str, Any]:
    from django.conf import settings

    root = str(settings.MEDIA_ROOT)
    expected = spec["expected_missing"]
    names = ("floor_db", "floor_fs", "engine", "command")
    times: dict[str, list[float]] = {name: [] for name in names}
    cpu: dict[str, list[float]] = {name: [] for name in names}
    info: dict[str, Any] = {}
    for round_ in range(spec["rounds"] + 1):  # round 0 warms the caches, discarded
        for name, fn in (
            ("floor_db", floor_db),
            ("floor_fs", lambda: floor_fs(root)),
            ("engine", engine),
            ("command", command),
        ):
            seconds, cpu_seconds, value = timed_cpu(fn)
            if name == "engine":
                if value["missing"] != expected:
                    raise CannotRun(f"audit found {value['missing']} missing, not {expected}")
                info = value
            if round_:
                times[name].append(seconds)
                cpu[name].append(cpu_seconds)
    seconds, loop = timed(lambda: seed_loop(spec.get("seed_rows")))
    if spec.get("seed_rows") is None and loop["missing"] != expected:
        raise CannotRun(f"per-row loop found {loop['missing']} missing, not {expected}")
    return {"times": times, "cpu": cpu, "engine": info, "seed_loop": {"seconds": seconds, **loop}}


def child_rss(spec: dict[str, Any]) -> dict[str, Any]:
    from apps.services.models import UserDataFile
    from django.db import connection

    connection.ensure_connection()
    UserDataFile.objects.exists()
    django_alone = maxrss_mb()
    {"engine": engine, "command": command, "floor": lambda: floor_fs_and_db()}[spec["what"]]()
    return {"django_mb": django_alone, "peak_mb": maxrss_mb()}


def floor_fs_and_db() -> None:
    from django.conf import settings

    floor_db()
    floor_fs(str(settings.MEDIA_ROOT))


def child_main(mode: str, spec: dict[str, Any]) -> None:
    setup_django()
    if mode == "seed":
        child_result(migrate_and_seed(Layout(**spec["layout"])))
    elif mode == "time":
        child_result(child_time(spec))
    elif mode == "rss":
        child_result(child_rss(spec))
    else:
        raise SystemExit(f"unknown child mode {mode}")


# -- the parent ---------------------------------------------------------------------------


def bench_database(
    kind: str, layout: Layout, media: Path, workdir: Path, args: argparse.Namespace
) -> dict[str, Any]:
    expected = len(layout.missing())
    with throwaway_database(kind, workdir) as url:
        env = {"DATABASE_URL": url, "MEDIA_ROOT": str(media)}
        log(f"{kind}: migrate and seed {layout.rows:,} rows")
        seeded = run_child(__file__, "seed", {"layout": asdict(layout)}, env)
        log(f"{kind}: seeded in {seeded['seconds']:.1f} s; timing {args.rounds} rounds")
        spec = {"rounds": args.rounds, "expected_missing": expected, "seed_rows": args.seed_rows}
        timing = run_child(__file__, "time", spec, env)
        log(f"{kind}: peak RSS children")
        rss = {what: run_child(__file__, "rss", {"what": what}, env) for what in RSS_CHILDREN}
    return {"db": kind, "seed_seconds": seeded["seconds"], **timing, "rss": rss}


RSS_CHILDREN = ("engine", "command", "floor")


def summarize(result: dict[str, Any]) -> dict[str, Any]:
    """Best and median wall seconds of each measurement, and the CPU seconds of the best."""
    times, cpu = dict(result["times"]), dict(result["cpu"])
    times["floor"] = [a + b for a, b in zip(times["floor_db"], times["floor_fs"], strict=True)]
    cpu["floor"] = [a + b for a, b in zip(cpu["floor_db"], cpu["floor_fs"], strict=True)]
    out: dict[str, Any] = {}
    for name, values in times.items():
        best = values.index(min(values))
        out[name] = {
            "best": values[best],
            "median": statistics.median(values),
            "cpu": cpu[name][best],
        }
    return out


def log(message: str) -> None:
    print(f"[audit_scale] {message}", file=sys.stderr, flush=True)


def print_report(
    layout: Layout, results: list[dict[str, Any]], args: argparse.Namespace
) -> list[tuple[str, float, float, bool]]:
    expected = len(layout.missing())
    print(
        f"{layout.rows:,} rows of {MODEL} ({layout.missing_pct:g}% missing = {expected:,}), "
        f"{layout.directories:,} directories of up to {layout.files_per_dir} files, "
        f"{layout.users:,} users; FileSystemStorage on {args.fs_note}"
    )
    print(
        f"warm cache, {args.rounds} rounds after 1 discarded, interleaved; "
        f"nproc {os.cpu_count()}; chunk_size {BATCH}"
    )
    goals: list[tuple[str, float, float, bool]] = []
    header = (
        f"{'db':8} {'what':34} {'best s':>8} {'median s':>9} {'cpu s':>7} {'rows/s':>11} "
        f"{'/floor':>7}"
    )
    for result in results:
        s = summarize(result)
        floor = s["floor"]["best"]
        print()
        print(header)
        lines = [
            ("floor: stream pk,file", "floor_db"),
            ("floor: scandir walk", "floor_fs"),
            ("floor (stream + walk)", "floor"),
            ("volguard audit() engine", "engine"),
            ("check_missing_files --json", "command"),
        ]
        for label, key in lines:
            best, median = s[key]["best"], s[key]["median"]
            ratio = f"{best / floor:6.2f}x" if key in ("floor", "engine", "command") else ""
            print(
                f"{result['db']:8} {label:34} {best:8.3f} {median:9.3f} {s[key]['cpu']:7.3f} "
                f"{layout.rows / best:11,.0f} {ratio:>7}"
            )
        loop = result["seed_loop"]
        what = "all rows" if args.seed_rows is None else f"first {loop['checked']:,} rows"
        print(
            f"{result['db']:8} {'per-row loop (1 run, ' + what + ')':34} "
            f"{loop['seconds']:8.3f} {'':9} {'':7} {loop['checked'] / loop['seconds']:11,.0f} "
            f"{loop['seconds'] / loop['checked'] * layout.rows / floor:6.2f}x"
        )
        per_row_loop = loop["seconds"] / loop["checked"]
        per_row_engine = s["engine"]["best"] / layout.rows
        print(
            f"   per-row loop / engine (per row): {per_row_loop / per_row_engine:.1f}x; "
            f"engine: strategy {result['engine']['strategy']}, "
            f"{result['engine']['requests']:,} storage requests; seeding took "
            f"{result['seed_seconds']:.1f} s"
        )
        rss = result["rss"]
        print(
            f"   peak RSS (fresh child each): Django alone {rss['engine']['django_mb']:.0f} MB; "
            f"engine {rss['engine']['peak_mb']:.0f} MB; "
            f"command {rss['command']['peak_mb']:.0f} MB; floor {rss['floor']['peak_mb']:.0f} MB"
        )
        for key, label in (("engine", "audit() engine"), ("command", "check_missing_files")):
            ratio = s[key]["best"] / floor
            goals.append(
                (
                    f"{result['db']}: {label} best / floor best <= {MAX_FLOOR_RATIO}x",
                    ratio,
                    MAX_FLOOR_RATIO,
                    ratio <= MAX_FLOOR_RATIO,
                )
            )
        peak = max(rss["engine"]["peak_mb"], rss["command"]["peak_mb"])
        goals.append(
            (
                f"{result['db']}: peak RSS of the audit (engine, command) <= {MAX_RSS_MB} MB",
                peak,
                MAX_RSS_MB,
                peak <= MAX_RSS_MB,
            )
        )
    print()
    for label, value, _limit, ok in goals:
        print(f"{label}: {value:.2f} {'PASS' if ok else 'FAIL'}")
    if args.quick:
        print("(--quick: a smoke run; the goals are set for 1,000,000 rows)")
    print(f"1-min load average after the run: {load_average():.2f}")
    return goals


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--db", choices=("sqlite", "postgres", "both"), default="both")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--files-per-dir", type=int, default=20)
    parser.add_argument("--rows-per-user", type=int, default=1000)
    parser.add_argument("--missing-pct", type=float, default=1.0)
    parser.add_argument(
        "--seed-rows", type=int, default=None, help="time the per-row loop on the first N rows"
    )
    parser.add_argument("--quick", action="store_true", help="smoke run: 5,000 rows, 1 round")
    add_child_arguments(parser)
    args = parser.parse_args()
    if args.child:
        child_main(args.child, json.loads(args.spec))
        return 0
    install_sigterm_cleanup()
    if args.quick:
        args.rows, args.rounds = 5000, 1
    layout = Layout(args.rows, args.files_per_dir, args.rows_per_user, args.missing_pct)
    kinds = ["sqlite", "postgres"] if args.db == "both" else [args.db]
    workdir = Path(tempfile.mkdtemp(prefix="vg-audit-scale-"))
    try:
        media = workdir / "media"
        media.mkdir()
        args.fs_note = _fs_note(media)
        log(f"creating {layout.rows - len(layout.missing()):,} files under {media}")
        started = time.perf_counter()
        made = make_media(layout, media)
        log(f"{made:,} files in {time.perf_counter() - started:.1f} s")
        results = [bench_database(kind, layout, media, workdir, args) for kind in kinds]
    except CannotRun as e:
        print(f"audit_scale: cannot run: {e}", file=sys.stderr)
        return 2
    finally:
        log("removing the media tree")
        shutil.rmtree(workdir, ignore_errors=True)
    goals = print_report(layout, results, args)
    if args.json:
        print(json.dumps({"layout": asdict(layout), "results": results}, default=str))
    return 0 if args.quick or all(ok for *_, ok in goals) else 1


def _fs_note(path: Path) -> str:
    """The filesystem the media tree is on, e.g. ``ext4 (/dev/vda)``."""
    best = ("", "?", "?")
    with open("/proc/mounts", encoding="utf-8") as fh:
        for line in fh:
            device, mount, fstype = line.split()[:3]
            if str(path.resolve()).startswith(mount.rstrip("/") + "/") and len(mount) >= len(
                best[0]
            ):
                best = (mount, fstype, device)
    return f"{best[1]} ({best[2]})"


if __name__ == "__main__":
    run_script("audit_scale", main)
