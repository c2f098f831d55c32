"""The hostile-input suites at their full counts, with the figures docs/safety.md records.

Runs each tests/test_hostile_inputs_*.py module with VOLGUARD_FUZZ_SCALE (default 1: the
issue's counts — 10,000 fly.toml mutations, 1,000 API objects and 200 served fleets, 1,000
probe answers, 500 records and journals, 300 CLI runs) and prints, per suite, the cases run
(counted by the tests themselves), the outcome and the wall-clock time.

    .venv/bin/python bench/hostile_inputs.py            # full counts
    .venv/bin/python bench/hostile_inputs.py --scale 0.1   # what plain pytest runs
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SUITES = sorted((ROOT / "tests").glob("test_hostile_inputs_*.py"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=1.0, help="share of the full counts")
    args = parser.parse_args()
    failed = 0
    total = 0.0
    print(f"{'suite':<34} {'cases':>7} {'result':<28} {'time':>8}")
    for suite in SUITES:
        with tempfile.NamedTemporaryFile(suffix=".jsonl") as tally:
            env = {**os.environ, "VOLGUARD_FUZZ_SCALE": str(args.scale),
                   "VOLGUARD_FUZZ_TALLY": tally.name}  # fmt: skip
            began = time.monotonic()
            done = subprocess.run(
                [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(suite)],
                cwd=ROOT, env=env, capture_output=True, text=True, check=False,
            )  # fmt: skip
            took = time.monotonic() - began
            cases: Counter[str] = Counter()
            for line in Path(tally.name).read_text().splitlines():
                row = json.loads(line)
                cases[row["suite"]] += row["cases"]
        summary = (done.stdout.strip().splitlines() or ["(no output)"])[-1]
        failed += done.returncode != 0
        total += took
        name = suite.name.removeprefix("test_hostile_inputs_").removesuffix(".py")
        print(f"{name:<34} {sum(cases.values()):>7} {summary[:28]:<28} {took:>7.1f}s")
        for label, count in sorted(cases.items()):
            print(f"  {label:<32} {count:>7}")
    print(f"total {total:.1f}s; {'all suites passed' if not failed else f'{failed} failed'}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
