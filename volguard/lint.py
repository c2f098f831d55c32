"""The static layer as one call: read fly.toml, run the rules, apply waivers."""

from __future__ import annotations

import datetime as dt

from volguard.config import Settings
from volguard.errors import UsageError
from volguard.findings import Finding
from volguard.flytoml import FlyConfig, read_fly_toml
from volguard.report import Report
from volguard.rules import STATIC_RULES, StaticContext, run_static
from volguard.waivers import apply_waivers, inline_waivers

LAYER = "static"


def lint(
    settings: Settings,
    path: str | None = None,
    *,
    use_waivers: bool = True,
    today: dt.date | None = None,
) -> Report:
    """Lint ``path`` (default: ``settings.fly_toml``) and return the Report.

    Raises `VolguardError` only for volguard's own bad input (a malformed
    waiver, a media group that fly.toml does not have).
    """
    path = path or settings.fly_toml
    report = Report(inputs={"fly_toml": path})
    config, findings = check_fly_toml(settings, path, report)
    report.extend(waive(findings, settings, config, use_waivers=use_waivers, today=today))
    return report


def check_fly_toml(
    settings: Settings, path: str, report: Report
) -> tuple[FlyConfig | None, list[Finding]]:
    """The static layer: read fly.toml and run the static rules (findings not yet waived)."""
    config, findings = read_fly_toml(path)
    if config is not None:
        findings += run_static(config, static_context(config, settings))
    report.ran(LAYER, checks=("VG100", *sorted(STATIC_RULES)) if config else ("VG100",))
    return config, findings


def waive(
    findings: list[Finding],
    settings: Settings,
    config: FlyConfig | None,
    *,
    use_waivers: bool = True,
    today: dt.date | None = None,
) -> list[Finding]:
    """Apply the configured and the inline (fly.toml) waivers, unless told not to."""
    if not use_waivers:
        return findings
    waivers = list(settings.waivers)
    if config is not None:
        waivers += inline_waivers(config.source_map, config.path)
    return apply_waivers(findings, waivers, today)


def static_context(config: FlyConfig, settings: Settings) -> StaticContext:
    groups = settings.media_groups or tuple(config.group_names)
    unknown = [g for g in groups if g not in config.group_names]
    if unknown:
        raise UsageError(
            f"media_groups: {config.path} has no process group {unknown[0]!r} "
            f"(its groups: {', '.join(config.group_names)})"
        )
    media_root, media_root_at = settings.media_root, None
    if media_root is None and "MEDIA_ROOT" in config.env:
        media_root, media_root_at = config.env["MEDIA_ROOT"], config.locate("env", "MEDIA_ROOT")
    return StaticContext(
        media_groups=groups,
        media_root=media_root,
        media_root_at=media_root_at,
        min_snapshot_retention=settings.min_snapshot_retention,
        machine_counts=settings.machine_counts,
        media_storage=settings.media_storage,
    )
