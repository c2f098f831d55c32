"""Lint throughput over the fly.toml corpus (issue #2).

Lints every file in the corpus (default tests/data/flytoml/*.toml) in
one process with `volguard.lint.lint(Settings.load(None), path)`, for several
rounds. Reports the first round (which pays for importing volguard, tomlkit and
the rules) and the best round, as files/s and ms per file.

Before importing volguard, `python -m compileall -q volguard` writes the
package's bytecode: this machine sets PYTHONDONTWRITEBYTECODE=1, so an editable
install would otherwise recompile volguard's sources in the first round, which
a real pip install (shipping .pyc files) never does.

    .venv/bin/python bench/lint_throughput.py [--rounds 5] [--corpus DIR] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CORPUS = REPO / "tests" / "data" / "flytoml"


def lint_all(paths: list[str]) -> tuple[float, int]:
    """Lint each path once; return (seconds, total findings)."""
    from volguard.config import Settings
    from volguard.lint import lint

    start = time.perf_counter()
    findings = sum(len(lint(Settings.load(None), path).findings) for path in paths)
    return time.perf_counter() - start, findings


def sources_mtime() -> float:
    """Latest mtime under volguard/: if it moves during the run, .pyc went stale mid-run."""
    return max(p.stat().st_mtime for p in (REPO / "volguard").rglob("*.py"))


def row(label: str, seconds: float, n: int) -> None:
    print(f"{label:<28} {seconds * 1000:8.1f} {n / seconds:8.0f} {seconds * 1000 / n:8.2f}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="rounds over the corpus (5)")
    parser.add_argument("--corpus", type=Path, default=CORPUS, help="tests/data/flytoml")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    args = parser.parse_args()
    paths = sorted(str(p) for p in args.corpus.glob("*.toml"))
    if not paths:
        sys.exit(f"no *.toml files in {args.corpus}")
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(REPO / "volguard")], check=True)

    before = sources_mtime()
    start = time.perf_counter()
    import volguard.lint  # noqa: F401  (cold imports, timed as part of the first round)

    imports = time.perf_counter() - start
    rounds = [lint_all(paths) for _ in range(max(args.rounds, 1))]
    first = imports + rounds[0][0]
    best = min(seconds for seconds, _ in rounds)
    findings = {count for _, count in rounds}
    n = len(paths)
    stale = sources_mtime() != before

    result = {
        "python_version": sys.version.split()[0],
        "files": n,
        "rounds": len(rounds),
        "findings_per_round": sorted(findings),
        "bytecode": "compileall before importing",
        "imports_ms": imports * 1000,
        "first_round_ms": first * 1000,
        "first_round_files_per_s": n / first,
        "best_round_ms": best * 1000,
        "best_files_per_s": n / best,
        "best_ms_per_file": best * 1000 / n,
        "rounds_ms": [seconds * 1000 for seconds, _ in rounds],
        "sources_changed_during_run": stale,
        "loadavg_1min_after": os.getloadavg()[0],
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"python {result['python_version']}; volguard bytecode precompiled")
    shown = args.corpus.resolve()
    shown = shown.relative_to(REPO) if shown.is_relative_to(REPO) else shown
    print(f"{n} files from {shown}, {len(rounds)} rounds, findings/round {sorted(findings)}")
    print()
    print(f"{'':<28} {'ms':>8} {'files/s':>8} {'ms/file':>8}")
    row("first round (incl. imports)", first, n)
    print(f"{'  of which imports':<28} {imports * 1000:8.1f}")
    row("best round", best, n)
    print()
    print("rounds (ms): " + ", ".join(f"{seconds * 1000:.1f}" for seconds, _ in rounds))
    print(f"1-min load average after the run: {result['loadavg_1min_after']:.2f}")
    if stale:
        print("warning: volguard/ sources changed during the run; figures may be off")
    return 0


if __name__ == "__main__":
    sys.exit(main())
