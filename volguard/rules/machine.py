"""Machine rules VG301–VG313: what the probe saw on each Machine, judged.

Per-Machine rules (`@machine_rule`) take an `Observation` (the Machine, what
fly.toml expects of it, and its `MachineFacts`); fleet rules (`@fleet_rule`:
MEDIA_ROOT differing between groups, VG306 visibility) take every Machine's.
Both are registries like the static and platform ones, and `run_machine_rules`
runs them from there, as the check modules in checks/ do one by one. VG300
(unreachable) is not a rule: the layer reports it when a Machine cannot be
probed at all.

Missing facts never pass: facts of the wrong type, a device that could not be
read, or a separate device without its mount entry are VG310 (an error), and
every other rule stays silent on that Machine rather than judge what it cannot
read (the registration wraps each rule so, for checks/ and `run_machine_rules`
alike).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from volguard.catalogue import finding
from volguard.findings import Finding, Location
from volguard.fly.models import Machine
from volguard.remote.probe import AppProcess, MachineFacts, MountEntry
from volguard.rules import RULES, VOLUME_MEDIA_CHECKS, Rule, _register
from volguard.rules.static import inside, normalise


@dataclass(frozen=True)
class Observation:
    machine: Machine
    destination: str  # the fly.toml mount destination for the Machine's group
    facts: MachineFacts


@dataclass(frozen=True)
class MachineContext:
    fstypes: tuple[str, ...] = ("ext4",)  # Fly volumes are ext4
    min_free_percent: float = 10.0
    app_user: str | None = None  # expected app user; default: whoever runs the app process
    media_storage: str = "auto"  # auto | volume | object (volguard.media_storage)


def machine_rule(check_id: str) -> Callable[[Rule], Rule]:
    """Register a per-Machine rule ``(Observation, MachineContext) -> findings``.

    The rule is not asked about a Machine whose facts are malformed (VG310 speaks).
    """

    def register(fn: Rule) -> Rule:
        @functools.wraps(fn)
        def rule(o: Observation, context: MachineContext) -> Iterable[Finding]:
            return fn(o, context) if not malformed(o.facts) else ()

        return _register("machine", check_id)(rule)

    return register


def fleet_rule(check_id: str) -> Callable[[Rule], Rule]:
    """Register a rule across Machines ``(list[Observation], MachineContext) -> findings``.

    The rule sees only the Machines whose facts are well-formed (VG310 speaks for the rest).
    """

    def register(fn: Rule) -> Rule:
        @functools.wraps(fn)
        def rule(observations: list[Observation], context: MachineContext) -> Iterable[Finding]:
            return fn([o for o in observations if not malformed(o.facts)], context)

        return _register("fleet", check_id)(rule)

    return register


def run_machine_rules(observations: list[Observation], context: MachineContext) -> list[Finding]:
    """Every registered rule: the per-Machine rules on each Machine, then the fleet rules."""
    findings = [
        f for o in observations for rule in RULES["machine"].values() for f in rule(o, context)
    ]
    for rule in RULES["fleet"].values():
        findings.extend(rule(observations, context))
    return findings


def machine_check_ids() -> tuple[str, ...]:
    """The ids the Machine layer checks: VG300 (the layer's own) and every registered rule's."""
    return ("VG300", *sorted(set(RULES["machine"]) | set(RULES["fleet"])))


def _who(o: Observation) -> str:
    return f"Machine {o.machine.id} (group {o.machine.group}, {o.machine.region})"


def _at(o: Observation) -> Location:
    return Location(machine=o.machine.id)


def _ev(o: Observation, **more: object) -> dict[str, object]:
    return {"machine": o.machine.id, "group": o.machine.group, "region": o.machine.region, **more}


@machine_rule("VG301")
def not_a_separate_filesystem(o: Observation, context: MachineContext) -> Iterator[Finding]:
    f = o.facts
    if f.separate_filesystem or (
        f.destination_exists and None in (f.destination_device, f.root_device)
    ):
        return  # mounted; or a device could not be read, and VG310 says so
    why = (
        "does not exist"
        if not f.destination_exists
        else f"is on the root filesystem (device {f.destination_device}, same as /)"
    )
    yield finding(
        "VG301",
        f"{_who(o)}: {o.destination} {why}: the volume is not mounted there, so uploads land "
        "on the ephemeral root filesystem and vanish on the next deploy or restart",
        _at(o),
        evidence=_ev(
            o, destination=o.destination, device=f.destination_device, root_device=f.root_device
        ),
    )


@machine_rule("VG302")
def read_only_or_odd_filesystem(o: Observation, context: MachineContext) -> Iterator[Finding]:
    f = o.facts
    if not f.separate_filesystem or _no_mount_entry(f):
        return  # VG301 or VG310 speaks
    problems = []
    if f.mount.read_only:
        problems.append("it is mounted read-only")
    if context.fstypes and f.mount.fstype not in context.fstypes:
        problems.append(f"its filesystem is {f.mount.fstype}, not {' or '.join(context.fstypes)}")
    if problems:
        yield finding(
            "VG302",
            f"{_who(o)}: {o.destination}: {'; '.join(problems)}",
            _at(o),
            evidence=_ev(o, fstype=f.mount.fstype, options=list(f.mount.options)),
        )


@machine_rule("VG303")
def media_root_outside_mount(o: Observation, context: MachineContext) -> Iterator[Finding]:
    f = o.facts
    if not f.media_root:
        return  # VG308 or VG309: not verified
    real = f.media_root_real or f.media_root
    covered = (
        inside(real, o.destination)
        and f.separate_filesystem
        and f.media_root_device is not None
        and f.media_root_device == f.root_device
    )
    if covered:
        yield finding(
            "VG303",
            f"{_who(o)}: MEDIA_ROOT {f.media_root} is below {o.destination} but on the root "
            f"filesystem (device {f.media_root_device}): something is mounted over it, so "
            "uploads miss the volume",
            _at(o),
            evidence=_ev(o, media_root=f.media_root, device=f.media_root_device),
        )
        return
    if not inside(real, o.destination):
        shown = f.media_root + (f" (-> {real})" if real != normalise(f.media_root) else "")
        yield finding(
            "VG303",
            f"{_who(o)}: the running app uses MEDIA_ROOT {shown}, outside {o.destination} "
            "where the volume is mounted: its uploads go to the root filesystem",
            _at(o),
            evidence=_ev(
                o, media_root=f.media_root, media_root_real=real, source=f.media_root_source
            ),
        )


@machine_rule("VG304")
def media_root_not_writable(o: Observation, context: MachineContext) -> Iterator[Finding]:
    f = o.facts
    test = f.write_test
    if not f.media_root or test is None:
        return
    if test.get("ok"):
        return
    yield finding(
        "VG304",
        f"{_who(o)}: the app user {test.get('user')} cannot write to MEDIA_ROOT "
        f"{f.media_root}: {test.get('error')}",
        _at(o),
        hint=f"chown {test.get('user')} {f.media_root}, or fix the volume's mount options.",
        evidence=_ev(o, user=test.get("user"), error=test.get("error")),
    )


@machine_rule("VG305")
def low_space(o: Observation, context: MachineContext) -> Iterator[Finding]:
    f = o.facts
    if not f.separate_filesystem:
        return
    problems = []
    for what, free, total in (
        ("space", f.bytes_free, f.bytes_total),
        ("inodes", f.inodes_free, f.inodes_total),
    ):
        if free is not None and total:
            percent = 100 * free / total
            if percent < context.min_free_percent:
                problems.append(f"{percent:.1f}% {what} free")
    if problems:
        yield finding(
            "VG305",
            f"{_who(o)}: {o.destination} has only {' and '.join(problems)} "
            f"(threshold {context.min_free_percent:g}%)",
            _at(o),
            evidence=_ev(o, bytes_free=f.bytes_free, inodes_free=f.inodes_free),
        )


@machine_rule("VG307")
def owner_or_mode(o: Observation, context: MachineContext) -> Iterator[Finding]:
    f = o.facts
    user = context.app_user or f.app_user
    if not f.media_root_exists or not user or user == "root":
        return
    problems = []
    if f.media_root_owner != user:
        problems.append(f"owned by {f.media_root_owner}, not {user}")
    if f.media_root_mode and not int(f.media_root_mode, 8) & 0o200:
        problems.append(f"mode {f.media_root_mode} has no owner write bit")
    if problems:
        yield finding(
            "VG307",
            f"{_who(o)}: MEDIA_ROOT {f.media_root} is {' and '.join(problems)}",
            _at(o),
            evidence=_ev(o, owner=f.media_root_owner, mode=f.media_root_mode, app_user=user),
        )


@machine_rule("VG308")
def no_app_process_nor_media_root(o: Observation, context: MachineContext) -> Iterator[Finding]:
    """VG303 and VG304 could not be checked: no app process, and no MEDIA_ROOT configured."""
    f = o.facts
    if f.processes or f.media_root:
        return
    yield finding(
        "VG308",
        f"{_who(o)}: no app process found and MEDIA_ROOT unknown: MEDIA_ROOT and "
        "writability were not verified",
        _at(o),
        evidence=_ev(o),
    )


@machine_rule("VG309")
def app_process_without_media_root(o: Observation, context: MachineContext) -> Iterator[Finding]:
    """VG303 and VG304 could not be checked: the app process has no MEDIA_ROOT, nor has volguard."""
    f = o.facts
    if not f.processes or f.media_root:
        return
    app = f.processes[0]
    yield finding(
        "VG309",
        f"{_who(o)}: the app process (pid {app.pid}, user {app.user}) has no MEDIA_ROOT in its "
        "environment: MEDIA_ROOT and writability were not verified",
        _at(o),
        evidence=_ev(o, pid=app.pid, user=app.user),
    )


@_register("machine", "VG310")  # not machine_rule: this rule is the one that judges bad facts
def facts_incomplete(o: Observation, context: MachineContext) -> Iterator[Finding]:
    """The probe's facts are malformed, or too incomplete to judge the mount: never "ok"."""
    f = o.facts
    problems = malformed(f)
    if not problems and f.destination_exists:
        if f.destination_device is None:
            problems.append(f"the device of {o.destination} could not be read")
        if f.root_device is None:
            problems.append("the device of / could not be read")
        if f.separate_filesystem and _no_mount_entry(f):
            problems.append(
                f"{o.destination} is on its own device ({f.destination_device}) but the mount "
                "table has no entry for it"
            )
    if not problems:
        return
    errors = [e for e in f.errors if isinstance(e, str)] if isinstance(f.errors, tuple) else []
    yield finding(
        "VG310",
        f"{_who(o)}: the probe's facts are incomplete: {'; '.join(problems)}"
        + (f" (probe errors: {'; '.join(errors)})" if errors else "")
        + ": the volume checks could not be made there",
        _at(o),
        evidence=_ev(o, problems=problems, errors=errors),
    )


@machine_rule("VG311")
def media_root_missing(o: Observation, context: MachineContext) -> Iterator[Finding]:
    """MEDIA_ROOT does not exist, and no app user wrote to it (VG304 speaks when one tried)."""
    f = o.facts
    if not f.media_root or f.media_root_exists is not False or f.write_test is not None:
        return
    yield finding(
        "VG311",
        f"{_who(o)}: MEDIA_ROOT {f.media_root} does not exist, and with no app process found "
        "volguard could not test that the app can create and write it",
        _at(o),
        evidence=_ev(o, media_root=f.media_root, source=f.media_root_source),
    )


@fleet_rule("VG303")
def media_root_differs(observations: list[Observation], context: MachineContext) -> list[Finding]:
    """VG303 across groups: the groups' running apps disagree on MEDIA_ROOT."""
    roots: dict[str, set[str]] = {}
    for o in observations:
        if o.facts.media_root:
            roots.setdefault(o.machine.group, set()).add(
                normalise(o.facts.media_root_real or o.facts.media_root)
            )
    distinct = {r for rs in roots.values() for r in rs}
    if len(roots) < 2 or len(distinct) < 2:
        return []
    listing = "; ".join(f"{g}: {', '.join(sorted(rs))}" for g, rs in sorted(roots.items()))
    first = next(o for o in observations if o.facts.media_root)
    return [
        finding(
            "VG303",
            f"MEDIA_ROOT differs between process groups ({listing}): a file one group saves is "
            "looked for elsewhere by the other",
            Location(machine=first.machine.id),
            evidence={"media_roots": {g: sorted(rs) for g, rs in roots.items()}},
        )
    ]


@fleet_rule("VG306")
def not_visible_across(observations: list[Observation], context: MachineContext) -> list[Finding]:
    """VG306: the probe one app Machine wrote is missing on another group's Machine."""
    if media_in_object_storage(observations, context):
        return []  # VG115 or VG312 says the volume checks were skipped
    writers = [o for o in observations if o.facts.visibility_probe]
    if not writers:
        return []
    writer = writers[0]
    name = writer.facts.visibility_probe
    blind = [
        o
        for o in observations
        if o is not writer
        and o.machine.group != writer.machine.group
        and name in o.facts.visible
        and not o.facts.visible[name]
    ]
    if not blind:
        return []
    return [
        finding(
            "VG306",
            f"a file written on {writer.machine.id} (group {writer.machine.group}) under "
            f"{writer.facts.media_root} is not visible on "
            f"{', '.join(f'{o.machine.id} (group {o.machine.group})' for o in blind)}: "
            "the groups do not share storage, so the worker will hit "
            "[Errno 2] No such file or directory",
            Location(machine=blind[0].machine.id),
            evidence={
                "writer": writer.machine.id,
                "readers": [o.machine.id for o in blind],
                "probe": name,
            },
        )
    ]


def media_in_object_storage(observations: list[Observation], context: MachineContext) -> bool:
    """Whether the volume checks for media do not apply: configured (`media_storage: object`),
    or, with `auto`, every probed Machine's Django writes uploads to object storage. One
    Machine whose storage is unknown (manage_py unset, or Django did not answer) keeps them."""
    if context.media_storage != "auto":
        return context.media_storage == "object"
    kinds = [o.facts.storage for o in observations]
    return bool(kinds) and all(k == "object" for k in kinds)


def _storage_line(o: Observation) -> str:
    answer = o.facts.media_storage or {}
    backend = str(answer.get("writes_to") or answer.get("backend"))
    fallback = answer.get("fallback")
    return f"{o.machine.id} ({o.machine.group}: {backend}" + (
        f", reading {fallback} as fallback)" if fallback else ")"
    )


@fleet_rule("VG312")
def app_uses_object_storage(
    observations: list[Observation], context: MachineContext
) -> list[Finding]:
    """VG312: with `media_storage: auto`, the running app says uploads go to object storage."""
    if context.media_storage != "auto" or not media_in_object_storage(observations, context):
        return []
    buckets = sorted(
        {b for o in observations if (b := o.facts.object_storage_env.get("BUCKET_NAME"))}
    )
    return [
        finding(
            "VG312",
            "every probed Machine of the media groups stores uploads in object storage, as its "
            f"Django says ({'; '.join(_storage_line(o) for o in observations)})"
            + (f", bucket {', '.join(buckets)}" if buckets else "")
            + f": the volume checks for media were skipped ({', '.join(VOLUME_MEDIA_CHECKS)})",
            Location(machine=observations[0].machine.id),
            evidence={
                "machines": {o.machine.id: o.facts.media_storage for o in observations},
                "buckets": buckets,
                "skipped": list(VOLUME_MEDIA_CHECKS),
            },
        )
    ]


@fleet_rule("VG313")
def uploads_split_volume_and_bucket(
    observations: list[Observation], context: MachineContext
) -> list[Finding]:
    """VG313: some Machines' Django writes uploads to the volume, others' to object storage."""
    on = {
        kind: [o for o in observations if o.facts.storage == kind] for kind in ("volume", "object")
    }
    if not on["volume"] or not on["object"]:
        return []
    return [
        finding(
            "VG313",
            "uploads are split between a volume and a bucket: "
            f"{', '.join(_storage_line(o) for o in on['object'])} write to object storage, "
            f"{', '.join(_storage_line(o) for o in on['volume'])} to their own volume; a file "
            "saved on one side is missing on the other ([Errno 2], or a 404 from the bucket)",
            Location(machine=on["volume"][0].machine.id),
            evidence={
                "object": [o.machine.id for o in on["object"]],
                "volume": [o.machine.id for o in on["volume"]],
                "machines": {o.machine.id: o.facts.media_storage for o in observations},
            },
        )
    ]


def _no_mount_entry(f: MachineFacts) -> bool:
    """A separate device, but the mount table gave no entry for it (only /'s covers it)."""
    return f.mount is None or normalise(f.mount.mount_point) == "/"


# -- facts of the wrong type ---------------------------------------------------------------

_OPTIONAL_STR = (
    "destination_device", "root_device", "app_user", "media_root", "media_root_source",
    "media_root_real", "media_root_owner", "media_root_device", "visibility_probe",
)  # fmt: skip
_OPTIONAL_COUNT = ("bytes_total", "bytes_free", "inodes_total", "inodes_free")


def malformed(f: MachineFacts) -> list[str]:
    """What in ``f`` has the wrong type for the rules (the probe's answer is data, not trusted)."""
    bad = [n for n in _OPTIONAL_STR if not isinstance(getattr(f, n), str | None)]
    bad += [
        n
        for n in _OPTIONAL_COUNT
        if getattr(f, n) is not None
        and (isinstance(getattr(f, n), bool) or not isinstance(getattr(f, n), int))
    ]
    if not isinstance(f.destination_exists, bool):
        bad.append("destination_exists")
    if not isinstance(f.media_root_exists, bool | None):
        bad.append("media_root_exists")
    if not _is_mount(f.mount):
        bad.append("mount")
    if not isinstance(f.processes, tuple) or not all(map(_is_process, f.processes)):
        bad.append("processes")
    if f.media_root_mode is not None and not _is_mode(f.media_root_mode):
        bad.append("media_root_mode")
    if f.write_test is not None and not isinstance(f.write_test, dict):
        bad.append("write_test")
    if f.media_storage is not None and not isinstance(f.media_storage, dict):
        bad.append("media_storage")
    if not isinstance(f.object_storage_env, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in f.object_storage_env.items()
    ):
        bad.append("object_storage_env")
    if not isinstance(f.visible, dict) or not all(
        isinstance(k, str) and isinstance(v, bool) for k, v in f.visible.items()
    ):
        bad.append("visible")
    problems = [f"{name} has the wrong type ({type(getattr(f, name)).__name__})" for name in bad]
    # statvfs counts are unsigned 64-bit, and free never exceeds total: anything else is not
    # a filesystem's answer (and 10**400 would overflow the percentage VG305 computes).
    counts = {n: getattr(f, n) for n in _OPTIONAL_COUNT if n not in bad}
    problems += [
        f"{name} is out of range ({value})"
        for name, value in counts.items()
        if value is not None and not 0 <= value < 2**64
    ]
    for free, total in (("bytes_free", "bytes_total"), ("inodes_free", "inodes_total")):
        have, of = counts.get(free), counts.get(total)
        if have is not None and of is not None and 0 <= of < have < 2**64:
            problems.append(f"{free} ({have}) exceeds {total} ({of})")
    return problems


def _is_mount(mount: object) -> bool:
    if mount is None:
        return True
    return (
        isinstance(mount, MountEntry)
        and all(isinstance(v, str) for v in (mount.mount_point, mount.fstype, mount.source))
        and all(
            isinstance(options, tuple) and all(isinstance(o, str) for o in options)
            for options in (mount.options, mount.super_options)
        )
    )


def _is_process(p: object) -> bool:
    return (
        isinstance(p, AppProcess)
        and isinstance(p.pid, int)
        and not isinstance(p.pid, bool)
        and isinstance(p.user, str)
        and isinstance(p.media_root, str | None)
    )


def _is_mode(mode: object) -> bool:
    try:
        return isinstance(mode, str) and int(mode, 8) >= 0
    except ValueError:
        return False
