"""Platform rules VG201–VG209: fly.toml joined with a hand-built Fleet, through run_platform."""

from __future__ import annotations

import datetime as dt
import textwrap

import pytest

from volguard.findings import Finding, Severity
from volguard.fly.fleet import Fleet
from volguard.fly.models import Machine, MachineMount, Snapshot, Volume
from volguard.flytoml import FlyConfig, parse_fly_toml
from volguard.rules import PlatformContext, run_platform

UTC = dt.UTC
NOW = dt.datetime(2026, 9, 1, 12, 0, tzinfo=UTC)

# One group (`app`), one mount without `processes`: it reaches the default group, `app`.
SINGLE = """\
app = "mysite"
primary_region = "syd"

[env]
  MEDIA_ROOT = "/data/media"

[[mounts]]
  source = "data"
  destination = "/data"
"""

# The incident (the repo's fly.toml, trimmed): app and worker each get their own "data" volume.
INCIDENT = """\
app = "test-blue-smoke-97"
primary_region = "syd"

[env]
  MEDIA_ROOT = "/data/media"

[processes]
  app = "gunicorn config.wsgi:application"
  worker = "celery -A config worker"

[mounts]
  source = "data"
  destination = "/data"
  processes = ["app", "worker"]
"""


# -- builders ----------------------------------------------------------------------------


def machine(
    id: str,
    group: str = "app",
    region: str = "syd",
    *,
    state: str = "started",
    volume: str | None = None,
    path: str = "/data",
    name: str = "data",
    host_status: str = "ok",
) -> Machine:
    mounts = (MachineMount(volume, path, name),) if volume else ()
    return Machine(
        id=id, state=state, region=region, group=group, mounts=mounts, host_status=host_status
    )


def volume(
    id: str,
    name: str = "data",
    region: str = "syd",
    *,
    attached_to: str | None = None,
    size_gb: int = 10,
    used: float | None = 0.25,
    host_status: str = "ok",
    auto_backup_enabled: bool | None = True,
) -> Volume:
    blocks = 0 if used is None else 10_000
    free = 0 if used is None else round(blocks * (1 - used))
    return Volume(
        id=id,
        name=name,
        state="created",
        region=region,
        size_gb=size_gb,
        attached_machine_id=attached_to,
        host_status=host_status,
        blocks=blocks,
        blocks_free=free,
        blocks_avail=free,
        block_size=4096,
        snapshot_retention=5,
        auto_backup_enabled=auto_backup_enabled,
    )


def snapshot(id: str, hours_ago: float) -> Snapshot:
    return Snapshot(id=id, created_at=NOW - dt.timedelta(hours=hours_ago), size=1024)


def fleet(
    machines: list[Machine],
    volumes: list[Volume],
    snapshots: dict[str, tuple[Snapshot, ...]] | None = None,
) -> Fleet:
    """Like load_fleet: every volume has its snapshot list (one 12 h old unless given)."""
    lists = {v.id: (snapshot(f"vs_{v.id}", 12),) for v in volumes}
    lists.update(snapshots or {})
    return Fleet(
        app="mysite",
        machines=tuple(machines),
        volumes=tuple(volumes),
        snapshots=lists,
        observed_at=NOW,
    )


def attached_pair(
    machine_id: str, volume_id: str, group: str = "app", region: str = "syd", **vol: object
) -> tuple[Machine, Volume]:
    return (
        machine(machine_id, group, region, volume=volume_id),
        volume(volume_id, region=region, attached_to=machine_id, **vol),
    )


def config(text: str) -> FlyConfig:
    parsed, problems = parse_fly_toml(textwrap.dedent(text), "fly.toml")
    assert problems == [], problems
    assert parsed is not None
    return parsed


def run(
    text: str,
    the_fleet: Fleet,
    groups: tuple[str, ...] = ("app",),
    **context: object,
) -> list[Finding]:
    findings = run_platform(
        config(text), the_fleet, PlatformContext(media_groups=groups, now=NOW, **context)
    )
    for f in findings:
        # Every platform finding points at a Machine or a volume, never at a file.
        assert f.location.machine or f.location.volume, f
        assert f.location.file is None, f
        assert f.id.startswith("VG2"), f
        assert f.message, f
    return findings


def ids(findings: list[Finding]) -> list[str]:
    return sorted(f.id for f in findings)


def only(findings: list[Finding], check_id: str) -> Finding:
    assert ids(findings) == [check_id], [(f.id, f.message) for f in findings]
    return findings[0]


# -- healthy -----------------------------------------------------------------------------


def test_healthy_single_group_has_no_findings():
    m, v = attached_pair("m_app1", "vol_app1")
    assert run(SINGLE, fleet([m], [v])) == []


def test_healthy_incident_toml_with_only_app_handling_media_has_no_findings():
    app_m, app_v = attached_pair("m_app1", "vol_app1")
    assert run(INCIDENT, fleet([app_m], [app_v]), groups=("app",)) == []


def test_empty_fleet_has_no_findings():
    assert run(SINGLE, fleet([], [])) == []


# -- VG205: the incident -------------------------------------------------------------------


def test_incident_app_and_worker_each_on_its_own_volume_is_vg205():
    app_m, app_v = attached_pair("m_app1", "vol_app1")
    wrk_m, wrk_v = attached_pair("m_wrk1", "vol_wrk1", group="worker")
    findings = run(INCIDENT, fleet([app_m, wrk_m], [app_v, wrk_v]), groups=("app", "worker"))
    f = only(findings, "VG205")
    assert f.severity == Severity.ERROR
    for fact in ("vol_app1", "vol_wrk1", "m_app1", "m_wrk1", "app", "worker", "syd"):
        assert fact in f.message
    assert f.location.machine in {"m_app1", "m_wrk1"}
    assert f.evidence["groups"] == {
        "app": [{"machine": "m_app1", "volume": "vol_app1", "region": "syd"}],
        "worker": [{"machine": "m_wrk1", "volume": "vol_wrk1", "region": "syd"}],
    }


def test_worker_not_a_media_group_gives_no_vg205():
    app_m, app_v = attached_pair("m_app1", "vol_app1")
    wrk_m, wrk_v = attached_pair("m_wrk1", "vol_wrk1", group="worker")
    assert run(INCIDENT, fleet([app_m, wrk_m], [app_v, wrk_v]), groups=("app",)) == []


def test_vg205_needs_both_groups_started():
    app_m, app_v = attached_pair("m_app1", "vol_app1")
    wrk_m = machine("m_wrk1", "worker", volume="vol_wrk1", state="stopped")
    wrk_v = volume("vol_wrk1", attached_to="m_wrk1")
    findings = run(INCIDENT, fleet([app_m, wrk_m], [app_v, wrk_v]), groups=("app", "worker"))
    f = only(findings, "VG209")
    assert f.location.machine == "m_wrk1"


# -- VG201: no volume attached ---------------------------------------------------------------


def test_started_machine_without_volume_is_vg201():
    findings = run(SINGLE, fleet([machine("m_app1")], []))
    f = only(findings, "VG201")
    assert f.severity == Severity.ERROR
    assert f.location.machine == "m_app1"
    for fact in ("m_app1", "app", "syd", '"data"', "/data"):
        assert fact in f.message
    assert "wait" not in f.message  # nothing is waiting anywhere
    assert f.evidence["machine"] == "m_app1"
    assert f.evidence["group"] == "app"
    assert f.evidence["region"] == "syd"
    assert f.evidence["expected_volume"] == "data"


def test_vg201_mentions_the_unattached_volume_waiting_in_its_region():
    old = volume("vol_old1", used=0.3)
    findings = run(SINGLE, fleet([machine("m_app1")], [old]))
    assert ids(findings) == ["VG201", "VG204"]
    vg201 = next(f for f in findings if f.id == "VG201")
    assert "1 unattached" in vg201.message
    assert "waits in syd (vol_old1)" in vg201.message
    vg204 = next(f for f in findings if f.id == "VG204")
    assert vg204.location.volume == "vol_old1"


def test_vg201_does_not_count_a_volume_waiting_in_another_region():
    elsewhere = volume("vol_mel1", region="mel")
    findings = run(SINGLE, fleet([machine("m_app1")], [elsewhere]))
    assert ids(findings) == ["VG201", "VG204"]
    vg201 = next(f for f in findings if f.id == "VG201")
    assert "wait" not in vg201.message
    assert "mel" not in vg201.message


def test_vg201_does_not_count_a_waiting_volume_on_an_unhealthy_host():
    sick = volume("vol_sick1", host_status="unreachable")
    findings = run(SINGLE, fleet([machine("m_app1")], [sick]))
    vg201 = next(f for f in findings if f.id == "VG201")
    assert "wait" not in vg201.message


def test_no_vg201_for_a_group_fly_toml_gives_no_mount():
    text = INCIDENT.replace('processes = ["app", "worker"]', 'processes = ["app"]')
    app_m, app_v = attached_pair("m_app1", "vol_app1")
    # The worker has no volume, but fly.toml gives it none either: that is VG102's business.
    findings = run(text, fleet([app_m, machine("m_wrk1", "worker")], [app_v]), ("app", "worker"))
    assert findings == []


def test_no_vg201_for_a_machine_outside_the_media_groups():
    app_m, app_v = attached_pair("m_app1", "vol_app1")
    findings = run(INCIDENT, fleet([app_m, machine("m_wrk1", "worker")], [app_v]), ("app",))
    assert findings == []


@pytest.mark.parametrize("state", ["destroyed", "destroying", "replaced"])
def test_gone_machines_are_ignored(state):
    assert run(SINGLE, fleet([machine("m_gone", state=state)], [])) == []


# -- VG202: drift ------------------------------------------------------------------------


def test_deployed_mount_path_differs_from_fly_toml_is_vg202():
    m = machine("m_app1", volume="vol_app1", path="/mnt")
    v = volume("vol_app1", attached_to="m_app1")
    f = only(run(SINGLE, fleet([m], [v])), "VG202")
    assert f.location.machine == "m_app1"
    for fact in ("m_app1", "vol_app1", "/mnt", "/data", "syd"):
        assert fact in f.message
    assert f.evidence["deployed_path"] == "/mnt"
    assert f.evidence["expected_path"] == "/data"
    assert f.evidence["volume"] == "vol_app1"
    assert f.evidence["machine"] == "m_app1"


@pytest.mark.parametrize("path", ["/data/", "//data", "/data/."])
def test_equivalent_mount_paths_are_not_drift(path):
    m = machine("m_app1", volume="vol_app1", path=path)
    v = volume("vol_app1", attached_to="m_app1")
    assert run(SINGLE, fleet([m], [v])) == []


def test_deployed_volume_name_differs_from_fly_toml_is_vg202():
    m = machine("m_app1", volume="vol_app1", name="olddata")
    v = volume("vol_app1", name="olddata", attached_to="m_app1")
    f = only(run(SINGLE, fleet([m], [v])), "VG202")
    assert "olddata" in f.message
    assert '"data"' in f.message


# -- VG203: region, host ---------------------------------------------------------------------


def test_volume_in_another_region_is_vg203():
    m = machine("m_app1", region="syd", volume="vol_mel1")
    v = volume("vol_mel1", region="mel", attached_to="m_app1")
    f = only(run(SINGLE, fleet([m], [v])), "VG203")
    assert f.location.machine == "m_app1"
    for fact in ("m_app1", "vol_mel1", "mel", "syd"):
        assert fact in f.message
    assert f.evidence["volume"] == "vol_mel1"
    assert f.evidence["region"] == "syd"


def test_volume_host_unreachable_is_vg203():
    m, v = attached_pair("m_app1", "vol_app1", host_status="unreachable")
    f = only(run(SINGLE, fleet([m], [v])), "VG203")
    assert "vol_app1" in f.message
    assert "unreachable" in f.message
    assert f.evidence["volume"] == "vol_app1"


def test_machine_host_not_ok_is_vg203():
    m = machine("m_app1", volume="vol_app1", host_status="unknown")
    v = volume("vol_app1", attached_to="m_app1")
    f = only(run(SINGLE, fleet([m], [v])), "VG203")
    assert "m_app1" in f.message
    assert "unknown" in f.message


# -- VG204: unattached volume with the mount's name -------------------------------------------


def test_unattached_data_volume_is_vg204_with_size_and_usage():
    m, v = attached_pair("m_app1", "vol_app1")
    old = volume("vol_old1", size_gb=10, used=0.64)
    f = only(run(SINGLE, fleet([m], [v, old])), "VG204")
    assert f.severity == Severity.WARNING
    assert f.location.volume == "vol_old1"
    for fact in ("vol_old1", '"data"', "syd", "10 GB", "64%"):
        assert fact in f.message
    assert f.evidence["volume"] == "vol_old1"
    assert f.evidence["name"] == "data"
    assert f.evidence["region"] == "syd"
    assert f.evidence["size_gb"] == 10
    assert f.evidence["used_fraction"] == pytest.approx(0.64)


def test_unattached_volume_without_usage_says_so():
    m, v = attached_pair("m_app1", "vol_app1")
    f = only(run(SINGLE, fleet([m], [v, volume("vol_old1", used=None)])), "VG204")
    assert "usage not reported" in f.message
    assert f.evidence["used_fraction"] is None


def test_unattached_volume_of_another_name_is_not_vg204():
    m, v = attached_pair("m_app1", "vol_app1")
    assert run(SINGLE, fleet([m], [v, volume("vol_scratch", name="scratch")])) == []


# -- VG206: one group spread over volumes ------------------------------------------------------


def test_two_app_machines_each_on_own_volume_is_vg206():
    m1, v1 = attached_pair("m_app1", "vol_app1")
    m2, v2 = attached_pair("m_app2", "vol_app2")
    f = only(run(SINGLE, fleet([m1, m2], [v1, v2])), "VG206")
    assert f.severity == Severity.WARNING
    assert f.location.machine == "m_app1"
    for fact in ("m_app1", "m_app2", "vol_app1", "vol_app2", '"app"'):
        assert fact in f.message
    assert f.evidence["group"] == "app"
    assert f.evidence["machines"] == [
        {"machine": "m_app1", "volume": "vol_app1"},
        {"machine": "m_app2", "volume": "vol_app2"},
    ]


def test_one_started_and_one_stopped_app_machine_is_not_vg206():
    m1, v1 = attached_pair("m_app1", "vol_app1")
    m2 = machine("m_app2", volume="vol_app2", state="stopped")
    v2 = volume("vol_app2", attached_to="m_app2")
    f = only(run(SINGLE, fleet([m1, m2], [v1, v2])), "VG209")
    assert f.location.machine == "m_app2"


# -- VG207: snapshots ------------------------------------------------------------------------


def test_newest_snapshot_240_hours_old_is_vg207():
    m, v = attached_pair("m_app1", "vol_app1")
    old = (snapshot("vs_a", 300), snapshot("vs_b", 240))
    f = only(run(SINGLE, fleet([m], [v], {"vol_app1": old})), "VG207")
    assert f.severity == Severity.WARNING
    assert f.location.volume == "vol_app1"
    assert "vol_app1" in f.message
    assert "240 h old" in f.message
    assert f.evidence == {"volume": "vol_app1", "snapshots": 2}


def test_recent_snapshot_among_old_ones_is_fine():
    m, v = attached_pair("m_app1", "vol_app1")
    snaps = (snapshot("vs_a", 240), snapshot("vs_b", 20), snapshot("vs_c", 120))
    assert run(SINGLE, fleet([m], [v], {"vol_app1": snaps})) == []


def test_no_snapshot_at_all_is_vg207():
    m, v = attached_pair("m_app1", "vol_app1")
    f = only(run(SINGLE, fleet([m], [v], {"vol_app1": ()})), "VG207")
    assert "no snapshot" in f.message
    assert f.evidence["snapshots"] == 0


def test_snapshots_without_a_time_count_as_none():
    m, v = attached_pair("m_app1", "vol_app1")
    undated = (Snapshot(id="vs_x", created_at=None),)
    f = only(run(SINGLE, fleet([m], [v], {"vol_app1": undated})), "VG207")
    assert "no snapshot" in f.message


def test_auto_backup_disabled_is_vg207():
    m, v = attached_pair("m_app1", "vol_app1", auto_backup_enabled=False)
    f = only(run(SINGLE, fleet([m], [v])), "VG207")
    assert "disabled" in f.message
    assert f.location.volume == "vol_app1"


def test_backups_disabled_and_stale_are_one_finding():
    m, v = attached_pair("m_app1", "vol_app1", auto_backup_enabled=False)
    f = only(run(SINGLE, fleet([m], [v], {"vol_app1": (snapshot("vs_a", 100),)})), "VG207")
    assert "disabled" in f.message
    assert "100 h old" in f.message


def test_snapshot_age_policy_comes_from_the_context():
    m, v = attached_pair("m_app1", "vol_app1")
    the_fleet = fleet([m], [v], {"vol_app1": (snapshot("vs_a", 30),)})
    assert run(SINGLE, the_fleet) == []  # default policy: 48 h
    f = only(run(SINGLE, the_fleet, snapshot_max_age_hours=24), "VG207")
    assert "30 h old" in f.message


def test_snapshots_of_non_media_volumes_are_not_checked():
    m, v = attached_pair("m_app1", "vol_app1")
    other = volume("vol_cache", name="cache", attached_to=None, auto_backup_enabled=False)
    assert run(SINGLE, fleet([m], [v, other], {"vol_cache": ()})) == []


# -- VG208: nearly full ------------------------------------------------------------------------


def test_volume_95_percent_full_is_vg208():
    m, v = attached_pair("m_app1", "vol_app1", used=0.95)
    f = only(run(SINGLE, fleet([m], [v])), "VG208")
    assert f.severity == Severity.WARNING
    assert f.location.volume == "vol_app1"
    assert "95%" in f.message
    assert f.evidence["used_fraction"] == pytest.approx(0.95)


@pytest.mark.parametrize("used", [0.5, 0.89])
def test_volume_below_the_threshold_is_fine(used):
    m, v = attached_pair("m_app1", "vol_app1", used=used)
    assert run(SINGLE, fleet([m], [v])) == []


def test_full_threshold_comes_from_the_context():
    m, v = attached_pair("m_app1", "vol_app1", used=0.5)
    assert ids(run(SINGLE, fleet([m], [v]), full_threshold=0.4)) == ["VG208"]


# -- VG209: not running ----------------------------------------------------------------------


@pytest.mark.parametrize("state", ["stopped", "suspended"])
def test_idle_machine_is_vg209_and_not_vg201(state):
    # Without a volume: a stopped or suspended Machine is not verified, not blamed.
    f = only(run(SINGLE, fleet([machine("m_app1", state=state)], [])), "VG209")
    assert f.location.machine == "m_app1"
    assert state in f.message
    assert "m_app1" in f.message
    assert f.evidence["state"] == state
    assert f.evidence["machine"] == "m_app1"


def test_stopped_and_suspended_machines_each_get_vg209():
    stopped = machine("m_app1", state="stopped", volume="vol_app1")
    suspended = machine("m_app2", state="suspended")
    v = volume("vol_app1", attached_to="m_app1")
    findings = run(SINGLE, fleet([stopped, suspended], [v]))
    assert ids(findings) == ["VG209", "VG209"]
    assert {f.location.machine for f in findings} == {"m_app1", "m_app2"}


def test_every_finding_points_at_a_machine_or_volume_in_a_busy_fleet():
    app_m, app_v = attached_pair("m_app1", "vol_app1", used=0.95, auto_backup_enabled=False)
    app2 = machine("m_app2")  # no volume
    wrk_m = machine("m_wrk1", "worker", region="syd", volume="vol_wrk1", path="/mnt")
    wrk_v = volume("vol_wrk1", region="mel", attached_to="m_wrk1")
    old = volume("vol_old1", used=0.64)
    idle = machine("m_wrk2", "worker", state="suspended")
    the_fleet = fleet([app_m, app2, wrk_m, idle], [app_v, wrk_v, old], {"vol_old1": ()})
    findings = run(INCIDENT, the_fleet, groups=("app", "worker"))  # run() checks locations
    assert ids(findings) == [
        "VG201",
        "VG202",
        "VG203",
        "VG204",
        "VG205",
        "VG207",
        "VG207",
        "VG208",
        "VG209",
    ]


# -- Fleet: what the rules see ----------------------------------------------------------------


def test_fleet_unattached_is_what_a_new_machine_would_pick_up():
    the_fleet = fleet(
        [],
        [
            volume("vol_ok"),
            volume("vol_att", attached_to="m1"),
            volume("vol_sick", host_status="unreachable"),
            volume("vol_mel", region="mel"),
            volume("vol_other", name="other"),
        ],
    )
    assert [v.id for v in the_fleet.unattached("data", "syd")] == ["vol_ok"]
    assert [v.id for v in the_fleet.unattached("data")] == ["vol_ok", "vol_mel"]


def test_fleet_machines_of_leaves_out_gone_machines():
    the_fleet = fleet(
        [machine("m1"), machine("m2", state="destroyed"), machine("m3", state="stopped")], []
    )
    assert [m.id for m in the_fleet.machines_of("app")] == ["m1", "m3"]
    assert the_fleet.machines_of("worker") == []


def test_vg201_counts_every_waiting_volume():
    waiting = [volume("vol_old1"), volume("vol_old2")]
    findings = run(SINGLE, fleet([machine("m_app1")], waiting))
    assert ids(findings) == ["VG201", "VG204", "VG204"]
    vg201 = next(f for f in findings if f.id == "VG201")
    assert "2 unattached" in vg201.message
    assert {f.location.volume for f in findings if f.id == "VG204"} == {"vol_old1", "vol_old2"}
