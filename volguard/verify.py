"""`verify-volume`: the layers in order, one Report.

static (fly.toml) → platform (Machines API) → machine (SSH, issue #4). A layer
whose inputs are missing is skipped with its reason, never silently passed.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import replace

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
    machine_ids: tuple[str, ...] = (),
    groups: tuple[str, ...] = (),
) -> Report:
    path = path or settings.fly_toml
    report = Report(inputs={"fly_toml": path})
    config, findings = check_fly_toml(settings, path, report)
    fleet = None
    if config is None:
        report.skipped("platform", "fly.toml could not be read")
    elif offline:
        report.skipped("platform", "--offline")
    elif token is None:
        report.skipped("platform", "no FLY_API_TOKEN")
    elif not (settings.app or config.app):
        report.skipped("platform", "no app name: set `app` in fly.toml or pass --app")
    else:
        platform_findings, fleet = check_platform(
            config, settings, token, client_factory, report, now
        )
        findings += platform_findings
    if fleet is None or config is None:
        report.skipped("machine", "needs the Machine list from the platform layer")
    else:
        findings += check_machine_layer(config, settings, fleet, report, machine_ids, groups)
        findings = set_aside_volume_checks(findings)
    report.extend(waive(findings, settings, config, use_waivers=use_waivers, today=today))
    return report


def check_machine_layer(
    config: FlyConfig,
    settings: Settings,
    fleet: Fleet,
    report: Report,
    machine_ids: tuple[str, ...] = (),
    groups: tuple[str, ...] = (),
) -> list[Finding]:
    """The Machine layer: probe each started Machine of the media groups (VG300–VG311)."""
    from volguard.remote.layer import check_machines, targets_of
    from volguard.remote.transports import TransportOptions
    from volguard.rules.machine import MachineContext, machine_check_ids

    context = static_context(config, settings)
    targets = targets_of(fleet, context.media_groups, machine_ids, groups)
    if not targets:
        report.skipped("machine", "no started Machine in the media groups")
        return []
    missing = missing_tool(settings)
    if missing:
        report.skipped("machine", missing)
        return []
    options = TransportOptions(
        kind=settings.transport,
        app=settings.app or config.app or "",
        user=settings.ssh_user,
        flyctl=settings.flyctl,
        host_template=settings.host_template,
        ssh_config=settings.ssh_config,
    )
    result = check_machines(
        config,
        targets,
        options,
        MachineContext(
            fstypes=settings.volume_fstypes,
            min_free_percent=settings.min_free_percent,
            app_user=settings.app_user,
            media_storage=settings.media_storage,
        ),
        media_root=context.media_root,
        ttl=settings.probe_ttl,
        parallel=settings.machine_parallel,
        checks_dirs=settings.checks_dirs,
        manage_py=settings.manage_py,
    )
    report.ran("machine", checks=machine_check_ids())
    report.stats["machines_checked"] = len(result.checked)
    report.stats["machine_sessions"] = sum(result.sessions.values())
    report.stats["machine_sessions_max"] = max(result.sessions.values(), default=0)
    return result.findings


def check_platform(
    config: FlyConfig,
    settings: Settings,
    token: Token,
    client_factory: ClientFactory,
    report: Report,
    now: dt.datetime | None = None,
) -> tuple[list[Finding], Fleet | None]:
    """The platform layer: fetch the fleet, run VG201–VG209; VG200 when the API fails us."""
    app = settings.app or config.app or ""
    context = platform_context(config, settings, now)
    try:
        with client_factory(token) as client:
            fleet = fetch_fleet(client, app, config, context)
    except FlyAPIError as e:
        report.broke("platform", str(e))
        vg200 = finding(
            "VG200",
            str(e),
            Location(object=f"app {app}"),
            evidence={"status": e.status} if e.status else {},
        )
        return [vg200], None
    report.ran("platform", checks=("VG200", *sorted(PLATFORM_RULES)))
    report.inputs["app"] = app
    report.stats["api_calls"] = fleet.api_calls
    return run_platform(config, fleet, context), fleet


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
        media_storage=settings.media_storage,
    )


def set_aside_volume_checks(findings: list[Finding]) -> list[Finding]:
    """With VG312 (the running app stores media in object storage, found only once the
    Machines answered), drop what the static and platform layers already said about media on
    volumes, and record in VG312 which findings were set aside: skipped, and said so."""
    from volguard.rules import VOLUME_MEDIA_CHECKS

    said = next((f for f in findings if f.id == "VG312"), None)
    if said is None:
        return findings
    aside = [f for f in findings if f.id in VOLUME_MEDIA_CHECKS]
    kept = [f for f in findings if f.id not in VOLUME_MEDIA_CHECKS]
    if not aside:
        return kept
    evidence = {**said.evidence, "set_aside": [f.id for f in aside]}
    return [replace(f, evidence=evidence) if f is said else f for f in kept]


def missing_tool(settings: Settings) -> str | None:
    """Why the chosen transport cannot run here (its program is not installed), or None."""
    import shutil

    program = {"fly": settings.flyctl, "ssh": "ssh"}.get(settings.transport)
    if program and shutil.which(program) is None:
        return f"{program} not found on PATH (transport {settings.transport})"
    return None
