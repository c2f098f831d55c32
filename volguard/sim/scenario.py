"""Scenarios: the simulated app's Machines, volumes, snapshots, limits and faults.

A scenario is data read from TOML, so a test names the situation it needs ("incident",
"detached-volume") instead of building one by hand. Loading is strict: an unknown key or
a situation the platform cannot produce (two Machines on one volume) is an error, because
a typo in a scenario silently tests nothing.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from volguard.sim import ids
from volguard.sim.faults import KEYS as FAULT_KEYS
from volguard.sim.faults import FaultError, Faults

SCENARIO_DIR = Path(__file__).parent / "scenarios"

#: Machine states (DOCS machines/machine-states).
MACHINE_STATES = frozenset(
    [
        "created",
        "started",
        "stopped",
        "suspended",
        "failed",
        "creating",
        "starting",
        "stopping",
        "restarting",
        "suspending",
        "destroying",
        "launch_failed",
        "updating",
        "replacing",
        "destroyed",
        "replaced",
        "migrated",
    ]
)
#: Volume states (DOCS volumes/volume-states), plus the soft-delete states flyctl hides
#: (FLYGO GetVolumes) and the `destroyed` of the DELETE reply.
VOLUME_STATES = frozenset(
    [
        "creating",
        "created",
        "extending",
        "restoring",
        "enabling_remote_export",
        "hydrating",
        "recovering",
        "scheduling_destroy",
        "pending_destroy",
        "fork_cleanup",
        "waiting_for_detach",
        "destroying",
        "destroyed",
    ]
)
HOST_STATUSES = frozenset({"ok", "unknown", "unreachable"})
#: Snapshot statuses: `created` (finished), and `waiting`/`running` while being taken
#: (fly-facts §3.2; the in-progress names are UNVERIFIED beyond the issue's account).
SNAPSHOT_STATUSES = frozenset({"created", "waiting", "running"})
RELEASE_GROUP = "fly_app_release_command"
CONSOLE_GROUP = "fly_app_console"
#: A Machine in these states holds no volume, whatever its config still says.
DETACHED_MACHINE_STATES = frozenset({"destroyed", "replaced", "migrated"})

#: Tokens of the shipped scenarios: a macaroon (FlyV1 scheme) and an OAuth token (Bearer).
DEFAULT_TOKENS = ("fm2_lJPECAAAAAAAAMLtxBBzaW11bGF0ZWQtbWFjYXJvb24", "sim-oauth-token")


class ScenarioError(ValueError):
    """A scenario that does not describe an app the platform could have."""


@dataclass(frozen=True)
class MachineSpec:
    """One Machine as the scenario declares it; `objects.build_machine` renders it."""

    id: str
    region: str
    group: str = "app"
    state: str = "started"
    host_status: str = "ok"
    name: str | None = None
    volume: str | None = None
    mount_path: str = "/data"
    env: Mapping[str, str] | None = None  # None: fly_toml's [env], as flyctl deploys it
    cmd: tuple[str, ...] | None = None  # None: fly_toml's [processes] command
    private_ip: str | None = None
    legacy_group_key: bool = False  # old Machines carry `process_group`, not `fly_process_group`
    incomplete_config: bool | None = None  # None: only when the host is not ok (FLYGO GetConfig)
    created_at: datetime | None = None
    # What is true inside the Machine, which the API cannot show; the local fleet
    # (volguard.sim.local_fleet) builds it. The defaults are a healthy Machine.
    reachable: bool = True  # False: started, but no sshd answers (connection refused)
    mounted: bool = True  # False: the API says attached, but the mount path is on the rootfs
    mount_options: str = "rw"  # "ro": the volume is mounted read-only
    media_root_owner: str = "app"  # in TOML the default is app_user; "root": not writable
    media_root_mode: str = "0755"
    app_user: str = "app"  # the user the group's process runs as


#: Values of a Machine's `mount_options`.
MOUNT_OPTIONS = frozenset({"rw", "ro"})
_USER_NAME = re.compile(r"[a-z_][a-z0-9_-]{0,31}")
_MODE = re.compile(r"0?[0-7]{3,4}")


@dataclass(frozen=True)
class VolumeSpec:
    id: str
    name: str
    region: str
    size_gb: int = 1
    state: str = "created"
    host_status: str = "ok"
    used_percent: float = 0.0
    snapshot_retention: int = 5
    auto_backup_enabled: bool = True
    encrypted: bool = True
    zone: str | None = None
    fstype: str = "ext4"
    ever_attached: bool | None = None  # None: attached now, or has data on it
    created_at: datetime | None = None
    # Attached to an allocation rather than a listed Machine: the API's `attached_alloc_id`
    # (fly-go Volume.IsAttached counts it, fly-facts §3.2).
    attached_alloc_id: str | None = None


@dataclass(frozen=True)
class SnapshotSpec:
    volume: str
    created_at: datetime
    id: str | None = None
    size: int | None = None  # bytes; None: what the volume holds
    status: str = "created"  # waiting or running: a snapshot being taken, listed without an id
    retention_days: int | None = None  # None: the volume's snapshot_retention


@dataclass(frozen=True)
class Limits:
    """Rate limits (DOCS: 1 req/s burst 3 per action; Get Machine 5 req/s burst 10).

    A rate of 0 turns that limit off (benchmarks that measure volguard, not the limiter).
    """

    rate_per_second: float = 1.0
    burst: int = 3
    get_machine_rate: float = 5.0
    get_machine_burst: int = 10
    snapshot_delay_seconds: float = 0.2
    #: A fork stays `hydrating` (a restore `restoring`) this long, then is `created` (#10).
    hydrate_seconds: float = 0.2
    #: A Machine made by POST /machines is `created`, then `started` after this long.
    machine_start_seconds: float = 0.1


@dataclass(frozen=True)
class Scenario:
    name: str
    app: str
    primary_region: str
    tokens: tuple[str, ...]
    fly_toml: str = ""
    description: str = ""
    machines: tuple[MachineSpec, ...] = ()
    volumes: tuple[VolumeSpec, ...] = ()
    snapshots: tuple[SnapshotSpec, ...] = ()
    limits: Limits = field(default_factory=Limits)
    faults: Mapping[str, float] = field(default_factory=dict)
    # `fly secrets set`: in every Machine's process environment, never in the API's
    # config.env, and kept across deploys (Fly injects them at boot).
    secrets: Mapping[str, str] = field(default_factory=dict)

    def attachments(self) -> dict[str, str]:
        """Volume id -> id of the Machine it is attached to (the platform derives this)."""
        return {
            m.volume: m.id
            for m in self.machines
            if m.volume and m.state not in DETACHED_MACHINE_STATES
        }

    def fly_config(self) -> dict[str, Any]:
        """fly_toml, parsed (an empty scenario config is an empty table)."""
        return tomllib.loads(self.fly_toml)


def scenario_path(name: str) -> Path:
    """The file of a shipped scenario, by name ("incident" -> scenarios/incident.toml)."""
    path = SCENARIO_DIR / f"{name}.toml"
    if not path.is_file():
        known = ", ".join(shipped_scenarios())
        raise ScenarioError(f"no scenario named {name!r}; shipped: {known}")
    return path


def shipped_scenarios() -> list[str]:
    return sorted(p.stem for p in SCENARIO_DIR.glob("*.toml"))


def load_scenario(name_or_path: str | Path) -> Scenario:
    """A shipped scenario by name, or a scenario file by path."""
    text = str(name_or_path)
    is_path = isinstance(name_or_path, Path) or text.endswith(".toml") or "/" in text
    path = Path(text) if is_path else scenario_path(text)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise ScenarioError(f"{path}: {e}") from e
    return parse_scenario(data, name=path.stem)


def parse_scenario(
    data: Mapping[str, Any], *, name: str = "scenario", now: datetime | None = None
) -> Scenario:
    """Build a Scenario from TOML data, refusing anything the platform could not show."""
    now = now or datetime.now(UTC)
    _check_keys(data, _TOP_KEYS, f"scenario {name}", required=("app", "tokens"))
    primary_region = str(data.get("primary_region", ""))
    scenario = Scenario(
        name=name,
        description=str(data.get("description", "")),
        app=str(data["app"]),
        primary_region=primary_region,
        tokens=_tokens(data["tokens"]),
        fly_toml=str(data.get("fly_toml", "")),
        machines=tuple(_machine(t, primary_region) for t in data.get("machines", [])),
        volumes=tuple(_volume(t, primary_region, now) for t in data.get("volumes", [])),
        snapshots=tuple(_snapshot(t, now) for t in data.get("snapshots", [])),
        limits=_limits(data.get("limits", {})),
        faults=_faults(data.get("faults", {})),
        secrets=_secrets(data.get("secrets", {})),
    )
    check_scenario(scenario)
    return scenario


def check_scenario(scenario: Scenario) -> None:
    """Raise ScenarioError when the parts do not fit together as on the platform."""
    try:
        scenario.fly_config()
    except tomllib.TOMLDecodeError as e:
        raise ScenarioError(f"scenario {scenario.name}: fly_toml does not parse: {e}") from e
    _unique("machine", (m.id for m in scenario.machines))
    volume_ids = _unique("volume", (v.id for v in scenario.volumes))
    holders: dict[str, str] = {}
    for m in scenario.machines:
        if m.volume is None:
            continue
        if m.volume not in volume_ids:
            raise ScenarioError(f"machine {m.id} mounts unknown volume {m.volume}")
        if m.state in DETACHED_MACHINE_STATES:
            continue
        if m.volume in holders:  # "a volume can be attached to only one Machine"
            raise ScenarioError(
                f"volume {m.volume} attached to both {holders[m.volume]} and {m.id}"
            )
        holders[m.volume] = m.id
    for s in scenario.snapshots:
        if s.volume not in volume_ids:
            raise ScenarioError(f"snapshot of unknown volume {s.volume}")


def make_fleet_scenario(
    machines: int = 50,
    groups: Iterable[str] = ("app", "worker"),
    *,
    app: str = "fleet-app",
    region: str = "syd",
    used_percent: float = 30.0,
    snapshot_age_hours: float = 6.0,
    limits: Limits | None = None,
    tokens: Iterable[str] = DEFAULT_TOKENS,
) -> Scenario:
    """N started Machines spread over `groups`, each on its own "data" volume with a recent
    snapshot: a big, healthy-looking app for benchmarks."""
    groups = tuple(groups)
    now = datetime.now(UTC)
    specs, volumes, snapshots = [], [], []
    for i in range(machines):
        group = groups[i % len(groups)]
        machine_id = ids.derive(f"{app}/machine/{i}", 14)
        volume_id = ids.volume_id(f"{app}/volume/{i}")
        specs.append(MachineSpec(id=machine_id, region=region, group=group, volume=volume_id))
        volumes.append(
            VolumeSpec(
                id=volume_id, name="data", region=region, size_gb=1, used_percent=used_percent
            )
        )
        snapshots.append(
            SnapshotSpec(volume=volume_id, created_at=now - timedelta(hours=snapshot_age_hours))
        )
    scenario = Scenario(
        name=f"fleet-{machines}",
        description=f"{machines} Machines in {', '.join(groups)}, each on its own volume.",
        app=app,
        primary_region=region,
        tokens=tuple(tokens),
        fly_toml=_fleet_fly_toml(app, region, groups),
        machines=tuple(specs),
        volumes=tuple(volumes),
        snapshots=tuple(snapshots),
        limits=limits or Limits(),
    )
    check_scenario(scenario)
    return scenario


# --- parsing helpers ---------------------------------------------------------------------


def _keys(spec: type, *extra: str, without: tuple[str, ...] = ()) -> frozenset[str]:
    """The TOML keys of a table: the spec's fields, plus aliases such as `age_hours`."""
    return frozenset({f.name for f in fields(spec)} - set(without) | set(extra))


_TOP_KEYS = _keys(Scenario, without=("name",))
_MACHINE_KEYS = _keys(MachineSpec)
_VOLUME_KEYS = _keys(VolumeSpec, "age_days")
_SNAPSHOT_KEYS = _keys(SnapshotSpec, "age_hours")


def _check_keys(
    table: Mapping[str, Any], allowed: frozenset[str], where: str, required: Iterable[str] = ()
) -> None:
    if not isinstance(table, Mapping):
        raise ScenarioError(f"{where}: expected a table, got {type(table).__name__}")
    unknown = sorted(set(table) - allowed)
    if unknown:
        raise ScenarioError(f"{where}: unknown key(s) {', '.join(unknown)}")
    missing = [k for k in required if k not in table]
    if missing:
        raise ScenarioError(f"{where}: missing {', '.join(missing)}")


def _secrets(table: Any) -> dict[str, str]:
    if not isinstance(table, Mapping) or not all(isinstance(v, str) for v in table.values()):
        raise ScenarioError("secrets: expected a table of names to strings")
    return {str(k): v for k, v in table.items()}


def _one_of(value: str, allowed: frozenset[str], what: str) -> str:
    if value not in allowed:
        raise ScenarioError(f"{what} {value!r} is not one of {', '.join(sorted(allowed))}")
    return value


def _tokens(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not value or not all(isinstance(t, str) for t in value):
        raise ScenarioError("tokens must be a non-empty list of strings")
    return tuple(value)


def _machine(table: Mapping[str, Any], primary_region: str) -> MachineSpec:
    _check_keys(table, _MACHINE_KEYS, "[[machines]]", required=("id",))
    where = f"machine {table['id']}"
    env = table.get("env")
    cmd = table.get("cmd")
    app_user = _user(table.get("app_user", "app"), f"{where} app_user")
    mounted = _bool(table.get("mounted", True), f"{where} mounted")
    if not mounted and table.get("volume") is None:
        raise ScenarioError(f"{where}: mounted = false needs a volume that the API shows attached")
    mode = str(table.get("media_root_mode", "0755"))
    if not _MODE.fullmatch(mode):
        raise ScenarioError(f"{where}: media_root_mode {mode!r} is not an octal mode like 0755")
    return MachineSpec(
        id=str(table["id"]),
        name=table.get("name"),
        group=str(table.get("group", "app")),
        region=str(table.get("region", primary_region)),
        state=_one_of(table.get("state", "started"), MACHINE_STATES, f"{where} state"),
        host_status=_one_of(table.get("host_status", "ok"), HOST_STATUSES, f"{where} host"),
        volume=table.get("volume"),
        mount_path=str(table.get("mount_path", "/data")),
        env=None if env is None else {str(k): str(v) for k, v in env.items()},
        cmd=None if cmd is None else tuple(str(c) for c in cmd),
        private_ip=table.get("private_ip"),
        legacy_group_key=bool(table.get("legacy_group_key", False)),
        incomplete_config=table.get("incomplete_config"),
        created_at=_datetime(table.get("created_at"), where),
        reachable=_bool(table.get("reachable", True), f"{where} reachable"),
        mounted=mounted,
        mount_options=_one_of(
            table.get("mount_options", "rw"), MOUNT_OPTIONS, f"{where} mount_options"
        ),
        media_root_owner=_user(table.get("media_root_owner", app_user), f"{where} media owner"),
        media_root_mode=mode,
        app_user=app_user,
    )


def _bool(value: Any, what: str) -> bool:
    if not isinstance(value, bool):
        raise ScenarioError(f"{what} must be true or false, not {value!r}")
    return value


def _user(value: Any, what: str) -> str:
    """A user name that useradd accepts and that is safe in any command line."""
    if not isinstance(value, str) or not _USER_NAME.fullmatch(value):
        raise ScenarioError(f"{what} {value!r} is not a user name like app")
    return value


def _volume(table: Mapping[str, Any], primary_region: str, now: datetime) -> VolumeSpec:
    _check_keys(table, _VOLUME_KEYS, "[[volumes]]", required=("id", "name"))
    where = f"volume {table['id']}"
    created = _created_at(table, "age_days", timedelta(days=1), now, where)
    used = float(table.get("used_percent", 0))
    retention = int(table.get("snapshot_retention", 5))
    if not 0 <= used <= 100:
        raise ScenarioError(f"{where}: used_percent must be 0-100")
    if not 1 <= retention <= 60:
        raise ScenarioError(f"{where}: snapshot_retention must be 1-60")
    return VolumeSpec(
        id=str(table["id"]),
        name=str(table["name"]),
        region=str(table.get("region", primary_region)),
        size_gb=int(table.get("size_gb", 1)),
        state=_one_of(table.get("state", "created"), VOLUME_STATES, f"{where} state"),
        host_status=_one_of(table.get("host_status", "ok"), HOST_STATUSES, f"{where} host"),
        used_percent=used,
        snapshot_retention=retention,
        auto_backup_enabled=bool(table.get("auto_backup_enabled", True)),
        encrypted=bool(table.get("encrypted", True)),
        zone=table.get("zone"),
        fstype=str(table.get("fstype", "ext4")),
        ever_attached=table.get("ever_attached"),
        created_at=created,
        attached_alloc_id=_alloc_id(table.get("attached_alloc_id"), where),
    )


def _alloc_id(value: Any, where: str) -> str | None:
    if value is not None and (not isinstance(value, str) or not value):
        raise ScenarioError(f"{where}: attached_alloc_id must be a non-empty string")
    return value


def _snapshot(table: Mapping[str, Any], now: datetime) -> SnapshotSpec:
    _check_keys(table, _SNAPSHOT_KEYS, "[[snapshots]]", required=("volume",))
    where = f"snapshot of {table['volume']}"
    created = _created_at(table, "age_hours", timedelta(hours=1), now, where)
    return SnapshotSpec(
        volume=str(table["volume"]),
        created_at=created or now - timedelta(hours=24),
        id=table.get("id"),
        size=table.get("size"),
        status=_one_of(str(table.get("status", "created")), SNAPSHOT_STATUSES, f"{where} status"),
        retention_days=table.get("retention_days"),
    )


def _limits(table: Mapping[str, Any]) -> Limits:
    defaults = asdict(Limits())
    _check_keys(table, frozenset(defaults), "[limits]")
    values = {**defaults, **table}
    if any(not isinstance(v, int | float) or v < 0 for v in values.values()):
        raise ScenarioError("[limits]: every limit is a number >= 0")
    if values["burst"] < 1 or values["get_machine_burst"] < 1:
        raise ScenarioError("[limits]: bursts must be >= 1")
    return Limits(**values)


def _faults(table: Mapping[str, Any]) -> dict[str, float]:
    _check_keys(table, frozenset(FAULT_KEYS), "[faults]")
    try:
        return Faults(table).snapshot()
    except FaultError as e:
        raise ScenarioError(f"[faults]: {e}") from e


def _created_at(
    table: Mapping[str, Any], age_key: str, unit: timedelta, now: datetime, where: str
) -> datetime | None:
    """`created_at`, or an age relative to load time, which keeps a scenario's
    "20 hours old" true whenever it runs."""
    if "created_at" in table and age_key in table:
        raise ScenarioError(f"{where}: give created_at or {age_key}, not both")
    if age_key in table:
        return now - unit * float(table[age_key])
    return _datetime(table.get("created_at"), where)


def _datetime(value: Any, where: str) -> datetime | None:
    """TOML datetimes or ISO strings; naive ones are taken as UTC."""
    if value is None:
        return None
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError as e:
            raise ScenarioError(f"{where}: created_at: {e}") from e
    if not isinstance(value, datetime):
        raise ScenarioError(f"{where}: created_at must be a date-time")
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _unique(kind: str, values: Iterable[str]) -> set[str]:
    seen: set[str] = set()
    for value in values:
        if value in seen:
            raise ScenarioError(f"duplicate {kind} id {value}")
        seen.add(value)
    return seen


def _fleet_fly_toml(app: str, region: str, groups: tuple[str, ...]) -> str:
    commands = {
        "app": "gunicorn config.wsgi:application --bind 0.0.0.0:8000",
        "worker": "celery -A config worker --loglevel=info",
    }
    processes = "\n".join(f'  {g} = "{commands.get(g, f"run-{g}")}"' for g in groups)
    listed = ", ".join(f'"{g}"' for g in groups)
    return (
        f'app = "{app}"\nprimary_region = "{region}"\n\n'
        '[env]\n  MEDIA_ROOT = "/data/media"\n\n'
        f"[processes]\n{processes}\n\n"
        f'[mounts]\n  source = "data"\n  destination = "/data"\n  processes = [{listed}]\n'
    )
