"""Platform rules VG201–VG209: fly.toml joined with what the Machines API shows.

VG200 (API unreachable, token refused) is not a rule: the layer runner reports
it when the fleet could not be fetched. Findings name the Machine id, group,
region and volume id, in the message and in the evidence.
"""

from __future__ import annotations

from collections.abc import Iterator

from volguard.catalogue import finding
from volguard.findings import Finding, Location
from volguard.fly.fleet import Fleet
from volguard.fly.models import Machine
from volguard.flytoml import FlyConfig, Mount
from volguard.rules import PlatformContext, platform_rule
from volguard.rules.static import normalise

STARTED = "started"
#: A Machine in any other (not gone) state is there but not running as configured, so
#: nothing on it can be verified: stopped, suspended, created, failed, or mid-transition.


def media_mount(config: FlyConfig, group: str) -> Mount | None:
    mounts = config.mounts_of(group)
    return mounts[0] if mounts else None  # flyctl uses only the first


def _media_machines(config: FlyConfig, fleet: Fleet, context: PlatformContext) -> list[Machine]:
    return [m for g in context.media_groups for m in fleet.machines_of(g)]


def _who(machine: Machine) -> str:
    return f"Machine {machine.id} (group {machine.group}, {machine.region})"


def _evidence(machine: Machine, **more: object) -> dict[str, object]:
    return {"machine": machine.id, "group": machine.group, "region": machine.region, **more}


@platform_rule("VG201")
def machine_without_volume(
    config: FlyConfig, fleet: Fleet, context: PlatformContext
) -> Iterator[Finding]:
    for machine in _media_machines(config, fleet, context):
        mount = media_mount(config, machine.group)
        if machine.state == STARTED and mount and machine.mount is None:
            waiting = fleet.unattached(mount.source, machine.region)
            ids = ", ".join(v.id for v in waiting)
            spare = (
                f'; {len(waiting)} unattached "{mount.source}" '
                f"{'volume waits' if len(waiting) == 1 else 'volumes wait'} in {machine.region} "
                f"({ids})"
            )
            yield finding(
                "VG201",
                f"{_who(machine)} has no volume attached, though fly.toml mounts "
                f'"{mount.source}" at {mount.destination}: its uploads land on the ephemeral '
                f"root filesystem{spare if waiting else ''}",
                Location(machine=machine.id),
                hint="A volume cannot be attached to an existing Machine: `fly deploy` replaces "
                "it when an unattached volume of that name is in its region (create one with "
                "`volguard create-volume --apply`).",
                evidence=_evidence(
                    machine, expected_volume=mount.source, unattached=[v.id for v in waiting]
                ),
            )


@platform_rule("VG202")
def mount_drift(config: FlyConfig, fleet: Fleet, context: PlatformContext) -> Iterator[Finding]:
    for machine in _media_machines(config, fleet, context):
        mount, deployed = media_mount(config, machine.group), machine.mount
        if mount is None or deployed is None:
            continue
        drift = []
        if normalise(deployed.path or "/") != normalise(mount.destination or "/"):
            drift.append(f"path {deployed.path} (fly.toml: {mount.destination})")
        if deployed.name and deployed.name != mount.source:
            drift.append(f'volume name "{deployed.name}" (fly.toml: "{mount.source}")')
        if drift:
            yield finding(
                "VG202",
                f"{_who(machine)} mounts volume {deployed.volume} with {' and '.join(drift)}: "
                "the deployment has drifted from fly.toml",
                Location(machine=machine.id),
                evidence=_evidence(
                    machine,
                    volume=deployed.volume,
                    deployed_path=deployed.path,
                    expected_path=mount.destination,
                ),
            )


@platform_rule("VG203")
def volume_region_or_host(
    config: FlyConfig, fleet: Fleet, context: PlatformContext
) -> Iterator[Finding]:
    for machine in _media_machines(config, fleet, context):
        problems = []
        if machine.host_status != "ok":
            problems.append(f"the Machine's host is {machine.host_status}")
        volume = fleet.volume(machine.mount.volume) if machine.mount else None
        if volume is not None:
            if volume.region != machine.region:
                problems.append(
                    f"volume {volume.id} is in {volume.region}, the Machine in {machine.region}"
                )
            if volume.host_status != "ok":
                problems.append(f"volume {volume.id}'s host is {volume.host_status}")
        if problems:
            yield finding(
                "VG203",
                f"{_who(machine)}: {'; '.join(problems)}",
                Location(machine=machine.id),
                evidence=_evidence(machine, volume=volume.id if volume else None),
            )


@platform_rule("VG204")
def unattached_media_volume(
    config: FlyConfig, fleet: Fleet, context: PlatformContext
) -> Iterator[Finding]:
    names = _media_volume_names(config, context)
    for volume in fleet.volumes:
        if volume.name in names and not volume.attached:
            yield finding(
                "VG204",
                f'unattached volume {volume.id} "{volume.name}" in {volume.region} '
                f"({volume.describe_usage()}): it may hold the files the app is missing",
                Location(volume=volume.id),
                hint="Destroy nothing yet: `volguard recover` searches a fork of it and copies "
                "the missing files back.",
                evidence={
                    "volume": volume.id,
                    "name": volume.name,
                    "region": volume.region,
                    "size_gb": volume.size_gb,
                    "used_fraction": volume.used_fraction,
                },
            )


@platform_rule("VG205")
def groups_on_different_volumes(
    config: FlyConfig, fleet: Fleet, context: PlatformContext
) -> Iterator[Finding]:
    if context.media_storage == "object":
        return  # media in object storage: VG115 says these were skipped
    by_group: dict[str, list[Machine]] = {}
    for machine in _media_machines(config, fleet, context):
        if machine.state == STARTED and machine.mount:
            by_group.setdefault(machine.group, []).append(machine)
    if len(by_group) < 2:
        return
    parts = [
        f"{group} on {', '.join(f'{m.mount.volume} ({m.id}, {m.region})' for m in machines)}"
        for group, machines in sorted(by_group.items())
    ]
    first = by_group[sorted(by_group)[0]][0]
    yield finding(
        "VG205",
        f"media groups run on different volumes: {'; '.join(parts)}. A file one group writes is "
        "not there for the others ([Errno 2] No such file or directory)",
        Location(machine=first.id),
        evidence={
            "groups": {
                g: [{"machine": m.id, "volume": m.mount.volume, "region": m.region} for m in ms]
                for g, ms in sorted(by_group.items())
            }
        },
    )


@platform_rule("VG206")
def group_spread_over_volumes(
    config: FlyConfig, fleet: Fleet, context: PlatformContext
) -> Iterator[Finding]:
    if context.media_storage == "object":
        return  # media in object storage: VG115 says these were skipped
    for group in context.media_groups:
        machines = [m for m in fleet.machines_of(group) if m.state == STARTED and m.mount]
        if len(machines) >= 2:
            yield finding(
                "VG206",
                f'{len(machines)} Machines of group "{group}" each have their own volume '
                f"({', '.join(f'{m.id} on {m.mount.volume}' for m in machines)}): each sees only "
                "the uploads it received",
                Location(machine=machines[0].id),
                evidence={
                    "group": group,
                    "machines": [{"machine": m.id, "volume": m.mount.volume} for m in machines],
                },
            )


@platform_rule("VG207")
def snapshots_missing_or_old(
    config: FlyConfig, fleet: Fleet, context: PlatformContext
) -> Iterator[Finding]:
    names = _media_volume_names(config, context)
    for volume in fleet.volumes:
        # attached volumes hold the live uploads; an unattached one matters if it holds data
        if volume.name not in names or not (volume.attached or (volume.used_fraction or 0) > 0):
            continue
        problems = []
        if volume.auto_backup_enabled is False:
            problems.append("scheduled snapshots are disabled")
        # only a `created` snapshot is a backup: one being taken has no id and no time yet
        taken = [s.created_at for s in fleet.snapshots.get(volume.id, ()) if s.completed]
        if volume.id in fleet.snapshots:
            if not taken:
                problems.append("it has no snapshot")
            else:
                age = (context.now - max(taken)).total_seconds() / 3600
                if age > context.snapshot_max_age_hours:
                    problems.append(
                        f"its newest snapshot is {age:.0f} h old "
                        f"(policy: {context.snapshot_max_age_hours:.0f} h)"
                    )
        if problems:
            yield finding(
                "VG207",
                f'volume {volume.id} "{volume.name}" in {volume.region}: {"; ".join(problems)}',
                Location(volume=volume.id),
                hint="Take one now (`volguard snapshot-volumes`) and keep scheduled snapshots on.",
                evidence={"volume": volume.id, "snapshots": len(taken)},
            )


@platform_rule("VG208")
def volume_nearly_full(
    config: FlyConfig, fleet: Fleet, context: PlatformContext
) -> Iterator[Finding]:
    names = _media_volume_names(config, context)
    for volume in fleet.volumes:
        used = volume.used_fraction
        if volume.name in names and used is not None and used >= context.full_threshold:
            yield finding(
                "VG208",
                f'volume {volume.id} "{volume.name}" in {volume.region} is {used:.0%} full '
                f"({volume.describe_usage()}); new uploads will fail when it fills",
                Location(volume=volume.id),
                hint="Extend it (`fly volumes extend`) or set auto_extend_size_* in [mounts].",
                evidence={"volume": volume.id, "used_fraction": used},
            )


@platform_rule("VG209")
def machine_not_running(
    config: FlyConfig, fleet: Fleet, context: PlatformContext
) -> Iterator[Finding]:
    for machine in _media_machines(config, fleet, context):
        if machine.state != STARTED:
            yield finding(
                "VG209",
                f"{_who(machine)} is {machine.state}: it was not verified",
                Location(machine=machine.id),
                hint="Start it (`fly machine start`) and verify again.",
                evidence=_evidence(machine, state=machine.state),
            )


def _media_volume_names(config: FlyConfig, context: PlatformContext) -> set[str]:
    return {m.source for g in context.media_groups for m in config.mounts_of(g)}
