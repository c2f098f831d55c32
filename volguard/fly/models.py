"""Machines API objects, parsed defensively (fly-facts §3.2, §3.3).

Unknown fields are ignored, missing optional ones become None, and a body
that is not the documented shape raises `ValueError` (the client turns that
into a clear API error, reported as VG200).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

#: Groups flyctl filters out of `fly machines list` (FLYGO machine_types.go).
RELEASE_COMMAND_GROUP = "fly_app_release_command"
CONSOLE_GROUP = "fly_app_console"

#: Volume states on their way out (FLYGO flaps_volumes.go GetVolumes hides them).
DESTROY_STATES = frozenset(
    {
        "scheduling_destroy",
        "fork_cleanup",
        "waiting_for_detach",
        "pending_destroy",
        "destroying",
        "destroyed",
    }
)
GONE_MACHINE_STATES = frozenset({"destroying", "destroyed", "replaced", "migrated"})


@dataclass(frozen=True)
class MachineMount:
    volume: str
    path: str
    name: str = ""


@dataclass(frozen=True)
class Machine:
    id: str
    state: str
    region: str
    group: str
    name: str = ""
    mounts: tuple[MachineMount, ...] = ()
    env: dict[str, str] = field(default_factory=dict)
    host_status: str = "ok"
    private_ip: str = ""
    guest: dict[str, Any] = field(default_factory=dict)  # config.guest, as sent
    #: config.image and config.metadata: what a temporary Machine copies from one of the
    #: app's, and how volguard's own temporary Machines are recognised (fly/temporary.py).
    image: str = ""
    metadata: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_api(cls, data: Any) -> Machine:
        obj = _object(data, "Machine")
        # When the host is not ok, `config` may be missing and `incomplete_config` used instead.
        config = obj.get("config") or obj.get("incomplete_config") or {}
        config = config if isinstance(config, dict) else {}
        metadata = config.get("metadata") if isinstance(config.get("metadata"), dict) else {}
        group = _s(metadata.get("fly_process_group")) or _s(metadata.get("process_group"))
        mounts = config.get("mounts") if isinstance(config.get("mounts"), list) else []
        env = config.get("env") if isinstance(config.get("env"), dict) else {}
        guest = config.get("guest") if isinstance(config.get("guest"), dict) else {}
        return cls(
            id=_required(obj, "id"),
            name=_s(obj.get("name")),
            state=_s(obj.get("state")),
            region=_s(obj.get("region")),
            group=group or "app",  # Machines made before process groups belong to `app`
            mounts=tuple(
                MachineMount(_s(m.get("volume")), _s(m.get("path")), _s(m.get("name")))
                for m in mounts
                if isinstance(m, dict)
            ),
            env={str(k): _s(v) for k, v in env.items()},
            host_status=_s(obj.get("host_status")) or "ok",
            private_ip=_s(obj.get("private_ip")),
            guest={str(k): v for k, v in guest.items()},
            image=_s(config.get("image")),
            metadata={str(k): _s(v) for k, v in metadata.items()},
        )

    @property
    def is_platform_helper(self) -> bool:
        """Release-command and console Machines: listed by the API, not part of the app."""
        return self.group in (RELEASE_COMMAND_GROUP, CONSOLE_GROUP)

    @property
    def mount(self) -> MachineMount | None:
        """The one mount a Machine can have (the API allows one volume per Machine)."""
        return self.mounts[0] if self.mounts else None


@dataclass(frozen=True)
class Volume:
    id: str
    name: str
    state: str
    region: str
    size_gb: int | None = None
    attached_machine_id: str | None = None
    attached_alloc_id: str | None = None
    host_status: str = "ok"
    zone: str = ""
    blocks: int = 0
    blocks_free: int = 0
    blocks_avail: int = 0
    block_size: int = 0
    snapshot_retention: int | None = None
    auto_backup_enabled: bool | None = None
    created_at: str = ""

    @classmethod
    def from_api(cls, data: Any) -> Volume:
        obj = _object(data, "Volume")
        return cls(
            id=_required(obj, "id"),
            name=_s(obj.get("name")),
            state=_s(obj.get("state")),
            region=_s(obj.get("region")),
            size_gb=_i(obj.get("size_gb")),
            attached_machine_id=_s(obj.get("attached_machine_id")) or None,
            attached_alloc_id=_s(obj.get("attached_alloc_id")) or None,
            host_status=_s(obj.get("host_status")) or "ok",
            zone=_s(obj.get("zone")),
            blocks=_i(obj.get("blocks")) or 0,
            blocks_free=_i(obj.get("blocks_free")) or 0,
            blocks_avail=_i(obj.get("blocks_avail")) or 0,
            block_size=_i(obj.get("block_size")) or 0,
            snapshot_retention=_i(obj.get("snapshot_retention")),
            auto_backup_enabled=obj.get("auto_backup_enabled")
            if isinstance(obj.get("auto_backup_enabled"), bool)
            else None,
            created_at=_s(obj.get("created_at")),
        )

    @property
    def live(self) -> bool:
        return self.state not in DESTROY_STATES

    @property
    def attached(self) -> bool:
        """To a Machine or to an allocation: FLYGO volume_types.go `IsAttached` @22d6e518,
        as flyctl's deploy picks volumes (FLYCTL deploy/machines.go `setVolumes` @ad0172fa)."""
        return self.attached_machine_id is not None or self.attached_alloc_id is not None

    @property
    def attached_to(self) -> str:
        """What holds it, for messages: a Machine id, "allocation a1b2…", or ""."""
        if self.attached_machine_id:
            return self.attached_machine_id
        return f"allocation {self.attached_alloc_id}" if self.attached_alloc_id else ""

    @property
    def used_fraction(self) -> float | None:
        """How full the filesystem is, from `blocks`/`blocks_free`; None when not reported."""
        if self.blocks <= 0:
            return None
        return max(0.0, min(1.0, 1 - self.blocks_free / self.blocks))

    def describe_usage(self) -> str:
        used = self.used_fraction
        size = f"{self.size_gb} GB" if self.size_gb is not None else "size unknown"
        return f"{size}, {used:.0%} used" if used is not None else f"{size}, usage not reported"


#: The one snapshot status that means "taken" (fly-facts §3.2).
SNAPSHOT_CREATED = "created"


@dataclass(frozen=True)
class Snapshot:
    """One row of a volume's snapshot list, finished or still being taken.

    A snapshot being taken is listed with an empty id, no creation time, size 0 and a
    status such as `waiting` or `running`; flyctl prints "(pending)" for its id (FLYCTL
    internal/command/volumes/snapshots/list.go @ad0172fa). Only a `created` one, with an
    id and a time, is a backup. The DOCS example predates `status`: a row without one
    that has an id and a time is a finished snapshot.
    """

    id: str
    created_at: dt.datetime | None
    size: int | None = None
    status: str = ""
    retention_days: int | None = None
    volume_size: int | None = None

    @classmethod
    def from_api(cls, data: Any) -> Snapshot:
        obj = _object(data, "Snapshot")
        return cls(
            id=_s(obj.get("id")),
            created_at=parse_time(obj.get("created_at")),
            size=_i(obj.get("size")),
            status=_s(obj.get("status")),
            retention_days=_i(obj.get("retention_days")),
            volume_size=_i(obj.get("volume_size")),
        )

    @property
    def completed(self) -> bool:
        """Taken: it has an id and a time, and its status is `created` (or absent)."""
        return (
            bool(self.id) and self.created_at is not None and self.status in (SNAPSHOT_CREATED, "")
        )

    @property
    def pending(self) -> bool:
        return not self.completed

    def describe_status(self) -> str:
        return self.status or ("created" if self.completed else "pending")


def parse_time(value: Any) -> dt.datetime | None:
    """An RFC 3339 time as Fly writes it ("2023-12-02T20:59:35+00:00", "…Z", nanoseconds)."""
    if not isinstance(value, str) or not value:
        return None
    text = value.strip().replace("Z", "+00:00")
    if "." in text:  # Python takes at most 6 fractional digits; Go writes up to 9
        head, _, tail = text.partition(".")
        digits = tail[: len(tail) - len(tail.lstrip("0123456789"))]
        text = f"{head}.{digits[:6]}{tail[len(digits) :]}"
    try:
        parsed = dt.datetime.fromisoformat(text)
    except ValueError:
        return None
    if parsed.year == 1:  # Go's zero time.Time ("0001-01-01T00:00:00Z"): no time at all
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)


def _object(data: Any, what: str) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise ValueError(f"expected a {what} object, got {type(data).__name__}")
    return data


def _required(obj: dict[str, Any], key: str) -> str:
    value = obj.get(key)
    if not isinstance(value, str) or not value:
        raise ValueError(f"object without `{key}`")
    return value


def _s(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _i(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return None
