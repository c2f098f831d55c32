"""What the hostile-input suites (tests/test_hostile_inputs_*.py) share: budget, timeouts, tally.

The suites' full counts (issue #8: ≥ 10,000 fly.toml mutations, ≥ 1,000 API responses, …)
are scaled by ``VOLGUARD_FUZZ_SCALE`` (default `DEFAULT_SCALE`, so the whole test suite stays
fast); ``bench/hostile_inputs.py`` runs them at scale 1 and records the figures. Every case
runs under hypothesis's ``deadline`` and under `hang_guard`, a SIGALRM that turns a case that
never returns into a failure instead of a hung test run.
"""

from __future__ import annotations

import atexit
import contextlib
import datetime as dt
import json
import os
import signal
from collections import Counter
from collections.abc import Iterator

from hypothesis import HealthCheck, Phase, settings

#: The share of the full counts a plain `pytest` run makes (CI, a developer's run).
DEFAULT_SCALE = 0.1
SCALE = float(os.environ.get("VOLGUARD_FUZZ_SCALE") or DEFAULT_SCALE)

#: Where `bench/hostile_inputs.py` collects how many cases each suite ran (JSON lines).
TALLY_FILE = os.environ.get("VOLGUARD_FUZZ_TALLY")
CASES: Counter[str] = Counter()


def examples(full: int) -> int:
    """The number of cases to run of a suite whose full count is ``full``."""
    return max(10, round(full * SCALE))


def fuzz(full: int, *, deadline_seconds: float = 10.0) -> settings:
    """Hypothesis settings for ``full`` cases (scaled), each under a deadline.

    No shrinking and no example database: the run time is bounded and nothing is written
    into the checkout; a failure prints its falsifying example, which a fix keeps as an
    explicit ``@example``.
    """
    return settings(
        max_examples=examples(full),
        deadline=dt.timedelta(seconds=deadline_seconds),
        suppress_health_check=list(HealthCheck),
        phases=[Phase.explicit, Phase.generate],
        database=None,
    )


class Hang(Exception):
    """A case did not finish within its `hang_guard` time."""


@contextlib.contextmanager
def hang_guard(seconds: float = 10.0) -> Iterator[None]:
    """Fail (raise `Hang`) if the block runs longer than ``seconds`` (main thread only)."""

    def expired(signum: int, frame: object) -> None:
        raise Hang(f"a case ran longer than {seconds} s")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def tally(suite: str) -> None:
    """Count one case of ``suite`` (reported by bench/hostile_inputs.py)."""
    CASES[suite] += 1


@atexit.register
def _write_tally() -> None:
    if TALLY_FILE and CASES:
        with open(TALLY_FILE, "a", encoding="utf-8") as fh:
            for suite, count in sorted(CASES.items()):
                fh.write(json.dumps({"suite": suite, "cases": count}) + "\n")


def one_line(text: str) -> bool:
    """A message fit for one terminal line: non-empty, no line break."""
    return bool(text.strip()) and "\n" not in text and "\r" not in text
