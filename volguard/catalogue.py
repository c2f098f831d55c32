"""The check catalogue: every id volguard can report, with its one severity.

The ids are a public contract (CI waivers, SARIF rules, Django check ids refer
to them): never reuse or renumber one. As in Django's check framework, an id
means one condition at one level: "could not verify" is a condition of its own,
with an id of its own, never a lower severity of the id it could not verify.
`finding()` therefore takes no severity. docs/checks.md has a section per id;
tests/test_catalogue.py holds the catalogue, the docs, the producers and the
tests together (CONTRIBUTING.md lists the steps for a new id).
"""

from __future__ import annotations

from typing import Any, NamedTuple

from volguard.findings import Finding, Location, Severity
from volguard.terminal import single_line

E, W, INFO = Severity.ERROR, Severity.WARNING, Severity.INFO


class Check(NamedTuple):
    id: str
    layer: str  # static | platform | machine | data
    severity: Severity  # the only severity this id is ever reported at
    title: str
    hint: str


def _c(id: str, layer: str, severity: Severity, title: str, hint: str) -> Check:
    return Check(id, layer, severity, title, hint)


CHECKS: dict[str, Check] = {
    c.id: c
    for c in [
        # -- static: fly.toml and settings, no network -------------------------------
        _c(
            "VG100",
            "static",
            E,
            "fly.toml cannot be read or parsed",
            "Fix the file so that it is UTF-8 TOML that flyctl can load.",
        ),
        _c(
            "VG101",
            "static",
            E,
            "MEDIA_ROOT is not inside the volume mount",
            "Set MEDIA_ROOT to a directory under the mount destination (e.g. /data/media).",
        ),
        _c(
            "VG102",
            "static",
            E,
            "a media process group gets no volume",
            "Add the group to the mount's `processes`, or stop that group handling media.",
        ),
        _c(
            "VG103",
            "static",
            E,
            "media process groups are on separate volumes",
            "Volumes are never shared: handle media in one process group, or move media to "
            "object storage (S3/Tigris) that every Machine reaches.",
        ),
        _c(
            "VG104",
            "static",
            E,
            "a mount names a process group that does not exist",
            "Use a group name from [processes], or add the group.",
        ),
        _c(
            "VG105",
            "static",
            E,
            "more than one mount applies to one process group",
            "Give each process group at most one [[mounts]] entry.",
        ),
        _c(
            "VG106",
            "static",
            E,
            "mount destination is relative, / or a system path",
            "Mount the volume on a dedicated absolute path such as /data.",
        ),
        _c(
            "VG107",
            "static",
            E,
            "mounts without primary_region",
            "Set primary_region to the region that holds (or will hold) the volumes.",
        ),
        _c(
            "VG108",
            "static",
            E,
            "volume size or snapshot settings out of range",
            "Use flyctl's ranges: initial_size >= 1GB, snapshot_retention 1-60, "
            "auto_extend threshold 50-99, increment 1-100GB, limit 1-500GB.",
        ),
        _c(
            "VG109",
            "static",
            E,
            "deploy strategy cannot be used with volumes",
            'Use strategy = "rolling" (the default) or "immediate".',
        ),
        _c(
            "VG110",
            "static",
            W,
            "volume snapshots are off or kept too briefly",
            "Keep scheduled_snapshots on and snapshot_retention at or above the policy.",
        ),
        _c(
            "VG111",
            "static",
            W,
            "release_command relies on the volume",
            "Release Machines have no volumes: move that step to the app's start-up command.",
        ),
        _c(
            "VG112",
            "static",
            W,
            "a media group runs several Machines: uploads split",
            "Each Machine gets its own volume; run one Machine per media group or use "
            "object storage.",
        ),
        _c(
            "VG113",
            "static",
            INFO,
            "MEDIA_ROOT is unknown: VG101 could not be checked",
            "Set MEDIA_ROOT in fly.toml [env], or pass --media-root / set "
            "volguard.media_root in invoke.yaml.",
        ),
        _c(
            "VG114",
            "static",
            INFO,
            "no [mounts] and MEDIA_ROOT unknown: nothing to verify",
            "If uploads are stored on local disk, add a [[mounts]] section and set MEDIA_ROOT.",
        ),
        _c(
            "VG115",
            "static",
            INFO,
            "media in object storage: volume checks for media skipped",
            "Nothing to do while uploads live in object storage; set volguard.media_storage "
            "back to volume (or auto) if they move back to a volume.",
        ),
        # -- platform: the Machines API -------------------------------------------
        _c(
            "VG200",
            "platform",
            E,
            "Fly Machines API unreachable, or token refused",
            "Check FLY_API_TOKEN and the network.",
        ),
        _c(
            "VG201",
            "platform",
            E,
            "a media Machine has no volume attached",
            "Redeploy so the Machine is replaced with one that mounts the volume.",
        ),
        _c(
            "VG202",
            "platform",
            E,
            "deployed mount path differs from fly.toml",
            "Redeploy, or fix fly.toml's destination.",
        ),
        _c(
            "VG203",
            "platform",
            E,
            "volume region or host is wrong",
            "Keep volumes in the Machine's region on a healthy host.",
        ),
        _c(
            "VG204",
            "platform",
            W,
            "an unattached volume carries the mount's name",
            "It may hold the missing files: destroy nothing; `volguard recover` searches a fork.",
        ),
        _c(
            "VG205",
            "platform",
            E,
            "media groups run on different volumes",
            "Run `volguard recover`, then handle media in one group or use object storage.",
        ),
        _c(
            "VG206",
            "platform",
            W,
            "several Machines of a media group, each on its own volume",
            "Scale the group to one Machine or move media to object storage.",
        ),
        _c(
            "VG207",
            "platform",
            W,
            "no recent snapshot, or backups disabled",
            "Enable scheduled snapshots or take one now.",
        ),
        _c("VG208", "platform", W, "volume nearly full", "Extend the volume."),
        _c(
            "VG209",
            "platform",
            W,
            "Machine not verified: stopped or suspended",
            "Start the Machine and verify again.",
        ),
        # -- machine: over SSH -------------------------------------------------------
        _c(
            "VG300",
            "machine",
            E,
            "Machine unreachable over the transport",
            "Check the transport (flyctl ssh, WireGuard) and that the Machine runs.",
        ),
        _c(
            "VG301",
            "machine",
            E,
            "mount destination is not a separate filesystem",
            "The volume is not mounted: files land on the ephemeral root filesystem.",
        ),
        _c(
            "VG302",
            "machine",
            E,
            "mounted read-only or unexpected filesystem type",
            "Check the volume's state and the mount options.",
        ),
        _c(
            "VG303",
            "machine",
            E,
            "MEDIA_ROOT as the running app sees it is outside the mount",
            "Fix MEDIA_ROOT in the app's environment or settings.",
        ),
        _c(
            "VG304",
            "machine",
            E,
            "MEDIA_ROOT is not writable by the app user",
            "chown the directory to the app user.",
        ),
        _c("VG305", "machine", W, "low free space or inodes", "Extend the volume."),
        _c(
            "VG306",
            "machine",
            E,
            "a file written on an app Machine is not visible to the worker",
            "The groups do not share storage: see VG103.",
        ),
        _c(
            "VG307",
            "machine",
            W,
            "MEDIA_ROOT owner or mode does not match the app user",
            "chown/chmod MEDIA_ROOT for the app user.",
        ),
        _c(
            "VG308",
            "machine",
            INFO,
            "no app process and MEDIA_ROOT unknown: MEDIA_ROOT not verified",
            "Set volguard.app_user (the user the app runs as) or MEDIA_ROOT.",
        ),
        _c(
            "VG309",
            "machine",
            INFO,
            "the app process has no MEDIA_ROOT: MEDIA_ROOT not verified",
            "Set MEDIA_ROOT in [env], or configure volguard.media_root.",
        ),
        _c(
            "VG310",
            "machine",
            E,
            "the probe's facts are incomplete: the volume checks could not be made",
            "Check the Machine by hand (`findmnt`, `stat`); a Machine that hides its mount "
            "table or devices cannot be verified.",
        ),
        _c(
            "VG311",
            "machine",
            E,
            "MEDIA_ROOT does not exist, and no app process could test it",
            "Create MEDIA_ROOT on the volume for the app user, or set volguard.app_user.",
        ),
        _c(
            "VG312",
            "machine",
            INFO,
            "the running app stores media in object storage: volume checks for media skipped",
            "Nothing to do; set volguard.media_storage = volume to run the volume checks anyway.",
        ),
        _c(
            "VG313",
            "machine",
            E,
            "uploads split between a volume and a bucket: the fleet is mid-cutover",
            "Finish the cutover: deploy the object-storage setting (or FallbackStorage) to every "
            "Machine of the media groups, then run `manage.py migrate_media` on each Machine "
            "that still holds files.",
        ),
        # -- data: database and storage ---------------------------------------------
        _c(
            "VG401",
            "data",
            E,
            "rows whose file is missing from storage",
            "Run the audit and remediate: `invoke remediate --fix`.",
        ),
        _c(
            "VG402",
            "data",
            E,
            "rows whose stored name is invalid or escapes the storage root",
            "Inspect and correct the stored names.",
        ),
        _c(
            "VG403",
            "data",
            W,
            "several rows share one file",
            "Make sure deleting one row does not remove the others' file.",
        ),
        _c(
            "VG404",
            "data",
            E,
            "remediation refused: storage looks unmounted or empty",
            "Mount the volume first; use --force only when you are sure.",
        ),
        _c(
            "VG405",
            "data",
            E,
            "rows whose file is in storage but holds 0 bytes (a truncated upload)",
            "Ask the owner to upload the file again: `invoke remediate --fix` marks the rows "
            "failed.",
        ),
    ]
}


def finding(
    check_id: str,
    message: str,
    location: Location,
    *,
    hint: str | None = None,
    evidence: dict[str, Any] | None = None,
) -> Finding:
    """Build a `Finding` for a catalogued check, with the catalogue's severity and hint.

    There is no severity argument on purpose: an id is reported at its one catalogued
    severity (a different outcome is a different id).
    """
    check = CHECKS[check_id]
    return Finding(
        id=check_id,
        severity=check.severity,
        # One line, whatever a Machine, the API or fly.toml put into the values it quotes
        # (kept exact in `location` and `evidence`): their line breaks are shown escaped.
        message=single_line(message),
        hint=check.hint if hint is None else hint,
        location=location,
        evidence=evidence or {},
    )


def ids_of(layer: str) -> tuple[str, ...]:
    """The catalogued ids of one layer (static, platform, machine, data), in order."""
    return tuple(sorted(c.id for c in CHECKS.values() if c.layer == layer))
