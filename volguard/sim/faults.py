"""Injected trouble: latency, server errors, dropped connections, garbage bodies, 429s.

A client is judged by how it behaves when the API misbehaves, so tests switch these on
per request count ("the next 2 requests fail") rather than by chance, which keeps them
deterministic. Each request consumes at most one fault.

Faults of one action (#10) are consumed only by that action, whatever comes between:
``refuse_volume_next`` (the next POST /volumes — a fork, a restore, a create — is refused
with Fly's 412 `insufficient_capacity` body), ``refuse_machine_next`` (the next POST
/machines likewise) and ``machine_fails_next`` (the next Machine created never starts: it
ends `stopped`, and a wait for `started` runs into its timeout).
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Any

COUNTERS = ("drop_next", "fail_next", "rate_limit_next", "malformed_next")  # priority order
ACTION_COUNTERS = ("refuse_volume_next", "refuse_machine_next", "machine_fails_next")
KEYS = ("latency_ms", *COUNTERS, *ACTION_COUNTERS)
FAIL_STATUSES = (500, 502, 503)


class FaultError(ValueError):
    """A fault request that makes no sense (unknown key, negative count)."""


class Faults:
    def __init__(self, initial: Mapping[str, Any] | None = None) -> None:
        self._lock = threading.Lock()
        self._initial = dict(initial or {})
        self.reset()

    def reset(self) -> None:
        """Back to the scenario's own faults (usually none)."""
        with self._lock:
            self._values: dict[str, float] = dict.fromkeys(KEYS, 0)
            self._fail_turn = 0
            self._malformed_turn = 0
        self.update(self._initial)

    def update(self, values: Mapping[str, Any]) -> dict[str, float]:
        """Set the given faults (others keep their values); answer all of them."""
        checked = {key: _check(key, value) for key, value in values.items()}
        with self._lock:
            self._values.update(checked)
            return dict(self._values)

    def snapshot(self) -> dict[str, float]:
        with self._lock:
            return dict(self._values)

    @property
    def latency_seconds(self) -> float:
        with self._lock:
            return self._values["latency_ms"] / 1000

    def take(self) -> str | None:
        """The fault for the next request, consumed: "drop", "fail_500|502|503",
        "rate_limit", "malformed_html" or "malformed_truncated"; None for a clean one."""
        with self._lock:
            for key in COUNTERS:
                if self._values[key] > 0:
                    self._values[key] -= 1
                    return self._name(key)
        return None

    def take_action(self, key: str) -> bool:
        """Consume one fault of an action (one of ACTION_COUNTERS); True if there was one."""
        with self._lock:
            if self._values[key] > 0:
                self._values[key] -= 1
                return True
        return False

    def _name(self, key: str) -> str:
        if key == "fail_next":
            status = FAIL_STATUSES[self._fail_turn % len(FAIL_STATUSES)]
            self._fail_turn += 1
            return f"fail_{status}"
        if key == "malformed_next":
            self._malformed_turn += 1
            return "malformed_html" if self._malformed_turn % 2 else "malformed_truncated"
        return key.removesuffix("_next")


def _check(key: str, value: Any) -> float:
    if key not in KEYS:
        raise FaultError(f"unknown fault {key!r}; known: {', '.join(KEYS)}")
    number_ok = isinstance(value, int | float) and not isinstance(value, bool)
    if not number_ok or value < 0 or (key != "latency_ms" and value != int(value)):
        raise FaultError(
            f"{key} must be a non-negative {'number' if key == 'latency_ms' else 'integer'}"
        )
    return value if key == "latency_ms" else int(value)
