"""``check_missing_files --fix`` on 100,000 missing rows against a per-row ``save()`` loop.

Issue #5's second figure. The example app's ``UserDataFile`` with ``--rows`` rows (default
100,000) whose files are all missing (the media root holds one unrelated file, so the
VG404 "empty root" check does not refuse; ``--force`` overrides the 10% ``--max-missing``
cap, as it must when every row is missing), each row a day old, status ``done`` and a
one-line processing log. Per database, in one child process, warm:

- **volguard**: ``call_command("check_missing_files", "--fix", "--force", "--audit-log",
  PATH)`` in-process, text output to /dev/null: the audit, the plan, the VG404 interlock,
  the re-check of each batch, the batched bulk updates and the JSONL audit log (journal
  and log lines, fsync'd per batch), as a user runs it;
- **per-row loop** (the usual ``--fix``): ``for df in UserDataFile.objects.all():
  if df.file and not default_storage.exists(df.file.name): df.processing_status =
  "failed"; df.processing_log += "\\n" + msg; df.save()``, and, to be fair, the same JSONL
  entry per changed row with ``AuditLog.record`` (one line and one fsync each, which is
  how a per-row script logs). It runs on the first ``--baseline-rows`` rows (default
  10,000) and is scaled linearly to all rows (each row costs the same: a ``stat``, an
  ``UPDATE`` in its own transaction and a log line); ``--baseline-rows 0`` runs it on all.

Between the two, the rows are put back (status, log and timestamps) with one ``UPDATE``.
Both runs are checked: every row failed with the message once, one log line per row.

Goal (issue #5): volguard >= 30x faster than the per-row loop (with the log). Exit status
0 when it passes, 1 when not (``--quick``: always 0), 2 when the bench cannot run.

    .venv/bin/python bench/fix_scale.py [--rows 100000] [--db sqlite|postgres|both]
        [--baseline-rows 10000] [--quick] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from audit_scale import (
    EPOCH,
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
    throwaway_database,
)

MIN_SPEEDUP = 30.0
STATUS, LOG = "done", "Uploaded."


def log(message: str) -> None:
    print(f"[fix_scale] {message}", file=sys.stderr, flush=True)


# -- the child ------------------------------------------------------------------------------


def run_command(audit_log: str) -> dict[str, Any]:
    from django.core.management import call_command

    with open(os.devnull, "w", encoding="utf-8") as out:
        call_command(
            "check_missing_files",
            "--fix",
            "--force",
            "--audit-log",
            audit_log,
            stdout=out,
            stderr=out,
        )
    return {}


def run_baseline(audit_log: str, limit: int | None) -> dict[str, Any]:
    """The usual per-row --fix: one exists() and one save() per row, and a log line each."""
    from apps.services.models import UserDataFile
    from django.core.files.storage import default_storage

    from volguard.audit_log import AuditLog
    from volguard.django.targets import DEFAULT_MESSAGE

    audit = AuditLog(audit_log, command="per-row loop")
    files = UserDataFile.objects.all()
    if limit:
        files = files[:limit]
    changed = checked = 0
    for df in files:
        checked += 1
        if df.file and not default_storage.exists(df.file.name):
            before = {"status": df.processing_status, "log_tail": df.processing_log[-200:]}
            df.processing_status = "failed"
            df.processing_log += "\n" + DEFAULT_MESSAGE
            df.save()
            audit.record(
                "mark_failed",
                f"services.UserDataFile#pk={df.pk}",
                before,
                {"status": "failed"},
                field="file",
            )
            changed += 1
    return {"checked": checked, "changed": changed}


def verify(expected: int, audit_log: str) -> None:
    """Every row failed with the message as its last line, and one log line per row."""
    from apps.services.models import UserDataFile

    from volguard.django.targets import DEFAULT_MESSAGE

    done = UserDataFile.objects.filter(
        processing_status="failed", processing_log=f"{LOG}\n{DEFAULT_MESSAGE}"
    ).count()
    with open(audit_log, encoding="utf-8") as fh:
        targets = [json.loads(line)["target"] for line in fh]
    if done != expected or len(targets) != expected or len(set(targets)) != expected:
        raise CannotRun(
            f"after the run: {done} rows fixed, {len(targets)} log lines "
            f"({len(set(targets))} rows), expected {expected}"
        )


def reset() -> None:
    from apps.services.models import UserDataFile

    old = EPOCH
    UserDataFile.objects.update(
        processing_status=STATUS, processing_log=LOG, created_at=old, updated_at=old
    )


def child_time(spec: dict[str, Any], workdir: Path) -> dict[str, Any]:
    rows = spec["rows"]
    out: dict[str, Any] = {}
    path = str(workdir / "volguard-audit.jsonl")
    started = time.perf_counter()
    run_command(path)
    out["volguard"] = time.perf_counter() - started
    verify(rows, path)
    reset()
    limit = spec["baseline_rows"] or None
    path = str(workdir / "baseline-audit.jsonl")
    started = time.perf_counter()
    loop = run_baseline(path, limit)
    out["baseline"] = time.perf_counter() - started
    out["baseline_rows"] = loop["changed"]
    if loop["changed"] != (limit or rows):
        raise CannotRun(f"the per-row loop changed {loop['changed']} rows, not {limit or rows}")
    if not limit:
        verify(rows, path)
    reset()
    return out


def child_main(mode: str, spec: dict[str, Any]) -> None:
    setup_django()
    if mode == "seed":
        child_result(migrate_and_seed(Layout(**spec["layout"]), status=STATUS, log=LOG))
    elif mode == "time":
        child_result(child_time(spec, Path(spec["workdir"])))
    else:
        raise SystemExit(f"unknown child mode {mode}")


# -- the parent -----------------------------------------------------------------------------


def bench_database(kind: str, layout: Layout, workdir: Path, args: argparse.Namespace) -> dict:
    media = workdir / "media"
    with throwaway_database(kind, workdir) as url:
        env = {"DATABASE_URL": url, "MEDIA_ROOT": str(media)}
        log(f"{kind}: migrate and seed {layout.rows:,} rows")
        run_child(__file__, "seed", {"layout": asdict(layout)}, env)
        log(f"{kind}: --fix, then the per-row loop")
        spec = {"rows": layout.rows, "baseline_rows": args.baseline_rows, "workdir": str(workdir)}
        result = run_child(__file__, "time", spec, env)
    return {"db": kind, **result}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--db", choices=("sqlite", "postgres", "both"), default="both")
    parser.add_argument(
        "--baseline-rows",
        type=int,
        default=10_000,
        help="time the per-row loop on this many rows and scale it (0: all rows)",
    )
    parser.add_argument("--quick", action="store_true", help="smoke run: 2,000 rows")
    add_child_arguments(parser)
    args = parser.parse_args()
    if args.child:
        child_main(args.child, json.loads(args.spec))
        return 0
    install_sigterm_cleanup()
    if args.quick:
        args.rows, args.baseline_rows = 2000, 500
    if args.baseline_rows >= args.rows:
        args.baseline_rows = 0
    layout = Layout(args.rows, missing_pct=100.0)
    kinds = ["sqlite", "postgres"] if args.db == "both" else [args.db]
    workdir = Path(tempfile.mkdtemp(prefix="vg-fix-scale-"))
    results = []
    try:
        (workdir / "media").mkdir()
        (workdir / "media" / "unrelated.txt").write_text("not a row's file\n")
        for kind in kinds:
            results.append(bench_database(kind, layout, workdir, args))
            for name in ("volguard-audit.jsonl", "baseline-audit.jsonl"):
                (workdir / name).unlink(missing_ok=True)
    except CannotRun as e:
        print(f"fix_scale: cannot run: {e}", file=sys.stderr)
        return 2
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    ok = print_report(layout, results, args)
    if args.json:
        print(json.dumps({"rows": layout.rows, "results": results}))
    return 0 if args.quick or ok else 1


def print_report(layout: Layout, results: list[dict[str, Any]], args: argparse.Namespace) -> bool:
    rows = layout.rows
    print(
        f"{rows:,} rows of services.UserDataFile, every file missing; "
        f"nproc {os.cpu_count()}; one run each"
    )
    print(f"{'db':8} {'what':44} {'seconds':>9} {'rows/s':>9} {'ms/row':>8}")
    ok = True
    lines = []
    for r in results:
        per_row = r["baseline"] / r["baseline_rows"]
        scaled = per_row * rows
        what = (
            "all rows"
            if r["baseline_rows"] == rows
            else f"{r['baseline_rows']:,} rows, scaled to {rows:,}"
        )
        print(
            f"{r['db']:8} {'check_missing_files --fix --force (+ log)':44} {r['volguard']:9.2f} "
            f"{rows / r['volguard']:9,.0f} {r['volguard'] / rows * 1000:8.3f}"
        )
        print(
            f"{r['db']:8} {'per-row save() + log line (' + what + ')':44} {scaled:9.2f} "
            f"{1 / per_row:9,.0f} {per_row * 1000:8.3f}"
        )
        speedup = scaled / r["volguard"]
        passed = speedup >= MIN_SPEEDUP
        ok = ok and passed
        lines.append(
            f"{r['db']}: per-row loop / volguard --fix >= {MIN_SPEEDUP:g}x: {speedup:.1f} "
            f"{'PASS' if passed else 'FAIL'}"
        )
    print()
    print("\n".join(lines))
    if args.quick:
        print("(--quick: a smoke run; the goal is set for 100,000 rows)")
    print(f"1-min load average after the run: {load_average():.2f}")
    return ok


if __name__ == "__main__":
    run_script("fix_scale", main)
