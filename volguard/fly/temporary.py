"""Temporary volumes and Machines: a copy of a volume, or of a snapshot, on a throwaway Machine.

`volguard recover` searches an unattached volume (or a snapshot) without touching it: it
forks the volume (or restores the snapshot into a new volume), starts a Machine that only
waits, with the copy mounted where the app mounts its volume, searches that Machine like
any other through the transports, and destroys both. This module is that, and only that.

The interface (stable; `volguard.recover` builds on it)::

    ledger = Ledger.for_step(record, "search")      # inside `with record.step("search")`
    with temporary_machine(client, app, volume, ledger=ledger, mount_path="/data") as tmp:
        tmp.machine      # a volguard.fly.models.Machine, `started`, its mount = the copy
        tmp.volume       # the fork (or the restored volume), `created`
    # here both are destroyed, on success and on failure alike

    temporary_machine(…, snapshot_id="vs_…")        # the copy is of that snapshot of `volume`
    cleanup(previous_record, client)               # --resume: what a killed run left

    kept = TemporaryMachines()                     # one per source, for a whole run
    tmp = kept.get(key, lambda: temporary_machine(…))   # made on the first use only
    kept.close()                                   # the run's end: every one destroyed

What it records. Each resource is written into the run record *before* it is asked for
(an entry ``{"kind": "volume"|"machine", "name", "app", "status": "creating", "id": null}``
under ``detail["temporary"]`` of the given step; the name is unique to it) and gets its
id the moment the API answers (``"status": "created"``), then ``"destroyed"``. The record
is saved on each change, so a run killed at any point names everything it may have made:
an entry without an id is looked up by its unique name.

What it destroys. Only what its ledger recorded: `destroy_recorded` (and so `cleanup`)
refuses any id the ledger did not record as created by this run (`TemporaryResourceError`).
The source volume and the snapshot are only ever read (`source_volume_id`, `snapshot_id`).

Failures. A fork, restore or Machine that cannot be made, or does not become usable in
time, is one `TemporaryResourceError` carrying the API's message (token-free, as every
`FlyAPIError` is), after what was made is destroyed; when even that fails, the message
names what is left and ``left`` lists its ids, which `cleanup` retries.

Platform facts (docs/fly-facts.md §8): fork = POST /volumes with `source_volume_id`,
`hydrating` then `created`; restore = POST /volumes with `snapshot_id`; the Machine =
POST /machines (FLYGO flaps/flaps_machines.go `Launch` @22d6e518), waited on with GET
/machines/{id}/wait?state=started (flaps_machines_wait.go), destroyed with
DELETE /machines/{id}?force=true (SWAGGER `Machines_delete`); a volume is destroyed only
once no Machine holds it (Fly answers 412 `failed_precondition` until then).
"""

from __future__ import annotations

import contextlib
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from volguard.errors import FlyAPIError, FlyNotFound, FlyUnavailable, TemporaryResourceError
from volguard.fly.client import MachinesClient
from volguard.fly.models import Machine, Volume

#: The key of a step's detail that lists the run's temporary resources.
TEMPORARY_KEY = "temporary"
#: The process group of a temporary Machine (not one of the app's, so no deploy or check
#: counts it as the app's) and the metadata key that names the run that made it.
GROUP = "volguard_temporary"
RUN_METADATA = "volguard_run"
#: The Machine's command: it only waits (the image's own command never runs).
WAIT_COMMAND = ["sleep", "infinity"]
CREATING, CREATED, DESTROYED = "creating", "created", "destroyed"

Out = Callable[[str], None]


# -- the ledger: what this run made ---------------------------------------------------------


class Ledger:
    """The run's temporary resources, a list of entries saved with the run record.

    `for_step(record, step)` keeps them in that step's ``detail["temporary"]`` and saves
    the record on each change; `in_memory()` keeps them in a list (a plan without a run
    record: then a killed run leaves its resources, named ``vg_tmp_…``/``volguard-tmp-…``,
    for the user to see in `fly volumes list`)."""

    def __init__(
        self,
        entries: Callable[[], list[dict[str, Any]]],
        save: Callable[[], None],
        run: str,
        lock: Any = None,
    ) -> None:
        self._entries, self._save, self.run = entries, save, run
        #: the record's lock: an entry changes while another thread may be saving the record
        self._lock = lock if lock is not None else threading.RLock()

    @classmethod
    def for_step(cls, record: Any, step: str) -> Ledger:
        """In ``record.get(step).detail`` (looked up on each change: `RunRecord.step`
        replaces a step's detail when the step starts)."""

        def entries() -> list[dict[str, Any]]:
            return record.get(step).detail.setdefault(TEMPORARY_KEY, [])

        return cls(entries, record.save, str(record.id), getattr(record, "lock", None))

    @classmethod
    def in_memory(cls, run: str = "") -> Ledger:
        store: list[dict[str, Any]] = []
        return cls(lambda: store, lambda: None, run or f"plan-{secrets.token_hex(4)}")

    @property
    def entries(self) -> list[dict[str, Any]]:
        return self._entries()

    def open(self) -> list[dict[str, Any]]:
        """Entries not destroyed yet: Machines first (a volume goes only once free)."""
        left = [e for e in self.entries if e.get("status") != DESTROYED]
        return sorted(left, key=lambda e: e.get("kind") != "machine")

    def owned(self, kind: str, resource_id: str) -> dict[str, Any] | None:
        return next(
            (e for e in self.entries if e.get("kind") == kind and e.get("id") == resource_id),
            None,
        )

    def intend(self, kind: str, name: str, app: str, **facts: Any) -> dict[str, Any]:
        entry = {"kind": kind, "name": name, "app": app, "id": None, "status": CREATING, **facts}
        with self._lock:
            self.entries.append(entry)
            self._save()
        return entry

    def mark(self, entry: dict[str, Any], status: str, resource_id: str | None = None) -> None:
        with self._lock:
            if resource_id is not None:
                entry["id"] = resource_id
            entry["status"] = status
            self._save()


# -- the context manager --------------------------------------------------------------------


@dataclass(frozen=True)
class TemporaryMachine:
    """A started temporary Machine and the copy it mounts at `mount_path`."""

    machine: Machine
    volume: Volume
    mount_path: str
    source_volume_id: str
    snapshot_id: str | None = None

    def describe(self) -> str:
        what = f"snapshot {self.snapshot_id}" if self.snapshot_id else "a fork"
        return (
            f"temporary Machine {self.machine.id} ({self.machine.region}) with {what} of "
            f"volume {self.source_volume_id} at {self.mount_path}"
        )


@contextlib.contextmanager
def temporary_machine(
    client: MachinesClient,
    app: str,
    volume: Volume,
    *,
    ledger: Ledger,
    snapshot_id: str | None = None,
    template: Machine | None = None,
    mount_path: str = "/data",
    timeout: float = 180.0,
    poll: float = 0.5,
    out: Out | None = None,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> Iterator[TemporaryMachine]:
    """Fork `volume` (or restore `snapshot_id`, one of its snapshots), start a Machine that
    only waits, in the volume's region, with the app's image (`template`'s, by default one
    of the app's Machines) and the copy mounted at `mount_path`; yield it once `started`;
    destroy the Machine, then the copy, when the block ends, however it ends.

    Raises TemporaryResourceError when the copy or the Machine cannot be made or is not
    usable within `timeout` seconds (each), having destroyed what it made."""
    say = out or (lambda line: None)
    made = _Maker(client, app, ledger, timeout, poll, sleep, clock)
    try:
        template = template or _template(client, app)
        copy = made.copy_of(volume, snapshot_id)
        say(f"{copy.id}: {'restored snapshot ' + snapshot_id if snapshot_id else 'fork'} "
            f"of volume {volume.id} is {copy.state}")  # fmt: skip
        machine = made.machine_for(copy, template, mount_path)
        say(f"{machine.id}: temporary Machine started in {machine.region}")
    except BaseException as e:
        left = made.undo()
        if not isinstance(e, FlyAPIError | TemporaryResourceError):
            raise
        ending = (
            f"; left: {made.said(left)} (`volguard recover --resume` removes them)"
            if left
            else "; nothing was left behind"
        )
        raise TemporaryResourceError(f"{made.doing}: {e}{ending}", left) from None
    temporary = TemporaryMachine(machine, copy, mount_path, volume.id, snapshot_id)
    failed = True
    try:
        yield temporary
        failed = False
    finally:
        left = made.undo()
        if left and failed:
            say(f"could not remove {made.said(left)}: `volguard recover --resume` will")
        elif left:
            raise TemporaryResourceError(
                f"could not remove the temporary {made.said(left)}; "
                "`volguard recover --resume` removes them",
                left,
            )
        else:
            say(f"{machine.id}, {copy.id}: destroyed")


class TemporaryMachines:
    """A run's temporary Machines, one per source (a volume, or a snapshot of one): each is
    made on its first use (the search) and kept for the later ones (the copy then reads the
    very copy it searched: no second fork, restore or start), and all are destroyed by
    `close`, the run's end, however it ends. A `get` that fails keeps nothing (its
    `temporary_machine` has removed what it made); the next `get` of that key tries again.
    Thread-safe: `get` makes one Machine at a time."""

    def __init__(self) -> None:
        self._stack = contextlib.ExitStack()
        self._made: dict[str, TemporaryMachine] = {}
        self._lock = threading.Lock()

    def get(
        self, key: str, make: Callable[[], contextlib.AbstractContextManager[TemporaryMachine]]
    ) -> TemporaryMachine:
        """The Machine kept under `key`, made by entering `make()` if there is none yet."""
        with self._lock:
            if key not in self._made:
                self._made[key] = self._stack.enter_context(make())
            return self._made[key]

    def close(self) -> None:
        """Destroy every kept Machine and its copy, the newest first. Raises
        TemporaryResourceError naming what could not be removed (the run record still lists
        it: `cleanup` retries it)."""
        with self._lock:
            self._made.clear()
            stack, self._stack = self._stack, contextlib.ExitStack()
        stack.close()


def destroy_recorded(
    client: MachinesClient,
    ledger: Ledger,
    kind: str,
    resource_id: str,
    *,
    timeout: float = 60.0,
    poll: float = 0.5,
) -> None:
    """Destroy one resource this run recorded as its own; refuse any other id."""
    entry = ledger.owned(kind, resource_id)
    if entry is None:
        raise TemporaryResourceError(
            f"refusing to destroy {kind} {resource_id}: this run did not create it"
        )
    _destroy(client, ledger, entry, timeout, poll, time.sleep, time.monotonic)


def cleanup(
    record: Any,
    client: MachinesClient,
    *,
    out: Out | None = None,
    timeout: float = 60.0,
    poll: float = 0.5,
) -> list[str]:
    """Destroy what `record`'s run made and did not destroy (a killed run; `--resume`
    calls it with the previous record), Machines first; answer the ids destroyed. Only
    the record's entries are touched; each is marked destroyed in `record` (saved).
    Raises TemporaryResourceError naming what could not be removed."""
    say = out or (lambda line: None)
    done: list[str] = []
    left: list[str] = []
    why: list[str] = []
    for step in record.steps:
        if not step.detail.get(TEMPORARY_KEY):
            continue
        ledger = Ledger.for_step(record, step.name)
        for entry in ledger.open():
            try:
                gone = _destroy(client, ledger, entry, timeout, poll, time.sleep, time.monotonic)
            except (FlyAPIError, TemporaryResourceError) as e:
                left.append(str(entry.get("id") or entry.get("name")))
                why.append(f"{left[-1]} ({e})")
                say(f"could not remove temporary {entry.get('kind')} {entry.get('id')}: {e}")
                continue
            if gone:
                done.append(gone)
                say(f"{gone}: temporary {entry['kind']} of run {record.id} destroyed")
    if left:
        raise TemporaryResourceError(
            f"could not remove the temporary {', '.join(why)} left by run {record.id}", left
        )
    return done


# -- helpers --------------------------------------------------------------------------------


class _Maker:
    """Makes the copy and the Machine, recording each, and undoes them."""

    def __init__(
        self,
        client: MachinesClient,
        app: str,
        ledger: Ledger,
        timeout: float,
        poll: float,
        sleep: Callable[[float], None],
        clock: Callable[[], float],
    ) -> None:
        self.client, self.app, self.ledger = client, app, ledger
        self.timeout, self.poll, self.sleep, self.clock = timeout, poll, sleep, clock
        self.entries: list[dict[str, Any]] = []
        self.doing = "preparing a temporary Machine"
        self.why: dict[str, str] = {}  # what could not be removed -> the API's reason

    def copy_of(self, volume: Volume, snapshot_id: str | None) -> Volume:
        # Fly volume names: lowercase letters, digits and underscores, at most 30.
        name = f"vg_tmp_{secrets.token_hex(6)}"
        if snapshot_id:
            self.doing = f"restoring snapshot {snapshot_id} of volume {volume.id}"
        else:
            self.doing = f"forking volume {volume.id}"
        entry = self.ledger.intend(
            "volume", name, self.app, region=volume.region, source_volume_id=volume.id,
            snapshot_id=snapshot_id,
        )  # fmt: skip
        self.entries.append(entry)
        if snapshot_id:
            copy = self.client.restore_volume(
                self.app, snapshot_id, name=name, region=volume.region, size_gb=volume.size_gb
            )
        else:
            copy = self.client.fork_volume(self.app, volume.id, name=name, region=volume.region)
        self.ledger.mark(entry, CREATED, copy.id)
        deadline = self.clock() + self.timeout
        while copy.state != "created":
            if self.clock() >= deadline:
                raise TemporaryResourceError(
                    f"volume {copy.id} is still {copy.state!r} after {self.timeout:g} s"
                )
            self.sleep(self.poll)
            copy = self.client.get_volume(self.app, copy.id)
        return copy

    def machine_for(self, copy: Volume, template: Machine, mount_path: str) -> Machine:
        name = f"volguard-tmp-{secrets.token_hex(6)}"
        self.doing = f"starting a temporary Machine in {copy.region} for volume {copy.id}"
        entry = self.ledger.intend("machine", name, self.app, region=copy.region)
        self.entries.append(entry)
        env = dict(template.env) | {"FLY_PROCESS_GROUP": GROUP}
        config: dict[str, Any] = {
            "image": template.image,
            "env": env,
            "init": {"cmd": list(WAIT_COMMAND)},
            "mounts": [{"volume": copy.id, "path": mount_path}],
            "metadata": {"fly_process_group": GROUP, RUN_METADATA: self.ledger.run},
            "restart": {"policy": "no"},  # a crash leaves it stopped, not restarting
            "auto_destroy": True,  # if its command ever ends, the platform removes it
        }
        if template.guest:
            config["guest"] = dict(template.guest)
        request = {"name": name, "region": copy.region, "config": config}
        machine = self.client.create_machine(self.app, request)
        self.ledger.mark(entry, CREATED, machine.id)
        deadline = self.clock() + self.timeout
        while True:
            left = deadline - self.clock()
            try:
                self.client.wait_machine(self.app, machine.id, "started", max(1, int(left)))
                break
            except FlyAPIError as e:
                if e.status != 408 or self.clock() >= deadline:
                    seen = self._state(machine.id)
                    raise TemporaryResourceError(
                        f"Machine {machine.id} did not start within {self.timeout:g} s "
                        f"(it is {seen}): {e}"
                    ) from None
        return self.client.get_machine(self.app, machine.id)

    def undo(self) -> list[str]:
        """Destroy what this run made here, newest first; answer what is left."""
        left = []
        for entry in sorted(self.entries, key=lambda e: e["kind"] != "machine"):
            if entry["status"] == DESTROYED:
                continue
            try:
                _destroy(
                    self.client, self.ledger, entry, self.timeout, self.poll, self.sleep,
                    self.clock,
                )  # fmt: skip
            except (FlyAPIError, TemporaryResourceError) as e:
                label = f"{entry['kind']} {entry.get('id') or entry['name']}"
                left.append(label)
                self.why[label] = str(e)
        return left

    def said(self, left: list[str]) -> str:
        """``left`` with the API's reason for each, for a message."""
        return ", ".join(f"{x} ({self.why[x]})" if x in self.why else x for x in left)

    def _state(self, machine_id: str) -> str:
        try:
            return self.client.get_machine(self.app, machine_id).state or "unknown"
        except FlyAPIError:
            return "unknown"


def _destroy(
    client: MachinesClient,
    ledger: Ledger,
    entry: dict[str, Any],
    timeout: float,
    poll: float,
    sleep: Callable[[float], None],
    clock: Callable[[], float],
) -> str | None:
    """Destroy one recorded entry; answer its id (None: it was never made). An entry
    without an id (killed between the request and the answer) is found by its unique
    name. Already gone (404) counts as destroyed."""
    kind, app = entry["kind"], entry["app"]
    resource_id = entry.get("id") or _find_by_name(client, app, kind, entry["name"])
    if resource_id is None:
        ledger.mark(entry, DESTROYED)
        return None
    if entry.get("id") is None:
        ledger.mark(entry, entry["status"], resource_id)
    deadline = clock() + timeout
    while True:
        try:
            if kind == "machine":
                client.destroy_machine(app, resource_id, force=True)
            else:
                client.destroy_volume(app, resource_id)
            break
        except FlyNotFound:
            break
        except FlyAPIError as e:
            # 412: the volume is still bound to the Machine just destroyed; it frees soon.
            # FlyUnavailable (the client's retries used up: a 5xx, a timeout) is worth
            # another try while the deadline lasts: a Machine killed with live sessions
            # can take the platform a while to take down.
            transient = e.status == 412 or isinstance(e, FlyUnavailable)
            if not transient or clock() >= deadline:
                raise
            sleep(poll)
    ledger.mark(entry, DESTROYED)
    return resource_id


def _find_by_name(client: MachinesClient, app: str, kind: str, name: str) -> str | None:
    if kind == "machine":
        found = [m.id for m in client.list_machines(app) if m.name == name]
    else:
        found = [v.id for v in client.list_volumes(app) if v.name == name and v.live]
    return found[0] if found else None


def _template(client: MachinesClient, app: str) -> Machine:
    """The Machine whose image and guest a temporary one copies: a started Machine of the
    app (group `app` first), never a temporary one."""
    machines = [
        m for m in client.list_machines(app) if m.image and m.metadata.get(RUN_METADATA) is None
    ]
    machines.sort(key=lambda m: (m.state != "started", m.group != "app", m.id))
    if not machines:
        raise TemporaryResourceError(
            f"app {app} has no Machine with an image to start a temporary Machine from"
        )
    return machines[0]
