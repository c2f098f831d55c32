"""A `Report`: the findings of a run, plus what each layer did."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, NamedTuple

from volguard import __version__
from volguard.findings import Finding, Severity

RAN, SKIPPED, BROKEN = "ran", "skipped", "broken"

#: ``--fail-on`` values; ``never`` is the same as ``--report-only``.
FAIL_ON_CHOICES = ("error", "warning", "info", "never")

EXIT_OK, EXIT_TOOL_ERROR, EXIT_FINDINGS = 0, 1, 2


class LayerResult(NamedTuple):
    """Whether a layer ran, was skipped (and why) or broke (and why)."""

    status: str
    reason: str = ""
    checks: tuple[str, ...] = ()  # ids the layer evaluated (for JUnit/SARIF rules)


@dataclass
class Report:
    findings: list[Finding] = field(default_factory=list)
    layers: dict[str, LayerResult] = field(default_factory=dict)
    inputs: dict[str, str] = field(default_factory=dict)  # e.g. {"fly_toml": "fly.toml"}
    stats: dict[str, int] = field(default_factory=dict)  # e.g. {"api_calls": 3}

    def ran(self, layer: str, checks: tuple[str, ...] = ()) -> None:
        self.layers[layer] = LayerResult(RAN, checks=checks)

    def skipped(self, layer: str, reason: str) -> None:
        self.layers[layer] = LayerResult(SKIPPED, reason)

    def broke(self, layer: str, reason: str) -> None:
        self.layers[layer] = LayerResult(BROKEN, reason)

    def extend(self, findings: list[Finding]) -> None:
        self.findings.extend(findings)

    def checks_run(self) -> list[str]:
        ids = {c for layer in self.layers.values() for c in layer.checks}
        ids.update(f.id for f in self.findings)
        return sorted(ids)

    def failing(self, fail_on: Severity | None) -> list[Finding]:
        return [f for f in self.findings if f.counts_at(fail_on)]

    def exit_code(self, fail_on: Severity | None) -> int:
        return EXIT_FINDINGS if self.failing(fail_on) else EXIT_OK

    def counts(self) -> dict[str, int]:
        out = {s.value: 0 for s in Severity}
        out["waived"] = 0
        for f in self.findings:
            if f.waived:
                out["waived"] += 1
            else:
                out[f.severity.value] += 1
        return out

    def sorted_findings(self) -> list[Finding]:
        """Most severe first, then by place in the file, then by id."""
        return sorted(
            self.findings,
            key=lambda f: (
                f.waived,
                -f.severity.rank,
                f.location.file or "",
                f.location.line or 0,
                f.id,
            ),
        )

    def as_dict(self, fail_on: Severity | None) -> dict[str, Any]:
        return {
            "tool": "volguard",
            "version": __version__,
            "inputs": self.inputs,
            "fail_on": fail_on.value if fail_on else "never",
            "exit_code": self.exit_code(fail_on),
            "summary": self.counts(),
            "stats": self.stats,
            "layers": {
                name: {"status": r.status, "reason": r.reason} for name, r in self.layers.items()
            },
            "findings": [f.as_dict() for f in self.sorted_findings()],
        }


def parse_fail_on(value: str) -> Severity | None:
    """``--fail-on`` as a threshold; ``never`` (no threshold) gives None."""
    if value.strip().lower() == "never":
        return None
    try:
        return Severity.parse(value)
    except ValueError:
        raise ValueError(
            f"--fail-on: unknown value {value!r} (choose from {', '.join(FAIL_ON_CHOICES)})"
        ) from None
