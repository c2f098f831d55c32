"""The simulated app as it is now, and what each API call does to it.

Transport-free on purpose: the HTTP layer turns `ApiError` into a Fly-shaped error body,
and tests can drive the same behaviour in-process. One lock guards everything, because
the server answers requests on many threads.

Recovery (#10) adds forks and restores (POST /volumes with `source_volume_id` or
`snapshot_id`: a new volume, `hydrating` or `restoring`, then `created` after
`Limits.hydrate_seconds`), Machines made by POST /machines (`created`, then `started`
after `Limits.machine_start_seconds`), the wait endpoint, and destroying Machines and
volumes. What a volume *holds* is the local fleet's business: each change that moves
contents (a snapshot taken, a fork, a restore, a volume destroyed) and each change of the
started Machines is an event handed to the listeners (`add_listener`; the fleet's
`follow`) before the API answers, so a fork holds its source's files as they were when
the fork was asked for, and a snapshot the volume's files when it was taken.
"""

from __future__ import annotations

import copy
import threading
import time
import tomllib
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

from volguard.sim import ids
from volguard.sim.deployment import FIRST_RELEASE_VERSION, DeployError, Deployment, DeployOptions
from volguard.sim.objects import (
    GIB,
    Snapshot,
    Volume,
    backup_json,
    build_machine,
    launched_machine,
    machine_event,
    machine_metadata,
)
from volguard.sim.scenario import Scenario

DEFAULT_SIZE_GB = 3  # the API's default; flyctl's is 1 (fly-facts §0.7)
#: Fly's answer to destroying a volume a Machine still holds (HTTP 412), as flyctl printed it
#: in superfly/docs pull request #2226 ("failed_precondition: volume is currently bound to
#: machine: 784eee3f40130"); the 412 status: Kilo-Org/cloud pull request #814.
BOUND_ERROR = "failed_precondition: volume is currently bound to machine: {}"
#: Machine states a wait can ask for (SWAGGER `Machines_wait`: started, stopped, destroyed;
#: fly-go's flaps_machines_wait.go passes any list, `started` by default).
WAIT_STATES = ("started", "stopped", "suspended", "destroyed")
#: A Machine holding its volume: anything but destroyed (UNVERIFIED: whether `destroying`
#: still holds it; the simulator destroys at once).
REGION_ERROR = (
    "Region '{}' cannot host your machine. Please use an alternative region "
    "(see `fly platform regions`)."
)


class ApiError(Exception):
    """An API refusal: HTTP status, the `error` message and, optionally, Fly's `status`."""

    def __init__(
        self,
        status: int,
        message: str,
        code: str | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.extra = dict(extra or {})  # more fields (simulator-only endpoints)

    def body(self) -> dict[str, Any]:
        code = {"status": self.code} if self.code else {}
        return {"error": self.message} | code | self.extra


class SimState:
    """Machines, volumes and snapshots of one app, plus a record of what clients changed."""

    def __init__(
        self, scenario: Scenario, *, monotonic: Callable[[], float] = time.monotonic
    ) -> None:
        self.scenario = scenario
        self._monotonic = monotonic
        self._lock = threading.RLock()
        self.actions: list[dict[str, Any]] = []  # creates and snapshot requests, in order
        self.lineage: dict[str, dict[str, str]] = {}  # fork/restore -> where it came from
        self._ready_at: dict[str, float] = {}  # volume id -> when hydrating/restoring ends
        self._starting: dict[str, tuple[float, bool]] = {}  # Machine id -> (when, fails)
        self._events: list[dict[str, Any]] = []  # for the listeners, in order
        self._listeners: list[Callable[[dict[str, Any]], None]] = []
        self._emit_lock = threading.Lock()
        now = datetime.now(UTC)
        attachments = scenario.attachments()
        self._volumes = {
            v.id: Volume.from_spec(v, attachments.get(v.id), now) for v in scenario.volumes
        }
        names = {v.id: v.name for v in scenario.volumes}
        fly_config = scenario.fly_config()
        self._machines = {
            m.id: build_machine(m, scenario, fly_config, names, now) for m in scenario.machines
        }
        self._snapshots: dict[str, list[Snapshot]] = {v: [] for v in self._volumes}
        self._fly_toml = scenario.fly_toml  # the app's config: what the last deploy applied
        self._release_version = FIRST_RELEASE_VERSION
        for spec in sorted(scenario.snapshots, key=lambda s: s.created_at):
            self._snapshots[spec.volume].append(
                Snapshot.from_spec(spec, self._volumes[spec.volume])
            )

    # --- reads -----------------------------------------------------------------------

    def check_app(self, app: str) -> None:
        if app != self.scenario.app:
            raise ApiError(404, "app not found")

    def list_machines(
        self,
        *,
        include_deleted: bool = False,
        region: str | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> list[dict[str, Any]]:
        """All Machines, release-command and console ones included, as the real list is."""
        with self._lock:
            self._settle()
            machines = [
                m
                for m in self._machines.values()
                if (include_deleted or m["state"] != "destroyed")
                and (region is None or m["region"] == region)
                and _metadata_matches(machine_metadata(m), metadata or {})
            ]
            return copy.deepcopy(machines)

    def get_machine(self, machine_id: str) -> dict[str, Any]:
        with self._lock:
            self._settle()
            if machine_id not in self._machines:
                raise ApiError(404, "machine not found")
            return copy.deepcopy(self._machines[machine_id])

    def list_volumes(self) -> list[dict[str, Any]]:
        """Every volume, soft-deleted states included: filtering on `state` is the
        client's job (flyctl does it in GetVolumes)."""
        with self._lock:
            self._settle()
            return [v.to_json() for v in self._volumes.values()]

    def get_volume(self, volume_id: str) -> dict[str, Any]:
        with self._lock:
            self._settle()
            return self._volume(volume_id).to_json()

    def list_snapshots(self, volume_id: str) -> list[dict[str, Any]]:
        """Every snapshot, those being taken included (no id, no time, size 0 until
        `created`), oldest first."""
        with self._lock:
            self._volume(volume_id)
            now = self._monotonic()
            return [s.to_json(now) for s in self._snapshots[volume_id]]

    # --- writes ----------------------------------------------------------------------

    def create_volume(self, body: Any) -> dict[str, Any]:
        """POST /volumes: validate like the API, answer the new, unattached volume.

        A fork (`source_volume_id`) takes the source's region (flyctl's `--region` help:
        "By default, the new volume will be created in the source volume's region",
        FLYCTL internal/command/volumes/fork.go @ad0172fa) and size, and is `hydrating`
        until `Limits.hydrate_seconds` passed; a restore (`snapshot_id`) takes the
        snapshot's volume's region and is `restoring` as long (DOCS volume-states)."""
        with self._lock:
            self._settle()
            source = self._source_volume(body)
            primary = source.region if source is not None else self.scenario.primary_region
            parsed = body
            if source is not None and isinstance(body, dict) and body.get("region") == "":
                parsed = body | {"region": None}  # fly-go sends "" for "the source's region"
            request = _volume_request(parsed, primary)
            for key in ("snapshot_id", "source_volume_id"):
                if request[key] and not self._source_exists(key, request[key]):
                    raise ApiError(404, f"{key.removesuffix('_id')} not found")
            size = request["size_gb"]
            if source is not None and not _given(body, "size_gb"):
                size = source.size_gb  # a fork or a restore is the size of what it copies
            volume = self._make_volume(
                name=request["name"],
                region=request["region"],
                size_gb=size,
                encrypted=request["encrypted"],
                snapshot_retention=request["snapshot_retention"],
                auto_backup_enabled=request["auto_backup_enabled"],
                fstype=request["fstype"],
            )
            if source is not None:
                forked = bool(request["source_volume_id"])
                volume.state = "hydrating" if forked else "restoring"
                volume.used_percent = source.used_percent
                volume.ever_attached = True  # its filesystem exists: blocks are reported
                self._ready_at[volume.id] = self._monotonic() + self.scenario.limits.hydrate_seconds
                origin = (
                    {"source_volume_id": source.id}
                    if forked
                    else {"snapshot_id": request["snapshot_id"], "source_volume_id": source.id}
                )
                self.lineage[volume.id] = origin
                op = "fork" if forked else "restore"
                self._events.append({"op": op, "volume": volume.id, **origin})
            self._volumes[volume.id] = volume
            self._snapshots[volume.id] = []
            self.actions.append({"action": "create_volume", "id": volume.id, "request": body})
            return volume.to_json()

    def destroy_volume(self, volume_id: str) -> dict[str, Any]:
        """DELETE /volumes/{id}: refused (412) while a Machine holds it; otherwise the
        volume answers `destroyed` (the DOCS example) and stays listed as
        `pending_destroy` (soft-deleted, fly-facts §2)."""
        with self._lock:
            self._settle()
            volume = self._volume(volume_id)
            if volume.state in ("pending_destroy", "destroyed"):
                raise ApiError(404, "volume not found")
            holder = volume.attached_machine_id
            if holder and self._machines.get(holder, {}).get("state") != "destroyed":
                raise ApiError(412, BOUND_ERROR.format(holder), "failed_precondition")
            volume.state = "pending_destroy"
            volume.attached_machine_id = None
            self._ready_at.pop(volume_id, None)
            self.actions.append({"action": "destroy_volume", "id": volume_id})
            self._events.append({"op": "drop_volume", "volume": volume_id})
            return volume.to_json() | {"state": "destroyed"}

    def create_machine(self, body: Any, *, fails: bool = False) -> dict[str, Any]:
        """POST /machines: a Machine with the config as sent, `created`, `started` after
        `Limits.machine_start_seconds` (never, with `fails`: it ends `stopped`). Its
        mount attaches the volume (`attached_machine_id`)."""
        if not isinstance(body, dict):
            raise ApiError(400, "invalid request body: expected a JSON object")
        config = body.get("config")
        if not isinstance(config, dict) or not isinstance(config.get("image"), str):
            raise ApiError(400, "invalid request body: config.image is required")
        with self._lock:
            self._settle()
            region = body.get("region") or self.scenario.primary_region
            if not isinstance(region, str) or not region:
                raise ApiError(422, REGION_ERROR.format(""))
            mounts = config.get("mounts") or []
            if not isinstance(mounts, list) or len(mounts) > 1:
                raise ApiError(400, "invalid request body: a Machine mounts at most one volume")
            volume = None
            if mounts:
                mount = mounts[0] if isinstance(mounts[0], dict) else {}
                volume = self._volumes.get(str(mount.get("volume") or ""))
                if volume is None or volume.state in ("pending_destroy", "destroyed"):
                    raise ApiError(404, "volume not found")
                if not isinstance(mount.get("path"), str) or not mount["path"].startswith("/"):
                    raise ApiError(400, "invalid request body: a mount needs an absolute path")
                if volume.region != region:
                    raise ApiError(
                        412,
                        f"failed_precondition: volume {volume.id} is in region "
                        f"{volume.region}, not {region}",
                        "failed_precondition",
                    )  # UNVERIFIED wording
                if volume.attached:
                    raise ApiError(
                        412,
                        BOUND_ERROR.format(volume.attached_machine_id or volume.attached_alloc_id),
                        "failed_precondition",
                    )  # UNVERIFIED: the text of a create on a volume another Machine holds
            machine_id = ids.random_string(14, ids.HEX)
            machine = launched_machine(
                self.scenario.app, machine_id, body | {"region": region}, datetime.now(UTC)
            )
            self._machines[machine_id] = machine
            if volume is not None:
                volume.attached_machine_id = machine_id
                volume.ever_attached = True
            start = self._monotonic() + self.scenario.limits.machine_start_seconds
            self._starting[machine_id] = (start, fails)
            self.actions.append({"action": "create_machine", "id": machine_id, "request": body})
            return copy.deepcopy(machine)

    def wait_machine(self, machine_id: str, state: str, timeout: float) -> dict[str, Any]:
        """GET /machines/{id}/wait: block until the Machine is in `state`, at most
        `timeout` seconds (the API caps it at 60), then 408 (UNVERIFIED: the error text)."""
        if state not in WAIT_STATES:
            raise ApiError(
                400, f"invalid state {state!r}: expected one of {', '.join(WAIT_STATES)}"
            )
        deadline = self._monotonic() + max(0.0, min(timeout, 60.0))
        while True:
            with self._lock:
                self._settle()
                if machine_id not in self._machines:
                    raise ApiError(404, "machine not found")
                current = self._machines[machine_id]["state"]
            if current == state:
                self.emit()  # the fleet has started it before the wait answers
                return {"ok": True}
            if self._monotonic() >= deadline:
                raise ApiError(
                    408,
                    f"deadline_exceeded: machine {machine_id} did not reach state {state} "
                    f"within {timeout:g}s (it is {current})",
                )
            time.sleep(0.02)

    def destroy_machine(self, machine_id: str, *, force: bool) -> dict[str, Any]:
        """DELETE /machines/{id}: a started Machine only with force (`?force=true`, SWAGGER;
        fly-go sends `?kill=true`); its volume is released at once."""
        with self._lock:
            self._settle()
            machine = self._machines.get(machine_id)
            if machine is None or machine["state"] == "destroyed":
                raise ApiError(404, "machine not found")
            if machine["state"] in ("started", "starting") and not force:
                raise ApiError(
                    412,
                    f"failed_precondition: machine {machine_id} is {machine['state']}; "
                    "stop it first or destroy it with force",  # UNVERIFIED wording
                    "failed_precondition",
                )
            machine["state"] = "destroyed"
            machine_event(machine, "destroy", "destroyed", datetime.now(UTC))
            self._starting.pop(machine_id, None)
            for volume in self._volumes.values():
                if volume.attached_machine_id == machine_id:
                    volume.attached_machine_id = None
            self.actions.append({"action": "destroy_machine", "id": machine_id})
            self._events.append({"op": "sync"})
            return {"ok": True}

    # --- listeners (the local fleet) ------------------------------------------------------

    def add_listener(self, listener: Callable[[dict[str, Any]], None]) -> None:
        """Call `listener(event)` for each event, before the API answers the request that
        made it: {"op": "snapshot", "volume", "snapshot"}, {"op": "fork", "volume",
        "source_volume_id"}, {"op": "restore", "volume", "snapshot_id",
        "source_volume_id"}, {"op": "drop_volume", "volume"}, {"op": "sync", "state": the
        /__sim/state JSON} (a Machine started or was destroyed)."""
        with self._lock:
            self._listeners.append(listener)

    def emit(self) -> None:
        """Hand the pending events to the listeners, in order (SimApp calls it after
        each request; one emitter at a time)."""
        with self._emit_lock:
            with self._lock:
                events, self._events = self._events, []
                listeners = list(self._listeners)
            for event in events:
                if event["op"] == "sync":
                    event = {"op": "sync", "state": self.to_json()}
                for listener in listeners:
                    listener(event)

    def create_snapshot(self, volume_id: str, delay_seconds: float) -> dict[str, Any]:
        """POST /snapshots: listed at once as `waiting`, then `running`, `created` after
        `delay_seconds`."""
        with self._lock:
            volume = self._volume(volume_id)
            now = self._monotonic()
            snapshot = Snapshot(
                id=ids.snapshot_id(),
                volume_id=volume_id,
                size=volume.used_bytes,
                volume_size=volume.size_gb * GIB,
                digest=f"{ids.random_string(32, ids.HEX)}-1",
                created_at=datetime.now(UTC),
                retention_days=volume.snapshot_retention,
                requested_at=now,
                done_at=now + delay_seconds,
            )
            self._snapshots[volume_id].append(snapshot)
            self.actions.append(
                {"action": "create_snapshot", "id": snapshot.id, "volume": volume_id}
            )
            # Its contents are the volume's now, whenever the platform finishes it.
            self._events.append({"op": "snapshot", "volume": volume_id, "snapshot": snapshot.id})
            return backup_json(self.scenario.app, volume, snapshot)

    def deploy(self, body: Any) -> dict[str, Any]:
        """`fly deploy` (simulator only: POST /__sim/deploy), see `volguard.sim.deployment`.

        body: {"app", "fly_toml" (text; null: the config deployed last), and the
        DeployOptions keys}. Answers what changed, plus every Machine as GET /machines
        would show it with include_deleted, and the fly_toml now deployed. A refusal is
        an ApiError and changes nothing.
        """
        if not isinstance(body, dict):
            raise ApiError(400, "invalid request body: expected a JSON object")
        try:
            options = DeployOptions.from_json(body)
        except DeployError as e:
            raise ApiError(e.status, e.message, e.code or None, e.extra) from e
        self.check_app(str(body.get("app") or self.scenario.app))
        with self._lock:
            fly_toml = body.get("fly_toml")
            fly_toml = self._fly_toml if fly_toml is None else str(fly_toml)
            try:
                config = tomllib.loads(fly_toml)
            except tomllib.TOMLDecodeError as e:
                raise ApiError(400, f"failed loading app config: {e}") from e
            machines = copy.deepcopy(self._machines)
            volumes = copy.deepcopy(self._volumes)
            created: list[Volume] = []

            def new_volume(name: str, region: str, size: int, mount: Mapping[str, Any]) -> Volume:
                retention = mount.get("snapshot_retention")
                backups = mount.get("scheduled_snapshots")
                volume = self._make_volume(
                    name=name,
                    region=region,
                    size_gb=size,
                    snapshot_retention=retention if isinstance(retention, int) else 5,
                    auto_backup_enabled=backups if isinstance(backups, bool) else True,
                )
                volumes[volume.id] = volume
                created.append(volume)
                return volume

            deployment = Deployment(
                app=self.scenario.app,
                fallback_region=self.scenario.primary_region,
                machines=machines,
                volumes=volumes,
                new_volume=new_volume,
                config=config,
                options=options,
                release_version=self._release_version,
            )
            try:
                result = deployment.run()
            except DeployError as e:  # the copies are dropped: nothing changed
                raise ApiError(e.status, e.message, e.code or None, e.extra) from e
            self._machines = machines
            self._volumes = volumes
            for volume in created:
                self._snapshots[volume.id] = []
            self._fly_toml = fly_toml
            self._release_version = deployment.release_version
            summary = {k: copy.deepcopy(result[k]) for k in ("destroyed", "created", "replaced")}
            summary["updated"] = [m["id"] for m in result["updated"]]
            self.actions.append(
                {"action": "deploy", "release_version": deployment.release_version, **summary}
            )
            return result | {
                "machines": copy.deepcopy(list(self._machines.values())),
                "fly_toml": fly_toml,
            }

    def to_json(self) -> dict[str, Any]:
        """Everything, destroyed Machines included (for /__sim/state); each snapshot also
        carries `snapshot_id`, the id it has (or will have once `created`)."""
        with self._lock:
            now = self._monotonic()
            return {
                "app": self.scenario.app,
                "primary_region": self.scenario.primary_region,
                "fly_toml": self._fly_toml,
                "release_version": self._release_version,
                "machines": copy.deepcopy(list(self._machines.values())),
                "volumes": [v.to_json() for v in self._volumes.values()],
                "snapshots": {
                    vid: [s.to_json(now) | {"snapshot_id": s.id} for s in snaps]
                    for vid, snaps in self._snapshots.items()
                },
                "actions": copy.deepcopy(self.actions),
                "lineage": copy.deepcopy(self.lineage),
            }

    # --- helpers ---------------------------------------------------------------------

    def _settle(self) -> None:
        """Advance what time moves on (under the lock): forks and restores become
        `created`, new Machines `started` (or `stopped`, when made to fail)."""
        now = self._monotonic()
        for volume_id, at in list(self._ready_at.items()):
            if now >= at:
                del self._ready_at[volume_id]
                self._volumes[volume_id].state = "created"
        for machine_id, (at, fails) in list(self._starting.items()):
            if now >= at:
                del self._starting[machine_id]
                machine = self._machines[machine_id]
                stamp = datetime.now(UTC)
                if fails:  # its process exited at once: restart policy "no" leaves it stopped
                    machine["state"] = "stopped"
                    machine_event(machine, "exit", "stopped", stamp)
                else:
                    machine["state"] = "started"
                    machine_event(machine, "start", "started", stamp)
                    self._events.append({"op": "sync"})

    def _source_volume(self, body: Any) -> Volume | None:
        """The volume a fork copies, or the one a restored snapshot was taken of."""
        if not isinstance(body, dict):
            return None
        if isinstance(body.get("source_volume_id"), str):
            return self._volumes.get(body["source_volume_id"])
        if isinstance(body.get("snapshot_id"), str):
            for volume_id, snaps in self._snapshots.items():
                if any(s.id == body["snapshot_id"] for s in snaps):
                    return self._volumes[volume_id]
        return None

    def _volume(self, volume_id: str) -> Volume:
        if volume_id not in self._volumes:
            raise ApiError(404, "volume not found")
        return self._volumes[volume_id]

    def _make_volume(
        self,
        *,
        name: str,
        region: str,
        size_gb: int,
        snapshot_retention: int,
        auto_backup_enabled: bool,
        encrypted: bool = True,
        fstype: str = "ext4",
    ) -> Volume:
        """A new, empty, never-attached volume (not yet added to the app)."""
        return Volume(
            id=ids.volume_id(),
            name=name,
            region=region,
            zone=self._free_zone(region),
            size_gb=size_gb,
            state="created",
            host_status="ok",
            encrypted=encrypted,
            snapshot_retention=snapshot_retention,
            auto_backup_enabled=auto_backup_enabled,
            fstype=fstype,
            used_percent=0.0,
            ever_attached=False,
            created_at=datetime.now(UTC),
        )

    def _source_exists(self, key: str, value: str) -> bool:
        if key == "source_volume_id":
            return value in self._volumes
        now = self._monotonic()  # a snapshot being taken cannot be restored yet
        return any(
            s.id == value and s.status_at(now) == "created"
            for snaps in self._snapshots.values()
            for s in snaps
        )

    def _free_zone(self, region: str) -> str:
        """A hardware zone no other volume of the app uses in that region, when there is one
        (the `require_unique_zone` default)."""
        taken = {v.zone for v in self._volumes.values() if v.region == region}
        zone = ids.random_string(4, ids.HEX)
        while zone in taken:
            zone = ids.random_string(4, ids.HEX)
        return zone


def _given(body: Any, key: str) -> bool:
    return isinstance(body, dict) and body.get(key) is not None


def _metadata_matches(metadata: Mapping[str, str], wanted: Mapping[str, str]) -> bool:
    return all(metadata.get(k) == v for k, v in wanted.items())


def _volume_request(body: Any, primary_region: str) -> dict[str, Any]:
    """CreateVolumeRequest with the API's defaults. FLYGO sends unset pointers as JSON
    null, so null means "default" everywhere."""
    if not isinstance(body, dict):
        raise ApiError(400, "invalid request body: expected a JSON object")
    fields = {k: v for k, v in body.items() if v is not None}
    name = fields.get("name")
    if not isinstance(name, str) or not name:
        raise ApiError(400, "name is required")
    region = fields.get("region", primary_region)
    if not isinstance(region, str) or not region:
        raise ApiError(422, REGION_ERROR.format(region if isinstance(region, str) else ""))
    return {
        "name": name,
        "region": region,
        "size_gb": _int_field(fields, "size_gb", DEFAULT_SIZE_GB, 1, 500),
        "snapshot_retention": _int_field(fields, "snapshot_retention", 5, 1, 60),
        "encrypted": _bool_field(fields, "encrypted", True),
        "auto_backup_enabled": _bool_field(fields, "auto_backup_enabled", True),
        "fstype": _fstype(fields),
        "snapshot_id": fields.get("snapshot_id"),
        "source_volume_id": fields.get("source_volume_id"),
    }


def _int_field(fields: Mapping[str, Any], key: str, default: int, low: int, high: int) -> int:
    value = fields.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ApiError(422, f"{key} must be an integer between {low} and {high}")
    return value


def _bool_field(fields: Mapping[str, Any], key: str, default: bool) -> bool:
    value = fields.get(key, default)
    if not isinstance(value, bool):
        raise ApiError(400, f"invalid request body: {key} must be a boolean")
    return value


def _fstype(fields: Mapping[str, Any]) -> str:
    value = fields.get("fstype", "ext4")
    if value not in ("ext4", "raw"):
        raise ApiError(422, "fstype must be one of ext4, raw")
    return value
