"""`verify-volume`: the layers in order, one Report.

static (fly.toml) → platform (Machines API) → machine (SSH, issue #4). A layer
whose inputs are missing is skipped with its reason, never silently passed.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable

from volguard.catalogue import finding
from volguard.config import Settings
from volguard.findings import Finding, Location
from volguard.fly.client import FlyAPIError, MachinesClient, Token
from volguard.fly.fleet import Fleet, load_fleet
from volguard.flytoml import FlyConfig
from volguard.lint import check_fly_toml, static_context, waive
from volguard.report import Report
from volguard.rules import PLATFORM_RULES, PlatformContext, run_platform

ClientFactory = Callable[[Token], MachinesClient]


def verify(
    settings: Settings,
    path: str | None = None,
    *,
    offline: bool = False,
    token: Token | None = None,
    client_factory: ClientFactory = MachinesClient,
    use_waivers: bool = True,
    today: dt.date | None = None,
    now: dt.datetime | None = None,
) -> Report:
    path = path or settings.fly_toml
    report = Report(inputs={"fly_toml": path})
    config, findings = check_fly_toml(settings, path, report)
    if config is None:
        report.skipped("platform", "fly.toml could not be read")
    elif offline:
        report.skipped("platform", "--offline")
    elif token is None:
        report.skipped("platform", "no FLY_API_TOKEN")
    elif not (settings.app or config.app):
        report.skipped("platform", "no app name: set `app` in fly.toml or pass --app")
    else:
        findings += check_platform(config, settings, token, client_factory, report, now)
    report.skipped("machine", "not implemented yet: issue #4")
    report.extend(waive(findings, settings, config, use_waivers=use_waivers, today=today))
    return report


def check_platform(
    config: FlyConfig,
    settings: Settings,
    token: Token,
    client_factory: ClientFactory,
    report: Report,
    now: dt.datetime | None = None,
) -> list[Finding]:
    """The platform layer: fetch the fleet, run VG201–VG209; VG200 when the API fails us."""
    app = settings.app or config.app or ""
    context = platform_context(config, settings, now)
    try:
        with client_factory(token) as client:
            fleet = fetch_fleet(client, app, config, context)
    except FlyAPIError as e:
        report.broke("platform", str(e))
        return [
            finding(
                "VG200",
                str(e),
                Location(object=f"app {app}"),
                evidence={"status": e.status} if e.status else {},
            )
        ]
    report.ran("platform", checks=("VG200", *sorted(PLATFORM_RULES)))
    report.inputs["app"] = app
    report.stats["api_calls"] = fleet.api_calls
    return run_platform(config, fleet, context)


def fetch_fleet(
    client: MachinesClient, app: str, config: FlyConfig, context: PlatformContext
) -> Fleet:
    names = {m.source for g in context.media_groups for m in config.mounts_of(g)}
    return load_fleet(client, app, names)


def platform_context(
    config: FlyConfig, settings: Settings, now: dt.datetime | None = None
) -> PlatformContext:
    return PlatformContext(
        media_groups=static_context(config, settings).media_groups,
        now=now or dt.datetime.now(dt.UTC),
        snapshot_max_age_hours=settings.snapshot_max_age_hours,
        full_threshold=settings.volume_full_percent / 100,
    )
