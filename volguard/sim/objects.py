"""The Machine, Volume and Snapshot JSON the API returns, with the documented keys.

Shapes follow fly-facts §3.2/§3.3/§7 (DOCS examples, FLYGO structs), and
tests/test_api_schema.py holds them to the Swagger copy plus fly-go's fields. Where the
platform is surprising, the surprise is kept on purpose: `attached_machine_id` is null (not
absent) when unattached, a volume may be attached by `attached_alloc_id` alone, a
never-attached volume reports 0 blocks and an empty fstype, a Machine on a sick host
carries `incomplete_config` instead of `config`, a snapshot being taken is listed without
an id or a time, and each object family writes its timestamps in its own format.
"""

from __future__ import annotations

import contextlib
import shlex
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from volguard.fly.guest import MACHINE_PRESETS
from volguard.sim import ids
from volguard.sim.scenario import (
    CONSOLE_GROUP,
    RELEASE_GROUP,
    MachineSpec,
    Scenario,
    SnapshotSpec,
    VolumeSpec,
)
from volguard.units import parse_memory_mb

GIB = 1024**3
BLOCK_SIZE = 4096
FLYCTL_VERSION = "0.3.150"


@dataclass
class Volume:
    """A volume as the platform keeps it; mutable because the API changes it."""

    id: str
    name: str
    region: str
    zone: str
    size_gb: int
    state: str
    host_status: str
    encrypted: bool
    snapshot_retention: int
    auto_backup_enabled: bool
    fstype: str
    used_percent: float
    ever_attached: bool
    created_at: datetime
    attached_machine_id: str | None = None
    attached_alloc_id: str | None = None

    @property
    def attached(self) -> bool:
        """fly-go `Volume.IsAttached` (volume_types.go @22d6e518): to a Machine or an alloc."""
        return self.attached_machine_id is not None or self.attached_alloc_id is not None

    @classmethod
    def from_spec(cls, spec: VolumeSpec, attached_to: str | None, now: datetime) -> Volume:
        ever = spec.ever_attached
        if ever is None:
            ever = attached_to is not None or spec.attached_alloc_id is not None
            ever = ever or spec.used_percent > 0
        return cls(
            id=spec.id,
            name=spec.name,
            region=spec.region,
            zone=spec.zone or ids.derive(f"{spec.id}/zone", 4),
            size_gb=spec.size_gb,
            state=spec.state,
            host_status=spec.host_status,
            encrypted=spec.encrypted,
            snapshot_retention=spec.snapshot_retention,
            auto_backup_enabled=spec.auto_backup_enabled,
            fstype=spec.fstype,
            used_percent=spec.used_percent,
            ever_attached=ever,
            created_at=spec.created_at or now - timedelta(days=30),
            attached_machine_id=attached_to,
            attached_alloc_id=spec.attached_alloc_id,
        )

    @property
    def used_bytes(self) -> int:
        return int(self.size_gb * GIB * self.used_percent / 100)

    def block_stats(self) -> tuple[int, int, int, int]:
        """(block_size, blocks, blocks_free, blocks_avail); all 0 until first mounted.

        blocks_avail leaves out ext4's 5% reserved for root, so a client that computes
        "used" from blocks_avail over-reports, as `df` would.
        """
        if not (self.ever_attached or self.attached):
            return 0, 0, 0, 0
        blocks = self.size_gb * GIB // BLOCK_SIZE
        free = blocks - round(blocks * self.used_percent / 100)
        return BLOCK_SIZE, blocks, free, max(0, free - blocks // 20)

    def to_json(self) -> dict[str, Any]:
        block_size, blocks, free, avail = self.block_stats()
        return {
            "id": self.id,
            "name": self.name,
            "state": self.state,
            "size_gb": self.size_gb,
            "region": self.region,
            "zone": self.zone,
            "encrypted": self.encrypted,
            "attached_machine_id": self.attached_machine_id,
            "attached_alloc_id": self.attached_alloc_id,
            "created_at": ids.volume_time(self.created_at),
            "blocks": blocks,
            "block_size": block_size,
            "blocks_free": free,
            "blocks_avail": avail,
            "fstype": self.fstype if block_size else "",
            "snapshot_retention": self.snapshot_retention,
            "auto_backup_enabled": self.auto_backup_enabled,
            "host_dedication_key": "",  # the DOCS example's key
            "host_dedication_id": "",  # fly-go's (volume_types.go @22d6e518)
            "host_status": self.host_status,
        }


#: A snapshot's statuses while it is being taken (fly-facts §3.2: UNVERIFIED beyond the
#: issue's account of `fly volumes snapshots list`; `created` is the only finished one).
IN_PROGRESS = ("waiting", "running")


@dataclass
class Snapshot:
    """A volume snapshot and its life cycle: listed from the moment it is asked for,
    `waiting`, then `running`, then `created` at `done_at` (monotonic seconds).

    While it is being taken the list shows it as flyctl's `(pending)` row does
    (FLYCTL internal/command/volumes/snapshots/list.go @ad0172fa): no id, no creation
    time, size 0. A scenario's snapshot with an in-progress `status` stays in it.
    """

    id: str
    volume_id: str
    size: int
    volume_size: int
    digest: str
    created_at: datetime
    retention_days: int | None
    status: str = "created"
    requested_at: float = 0.0
    done_at: float = 0.0

    @classmethod
    def from_spec(cls, spec: SnapshotSpec, volume: Volume) -> Snapshot:
        seed = f"{spec.volume}/{spec.created_at.isoformat()}/{spec.status}"
        return cls(
            id=spec.id or ids.snapshot_id(seed),
            volume_id=spec.volume,
            size=spec.size if spec.size is not None else volume.used_bytes,
            volume_size=volume.size_gb * GIB,
            digest=f"{ids.derive(seed + '/digest', 32)}-1",
            created_at=spec.created_at,
            retention_days=spec.retention_days or volume.snapshot_retention,
            status=spec.status,
        )

    def status_at(self, now: float) -> str:
        """`waiting` for the first half of the delay, `running` for the second, then
        `created`; a scenario's in-progress snapshot never finishes."""
        if self.status != "created":
            return self.status
        if now >= self.done_at:
            return "created"
        return "waiting" if now < (self.requested_at + self.done_at) / 2 else "running"

    def to_json(self, now: float) -> dict[str, Any]:
        """fly-go's VolumeSnapshot (volume_types.go @22d6e518): id, size, volume_size (bytes,
        as flyctl's list renders it), digest, created_at, status, retention_days."""
        status = self.status_at(now)
        if status != "created":
            return {
                "id": "",
                "size": 0,
                "volume_size": self.volume_size,
                "digest": "",
                "created_at": None,
                "status": status,
                "retention_days": self.retention_days,
            }
        return {
            "id": self.id,
            "size": self.size,
            "volume_size": self.volume_size,
            "digest": self.digest,
            "created_at": ids.snapshot_time(self.created_at),
            "status": status,
            "retention_days": self.retention_days,
        }


def backup_json(app: str, volume: Volume, snapshot: Snapshot) -> dict[str, Any]:
    """The on-demand snapshot reply (DOCS): opaque, with internal numeric ids, not vol_/vs_
    ids, except `graph_id`, which is the id the snapshot will have in the list."""
    stamp = ids.backup_time(snapshot.created_at)
    return {
        "Msg": {
            "backup": {
                "id": str(int(ids.derive(snapshot.id, 5, "123456789"))),
                "app_id": str(int(ids.derive(app, 7, "123456789"))),
                "volume_id": ids.derive(volume.id, 16, "0123456789"),
                "state": "prepare",
                "type": "BACKUP_TYPE_ON_DEMAND",
                "message": "",
                "created_at": stamp,
                "updated_at": stamp,
                "finished_at": None,
                "graph_id": snapshot.id,
            }
        }
    }


def build_machine(
    spec: MachineSpec,
    scenario: Scenario,
    fly_config: Mapping[str, Any],
    volume_names: Mapping[str, str],
    now: datetime,
) -> dict[str, Any]:
    """The Machine object of `GET /machines`: what `fly deploy` would have made of
    fly_config for this group (env, init.cmd, metadata, mounts[0])."""
    created = spec.created_at or now - timedelta(days=2)
    release = ids.derive(f"{scenario.app}/release", 25, ids.ALNUM)
    config = _machine_config(spec, scenario, fly_config, volume_names, release)
    machine: dict[str, Any] = {
        "id": spec.id,
        "name": spec.name or ids.machine_name(spec.id),
        "state": spec.state,
        "region": spec.region,
        "image_ref": {
            "registry": "registry.fly.io",
            "repository": scenario.app,
            "tag": f"deployment-{release[:26].upper()}",
            "digest": f"sha256:{ids.derive(scenario.app + '/image', 64)}",
            "labels": {},
        },
        "instance_id": ids.derive(f"{spec.id}/instance", 26, ids.CROCKFORD),
        "version": ids.derive(f"{spec.id}/version", 26, ids.CROCKFORD),
        "private_ip": spec.private_ip or ids.private_ip(spec.id),
        "created_at": ids.machine_time(created),
        "updated_at": ids.machine_time(max(created, now - timedelta(hours=1))),
        "events": _events(spec.state, created),
        "host_status": spec.host_status,
        "cordoned": False,
    }
    checks = _checks(spec, fly_config, max(created, now - timedelta(minutes=1)))
    if checks:  # `omitempty` in fly-go: no key at all for a Machine without checks
        machine["checks"] = checks
    incomplete = spec.incomplete_config
    if incomplete is None:
        incomplete = spec.host_status != "ok"
    machine["incomplete_config" if incomplete else "config"] = config
    return machine


def machine_metadata(machine: Mapping[str, Any]) -> Mapping[str, str]:
    """A Machine's config.metadata, wherever the API put the config."""
    config = machine.get("config") or machine.get("incomplete_config") or {}
    return config.get("metadata") or {}


def _machine_config(
    spec: MachineSpec,
    scenario: Scenario,
    fly_config: Mapping[str, Any],
    volume_names: Mapping[str, str],
    release: str,
) -> dict[str, Any]:
    group_key = "process_group" if spec.legacy_group_key else "fly_process_group"
    config: dict[str, Any] = {
        "env": _env(spec, scenario, fly_config),
        "init": _init(spec, fly_config),
        "guest": _guest(fly_config, spec.group),
        "metadata": {
            "fly_flyctl_version": FLYCTL_VERSION,
            "fly_platform_version": "v2",
            group_key: spec.group,
            "fly_release_id": release,
            "fly_release_version": "12",
        },
        "image": f"registry.fly.io/{scenario.app}:deployment-{release[:26].upper()}",
        "restart": {"policy": "on-failure", "max_retries": 10},
    }
    if spec.group == RELEASE_GROUP:
        config["auto_destroy"] = True
        config["restart"] = {"policy": "no"}
    if spec.volume:  # flyctl writes only mounts[0]; the API allows no more
        config["mounts"] = [
            {"volume": spec.volume, "path": spec.mount_path, "name": volume_names[spec.volume]}
        ]
    return config


def _env(spec: MachineSpec, scenario: Scenario, fly_config: Mapping[str, Any]) -> dict[str, str]:
    """[env] stringified (flyctl patchEnv), then FLY_PROCESS_GROUP and PRIMARY_REGION
    overriding it, as flyctl does; no secrets, which the API never shows."""
    if spec.env is not None:
        env = dict(spec.env)
    else:
        env = {str(k): _go_string(v) for k, v in (fly_config.get("env") or {}).items()}
    if spec.group == RELEASE_GROUP:
        env["RELEASE_COMMAND"] = "1"
    env["FLY_PROCESS_GROUP"] = spec.group
    if scenario.primary_region:
        env["PRIMARY_REGION"] = scenario.primary_region
    return env


def _init(spec: MachineSpec, fly_config: Mapping[str, Any]) -> dict[str, Any]:
    if spec.cmd is not None:
        return {"cmd": list(spec.cmd)}
    if spec.group == RELEASE_GROUP:
        command = (fly_config.get("deploy") or {}).get("release_command", "")
    elif spec.group == CONSOLE_GROUP:
        command = fly_config.get("console_command", "")
    else:
        command = (fly_config.get("processes") or {}).get(spec.group, "")
    return {"cmd": shlex.split(command)} if command else {}


def _guest(fly_config: Mapping[str, Any], group: str) -> dict[str, Any]:
    """The guest flyctl gives a new Machine of `group`: its `[[vm]]` section as toMachineGuest
    reads it (FLYCTL internal/appconfig/machines.go @ad0172fa), shared-cpu-1x without one
    (internal/flag/machines.go GetMachineGuest). Only decoration here, so a value flyctl
    would refuse (validated elsewhere) falls back to the preset."""
    vm = vm_section(fly_config, group) or {}
    size = vm.get("size") or ("performance-8x" if vm.get("gpu_kind") else "shared-cpu-1x")
    guest = dict(MACHINE_PRESETS.get(str(size)) or MACHINE_PRESETS["shared-cpu-1x"])
    memory = vm.get("memory")
    if memory is not None:
        with contextlib.suppress(ValueError):  # flyctl refuses it; decoration falls back
            guest["memory_mb"] = parse_memory_mb(_go_string(memory)) or guest["memory_mb"]
    for key in ("cpu_kind", "cpus", "memory_mb", "max_memory_mb", "gpus", "gpu_kind"):
        value = vm.get(key)
        if value and not isinstance(value, bool) and isinstance(value, (int, str)):
            guest[key] = value
    return guest


def vm_section(fly_config: Mapping[str, Any], group: str) -> Mapping[str, Any] | None:
    """The `[[vm]]` table a group gets (`compute`, `computes` and `vm` merged in that order):
    among the tables without `processes` or listing the group ("" meaning the default group),
    the last that lists the group by name, else the first (FLYCTL processgroups.go
    ComputeForGroup, lo.MaxBy)."""
    tables: list[Mapping[str, Any]] = []
    for key in ("compute", "computes", "vm"):
        value = fly_config.get(key)
        items = [value] if isinstance(value, Mapping) else value if isinstance(value, list) else []
        tables += [t for t in items if isinstance(t, Mapping)]
    from volguard.sim.deployment import default_group  # deployment imports this module

    default = default_group(fly_config)

    def listed(table: Mapping[str, Any]) -> list[str]:
        names = table.get("processes")
        return [str(n) for n in names] if isinstance(names, list) else []

    candidates = [
        t
        for t in tables
        if not listed(t) or group in listed(t) or ("" in listed(t) and group == default)
    ]
    named = [t for t in candidates if group in listed(t)]
    return named[-1] if named else (candidates[0] if candidates else None)


def _checks(spec: MachineSpec, fly_config: Mapping[str, Any], at: datetime) -> list[dict[str, Any]]:
    """fly-go's MachineCheckStatus (machine_types.go @22d6e518: name, status, output,
    updated_at) for each health check fly.toml gives the Machine's group: top-level
    `[checks.NAME]` under their own name, `[[http_service.checks]]` as
    "servicecheck-NN-http-PORT" (the name in FLYCTL internal/machine/leasable_machine_test.go
    @ad0172fa). Only a started Machine reports them; all pass (UNVERIFIED: the statuses a
    stopped Machine reports are not in a source)."""
    if spec.state != "started":
        return []
    names: list[str] = []
    top = fly_config.get("checks")
    for name, check in top.items() if isinstance(top, Mapping) else ():
        groups = check.get("processes") if isinstance(check, Mapping) else None
        if not groups or spec.group in groups:
            names.append(str(name))
    http = fly_config.get("http_service")
    if isinstance(http, Mapping) and spec.group in (http.get("processes") or ["app"]):
        port = http.get("internal_port", 8080)
        checks = http.get("checks") if isinstance(http.get("checks"), list) else []
        names += [f"servicecheck-{i:02d}-http-{port}" for i in range(len(checks))]
    stamp = ids.machine_time(at)
    return [{"name": n, "status": "passing", "output": "OK", "updated_at": stamp} for n in names]


def _events(state: str, created: datetime) -> list[dict[str, Any]]:
    """Newest first, like the docs' example."""
    events: list[dict[str, Any]] = [
        {
            "type": "launch",
            "status": "created",
            "source": "user",
            "timestamp": ids.epoch_ms(created),
        }
    ]
    later = {"started": ("start", "started", "flyd"), "stopped": ("stop", "stopped", "user")}
    if state in later:
        kind, status, source = later[state]
        stamp = ids.epoch_ms(created + timedelta(seconds=3))
        events.insert(0, {"type": kind, "status": status, "source": source, "timestamp": stamp})
    return events


def _go_string(value: Any) -> str:
    """fmt.Sprintf("%v"): booleans are lower-case."""
    return str(value).lower() if isinstance(value, bool) else str(value)


def launched_machine(
    app: str, machine_id: str, request: Mapping[str, Any], now: datetime
) -> dict[str, Any]:
    """The Machine POST /machines answers (#10): `created`, its config exactly as sent
    (fly-go's `Launch` reads the answer as a Machine: flaps/flaps_machines.go @22d6e518),
    its name the request's or a generated one."""
    config = dict(request.get("config") or {})
    image = str(config.get("image") or "")
    repository, _, tag = (
        image.rpartition(":") if ":" in image.rsplit("/", 1)[-1] else (image, "", "")
    )
    registry, _, repository = (
        repository.partition("/") if "/" in repository else ("", "", repository)
    )
    return {
        "id": machine_id,
        "name": str(request.get("name") or ids.machine_name(machine_id)),
        "state": "created",
        "region": str(request.get("region") or ""),
        "image_ref": {
            "registry": registry,
            "repository": repository,
            "tag": tag,
            "digest": f"sha256:{ids.derive(image + '/image', 64)}",
            "labels": {},
        },
        "instance_id": ids.derive(f"{machine_id}/instance", 26, ids.CROCKFORD),
        "version": ids.derive(f"{machine_id}/version", 26, ids.CROCKFORD),
        "private_ip": ids.private_ip(machine_id),
        "created_at": ids.machine_time(now),
        "updated_at": ids.machine_time(now),
        "events": [
            {
                "type": "launch",
                "status": "created",
                "source": "user",
                "timestamp": ids.epoch_ms(now),
            }
        ],
        "host_status": "ok",
        "cordoned": False,
        "config": config,
    }


def machine_event(machine: dict[str, Any], kind: str, status: str, now: datetime) -> None:
    """A new event, newest first as the docs' example lists them."""
    event = {"type": kind, "status": status, "source": "flyd", "timestamp": ids.epoch_ms(now)}
    machine["events"].insert(0, event)
    machine["updated_at"] = ids.machine_time(now)
