"""Volume planning: which volumes a deployment still needs, computed before anything is created.

`plan_volumes` is pure: fly.toml plus the fleet in, a list of `VolumeNeed` out.
The rule it follows is flyctl's (fly-facts §2.2): a Machine uses the volume
attached to it, a new or replaced Machine picks up an *unattached*, healthy
volume with the mount's name in its own region, and otherwise it fails. So
per group and region: the volumes needed (one per Machine, or `count`), minus
those attached to the group's Machines there, minus the unattached ones there.
Running the plan twice creates the shortfall once.

Each volume is asked for as flyctl asks for a group's volume (FLYCTL
internal/command/deploy/deploy_first.go `provisionVolumesOnFirstDeploy`,
internal/command/scale/machine_defaults.go `CreateVolumeRequest` and
internal/command/volumes/create.go `runCreate`, all @ad0172fa; the body is FLYGO
volume_types.go `CreateVolumeRequest` @22d6e518): the mount's size, snapshot retention and
scheduled snapshots, `require_unique_zone`, and the group's guest as `compute`, so the
volume lands on a host with room for the Machine that will mount it. The mount's
auto-extend settings are not part of that body: flyctl puts them on the Machine's mount
(FLYCTL internal/appconfig/machines.go, `ExtendThresholdPercent`/`AddSizeGb`/
`SizeGbLimit`), so `fly deploy` applies them, not the volume create (fly-facts §2.3).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from volguard.errors import UsageError
from volguard.fly.fleet import Fleet
from volguard.fly.guest import guest_for_new_volume
from volguard.flytoml import FlyConfig
from volguard.units import SizeError, parse_size_gb

FLYCTL_DEFAULT_SIZE_GB = 1  # fly-facts §0.7: flyctl's default, not the API's 3
FLYCTL_GPU_DEFAULT_SIZE_GB = 100  # a group whose guest has a GPU


@dataclass(frozen=True)
class VolumeNeed:
    """One line of a plan: create ``count`` volumes called ``name`` in ``region``."""

    name: str
    region: str
    group: str
    count: int
    size_gb: int
    snapshot_retention: int | None = None
    auto_backup_enabled: bool | None = None
    require_unique_zone: bool = True
    compute: Mapping[str, Any] | None = None  # the guest placement must fit (fly.guest)

    def describe(self) -> str:
        noun = "volume" if self.count == 1 else "volumes"
        return (
            f'+ {self.count} {noun} "{self.name}" in {self.region} '
            f"({self.size_gb} GB, for group {self.group})"
        )

    def request(self) -> dict[str, Any]:
        """The create-volume body; `size_gb` always explicit (the API defaults to 3 GB).

        Fields volguard has no value for are left out rather than sent as fly-go's null:
        the API reads both as "its default"."""
        body: dict[str, Any] = {
            "name": self.name,
            "region": self.region,
            "size_gb": self.size_gb,
            "encrypted": True,
            "require_unique_zone": self.require_unique_zone,
        }
        if self.snapshot_retention is not None:
            body["snapshot_retention"] = self.snapshot_retention
        if self.auto_backup_enabled is not None:
            body["auto_backup_enabled"] = self.auto_backup_enabled
        if self.compute:
            body["compute"] = dict(self.compute)
        return body


def plan_volumes(
    config: FlyConfig,
    fleet: Fleet,
    *,
    count: int | None = None,
    size_gb: int | None = None,
    groups: tuple[str, ...] | None = None,
    require_unique_zone: bool = True,
) -> list[VolumeNeed]:
    """The volumes to create so every Machine (or ``count`` per region) has one."""
    plan: list[VolumeNeed] = []
    pool: Counter[tuple[str, str]] = Counter(  # unattached volumes, shared by same-named mounts
        (v.name, v.region) for v in fleet.volumes if not v.attached and v.host_status == "ok"
    )
    for group in groups or tuple(config.group_names):
        mounts = config.mounts_of(group)
        if not mounts:
            continue
        mount = mounts[0]
        machines = fleet.machines_of(group)
        compute = guest_for_new_volume(config, group, fleet)
        wanted = _wanted_per_region(config, group, machines, count)
        for region in sorted(wanted):
            attached = sum(
                1
                for m in machines
                if m.region == region
                and m.mount
                and (v := fleet.volume(m.mount.volume)) is not None
                and v.name == mount.source
            )
            missing = max(0, wanted[region] - attached)
            spare = min(missing, pool[(mount.source, region)])
            pool[(mount.source, region)] -= spare
            if missing - spare > 0:
                plan.append(
                    VolumeNeed(
                        name=mount.source,
                        region=region,
                        group=group,
                        count=missing - spare,
                        size_gb=size_gb or _initial_size_gb(mount.initial_size, compute),
                        snapshot_retention=mount.snapshot_retention,
                        auto_backup_enabled=mount.scheduled_snapshots,
                        require_unique_zone=require_unique_zone,
                        compute=compute,
                    )
                )
    return plan


def _wanted_per_region(
    config: FlyConfig, group: str, machines: list, count: int | None
) -> Counter[str]:
    regions = Counter(m.region for m in machines)
    if not regions:
        if not config.primary_region:
            raise UsageError(
                f'group "{group}" has no Machines yet and fly.toml has no primary_region: '
                "volguard cannot tell where its volume belongs (see VG107)"
            )
        regions = Counter({config.primary_region: 1})  # a first deploy creates one Machine
    if count is not None:
        return Counter(dict.fromkeys(regions, count))
    return regions


def _initial_size_gb(initial_size: str | None, compute: Mapping[str, Any] | None) -> int:
    """The mount's `initial_size`, else flyctl's default: 100 GB for a GPU guest, else 1 GB
    (FLYCTL deploy_first.go and machines.go `DefaultGPUVolumeInitialSizeGB` @ad0172fa)."""
    if not initial_size:
        gpu = compute is not None and compute.get("gpu_kind")
        return FLYCTL_GPU_DEFAULT_SIZE_GB if gpu else FLYCTL_DEFAULT_SIZE_GB
    try:
        size = parse_size_gb(initial_size)
    except SizeError as e:
        raise UsageError(f"[mounts] initial_size {initial_size!r}: {e} (see VG108)") from None
    if size < 1:
        raise UsageError(f"[mounts] initial_size {initial_size!r} is under 1 GB (see VG108)")
    return size
