"""Static rules VG101–VG115: fly.toml and settings, no network.

Each rule states the flyctl or platform behaviour it relies on (fly-facts §);
docs/checks.md has the user-facing explanation for every id.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Iterator

from volguard.catalogue import finding
from volguard.findings import Finding
from volguard.flytoml import FlyConfig, Mount
from volguard.rules import VOLUME_MEDIA_CHECKS, StaticContext, static_rule
from volguard.units import SizeError, parse_size_gb

SYSTEM_PATHS = (
    "/bin", "/boot", "/dev", "/etc", "/lib", "/lib32", "/lib64", "/proc", "/run", "/sbin",
    "/sys", "/usr", "/var/run",
)  # fmt: skip
_SYSTEM_TREES = ("/proc", "/sys", "/dev")  # nothing below these is a place for data

#: Strategies that cannot run with volumes (fly-facts §1.1: flyctl blocks canary,
#: the docs say bluegreen "cannot be used for Machines with attached volumes").
_VOLUME_INCOMPATIBLE_STRATEGIES = ("canary", "bluegreen")

FLY_DEFAULT_SNAPSHOT_RETENTION = 5


def _q(names: list[str] | tuple[str, ...]) -> str:
    """'"app"' / '"app" and "worker"' / '"a", "b" and "c"'."""
    quoted = [f'"{n}"' for n in names]
    return quoted[0] if len(quoted) == 1 else ", ".join(quoted[:-1]) + " and " + quoted[-1]


def normalise(path: str) -> str:
    """``posixpath.normpath``, plus a leading ``//`` read as ``/`` as Linux does."""
    path = posixpath.normpath(path)
    return "/" + path.lstrip("/") if path.startswith("//") else path


def inside(path: str, directory: str) -> bool:
    """Whether ``path`` is ``directory`` or below it, after normalising both."""
    path, directory = normalise(path), normalise(directory)
    if directory == "/":
        return path.startswith("/")
    return path == directory or path.startswith(directory + "/")


def _media_mounts(config: FlyConfig, context: StaticContext) -> dict[str, Mount]:
    """Each media group that gets a volume -> its mount (flyctl uses only the first)."""
    out = {}
    for group in context.media_groups:
        mounts = config.mounts_of(group)
        if mounts:
            out[group] = mounts[0]
    return out


@static_rule("VG101")
def media_root_inside_mount(config: FlyConfig, context: StaticContext) -> Iterator[Finding]:
    if context.media_storage == "object":
        return  # VG115: media in object storage
    mounted = _media_mounts(config, context)
    media_root = context.media_root
    where = context.media_root_at
    if media_root is not None and not media_root.startswith("/"):
        yield finding(
            "VG101",
            f"MEDIA_ROOT {media_root!r} is a relative path: where uploads land depends on the "
            "working directory, and no volume is mounted there",
            where or config.locate("env", "MEDIA_ROOT"),
            hint="Use an absolute MEDIA_ROOT under the mount destination, e.g. /data/media.",
            evidence={"media_root": media_root},
        )
        return
    if not mounted or media_root is None:
        return  # VG102 speaks for no mount, VG113 for an unknown MEDIA_ROOT
    by_mount: dict[Mount, list[str]] = {}
    for group, mount in mounted.items():
        if mount.destination and not inside(media_root, mount.destination):
            by_mount.setdefault(mount, []).append(group)
    for mount, groups in by_mount.items():
        yield finding(
            "VG101",
            f"MEDIA_ROOT {media_root} is not inside {mount.destination}, where the volume "
            f'"{mount.source}" is mounted for {_q(groups)}: uploads go to the Machine\'s '
            "ephemeral root filesystem and vanish on the next deploy or restart",
            where or config.locate(*mount.key, "destination"),
            hint=f"Set MEDIA_ROOT under {mount.destination} (e.g. "
            f"{posixpath.join(mount.destination, 'media')}), or mount the volume at MEDIA_ROOT.",
            evidence={
                "media_root": media_root,
                "destination": mount.destination,
                "groups": groups,
            },
        )


@static_rule("VG102")
def media_group_without_mount(config: FlyConfig, context: StaticContext) -> Iterator[Finding]:
    if context.media_storage == "object":
        return  # VG115: media in object storage
    if not config.mounts:
        if config.mounts_declared:
            return  # its mounts could not be read: VG100 said why
        if context.media_root:
            yield finding(
                "VG102",
                f"{config.path} has no [mounts], yet MEDIA_ROOT is {context.media_root}: every "
                "upload lands on the ephemeral root filesystem and is lost on the next deploy "
                "or restart",
                context.media_root_at or config.locate("env", "MEDIA_ROOT"),
                hint='Add [[mounts]] source = "data", destination = "/data" and keep MEDIA_ROOT '
                "below it, or store media in object storage.",
                evidence={"media_root": context.media_root, "groups": list(context.media_groups)},
            )
        return  # without MEDIA_ROOT either, VG114 says there is nothing to verify
    for group in context.media_groups:
        if config.mounts_of(group):
            continue
        defaults = [m for m in config.mounts if not m.processes]
        if defaults:
            why = (
                f'the mount "{defaults[0].source}" has no `processes`, so flyctl gives it only to '
                f'the default group "{config.default_group}"'
            )
            at = config.locate(*defaults[0].key)
        else:
            why = "no mount lists it in `processes`"
            at = config.locate(*config.mounts[0].key, "processes")
        yield finding(
            "VG102",
            f'process group "{group}" handles media but gets no volume: {why}; its Machines write '
            "to their ephemeral root filesystem",
            at,
            hint=f'Add "{group}" to the mount\'s `processes` (and read VG103), or remove it from '
            "media_groups if it never touches uploads.",
            evidence={"group": group, "default_group": config.default_group},
        )


@static_rule("VG103")
def media_groups_split(config: FlyConfig, context: StaticContext) -> Iterator[Finding]:
    if context.media_storage == "object":
        return  # VG115: media in object storage
    mounted = _media_mounts(config, context)
    if len(mounted) < 2:
        return
    groups = sorted(mounted)
    mounts = list(dict.fromkeys(mounted.values()))
    if len(mounts) == 1:
        mount = mounts[0]
        how = f'one mount (volume "{mount.source}") lists {_q(groups)}, but'
        at = config.locate(*mount.key, "processes")
    else:
        how = f"{_q(groups)} each have a mount, and"
        at = config.locate(*mounts[1].key)
    yield finding(
        "VG103",
        f"{how} every Machine gets its own volume: files one group writes under "
        f"{mounts[0].destination} are invisible to the others ([Errno 2] No such file or "
        "directory)",
        at,
        evidence={
            "groups": groups,
            "volumes": sorted({m.source for m in mounts}),
        },
    )


@static_rule("VG104")
def mount_names_unknown_group(config: FlyConfig, context: StaticContext) -> Iterator[Finding]:
    known = config.group_names
    for mount in config.mounts:
        unknown = [p for p in mount.processes if p not in known]
        if unknown:
            yield finding(
                "VG104",
                f"{mount.label} names process group {_q(unknown)}, which does not exist "
                f"(groups: {', '.join(known)}); flyctl silently never mounts it there",
                config.locate(*mount.key, "processes"),
                evidence={"unknown": unknown, "groups": known},
            )


@static_rule("VG105")
def several_mounts_per_group(config: FlyConfig, context: StaticContext) -> Iterator[Finding]:
    for group in config.group_names:
        mounts = config.mounts_of(group)
        if len(mounts) > 1:
            yield finding(
                "VG105",
                f'process group "{group}" gets {len(mounts)} mounts '
                f"({', '.join(m.source for m in mounts)}); a Machine can mount only one volume "
                "and `fly deploy` rejects this",
                config.locate(*mounts[1].key),
                evidence={"group": group, "volumes": [m.source for m in mounts]},
            )


@static_rule("VG106")
def bad_destination(config: FlyConfig, context: StaticContext) -> Iterator[Finding]:
    for mount in config.mounts:
        dest = mount.destination
        normal = normalise(dest) if dest else ""
        if not dest.startswith("/"):
            why = "is relative (or empty); it must be an absolute path"
        elif normal == "/":
            why = "is /, which the platform refuses"
        elif normal in SYSTEM_PATHS or any(inside(normal, t) for t in _SYSTEM_TREES):
            why = "hides a system directory of the image"
        else:
            continue
        yield finding(
            "VG106",
            f"{mount.label}: destination {dest!r} {why}",
            config.locate(*mount.key, "destination"),
            evidence={"destination": dest},
        )


@static_rule("VG107")
def mounts_without_primary_region(config: FlyConfig, context: StaticContext) -> Iterator[Finding]:
    if config.mounts and not config.primary_region:
        yield finding(
            "VG107",
            "fly.toml has mounts but no primary_region: a first deploy asks for a volume in "
            "region '' and hangs, and new volumes may land in a region the Machines are not in",
            config.locate("primary_region")
            if config.primary_region == ""
            else config.locate(*config.mounts[0].key),
            evidence={"mounts": [m.source for m in config.mounts]},
        )


@static_rule("VG108")
def volume_settings_out_of_range(config: FlyConfig, context: StaticContext) -> Iterator[Finding]:
    for mount in config.mounts:
        for key, problem in _flyctl_mount_problems(mount):
            yield finding(
                "VG108",
                problem,
                config.locate(*mount.key, key),
                evidence={"mount": mount.source, "key": key},
            )


def _flyctl_mount_problems(mount: Mount) -> Iterator[tuple[str, str]]:
    """flyctl's validateMounts (internal/appconfig/validation.go), message for message."""
    name = mount.source

    def size(key: str, raw: str | None) -> int | None:
        if not raw:  # flyctl checks a size only when it is not ""
            return None
        try:
            gb = parse_size_gb(raw)
        except SizeError as e:
            problems.append((key, f"mount '{name}' with {key} '{raw}' will fail because of: {e}"))
            return None
        if gb < 1:
            problems.append(
                (key, f"mount '{name}' has an {key} '{raw}' value which is smaller than 1GB")
            )
        return gb

    problems: list[tuple[str, str]] = []
    size("initial_size", mount.initial_size)
    retention = mount.snapshot_retention
    if retention is not None and not 1 <= retention <= 60:
        problems.append(
            (
                "snapshot_retention",
                f"mount '{name}' has a snapshot_retention value which is not between 1 and 60 "
                "days inclusive",
            )
        )
    increment = size("auto_extend_size_increment", mount.auto_extend_size_increment)
    limit = size("auto_extend_size_limit", mount.auto_extend_size_limit)
    threshold = mount.auto_extend_size_threshold or 0
    increment, limit = increment or 0, limit or 0
    if threshold or increment or limit:
        if threshold and not increment and not limit:
            problems.append(
                (
                    "auto_extend_size_threshold",
                    f"mount '{name}' auto_extend_size_threshold, auto_extend_size_increment and "
                    "auto_extend_size_limit must be all defined or none",
                )
            )
        if not 50 <= threshold <= 99:
            problems.append(
                (
                    "auto_extend_size_threshold",
                    f"mount '{name}' auto_extend_size_threshold must be between 50 and 99",
                )
            )
        if not 1 <= increment <= 100:
            problems.append(
                (
                    "auto_extend_size_increment",
                    f"mount '{name}' auto_extend_size_increment must be between 1GB and 100GB",
                )
            )
        if limit and not 1 <= limit <= 500:
            problems.append(
                (
                    "auto_extend_size_limit",
                    f"mount '{name}' auto_extend_size_limit must be between 1GB and 500GB",
                )
            )
    yield from dict.fromkeys(problems)  # one message once, in flyctl's order


@static_rule("VG109")
def strategy_incompatible_with_volumes(
    config: FlyConfig, context: StaticContext
) -> Iterator[Finding]:
    strategy = (config.deploy_strategy or "").strip().lower()
    if config.mounts and strategy in _VOLUME_INCOMPATIBLE_STRATEGIES:
        yield finding(
            "VG109",
            f'[deploy] strategy = "{config.deploy_strategy}" cannot be used with mounted volumes '
            "(a volume attaches to one Machine, so no second Machine can start beside it)",
            config.locate("deploy", "strategy"),
            evidence={"strategy": config.deploy_strategy},
        )


@static_rule("VG110")
def snapshots_off_or_short(config: FlyConfig, context: StaticContext) -> Iterator[Finding]:
    policy = context.min_snapshot_retention
    for mount in config.mounts:
        if mount.scheduled_snapshots is False:
            yield finding(
                "VG110",
                f"{mount.label}: scheduled_snapshots = false, so no daily snapshot can bring "
                "back lost uploads",
                config.locate(*mount.key, "scheduled_snapshots"),
                evidence={"mount": mount.source},
            )
        retention = mount.snapshot_retention
        effective = FLY_DEFAULT_SNAPSHOT_RETENTION if retention is None else retention
        if 1 <= effective < policy:
            said = (
                f"snapshot_retention = {retention}"
                if retention is not None
                else (f"the default snapshot retention ({FLY_DEFAULT_SNAPSHOT_RETENTION} days)")
            )
            yield finding(
                "VG110",
                f"{mount.label}: {said} is below the policy of {policy} days",
                config.locate(*mount.key, "snapshot_retention"),
                evidence={"mount": mount.source, "retention": effective, "policy": policy},
            )


@static_rule("VG111")
def release_command_uses_volume(config: FlyConfig, context: StaticContext) -> Iterator[Finding]:
    """The release Machine has no mounts (FLYCTL internal/appconfig/machines.go
    `ToReleaseMachineConfig` builds its config without `Mounts`, commit ad0172f; fly-facts §0.4).

    Only what the release step itself opens counts: a path below a mount in the command, a
    database setting below one (what `migrate` opens), or a media command. MEDIA_ROOT below a
    mount is no evidence on its own: `migrate` never reads it.
    """
    command = config.release_command
    if not command:
        return
    reasons = []
    if _MEDIA_COMMAND.search(command):
        media_root = config.env.get("MEDIA_ROOT")
        where = f"MEDIA_ROOT ({media_root})" if media_root else "MEDIA_ROOT"
        reasons.append(
            f"it runs check_missing_files, and on the release Machine {where} is an empty or "
            "missing directory: every row looks missing"
        )
    for mount in config.mounts:
        if not mount.destination.startswith("/") or normalise(mount.destination) == "/":
            continue
        if _mentions_path(command, mount.destination):
            reasons.append(f"the command names {mount.destination}")
        for key, value in config.env.items():
            if _is_database_setting(key, value) and _mentions_path(value, mount.destination):
                reasons.append(f"[env] {key} = {value!r} points into {mount.destination}")
    if reasons:
        yield finding(
            "VG111",
            f"release_command {command!r} seems to rely on the volume ({'; '.join(reasons)}), "
            "but release Machines run without volumes",
            config.locate("deploy", "release_command"),
            evidence={"release_command": command, "reasons": reasons},
        )


#: volguard's own media audit, however it is started (manage.py, django-admin, sh -c '…')
_MEDIA_COMMAND = re.compile(r"(?<![\w-])check_missing_files(?![\w-])")


def _is_database_setting(key: str, value: str) -> bool:
    """A database the release step (migrations) would open, e.g. a SQLite file."""
    return (
        "DATABASE" in key.upper()
        or "SQLITE" in key.upper()
        or value.startswith("sqlite:")
        or value.endswith((".db", ".sqlite", ".sqlite3"))
    )


def _mentions_path(text: str, directory: str) -> bool:
    directory = normalise(directory)
    return re.search(r"(?<![\w.~-])" + re.escape(directory) + r"(?=$|[/\s'\";:])", text) is not None


@static_rule("VG112")
def media_group_scaled_out(config: FlyConfig, context: StaticContext) -> Iterator[Finding]:
    if context.media_storage == "object":
        return  # VG115: media in object storage
    for group in _media_mounts(config, context):
        count, at = context.machine_counts.get(group, 0), config.locate()
        for service in config.services:
            covers = group in service.processes or (
                not service.processes and group == config.default_group
            )
            if covers and (service.min_machines_running or 0) > count:
                count = service.min_machines_running or 0
                at = config.locate(*service.key, "min_machines_running")
        if count >= 2:
            yield finding(
                "VG112",
                f'process group "{group}" is meant to run {count} Machines, and each gets its own '
                "volume: uploads are split across them and each Machine sees only its own",
                at,
                evidence={"group": group, "machines": count},
            )


@static_rule("VG113")
def media_root_unknown(config: FlyConfig, context: StaticContext) -> Iterator[Finding]:
    """VG101 could not be checked: media groups have a mount, but MEDIA_ROOT is unknown."""
    if context.media_storage == "object":
        return  # VG115: media in object storage
    mounted = _media_mounts(config, context)
    if not mounted or context.media_root is not None:
        return
    first = next(iter(mounted.values()))
    yield finding(
        "VG113",
        "MEDIA_ROOT is unknown, so volguard cannot check that uploads land on the volume "
        f"(mounted at {first.destination})",
        config.locate(*first.key),
        evidence={"destination": first.destination},
    )


@static_rule("VG114")
def nothing_to_verify(config: FlyConfig, context: StaticContext) -> Iterator[Finding]:
    """No [mounts] (none declared, so none unreadable) and no MEDIA_ROOT: said once, at info."""
    if config.mounts or config.mounts_declared or context.media_root:
        return
    yield finding(
        "VG114",
        f"{config.path} has no [mounts] and MEDIA_ROOT is unknown: nothing to verify "
        "(volguard assumes media is not kept on a volume)",
        config.locate(),
    )


@static_rule("VG115")
def media_in_object_storage(config: FlyConfig, context: StaticContext) -> Iterator[Finding]:
    """`media_storage: object`: the volume checks for media do not apply, and that is said."""
    if context.media_storage != "object":
        return
    static = [i for i in VOLUME_MEDIA_CHECKS if i.startswith("VG1")]
    yield finding(
        "VG115",
        "media live in object storage (volguard.media_storage = object): the volume checks for "
        f"media were skipped ({', '.join(static)}; verify-volume also skips "
        f"{', '.join(i for i in VOLUME_MEDIA_CHECKS if i not in static)})",
        config.locate(),
        evidence={"media_storage": "object", "skipped": list(VOLUME_MEDIA_CHECKS)},
    )
