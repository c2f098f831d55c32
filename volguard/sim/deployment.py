"""`fly deploy` on the simulated platform: what flyctl's Machines deployment does to an app.

Transport-free, like `state`: `SimState.deploy` runs a `Deployment` under its lock, the
HTTP layer serves it at the simulator-only `POST /__sim/deploy` (never part of the public
Machines API surface), and the flyctl stand-in (`flyctl deploy`) calls that endpoint.

What a deploy does, following FLYCTL internal/command/deploy (machines.go,
machines_deploymachinesapp.go, machines_launchinput.go, deploy_first.go) and fly-facts
§0, §2.2 — traps included:

- The process groups are fly.toml's [processes] (none: the single group `app`).
- Machines of groups no longer listed are destroyed; their volumes become unattached and
  keep their data (a deploy never deletes or moves a volume).
- Every other Machine gets the new config (env, init.cmd, guest, metadata with a new
  release, image), a new instance_id and version, and restarts: it ends `started`, unless
  it was stopped and its services auto-stop/auto-start (flyctl's skipLaunch).
- Mounts: an attached volume is kept, only its mount path may change (with flyctl's
  warning); a [mounts] `source` that differs from the attached volume's name is refused;
  a group that gains a mount needs one unattached volume of that name per Machine and
  region (the Machine is then *replaced*); a Machine whose group lost its mount needs a
  confirmation (--yes) and is replaced by one without a volume.
- A group without Machines gets new ones (one if it has a mount; two if it has services;
  else one plus a standby; `ha=False`: one). On a first deploy (no Machines at all) each
  group's volume is created in primary_region (1 GB, or [mounts] initial_size); on later
  deploys a new group with a mount needs an unattached volume of that name, as in flyctl.
- Everything is checked before anything changes, so a refused deploy — or one whose
  release command fails (`fail_release_command`, the failure injection) — changes nothing.
"""

from __future__ import annotations

import contextlib
import shlex
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from volguard.sim import ids
from volguard.sim.objects import FLYCTL_VERSION, Volume, _go_string, _guest
from volguard.sim.scenario import CONSOLE_GROUP, RELEASE_GROUP
from volguard.units import parse_size_gb

DEFAULT_GROUP = "app"
STRATEGIES = ("canary", "rolling", "bluegreen", "immediate")
#: Machines a deploy leaves alone: gone, or not the app's own (FLYGO ListActive).
INACTIVE_STATES = frozenset({"destroyed", "destroying", "replaced", "migrated"})
#: Volume states GetVolumes hides (FLYGO flaps_volumes.go): not candidates for a mount.
HIDDEN_VOLUME_STATES = frozenset(
    {"scheduling_destroy", "fork_cleanup", "waiting_for_detach", "pending_destroy",
     "destroying", "destroyed"}
)  # fmt: skip
DEFAULT_VOLUME_SIZE_GB = 1  # flyctl's, not the API's (fly-facts §0.7)
FIRST_RELEASE_VERSION = 12  # what the scenario's Machines carry (objects.build_machine)
NO_SERVICE_PROCESSES = (
    "Service has no processes set but app has {} processes defined; "
    "update fly.toml to set processes for each service"
)
REQUIRE_APP_NAME = (
    "the config for your app is missing an app name, add an app field to the fly.toml "
    "file or specify with the -a flag"
)


class DeployError(Exception):
    """A refused deploy: HTTP status, message, Fly-style `status` code and extra fields."""

    def __init__(
        self, status: int, message: str, code: str = "", extra: Mapping[str, Any] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.extra = dict(extra or {})


@dataclass(frozen=True)
class DeployOptions:
    """The flags of `fly deploy` that change what happens on the platform."""

    strategy: str = ""  # "": [deploy] strategy, else rolling
    image: str = ""  # "": a fresh registry.fly.io/<app>:deployment-<id> tag
    yes: bool = False  # -y/--yes: accept the confirmations
    ha: bool = True  # --ha: spare Machines for new groups without mounts
    update_only: bool = False  # --update-only: no Machines for new groups
    env: Mapping[str, str] = field(default_factory=dict)  # -e NAME=VALUE
    primary_region: str = ""  # -r/--region
    fail_release_command: bool = False  # failure injection: the release command exits 1

    @classmethod
    def from_json(cls, body: Mapping[str, Any]) -> DeployOptions:
        def text(key: str) -> str:
            value = body.get(key) or ""
            if not isinstance(value, str):
                raise DeployError(400, f"invalid request body: {key} must be a string")
            return value

        def flag(key: str, default: bool) -> bool:
            value = body.get(key, default)
            if not isinstance(value, bool):
                raise DeployError(400, f"invalid request body: {key} must be a boolean")
            return value

        env = body.get("env") or {}
        if not isinstance(env, Mapping) or not all(isinstance(v, str) for v in env.values()):
            raise DeployError(400, "invalid request body: env must map names to strings")
        return cls(
            strategy=text("strategy"),
            image=text("image"),
            yes=flag("yes", False),
            ha=flag("ha", True),
            update_only=flag("update_only", False),
            env={str(k): v for k, v in env.items()},
            primary_region=text("primary_region"),
            fail_release_command=flag("fail_release_command", False),
        )


# --- fly.toml, as flyctl's appconfig reads it ----------------------------------------------


def process_commands(config: Mapping[str, Any]) -> dict[str, str]:
    """Group name -> command. The legacy `[[processes]] name/command` tables are converted
    and `processes = []` means none, as flyctl's patchProcesses does; none: `app`."""
    processes = config.get("processes")
    if isinstance(processes, list):
        processes = {
            str(p["name"]): str(p.get("command", ""))
            for p in processes
            if isinstance(p, Mapping) and p.get("name")
        }
    if not isinstance(processes, Mapping) or not processes:
        return {DEFAULT_GROUP: ""}
    return {str(k): str(v) for k, v in processes.items()}


def process_names(config: Mapping[str, Any]) -> list[str]:
    return sorted(process_commands(config))


def default_group(config: Mapping[str, Any]) -> str:
    """`app` if it exists, else the first name in sorted order (DefaultProcessName)."""
    names = process_names(config)
    return DEFAULT_GROUP if DEFAULT_GROUP in names else names[0]


def all_mounts(config: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """[mounts], [[mounts]] and the legacy `mount` key, merged (patchMounts)."""
    found: list[Mapping[str, Any]] = []
    for key in ("mount", "mounts"):
        value = config.get(key)
        if isinstance(value, Mapping):
            found.append(value)
        elif isinstance(value, list):
            found += [m for m in value if isinstance(m, Mapping)]
    return found


def group_mounts(config: Mapping[str, Any], group: str) -> list[Mapping[str, Any]]:
    """The mounts of one group: a mount without `processes` goes to the default group
    ONLY (fly-facts §0.1), one with `processes` to the groups it names."""
    default = default_group(config)
    return [
        m
        for m in all_mounts(config)
        if ((group in _names(m.get("processes"))) if m.get("processes") else group == default)
    ]


def group_services(config: Mapping[str, Any], group: str) -> list[Mapping[str, Any]]:
    """[http_service] and [[services]] entries that reach `group` (none named: all)."""
    return [
        s
        for s in _listed_services(config)
        if not s.get("processes") or group in _names(s["processes"])
    ]


def strategy_of(config: Mapping[str, Any], flag: str = "") -> str:
    """--strategy, else [deploy] strategy, else rolling (setStrategy)."""
    deploy = config.get("deploy")
    configured = deploy.get("strategy") if isinstance(deploy, Mapping) else None
    return flag or (str(configured) if configured else "rolling")


def release_command(config: Mapping[str, Any]) -> str:
    deploy = config.get("deploy")
    return str(deploy.get("release_command") or "") if isinstance(deploy, Mapping) else ""


def validate_config(config: Mapping[str, Any], strategy: str = "") -> list[str]:
    """What `fly deploy` refuses in fly.toml before it touches anything (FLYCTL
    internal/appconfig/validation.go, per-group checks included); [] when valid."""
    problems: list[str] = []
    commands = process_commands(config)
    for name, command in commands.items():
        try:
            shlex.split(command)
        except ValueError as e:
            problems.append(
                f"Could not parse command for '{name}' process group; check [processes] "
                f"section: {e}"
            )
    services = _listed_services(config)
    explicit = isinstance(config.get("processes"), Mapping) and bool(config.get("processes"))
    if explicit and len(commands) > 1 and any(not s.get("processes") for s in services):
        problems.append(NO_SERVICE_PROCESSES.format(len(commands)))
    for service in services:
        for name in _names(service.get("processes")):
            if name not in commands:
                problems.append(
                    f"Service specifies '{name}' as one of its processes, but no processes "
                    f"are defined with that name; update fly.toml [processes] to add "
                    f"'{name}' process or remove it from service's processes list"
                )
    for group in sorted(commands):
        if len(group_mounts(config, group)) > 1:
            problems.append(f"group '{group}' has more than one [[mounts]] section defined")
    for mount in all_mounts(config):
        problems += _mount_problems(mount)
    chosen = strategy_of(config, strategy)
    if chosen not in STRATEGIES:
        problems.append(
            f"unsupported deployment strategy '{chosen}'; use one of {', '.join(STRATEGIES)}"
        )
    if chosen == "canary" and all_mounts(config):
        problems.append(
            "error canary deployment strategy is not supported when using mounted volumes"
        )
    return problems


def _mount_problems(mount: Mapping[str, Any]) -> list[str]:
    source = str(mount.get("source", ""))
    problems = []
    if "initial_size" in mount:
        size = mount["initial_size"]
        try:
            if size_gb(size) < 1:
                problems.append(
                    f"mount '{source}' has an initial_size '{size}' value which is smaller than 1GB"
                )
        except ValueError as e:
            problems.append(
                f"mount '{source}' with initial_size '{size}' will fail because of: {e}"
            )
    retention = mount.get("snapshot_retention")
    if retention is not None and (
        isinstance(retention, bool) or not isinstance(retention, int) or not 1 <= retention <= 60
    ):
        problems.append(
            f"mount '{source}' has a snapshot_retention value which is not between 1 and 60 "
            "days inclusive"
        )
    return problems


def size_gb(value: Any) -> int:
    """A fly.toml size in GB, by volguard's own port of flyctl's ParseSize (`volguard.units`).

    Shared, not re-derived: a size is one of flyctl's plain rules, and two parsers had drifted
    apart (``+5``, ``-1``, a 25-digit number, ``' 7 '``). A TOML number is taken as patchMounts
    casts it (its Go string form). Raises ValueError (`SizeError` is one) for an invalid size.
    """
    if isinstance(value, bool):
        raise ValueError(f"invalid size: '{value}'")
    if isinstance(value, int | float):
        value = _go_string(value)
    return parse_size_gb(str(value))


def _names(value: Any) -> list[str]:
    return [str(v) for v in value] if isinstance(value, list) else []


def _listed_services(config: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    services: list[Mapping[str, Any]] = []
    http = config.get("http_service")
    if isinstance(http, Mapping):
        services.append(http)
    listed = config.get("services")
    if isinstance(listed, Mapping):
        listed = [listed]
    if isinstance(listed, list):
        services += [s for s in listed if isinstance(s, Mapping)]
    return services


# --- the deployment ------------------------------------------------------------------------


def machine_group(machine: Mapping[str, Any], config: Mapping[str, Any]) -> str:
    """ProcessGroup(): fly_process_group, the legacy process_group, else the default."""
    metadata = _config(machine).get("metadata") or {}
    return str(
        metadata.get("fly_process_group") or metadata.get("process_group") or default_group(config)
    )


def _config(machine: Mapping[str, Any]) -> dict[str, Any]:
    return machine.get("config") or machine.get("incomplete_config") or {}


NewVolume = Callable[[str, str, int, Mapping[str, Any]], Volume]


class Deployment:
    """One `fly deploy` of `config` onto the Machines and volumes of an app.

    `machines` (id -> Machine JSON) and `volumes` (id -> Volume) are changed in place:
    `run()` checks everything first and raises DeployError before any change (SimState
    still hands it copies, and keeps them only when it succeeds). `new_volume` creates a
    volume (name, region, size_gb, mount) the way POST /volumes does. `run()` answers
    what it did: destroyed, created, replaced and updated Machines, volumes created,
    warnings, and the process-group changes flyctl announces.
    """

    def __init__(
        self,
        *,
        app: str,
        fallback_region: str,
        machines: dict[str, dict[str, Any]],
        volumes: dict[str, Volume],
        new_volume: NewVolume,
        config: Mapping[str, Any],
        options: DeployOptions,
        release_version: int,
    ) -> None:
        self.app = app
        self.machines = machines
        self.volumes = volumes
        self.new_volume = new_volume
        self.config = config
        self.options = options
        self.region = options.primary_region or str(config.get("primary_region") or "")
        self.fallback_region = self.region or fallback_region  # the API's "nearest region"
        self.strategy = strategy_of(config, options.strategy)
        self.release_version = release_version + 1
        self.release_id = ids.random_string(25, ids.ALNUM)
        self.image = options.image or (
            f"registry.fly.io/{app}:deployment-{ids.random_string(26, ids.CROCKFORD)}"
        )
        self.now = datetime.now(UTC)
        self.groups = process_names(config)
        self.warnings: list[str] = []
        self.result: dict[str, Any] = {
            "app": app,
            "release_id": self.release_id,
            "release_version": self.release_version,
            "strategy": self.strategy,
            "image": self.image,
            "warnings": self.warnings,
            "volumes_created": [],
            "destroyed": [],
            "created": [],
            "replaced": [],
            "updated": [],
        }

    # -- check ----------------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        problems = validate_config(self.config, self.options.strategy)
        if problems:
            raise DeployError(422, "invalid app configuration", "invalid_config",
                              {"problems": problems})  # fmt: skip
        if self.strategy == "bluegreen" and all_mounts(self.config):
            raise DeployError(  # DOCS: bluegreen "cannot be used for Machines with volumes"
                422, "bluegreen deployment strategy is not supported for Machines with "
                "attached volumes; use rolling or immediate", "invalid_config"
            )  # fmt: skip
        active = [
            m
            for m in self.machines.values()
            if m["state"] not in INACTIVE_STATES
            and machine_group(m, self.config) not in (RELEASE_GROUP, CONSOLE_GROUP)
        ]
        first = not active
        kept = [m for m in active if machine_group(m, self.config) in self.groups]
        removed = [m for m in active if machine_group(m, self.config) not in self.groups]
        have = {machine_group(m, self.config) for m in kept}
        needing = [g for g in self.groups if g not in have]
        pool = self._unattached()
        replace, confirm = self._check_volumes(kept, pool, first)
        if confirm and not self.options.yes:
            (mid, group), *_ = confirm
            raise DeployError(
                409,
                f"machine {mid} [{group}] has a volume mounted but app config does not "
                "specify a volume; remove the volume from the machine or add a [mounts] "
                "section to fly.toml",
                "confirmation_required",
                {"machines": [list(c) for c in confirm]},
            )
        self._check_new_volumes(kept, needing, replace, pool, first)
        if self.options.fail_release_command:
            machine = ids.random_string(14, ids.HEX)
            raise DeployError(
                422,
                "release command failed - aborting deployment. error release_command "
                f"machine {machine} exited with non-zero status of 1",
                "release_command_failed",
            )
        # -- apply: nothing below can fail ---------------------------------------------
        self.result["process_groups_changed"] = {
            "destroy": _count(machine_group(m, self.config) for m in removed),
            "create": {g: self._new_count(g) for g in needing}
            if not self.options.update_only
            else {},
        }
        self.result["first_deploy"] = first
        for machine in removed:
            self._destroy(machine)
        if first:
            self._provision_first_volumes(needing, pool)
        if not self.options.update_only:
            for group in needing:
                self._launch_group(group, pool)
        for machine in kept:
            if machine["id"] in replace:
                self._replace(machine, pool)
            else:
                self._update(machine)
        return self.result

    def _unattached(self) -> dict[str, list[Volume]]:
        """Unattached, healthy volumes by name, as flyctl lists them before deploying."""
        pool: dict[str, list[Volume]] = {}
        for v in self.volumes.values():
            if (
                not v.attached  # FLYCTL deploy/machines.go setVolumes: machine or alloc
                and v.host_status == "ok"
                and v.state not in HIDDEN_VOLUME_STATES
            ):
                pool.setdefault(v.name, []).append(v)
        return pool

    def _check_volumes(
        self,
        kept: list[dict[str, Any]],
        pool: Mapping[str, list[Volume]],
        first: bool,
    ) -> tuple[set[str], list[tuple[str, str]]]:
        """validateVolumeConfig (+ the unreachable-host rule of launchInputForUpdate):
        raise, or answer the Machines to replace and those that need a confirmation."""
        replace: set[str] = set()
        confirm: list[tuple[str, str]] = []
        for group in self.groups:
            mounts = group_mounts(self.config, group)
            mount = mounts[0] if mounts else None
            machines = [m for m in kept if machine_group(m, self.config) == group]
            if not machines:
                if first:
                    continue  # first deploy: provisioned below
                for m in mounts:
                    source = str(m.get("source", ""))
                    if not pool.get(source):
                        raise DeployError(
                            422,
                            f"creating a new machine in group '{group}' requires an "
                            f"unattached '{source}' volume. Create it with "
                            f"`fly volume create {source}`",
                            "volume_required",
                        )
                continue
            needs: dict[str, list[str]] = {}
            for m in machines:
                attached = _config(m).get("mounts") or []
                if mount is None and attached:
                    confirm.append((m["id"], group))
                    replace.add(m["id"])
                if mount is not None and not attached:
                    needs.setdefault(str(mount.get("source", "")), []).append(m["region"])
                    replace.add(m["id"])
                if (
                    mount is not None
                    and attached
                    and attached[0].get("name")
                    and attached[0]["name"] != mount.get("source")
                ):
                    raise DeployError(  # flyctl's argument order, kept as it is
                        422,
                        f"machine {m['id']} [{group}] can't update the attached volume "
                        f"{mount.get('source')} with name '{attached[0].get('volume')}' by "
                        f"'{attached[0]['name']}'",
                        "volume_mismatch",
                    )
                if m.get("host_status", "ok") != "ok":
                    if attached and mount is not None:
                        raise DeployError(
                            422,
                            f"machine '{m['id']}' requires manual intervention, it can't be "
                            "automatically replaced because its volume "
                            f"'{attached[0].get('volume')}' is on an unreachable host",
                            "unreachable_host",
                        )
                    replace.add(m["id"])
            for source, regions in needs.items():
                have = _count(v.region for v in pool.get(source, []))
                missing = [
                    f"{region}={count - have.get(region, 0)}"
                    for region, count in _count(regions).items()
                    if count > have.get(region, 0)
                ]
                if missing:
                    raise DeployError(
                        422,
                        f"Process group '{group}' needs volumes with name '{source}' to "
                        f"fulfill mounts defined in fly.toml; Run `fly volume create {source} "
                        "-r REGION -n COUNT` for the following regions and counts: "
                        + " ".join(missing),
                        "volume_required",
                    )
        return replace, confirm

    def _check_new_volumes(
        self,
        kept: list[dict[str, Any]],
        needing: list[str],
        replace: set[str],
        pool: Mapping[str, list[Volume]],
        first: bool,
    ) -> None:
        """Take, on a copy of the unattached volumes, every volume the deploy will take, so
        that a shortfall is refused before anything changes (flyctl would fail midway,
        with the same message, in launchInputForLaunch/launchInputForUpdate)."""
        trial = {name: list(volumes) for name, volumes in pool.items()}
        for machine in kept:
            mounts = group_mounts(self.config, machine_group(machine, self.config))
            if (
                machine["id"] in replace
                and mounts
                and self._take(trial, mounts[0], machine["region"]) is None
            ):
                raise DeployError(
                    422,
                    f"machine in group '{machine_group(machine, self.config)}' needs an "
                    f"unattached volume named '{mounts[0].get('source')}' in region "
                    f"'{machine['region']}'",
                    "volume_required",
                )
        if self.options.update_only:
            return
        for group in needing:
            mounts = group_mounts(self.config, group)
            if not mounts:
                continue
            source = str(mounts[0].get("source", ""))
            if self._take(trial, mounts[0], self.region) is not None:
                continue
            if not first:
                raise DeployError(
                    422,
                    f"New machine in group '{group}' needs an unattached volume named "
                    f"'{source}' in region '{self.region}'",
                    "volume_required",
                )
            if not self.region:  # the first-deploy "hang" of fly-facts §6, as an answer
                raise DeployError(
                    422,
                    "failed to create volume: Region '' cannot host your machine. Please "
                    "use an alternative region (see `fly platform regions`).",
                    "region",
                )

    # -- apply ------------------------------------------------------------------------------

    def _provision_first_volumes(self, groups: list[str], pool: dict[str, list[Volume]]) -> None:
        """provisionVolumesOnFirstDeploy: one volume per group with a mount, reusing an
        unattached one of that name, else created in primary_region."""
        if self.options.update_only:
            return
        for group in groups:
            mounts = group_mounts(self.config, group)
            if not mounts:
                continue
            mount = mounts[0]
            source = str(mount.get("source", ""))
            if any(not self.region or v.region == self.region for v in pool.get(source, [])):
                continue
            size = size_gb(mount["initial_size"]) if "initial_size" in mount else None
            size = size or DEFAULT_VOLUME_SIZE_GB
            volume = self.new_volume(source, self.region, size, mount)
            pool.setdefault(source, []).append(volume)
            self.result["volumes_created"].append(
                {"id": volume.id, "name": source, "group": group, "size_gb": size,
                 "region": volume.region}
            )  # fmt: skip

    def _new_count(self, group: str) -> int:
        if not self.options.ha or group_mounts(self.config, group):
            return 1
        return 2

    def _launch_group(self, group: str, pool: dict[str, list[Volume]]) -> None:
        """deployCreateMachinesForGroups: one Machine; with --ha (the default), a second
        one for groups with services, a standby for groups without (not with mounts)."""
        first = self._launch(group, self.fallback_region, pool, volume_region=self.region)
        if not self.options.ha or group_mounts(self.config, group):
            return
        if group_services(self.config, group):
            self._launch(group, self.fallback_region, pool)
        else:
            self._launch(group, self.fallback_region, pool, standby_for=first["id"])

    def _launch(
        self,
        group: str,
        region: str,
        pool: dict[str, list[Volume]],
        *,
        volume_region: str = "",
        standby_for: str | None = None,
    ) -> dict[str, Any]:
        """A new Machine of `group` in `region`, on an unattached volume (of
        `volume_region`, "" for any) if the group has a mount; the platform starts a
        Machine where its volume is."""
        machine_id = ids.random_string(14, ids.HEX)
        config = self._machine_config(group, None)
        mounts = group_mounts(self.config, group)
        if mounts:
            volume = self._take(pool, mounts[0], volume_region)
            if volume is None:
                raise AssertionError(f"no unattached volume for {group}: checked before")
            config["mounts"] = [self._mount(mounts[0], volume)]
            region = volume.region
        if standby_for:
            config["standbys"] = [standby_for]
            config["env"]["FLY_STANDBY_FOR"] = standby_for
        state = "stopped" if standby_for else "started"
        machine = {
            "id": machine_id,
            "name": ids.machine_name(machine_id),
            "state": state,
            "region": region,
            "image_ref": _image_ref(self.image),
            "instance_id": ids.random_string(26, ids.CROCKFORD),
            "version": ids.random_string(26, ids.CROCKFORD),
            "private_ip": ids.private_ip(machine_id),
            "created_at": ids.machine_time(self.now),
            "updated_at": ids.machine_time(self.now),
            "config": config,
            "events": self._events(["launch", *(["start"] if state == "started" else [])]),
            "host_status": "ok",
            "cordoned": False,
        }
        self.machines[machine_id] = machine
        self._attach(machine)
        self.result["created"].append(
            {"id": machine_id, "group": group, "state": state, "volume": _volume_of(machine),
             "standby_for": standby_for}
        )  # fmt: skip
        return machine

    @staticmethod
    def _take(
        pool: Mapping[str, list[Volume]], mount: Mapping[str, Any], region: str
    ) -> Volume | None:
        """popVolumeFor: an unattached volume of the mount's name in `region` ("": any)."""
        candidates = pool.get(str(mount.get("source", "")), [])
        for volume in candidates:
            if not region or volume.region == region:
                candidates.remove(volume)
                return volume
        return None

    def _update(self, machine: dict[str, Any]) -> None:
        """launchInputForUpdate + an in-place update: new config, new instance, restarted."""
        group = machine_group(machine, self.config)
        old = _config(machine)
        config = self._machine_config(group, old)
        mounts = group_mounts(self.config, group)
        attached = old.get("mounts") or []
        if attached and mounts:
            kept = dict(attached[0])
            path = str(mounts[0].get("destination", kept.get("path")))
            if path != kept.get("path"):
                self.warnings.append(
                    f"Updating the mount path for volume {kept.get('volume')} on machine "
                    f"{machine['id']} from {kept.get('path')} to {path} due to fly.toml "
                    "[mounts] destination value"
                )
                kept["path"] = path
            kept |= _extend_fields(mounts[0])
            config["mounts"] = [kept]
        was = machine["state"]
        state = "started"
        if was in ("stopped", "suspended") and _autoscaled(group_services(self.config, group)):
            state = was  # skipLaunch: the proxy starts it when a request comes
        key = "config" if "config" in machine else "incomplete_config"
        machine[key] = config
        machine.update(
            state=state,
            image_ref=_image_ref(self.image),
            instance_id=ids.random_string(26, ids.CROCKFORD),
            version=ids.random_string(26, ids.CROCKFORD),
            updated_at=ids.machine_time(self.now),
        )
        kinds = ["update", *(["start"] if state == "started" else [])]
        machine["events"] = self._events(kinds) + list(machine.get("events") or [])
        self.result["updated"].append(
            {"id": machine["id"], "group": group, "state": state, "was": was,
             "volume": _volume_of(machine)}
        )  # fmt: skip

    def _replace(self, machine: dict[str, Any], pool: dict[str, list[Volume]]) -> None:
        """updateMachineByReplace: destroy it (its volume stays, unattached), launch a new
        one in the same region, with a volume popped from the unattached ones if needed."""
        group = machine_group(machine, self.config)
        self._destroy(machine, record=False)
        new = self._launch(group, machine["region"], pool, volume_region=machine["region"])
        self.result["created"].pop()
        self.result["replaced"].append(
            {"old": machine["id"], "new": new["id"], "group": group,
             "old_volume": _volume_of(machine), "volume": _volume_of(new)}
        )  # fmt: skip

    def _destroy(self, machine: dict[str, Any], *, record: bool = True) -> None:
        for volume in self.volumes.values():
            if volume.attached_machine_id == machine["id"]:
                volume.attached_machine_id = None  # kept, with its data (fly-facts §2.4)
        machine["state"] = "destroyed"
        machine["updated_at"] = ids.machine_time(self.now)
        machine["events"] = self._events(["destroy"]) + list(machine.get("events") or [])
        if record:
            self.result["destroyed"].append(
                {"id": machine["id"], "group": machine_group(machine, self.config),
                 "volume": _volume_of(machine)}
            )  # fmt: skip

    def _attach(self, machine: Mapping[str, Any]) -> None:
        volume_id = _volume_of(machine)
        if volume_id:
            volume = self.volumes[volume_id]
            volume.attached_machine_id = machine["id"]
            volume.ever_attached = True

    def _machine_config(self, group: str, old: Mapping[str, Any] | None) -> dict[str, Any]:
        """ToMachineConfig(group, old): env, init, guest, metadata, image, restart."""
        env = {str(k): _go_string(v) for k, v in (self.config.get("env") or {}).items()}
        env |= self.options.env
        env["FLY_PROCESS_GROUP"] = group
        if self.region:
            env["PRIMARY_REGION"] = self.region
        command = process_commands(self.config).get(group, "")
        metadata = {
            k: v
            for k, v in ((old or {}).get("metadata") or {}).items()
            if k not in ("fly_release_id", "fly_release_version", "fly_flyctl_version")
        }
        metadata |= {
            "fly_flyctl_version": FLYCTL_VERSION,
            "fly_platform_version": "v2",
            "fly_process_group": group,
            "fly_release_id": self.release_id,
            "fly_release_version": str(self.release_version),
        }
        return {
            "env": env,
            "init": {"cmd": shlex.split(command)} if command else {},
            "guest": _guest(self.config, group),
            "metadata": metadata,
            "image": self.image,
            "restart": {"policy": "on-failure", "max_retries": 10},
        }

    def _mount(self, mount: Mapping[str, Any], volume: Volume) -> dict[str, Any]:
        return {
            "volume": volume.id,
            "path": str(mount.get("destination", "/data")),
            "name": str(mount.get("source", volume.name)),
        } | _extend_fields(mount)

    def _events(self, kinds: list[str]) -> list[dict[str, Any]]:
        """Newest first, like the Machine's own `events`."""
        statuses = {"launch": "created", "start": "started", "update": "replacing",
                    "destroy": "destroyed"}  # fmt: skip
        stamp = ids.epoch_ms(self.now)
        return [
            {"type": kind, "status": statuses[kind], "source": "user" if kind != "start"
             else "flyd", "timestamp": stamp + i}
            for i, kind in reversed(list(enumerate(kinds)))
        ]  # fmt: skip


def _extend_fields(mount: Mapping[str, Any]) -> dict[str, int]:
    """The auto-extend settings as Machine mount fields (FLYCTL machines.go)."""
    fields: dict[str, int] = {}
    if isinstance(mount.get("auto_extend_size_threshold"), int):
        fields["extend_threshold_percent"] = mount["auto_extend_size_threshold"]
    for key, name in (("auto_extend_size_increment", "add_size_gb"),
                      ("auto_extend_size_limit", "size_gb_limit")):  # fmt: skip
        if key in mount:
            with contextlib.suppress(ValueError):
                fields[name] = size_gb(mount[key])
    return fields


def _autoscaled(services: list[Mapping[str, Any]]) -> bool:
    """A stopped Machine stays stopped on deploy when a service auto-stops or auto-starts
    it (skipLaunch); `auto_stop_machines` is "off"/"stop"/"suspend" or a boolean."""
    for s in services:
        stop = s.get("auto_stop_machines")
        if (stop not in (None, False, "off")) or s.get("auto_start_machines") is True:
            return True
    return False


def _volume_of(machine: Mapping[str, Any]) -> str | None:
    mounts = _config(machine).get("mounts") or []
    return str(mounts[0]["volume"]) if mounts and mounts[0].get("volume") else None


def _count(values: Any) -> dict[str, int]:
    counts: dict[str, int] = {}
    for value in values:
        counts[value] = counts.get(value, 0) + 1
    return counts


def _image_ref(image: str) -> dict[str, Any]:
    """image_ref of a Machine from "registry/repository:tag" (docker.io when no host)."""
    name, _, digest = image.partition("@")
    head, _, last = name.rpartition("/")
    repository_tail, _, tag = last.partition(":")
    registry, _, path = head.partition("/") if head else ("", "", "")
    if not head or ("." not in registry and ":" not in registry and registry != "localhost"):
        registry, path = "registry-1.docker.io", head
    repository = f"{path}/{repository_tail}" if path else repository_tail
    return {
        "registry": registry,
        "repository": repository,
        "tag": tag or "latest",
        "digest": digest or f"sha256:{ids.derive(image, 64)}",
        "labels": {},
    }
