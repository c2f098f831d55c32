"""Machine rules VG301–VG311 over hand-built MachineFacts, and parsing the probe's answer.

Pure: no probe runs here. A healthy Machine's facts are the baseline (no finding at all); each
test changes one fact and asserts exactly which findings the rules yield.
"""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

import pytest

from volguard.catalogue import CHECKS
from volguard.findings import Finding, Severity
from volguard.fly.models import Machine
from volguard.remote.probe import (
    BEGIN,
    END,
    RC_SENTINEL,
    AppProcess,
    MachineFacts,
    MountEntry,
    ProbeError,
    exit_status,
    parse_facts,
)
from volguard.rules import RULES
from volguard.rules.machine import (
    MachineContext,
    Observation,
    app_uses_object_storage,
    fleet_rule,
    machine_check_ids,
    media_root_differs,
    media_root_not_writable,
    media_root_outside_mount,
    not_a_separate_filesystem,
    not_visible_across,
    owner_or_mode,
    read_only_or_odd_filesystem,
    run_machine_rules,
    uploads_split_volume_and_bucket,
)

VOLUME_DEVICE = "253:16"
ROOT_DEVICE = "254:0"

# -- builders ----------------------------------------------------------------------------


def facts(**over: Any) -> MachineFacts:
    """A healthy Machine: /data is an ext4 volume, the app user `app` writes /data/media."""
    base = MachineFacts(
        destination="/data",
        destination_exists=True,
        destination_device=VOLUME_DEVICE,
        root_device=ROOT_DEVICE,
        mount=MountEntry(
            mount_point="/data",
            fstype="ext4",
            options=("rw", "relatime"),
            super_options=("rw",),
            source="/dev/vdc",
        ),
        bytes_total=1_000_000_000,
        bytes_free=600_000_000,
        inodes_total=65536,
        inodes_free=60000,
        processes=(
            AppProcess(
                pid=512,
                user="app",
                cwd="/app",
                command="gunicorn config.wsgi:application",
                media_root="/data/media",
                group="app",
            ),
        ),
        app_user="app",
        media_root="/data/media",
        media_root_source="process environment",
        media_root_real="/data/media",
        media_root_exists=True,
        media_root_owner="app",
        media_root_mode="0755",
        media_root_device=VOLUME_DEVICE,
        write_test={"ok": True, "user": "app", "error": None},
    )
    return replace(base, **over)


def obs(
    id: str = "148e0d3b",
    group: str = "app",
    region: str = "syd",
    *,
    destination: str = "/data",
    **over: Any,
) -> Observation:
    machine = Machine(id=id, state="started", region=region, group=group)
    return Observation(machine=machine, destination=destination, facts=facts(**over))


def pairs(findings: list[Finding]) -> list[tuple[str, str | None]]:
    return sorted((f.id, f.location.machine) for f in findings)


def only(findings: list[Finding], check_id: str) -> Finding:
    found = [f for f in findings if f.id == check_id]
    assert len(found) == 1, [(f.id, f.message) for f in findings]
    return found[0]


def assert_names_machine(f: Finding, o: Observation) -> None:
    m = o.machine
    assert m.id in f.message
    assert f"group {m.group}" in f.message
    assert m.region in f.message
    assert f.location.machine == m.id
    assert f.evidence["machine"] == m.id
    assert f.evidence["group"] == m.group
    assert f.evidence["region"] == m.region


CTX = MachineContext()


def test_a_healthy_machine_has_no_finding() -> None:
    assert run_machine_rules([obs()], CTX) == []


# -- VG301 -------------------------------------------------------------------------------


def test_vg301_destination_on_the_root_device() -> None:
    o = obs("9080e6f1", region="ams", destination_device=ROOT_DEVICE)
    found = run_machine_rules([o], CTX)
    assert pairs(found) == [("VG301", "9080e6f1")]
    f = found[0]
    assert f.severity is Severity.ERROR
    assert_names_machine(f, o)
    assert "/data" in f.message
    assert "root filesystem" in f.message
    assert f.evidence["device"] == ROOT_DEVICE
    assert f.evidence["root_device"] == ROOT_DEVICE


def test_vg301_bind_mount_of_the_root_filesystem_is_not_a_volume() -> None:
    # /data is a mount point, but of the root filesystem's own device: still no volume
    o = obs(
        destination_device=ROOT_DEVICE,
        mount=MountEntry("/data", "ext4", ("rw",), ("rw",), "/dev/vda"),
    )
    assert pairs(run_machine_rules([o], CTX)) == [("VG301", o.machine.id)]


def test_vg301_destination_missing() -> None:
    o = obs(
        "3d8d9e4c",
        group="worker",
        region="fra",
        destination_exists=False,
        destination_device=None,
        mount=None,
        bytes_total=None,
        bytes_free=None,
        inodes_total=None,
        inodes_free=None,
    )
    found = list(not_a_separate_filesystem(o, CTX))
    assert len(found) == 1
    assert found[0].id == "VG301"
    assert "does not exist" in found[0].message
    assert_names_machine(found[0], o)


def test_vg301_silent_for_a_separate_device() -> None:
    assert list(not_a_separate_filesystem(obs(), CTX)) == []


# -- VG302 -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "super_options"),
    [(("ro", "relatime"), ("rw",)), (("rw", "relatime"), ("ro", "errors=remount-ro"))],
    ids=["mount-options", "super-options"],
)
def test_vg302_read_only(options: tuple[str, ...], super_options: tuple[str, ...]) -> None:
    o = obs(region="lhr", mount=MountEntry("/data", "ext4", options, super_options, "/dev/vdc"))
    found = run_machine_rules([o], CTX)
    assert pairs(found) == [("VG302", o.machine.id)]
    assert "read-only" in found[0].message
    assert found[0].severity is Severity.ERROR
    assert_names_machine(found[0], o)


def test_vg302_errors_remount_ro_alone_is_not_read_only() -> None:
    # the option *name* contains "ro"; only the option "ro" means read-only
    o = obs(mount=MountEntry("/data", "ext4", ("rw",), ("rw", "errors=remount-ro"), "/dev/vdc"))
    assert list(read_only_or_odd_filesystem(o, CTX)) == []


def test_vg302_unexpected_filesystem_type() -> None:
    o = obs(mount=MountEntry("/data", "tmpfs", ("rw",), ("rw", "size=65536k"), "tmpfs"))
    found = list(read_only_or_odd_filesystem(o, MachineContext(fstypes=("ext4",))))
    assert [f.id for f in found] == ["VG302"]
    assert "tmpfs" in found[0].message
    assert "ext4" in found[0].message
    assert found[0].evidence["fstype"] == "tmpfs"
    assert_names_machine(found[0], o)
    assert list(read_only_or_odd_filesystem(o, MachineContext(fstypes=("ext4", "tmpfs")))) == []


def test_vg302_read_only_and_odd_type_is_one_finding() -> None:
    o = obs(mount=MountEntry("/data", "xfs", ("ro",), ("ro",), "/dev/vdc"))
    found = list(read_only_or_odd_filesystem(o, CTX))
    assert len(found) == 1
    assert "read-only" in found[0].message
    assert "xfs" in found[0].message


def test_vg302_silent_when_not_a_separate_filesystem() -> None:
    # read-only tmpfs, but on the root device: VG301 speaks, VG302 does not
    o = obs(
        destination_device=ROOT_DEVICE,
        mount=MountEntry("/", "tmpfs", ("ro",), ("ro",), "tmpfs"),
    )
    assert list(read_only_or_odd_filesystem(o, CTX)) == []
    assert pairs(run_machine_rules([o], CTX)) == [("VG301", o.machine.id)]


# -- VG303 -------------------------------------------------------------------------------


def test_vg303_media_root_outside_the_destination() -> None:
    o = obs(
        "e2865013",
        group="worker",
        region="syd",
        media_root="/app/media",
        media_root_real="/app/media",
    )
    found = run_machine_rules([o], CTX)
    assert pairs(found) == [("VG303", "e2865013")]
    f = found[0]
    assert f.severity is Severity.ERROR
    assert "/app/media" in f.message
    assert "/data" in f.message
    assert f.evidence["media_root"] == "/app/media"
    assert_names_machine(f, o)


def test_vg303_symlink_resolving_outside_the_destination() -> None:
    # /data/media looks right, but it is a symlink to the root filesystem
    o = obs(media_root="/data/media", media_root_real="/srv/media")
    found = list(media_root_outside_mount(o, CTX))
    assert [f.id for f in found] == ["VG303"]
    assert "/srv/media" in found[0].message
    assert found[0].evidence["media_root_real"] == "/srv/media"
    assert_names_machine(found[0], o)


def test_vg303_silent_when_inside() -> None:
    assert list(media_root_outside_mount(obs(media_root_real="/data/media/uploads"), CTX)) == []
    # a path that merely starts with the destination's name is not inside it
    found = list(media_root_outside_mount(obs(media_root_real="/database/media"), CTX))
    assert [f.id for f in found] == ["VG303"]


def test_vg308_no_app_process_and_no_media_root_is_not_verified() -> None:
    o = obs(
        processes=(),
        media_root=None,
        media_root_real=None,
        media_root_source=None,
        write_test=None,
    )
    found = run_machine_rules([o], CTX)
    # "could not verify" has its own id: VG303 (MEDIA_ROOT wrong) says nothing it has not seen
    assert pairs(found) == [("VG308", o.machine.id)]
    assert found[0].severity is Severity.INFO
    assert "not verified" in found[0].message
    assert found[0].hint.startswith("Set volguard.app_user")
    assert_names_machine(found[0], o)


def test_vg309_app_process_without_media_root_is_not_verified() -> None:
    o = obs(media_root=None, media_root_real=None, media_root_source=None, write_test=None)
    found = run_machine_rules([o], CTX)
    assert pairs(found) == [("VG309", o.machine.id)]
    f = found[0]
    assert f.severity is Severity.INFO
    assert "pid 512" in f.message
    assert "user app" in f.message
    assert f.evidence["pid"] == 512
    assert_names_machine(f, o)


def test_vg308_and_vg309_silent_when_media_root_is_known() -> None:
    # no app process found, but volguard was given MEDIA_ROOT: VG303/VG304 can judge it
    o = obs(processes=())
    assert run_machine_rules([o], CTX) == []


def test_vg303_media_root_differs_between_groups() -> None:
    web = obs("web1", group="app", media_root="/data/media", media_root_real="/data/media")
    worker = obs(
        "work1",
        group="worker",
        region="ams",
        destination="/data",
        media_root="/data/uploads",
        media_root_real="/data/uploads",
    )
    found = media_root_differs([web, worker], CTX)
    assert len(found) == 1
    f = found[0]
    assert f.id == "VG303"
    assert "app: /data/media" in f.message
    assert "worker: /data/uploads" in f.message
    assert f.evidence["media_roots"] == {"app": ["/data/media"], "worker": ["/data/uploads"]}
    # both MEDIA_ROOTs are inside /data, so this is the only finding of the pair
    assert pairs(run_machine_rules([web, worker], CTX)) == [("VG303", "web1")]


def test_vg303_same_root_through_a_symlink_is_not_a_difference() -> None:
    web = obs("web1", group="app", media_root="/data/media", media_root_real="/data/media")
    worker = obs("work1", group="worker", media_root="/app/media", media_root_real="/data/media")
    assert media_root_differs([web, worker], CTX) == []
    assert run_machine_rules([web, worker], CTX) == []


def test_vg303_media_root_on_the_root_device_inside_the_destination() -> None:
    # /data is the volume, but /data/media is a mount of the root filesystem over it:
    # the path is inside /data, the files are not on the volume. The probe reports
    # media_root_device for exactly this; a check "that cannot be fooled" must flag it.
    o = obs(media_root_device=ROOT_DEVICE)
    found = run_machine_rules([o], CTX)
    assert [f.id for f in found if f.id in ("VG301", "VG303")], (
        "MEDIA_ROOT on the root filesystem's device went unreported"
    )


# -- VG304 -------------------------------------------------------------------------------


def test_vg304_app_user_cannot_write() -> None:
    error = "PermissionError: [Errno 13] Permission denied: '/data/media/.volguard-probe-x'"
    o = obs(region="cdg", write_test={"ok": False, "user": "app", "error": error})
    found = run_machine_rules([o], CTX)
    assert pairs(found) == [("VG304", o.machine.id)]
    f = found[0]
    assert f.severity is Severity.ERROR
    assert "app" in f.message
    assert "Permission denied" in f.message
    assert f.evidence["user"] == "app"
    assert f.evidence["error"] == error
    assert_names_machine(f, o)


def test_vg304_silent_when_the_write_worked() -> None:
    assert list(media_root_not_writable(obs(), CTX)) == []


# -- VG305 -------------------------------------------------------------------------------


def test_vg305_low_space() -> None:
    o = obs(region="nrt", bytes_total=1000, bytes_free=50)
    found = run_machine_rules([o], MachineContext(min_free_percent=10))
    assert pairs(found) == [("VG305", o.machine.id)]
    f = found[0]
    assert f.severity is Severity.WARNING
    assert "5.0% space free" in f.message
    assert "threshold 10%" in f.message
    assert_names_machine(f, o)


def test_vg305_low_inodes() -> None:
    o = obs(inodes_total=1000, inodes_free=40)
    found = run_machine_rules([o], MachineContext(min_free_percent=10))
    assert pairs(found) == [("VG305", o.machine.id)]
    assert "4.0% inodes free" in found[0].message
    assert "space free" not in found[0].message


def test_vg305_both_is_one_finding_and_threshold_respected() -> None:
    o = obs(bytes_total=1000, bytes_free=50, inodes_total=1000, inodes_free=40)
    found = run_machine_rules([o], MachineContext(min_free_percent=10))
    assert pairs(found) == [("VG305", o.machine.id)]
    assert "space free" in found[0].message
    assert "inodes free" in found[0].message
    assert run_machine_rules([o], MachineContext(min_free_percent=3)) == []


# -- VG306 -------------------------------------------------------------------------------

PROBE = ".volguard-probe-abc123-v-web1"


def test_vg306_probe_not_visible_on_a_worker() -> None:
    writer = obs("web1", group="app", visibility_probe=PROBE)
    reader = obs("work1", group="worker", region="ams", visible={PROBE: False})
    found = not_visible_across([writer, reader], CTX)
    assert len(found) == 1
    f = found[0]
    assert f.id == "VG306"
    assert f.severity is Severity.ERROR
    assert "web1" in f.message
    assert "work1" in f.message
    assert "group worker" in f.message
    assert f.location.machine == "work1"
    assert f.evidence == {"writer": "web1", "readers": ["work1"], "probe": PROBE}
    assert pairs(run_machine_rules([writer, reader], CTX)) == [("VG306", "work1")]


def test_vg306_several_blind_workers_are_one_finding() -> None:
    writer = obs("web1", group="app", visibility_probe=PROBE)
    readers = [obs(f"work{i}", group="worker", visible={PROBE: False}) for i in (1, 2)]
    found = not_visible_across([writer, *readers], CTX)
    assert len(found) == 1
    assert found[0].evidence["readers"] == ["work1", "work2"]


def test_vg306_silent_when_visible() -> None:
    writer = obs("web1", group="app", visibility_probe=PROBE)
    reader = obs("work1", group="worker", visible={PROBE: True})
    assert not_visible_across([writer, reader], CTX) == []


def test_vg306_same_group_machines_are_not_judged() -> None:
    # two app Machines have a volume each (Fly volumes are per Machine): not VG306's concern
    writer = obs("web1", group="app", visibility_probe=PROBE)
    other_web = obs("web2", group="app", visible={PROBE: False})
    assert not_visible_across([writer, other_web], CTX) == []


# -- VG307 -------------------------------------------------------------------------------


def test_vg307_owned_by_root() -> None:
    o = obs(region="yyz", media_root_owner="root")
    found = run_machine_rules([o], CTX)
    assert pairs(found) == [("VG307", o.machine.id)]
    f = found[0]
    assert f.severity is Severity.WARNING
    assert "owned by root, not app" in f.message
    assert f.evidence["owner"] == "root"
    assert f.evidence["app_user"] == "app"
    assert_names_machine(f, o)


def test_vg307_mode_without_owner_write() -> None:
    o = obs(media_root_mode="0555")
    found = list(owner_or_mode(o, CTX))
    assert [f.id for f in found] == ["VG307"]
    assert "0555" in found[0].message
    assert found[0].severity is Severity.WARNING


def test_vg307_configured_app_user_wins() -> None:
    o = obs()  # owned by `app`, but the configuration says the app runs as `www-data`
    found = list(owner_or_mode(o, MachineContext(app_user="www-data")))
    assert [f.id for f in found] == ["VG307"]
    assert "not www-data" in found[0].message


def test_vg307_silent_when_the_app_runs_as_root() -> None:
    o = obs(app_user="root", media_root_owner="root", media_root_mode="0555")
    assert list(owner_or_mode(o, CTX)) == []


# -- the probe's answer ------------------------------------------------------------------

RESULT = {
    "errors": [],
    "destination": "/data",
    "destination_exists": True,
    "destination_device": VOLUME_DEVICE,
    "root_device": ROOT_DEVICE,
    "mount": {
        "mount_point": "/data",
        "fstype": "ext4",
        "options": ["rw", "relatime"],
        "super_options": ["rw"],
        "source": "/dev/vdc",
    },
    "processes": [
        {
            "pid": 512,
            "user": "app",
            "uid": 1000,
            "cwd": "/app",
            "command": "gunicorn",
            "media_root": "/data/media",
            "group": "app",
        }
    ],
    "app_user": "app",
    "media_root": "/data/media",
    "media_root_real": "/data/media",
    "write_test": {"ok": True, "user": "app", "error": None},
}


def fly_output(body: str, rc: int = 0, *, newline: str = "\n") -> str:
    """What `fly ssh console --command` prints: its chatter around the probe's own output."""
    lines = [
        "No machine specified, using 148e0d3b0c9e89...",
        "Connecting to fdaa:0:3b99:a7b:1f4:a2c1:8b51:2... complete",
        "",
        BEGIN,
        body,
        END,
        f"{RC_SENTINEL}{rc}",
        "Connecting to fdaa::3... complete",
        "Error: ssh shell: Process exited with status 1" if rc else "",
    ]
    return newline.join(lines)


@pytest.mark.parametrize("newline", ["\n", "\r\n"], ids=["lf", "crlf"])
def test_parse_facts_through_flyctl_chatter(newline: str) -> None:
    out = fly_output(json.dumps(RESULT), newline=newline)
    assert exit_status(out) == 0
    data = parse_facts(out)
    assert data == RESULT
    parsed = MachineFacts.from_probe(data)
    assert parsed.separate_filesystem
    assert parsed.mount == MountEntry("/data", "ext4", ("rw", "relatime"), ("rw",), "/dev/vdc")
    assert parsed.processes[0].media_root == "/data/media"
    assert parsed.write_test == {"ok": True, "user": "app", "error": None}


def test_exit_status_is_the_probes_own() -> None:
    assert exit_status(fly_output(json.dumps(RESULT), rc=3)) == 3
    # the sentinel inside the JSON (a process's command line) is not a line of its own
    tricky = dict(RESULT, processes=[dict(RESULT["processes"][0], command=f"x\n{RC_SENTINEL}9")])
    assert exit_status(fly_output(json.dumps(tricky), rc=0)) == 0


def test_exit_status_missing() -> None:
    assert exit_status("Connecting to fdaa::3... complete\nError: tunnel unavailable\n") is None
    assert exit_status(f"echo {RC_SENTINEL}0\n") is None


@pytest.mark.parametrize(
    "out",
    [
        "Connecting to fdaa::3... complete\nNo machine specified, using 148e0d3b\n",
        f"Connecting to fdaa::3... complete\n{BEGIN}\n{{}}\n",  # killed before the end marker
        f"{END}\n{{}}\n{BEGIN}\n",  # markers in the wrong order
        "",
    ],
    ids=["none", "no-end", "reversed", "empty"],
)
def test_parse_facts_without_markers(out: str) -> None:
    with pytest.raises(ProbeError):
        parse_facts(out)


@pytest.mark.parametrize("body", ['{"errors": [', "not json at all", "[1, 2]", '"text"'], ids=str)
def test_parse_facts_bad_json(body: str) -> None:
    with pytest.raises(ProbeError):
        parse_facts(fly_output(body))


def test_a_fatal_probe_result_is_a_probe_error() -> None:
    data = parse_facts(
        fly_output(json.dumps({"errors": ["probe failed: KeyError: 'destination'"], "fatal": True}))
    )
    with pytest.raises(ProbeError, match="KeyError: 'destination'"):
        MachineFacts.from_probe(data)


def test_facts_with_no_mount_and_odd_processes() -> None:
    parsed = MachineFacts.from_probe(
        {"destination": "/data", "destination_exists": False, "mount": None, "processes": [7]}
    )
    assert parsed.mount is None
    assert parsed.processes == ()
    assert not parsed.separate_filesystem


# -- the registries ------------------------------------------------------------------------


def test_cross_machine_rules_are_registered_fleet_rules() -> None:
    assert RULES["fleet"] == {
        "VG303": media_root_differs,
        "VG306": not_visible_across,
        "VG312": app_uses_object_storage,
        "VG313": uploads_split_volume_and_bucket,
    }
    # every catalogued Machine-layer id, VG300 (the layer's own) included
    machine_ids = sorted(i for i, c in CHECKS.items() if c.layer == "machine")
    assert machine_check_ids() == tuple(machine_ids)


def test_a_second_fleet_rule_for_one_id_is_refused() -> None:
    with pytest.raises(RuntimeError, match="two fleet rules claim VG306"):
        fleet_rule("VG306")(lambda observations, context: [])
    assert RULES["fleet"]["VG306"] is not_visible_across


def test_run_machine_rules_runs_the_fleet_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[int] = []

    def count(observations: list[Observation], context: MachineContext) -> list[Finding]:
        seen.append(len(observations))
        return []

    monkeypatch.setitem(RULES["fleet"], "VG999", count)
    assert run_machine_rules([obs("a"), obs("b", group="worker")], CTX) == []
    assert seen == [2]  # called once, with every Machine


# -- VG310, VG311: missing facts never pass ----------------------------------------------------


def test_vg310_separate_device_without_a_mount_entry() -> None:
    # the mount table could not be read (or lacks the entry): VG302 cannot judge, so no "ok"
    o = obs(mount=None, errors=("mountinfo: [Errno 13] Permission denied",))
    found = run_machine_rules([o], CTX)
    assert pairs(found) == [("VG310", o.machine.id)]
    f = found[0]
    assert f.severity is Severity.ERROR
    assert "no entry" in f.message
    assert "mountinfo: [Errno 13] Permission denied" in f.message
    assert_names_machine(f, o)


def test_vg310_covering_mount_is_the_root_filesystems() -> None:
    o = obs(mount=MountEntry("/", "overlay", ("rw",), ("rw",), "overlay"))
    assert pairs(run_machine_rules([o], CTX)) == [("VG310", o.machine.id)]


@pytest.mark.parametrize("field", ["destination_device", "root_device"])
def test_vg310_unreadable_device_is_not_vg301(field: str) -> None:
    # VG301 would claim "on the root filesystem (device None, same as /)": it has not seen that
    o = obs(**{field: None})
    found = run_machine_rules([o], CTX)
    assert pairs(found) == [("VG310", o.machine.id)]
    assert "could not be read" in found[0].message


@pytest.mark.parametrize(
    "over",
    [
        {"bytes_free": "600"},
        {"destination_exists": "yes"},
        {"media_root": ["/data/media"]},
        {"media_root_mode": "rwx"},
        {"processes": ({"pid": 1},)},
        {"mount": MountEntry("/data", "ext4", "rw", (), "/dev/vdc")},
        {"visible": {PROBE: "yes"}},
        {"write_test": "ok"},
    ],
    ids=lambda over: next(iter(over)),
)
def test_vg310_facts_of_the_wrong_type_never_pass_nor_crash(over: dict[str, Any]) -> None:
    o = obs(**over)
    found = run_machine_rules([o, obs("work1", group="worker")], CTX)
    assert pairs(found) == [("VG310", o.machine.id)]  # and no other rule judged them
    assert f"{next(iter(over))} has the wrong type" in found[0].message


def test_vg311_media_root_missing_with_no_app_process() -> None:
    o = obs(processes=(), app_user=None, media_root_exists=False, write_test=None)
    found = run_machine_rules([o], CTX)
    assert pairs(found) == [("VG311", o.machine.id)]
    f = found[0]
    assert f.severity is Severity.ERROR
    assert "/data/media does not exist" in f.message
    assert_names_machine(f, o)


def test_vg311_silent_when_the_app_users_write_test_speaks() -> None:
    # with an app user the write test runs; its failure is VG304, not VG311
    o = obs(
        media_root_exists=False,
        write_test={"ok": False, "user": "app", "error": "FileNotFoundError"},
    )
    assert pairs(run_machine_rules([o], CTX)) == [("VG304", o.machine.id)]
