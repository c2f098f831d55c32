"""Rules: pure functions from a model to findings, in registries keyed by layer and check id.

A rule never does I/O. Static rules take a `FlyConfig` and a `StaticContext`;
platform rules also take the `Fleet` the Machines API showed; Machine rules take
one Machine's `Observation`, fleet rules every Machine's (rules/machine.py).
Each registry holds at most one rule per id; an id may have a per-Machine rule
and a fleet rule (VG303: MEDIA_ROOT outside the mount on one Machine, or
differing between groups), the one condition seen from two sides.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from volguard.findings import Finding, Location
from volguard.flytoml import FlyConfig

if TYPE_CHECKING:
    from volguard.fly.fleet import Fleet

Rule = Callable[..., Iterable[Finding]]

#: The checks that are about media on a Fly volume: when uploads live in object storage
#: (`media_storage: object`, VG115; or the running app says so, VG312) they do not apply, and
#: the info finding names them. VG112 and VG113 are the static sides of VG206 and VG101.
VOLUME_MEDIA_CHECKS = ("VG101", "VG102", "VG103", "VG112", "VG113", "VG205", "VG206", "VG306")

RULES: dict[str, dict[str, Rule]] = {"static": {}, "platform": {}, "machine": {}, "fleet": {}}
STATIC_RULES = RULES["static"]
PLATFORM_RULES = RULES["platform"]


def _register(layer: str, check_id: str) -> Callable[[Rule], Rule]:
    def register(fn: Rule) -> Rule:
        if check_id in RULES[layer]:
            raise RuntimeError(f"two {layer} rules claim {check_id}")
        RULES[layer][check_id] = fn
        return fn

    return register


def static_rule(check_id: str) -> Callable[[Rule], Rule]:
    """Register a static rule ``(FlyConfig, StaticContext) -> findings`` under its id."""
    return _register("static", check_id)


def platform_rule(check_id: str) -> Callable[[Rule], Rule]:
    """Register a platform rule ``(FlyConfig, Fleet, PlatformContext) -> findings``."""
    return _register("platform", check_id)


@dataclass(frozen=True)
class StaticContext:
    """What the static rules need besides fly.toml, resolved from flags, config and fly.toml."""

    media_groups: tuple[str, ...]
    media_root: str | None = None
    media_root_at: Location | None = None  # where MEDIA_ROOT came from (for locations)
    min_snapshot_retention: int = 5
    machine_counts: dict[str, int] = field(default_factory=dict)
    media_storage: str = "auto"  # auto | volume | object (volguard.media_storage)


@dataclass(frozen=True)
class PlatformContext:
    """What the platform rules need besides fly.toml and the fleet."""

    media_groups: tuple[str, ...]
    now: dt.datetime
    snapshot_max_age_hours: float = 48.0  # daily snapshots, with a day of slack
    full_threshold: float = 0.90
    media_storage: str = "auto"  # auto | volume | object (volguard.media_storage)


def run_static(config: FlyConfig, context: StaticContext) -> list[Finding]:
    from volguard.rules import static  # noqa: F401  (registers the rules)

    return _run(STATIC_RULES, config, context)


def run_platform(config: FlyConfig, fleet: Fleet, context: PlatformContext) -> list[Finding]:
    from volguard.rules import platform  # noqa: F401  (registers the rules)

    return _run(PLATFORM_RULES, config, fleet, context)


def _run(rules: dict[str, Rule], *args: Any) -> list[Finding]:
    findings: list[Finding] = []
    for rule in rules.values():
        findings.extend(rule(*args))
    return findings
