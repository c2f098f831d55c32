"""Start-up budget for `volguard lint` (issue #2).

Times whole processes, side by side in one run:

    python -c pass                 reference: the interpreter alone
    python -c "import tomlkit"     the baseline the budget is measured against
    python -c "import invoke"      reference: the CLI framework alone
    volguard lint fly.toml         the command under test (exits 2: fly.toml has a finding)

All use the interpreter running this script (run it with the venv's python) and
the `volguard` console script next to it. The commands run round-robin, after a
few warm-up rounds, so machine noise hits all of them alike; output is discarded.

The budget: median(volguard lint) <= 4 x median(import tomlkit). min/min is
reported too. Exit status: 0 PASS, 1 FAIL, 2 a command misbehaved.

Before timing, `python -m compileall -q volguard` writes the package's bytecode.
This machine sets PYTHONDONTWRITEBYTECODE=1, so an editable install would
otherwise recompile volguard's sources on every start (~17 ms), which a real
pip install (shipping .pyc files) never does.

    .venv/bin/python bench/lint_startup.py [--runs 30] [--warmup 2] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BUDGET = 4.0
PYTHON = sys.executable
VOLGUARD = str(Path(PYTHON).with_name("volguard"))
COMMANDS = {  # name -> (argv, expected exit code)
    "python -c pass": ([PYTHON, "-c", "pass"], 0),
    "import tomlkit": ([PYTHON, "-c", "import tomlkit"], 0),
    "import invoke": ([PYTHON, "-c", "import invoke"], 0),
    "volguard lint": ([VOLGUARD, "lint", "fly.toml"], 2),
}
BASELINE, SUBJECT = "import tomlkit", "volguard lint"


def die(message: str) -> None:
    print(f"lint_startup: {message}", file=sys.stderr)
    sys.exit(2)


def compile_package() -> None:
    subprocess.run([PYTHON, "-m", "compileall", "-q", str(REPO / "volguard")], check=True)


def sources_mtime() -> float:
    """Latest mtime under volguard/: if it moves during the run, .pyc went stale mid-run."""
    return max(p.stat().st_mtime for p in (REPO / "volguard").rglob("*.py"))


def time_once(name: str) -> float:
    argv, expected = COMMANDS[name]
    start = time.perf_counter()
    rc = subprocess.run(argv, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    elapsed = time.perf_counter() - start
    if rc.returncode != expected:
        die(f"{name}: exit code {rc.returncode}, expected {expected}")
    return elapsed * 1000


def measure(runs: int, warmup: int) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {name: [] for name in COMMANDS}
    for i in range(warmup + runs):
        for name in COMMANDS:  # round-robin: one of each per round
            ms = time_once(name)
            if i >= warmup:
                times[name].append(ms)
    return times


def summarise(samples: list[float]) -> dict[str, float]:
    return {
        "min": min(samples),
        "median": statistics.median(samples),
        "p90": statistics.quantiles(samples, n=10, method="inclusive")[-1],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=30, help="timed runs per command (30)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed rounds first (2)")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    args = parser.parse_args()
    if not Path(VOLGUARD).exists():
        die(f"no volguard script next to {PYTHON}: run this with the venv's python")

    compile_package()
    before = sources_mtime()
    times = measure(max(args.runs, 2), args.warmup)
    stats = {name: summarise(samples) for name, samples in times.items()}
    ratio = stats[SUBJECT]["median"] / stats[BASELINE]["median"]
    ratio_min = stats[SUBJECT]["min"] / stats[BASELINE]["min"]
    passed = ratio <= BUDGET
    stale = sources_mtime() != before
    load = os.getloadavg()[0]

    if args.json:
        result = {
            "python": PYTHON,
            "python_version": sys.version.split()[0],
            "runs": len(times[SUBJECT]),
            "warmup": args.warmup,
            "bytecode": "compileall before timing",
            "sources_changed_during_run": stale,
            "loadavg_1min_after": load,
            "stats_ms": stats,
            "ratio_median": ratio,
            "ratio_min": ratio_min,
            "budget": BUDGET,
            "pass": passed,
        }
        print(json.dumps(result, indent=2))
    else:
        shown = Path(PYTHON).relative_to(REPO) if Path(PYTHON).is_relative_to(REPO) else PYTHON
        print(f"python {sys.version.split()[0]} ({shown}); volguard bytecode precompiled")
        runs = len(times[SUBJECT])
        print(f"{runs} interleaved runs each, {args.warmup} warm-up rounds, cwd the repository")
        print()
        print(f"{'command':<16} {'min ms':>8} {'median ms':>10} {'p90 ms':>8}")
        for name, s in stats.items():
            print(f"{name:<16} {s['min']:8.1f} {s['median']:10.1f} {s['p90']:8.1f}")
        print()
        print(f"{SUBJECT} / {BASELINE}: median {ratio:.2f}x, min {ratio_min:.2f}x")
        print(f"budget {BUDGET:g}x (median): {'PASS' if passed else 'FAIL'}")
        print(f"1-min load average after the run: {load:.2f} on {os.cpu_count()} CPUs")
        if stale:
            print("warning: volguard/ sources changed during the run; figures may be off")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
