"""Rules: pure functions from a model to findings, in a registry keyed by check id.

A rule never does I/O. The static layer's rules take a `FlyConfig` and a
`StaticContext` (the settings that matter to them, already resolved).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from volguard.findings import Finding, Location
from volguard.flytoml import FlyConfig

StaticRule = Callable[[FlyConfig, "StaticContext"], Iterable[Finding]]

STATIC_RULES: dict[str, StaticRule] = {}


def static_rule(check_id: str) -> Callable[[StaticRule], StaticRule]:
    """Register a static rule under the id it reports."""

    def register(fn: StaticRule) -> StaticRule:
        if check_id in STATIC_RULES:
            raise RuntimeError(f"two static rules claim {check_id}")
        STATIC_RULES[check_id] = fn
        return fn

    return register


@dataclass(frozen=True)
class StaticContext:
    """What the static rules need besides fly.toml, resolved from flags, config and fly.toml."""

    media_groups: tuple[str, ...]
    media_root: str | None = None
    media_root_at: Location | None = None  # where MEDIA_ROOT came from (for locations)
    min_snapshot_retention: int = 5
    machine_counts: dict[str, int] = field(default_factory=dict)


def run_static(config: FlyConfig, context: StaticContext) -> list[Finding]:
    from volguard.rules import static  # noqa: F401  (registers the rules)

    findings: list[Finding] = []
    for rule in STATIC_RULES.values():
        findings.extend(rule(config, context))
    return findings
