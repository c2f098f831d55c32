"""The guest (CPU kind, CPUs, memory) flyctl asks placement to fit when it creates a volume.

A volume is placed on a host, and the Machine that mounts it must then fit on the same host;
so flyctl sends the Machine's guest as the volume's `compute` (FLYGO volume_types.go
`CreateVolumeRequest.ComputeRequirements` @22d6e518). volguard's `create-volume` picks it as
`fly scale count` does (FLYCTL internal/command/scale/count_machines.go and
machine_defaults.go @ad0172fa), which on an app with no Machine is also what a first deploy
sends (deploy_first.go `provisionVolumesOnFirstDeploy`):

- a group with Machines: the guest of its first Machine as the API lists them
  (`mConfig := groupMachines[0].Config`), none if that Machine reports no guest;
- a group without Machines: fly.toml's `[[vm]]` for the group (`ToMachineConfig`, "Respect
  Guest if set by fly.toml"); else the guest of the default group's Machines (the last listed
  with one: `lo.Associate`), else of the first group (sorted, ProcessNames) that has one; else
  flyctl's default size, shared-cpu-1x (`GetMachineGuest(ctx, nil)` in
  internal/flag/machines.go, which `fly volumes create` sends too).

`config_guest` is FLYCTL internal/appconfig `ComputeForGroup` (processgroups.go) followed by
`toMachineGuest` (machines.go): start from a preset (`size`, else shared-cpu-1x, or
performance-8x when only a GPU kind is given), then `memory`, then every non-empty guest
field of the section (copier's IgnoreEmpty). Sizes and presets are fly-go's (machine_types.go
`MachinePresets` @22d6e518).
"""

from __future__ import annotations

from typing import Any

from volguard.errors import UsageError
from volguard.fly.fleet import Fleet
from volguard.fly.models import Machine
from volguard.flytoml import GUEST_FIELDS, Compute, FlyConfig
from volguard.units import SizeError, parse_memory_mb

DEFAULT_VM_SIZE = "shared-cpu-1x"  # FLYGO machine_types.go DefaultVMSize
DEFAULT_GPU_VM_SIZE = "performance-8x"  # DefaultGPUVMSize

_SHARED_MB, _PERFORMANCE_MB = 256, 2048  # MIN_MEMORY_MB_PER_SHARED_CPU, MIN_MEMORY_MB_PER_CPU

#: FLYGO machine_types.go `MachinePresets` @22d6e518.
MACHINE_PRESETS: dict[str, dict[str, Any]] = {
    **{
        f"shared-cpu-{n}x": {"cpu_kind": "shared", "cpus": n, "memory_mb": n * _SHARED_MB}
        for n in (1, 2, 4, 6, 8)
    },
    **{
        f"performance-{n}x": {
            "cpu_kind": "performance",
            "cpus": n,
            "memory_mb": n * _PERFORMANCE_MB,
        }
        for n in (1, 2, 4, 6, 8, 10, 12, 14, 16)
    },
    **{
        name: {
            "gpu_kind": kind,
            "gpus": 1,
            "cpu_kind": "performance",
            "cpus": 8,
            "memory_mb": 16 * _PERFORMANCE_MB,
        }
        for name, kind in (
            ("a100-40gb", "a100-pcie-40gb"),
            ("a100-80gb", "a100-sxm4-80gb"),
            ("l40s", "l40s"),
            ("a10", "a10"),
        )
    },
}


def preset(size: str) -> dict[str, Any]:
    """fly-go's `MachineGuest.SetSize`: the preset's fields, or its error as a UsageError."""
    if size in MACHINE_PRESETS:
        return dict(MACHINE_PRESETS[size])
    kind = next((k for k in ("shared", "performance") if size.startswith(k)), None)
    if kind is None:
        raise UsageError(
            f"[[vm]] size {size!r}: invalid machine preset, expected to start with "
            "'shared' or 'performance'"
        )
    valid = ", ".join(sorted(s for s in MACHINE_PRESETS if s.startswith(kind)))
    raise UsageError(f"[[vm]] size {size!r} is an invalid machine size, choose one of: {valid}")


def default_guest() -> dict[str, Any]:
    """What flyctl sends for a group fly.toml gives no `[[vm]]`: shared-cpu-1x."""
    return preset(DEFAULT_VM_SIZE)


def compute_for_group(config: FlyConfig, group: str) -> Compute | None:
    """FLYCTL `ComputeForGroup`: of the sections with no `processes` or naming the group
    (an empty list names the default group), the last that names it, else the first."""
    candidates = [
        c for c in config.computes if not c.processes or _names(config, group, c.processes)
    ]
    if not candidates:
        return None
    chosen = candidates[0]
    for compute in candidates[1:]:
        if group in compute.processes:  # lo.MaxBy: a later item wins when it names the group
            chosen = compute
    return chosen


def config_guest(config: FlyConfig, group: str) -> dict[str, Any] | None:
    """The guest fly.toml gives `group` (toMachineGuest), None when it has no `[[vm]]` for it."""
    compute = compute_for_group(config, group)
    if compute is None:
        return None
    size = compute.size or (DEFAULT_GPU_VM_SIZE if compute.guest.get("gpu_kind") else None)
    guest = preset(size or DEFAULT_VM_SIZE)
    host = compute.guest.get("host_dedication_id") or config.host_dedication_id
    if host:
        guest["host_dedication_id"] = host
    if compute.memory:
        try:
            megabytes = parse_memory_mb(compute.memory)
        except SizeError as e:
            raise UsageError(f"[[vm]] memory {compute.memory!r}: {e}") from None
        if megabytes == 0:
            raise UsageError(f"[[vm]] memory {compute.memory!r}: memory cannot be zero")
        guest["memory_mb"] = megabytes
    guest.update({k: v for k, v in compute.guest.items() if v not in (0, "", None)})
    return guest


def guest_for_new_volume(config: FlyConfig, group: str, fleet: Fleet) -> dict[str, Any] | None:
    """The `compute` of a new volume for `group`, as `fly scale count` picks it (module doc);
    None only when the group's first Machine reports no guest (flyctl then sends null)."""
    machines = fleet.machines_of(group)
    if machines:
        return machine_guest(machines[0])
    from_config = config_guest(config, group)
    if from_config is not None:
        return from_config
    per_group: dict[str, dict[str, Any]] = {}
    for machine in fleet.machines:  # lo.Associate: the last listed Machine of a group wins
        guest = machine_guest(machine)
        if guest:
            per_group[machine.group] = guest
    for name in (config.default_group, *config.group_names):
        if name in per_group:
            return per_group[name]
    return default_guest()


def machine_guest(machine: Machine) -> dict[str, Any] | None:
    """A Machine's guest as fly-go sends it back: the GUEST_FIELDS it sets, zeros and ""
    left out (`omitempty`), keys fly-go does not declare dropped (decoding drops them)."""
    guest = {
        key: value
        for key, kind in GUEST_FIELDS.items()
        if _sized(value := machine.guest.get(key), kind)
    }
    return guest or None


def _sized(value: Any, kind: type) -> bool:
    """A value of the field's JSON type that `omitempty` would write (not 0, not "")."""
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool) and value > 0
    return isinstance(value, str) and value != ""


def _names(config: FlyConfig, group: str, processes: tuple[str, ...]) -> bool:
    """FLYCTL `flattenGroupsMatch`: the group is listed, or "" stands for the default group."""
    return any(p == group or (p == "" and group == config.default_group) for p in processes)
