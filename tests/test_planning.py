"""plan_volumes: which volumes a deployment still needs, the way flyctl would pick them up."""

from __future__ import annotations

import textwrap
from dataclasses import replace

import pytest

from volguard.errors import UsageError
from volguard.fly.fleet import Fleet
from volguard.fly.models import Machine, MachineMount, Volume
from volguard.fly.planning import VolumeNeed, plan_volumes
from volguard.flytoml import FlyConfig, parse_fly_toml

SINGLE = """\
app = "mysite"
primary_region = "syd"

[[mounts]]
  source = "data"
  destination = "/data"
"""

SIZED = """\
app = "mysite"
primary_region = "syd"

[[mounts]]
  source = "data"
  destination = "/data"
  initial_size = "10gb"
  snapshot_retention = 14
  scheduled_snapshots = false
"""

INCIDENT = """\
app = "mysite"
primary_region = "syd"

[processes]
  app = "gunicorn config.wsgi"
  worker = "celery -A config worker"

[mounts]
  source = "data"
  destination = "/data"
  processes = ["app", "worker"]
"""

NO_REGION = """\
app = "mysite"

[[mounts]]
  source = "data"
  destination = "/data"
"""


def config(text: str) -> FlyConfig:
    parsed, problems = parse_fly_toml(textwrap.dedent(text), "fly.toml")
    assert problems == [], problems
    assert parsed is not None
    return parsed


def machine(
    id: str,
    region: str = "syd",
    group: str = "app",
    volume: str | None = None,
    guest: dict | None = None,
):
    mounts = (MachineMount(volume, "/data", "data"),) if volume else ()
    return Machine(
        id=id, state="started", region=region, group=group, mounts=mounts, guest=guest or {}
    )


def volume(
    id: str,
    region: str = "syd",
    name: str = "data",
    attached_to: str | None = None,
    host_status: str = "ok",
) -> Volume:
    return Volume(
        id=id,
        name=name,
        state="created",
        region=region,
        size_gb=1,
        attached_machine_id=attached_to,
        host_status=host_status,
    )


def fleet(machines=(), volumes=()) -> Fleet:
    return Fleet(app="mysite", machines=tuple(machines), volumes=tuple(volumes))


def summary(plan: list[VolumeNeed]) -> list[tuple[str, str, str, int]]:
    return [(n.group, n.region, n.name, n.count) for n in plan]


def applied(the_fleet: Fleet, plan: list[VolumeNeed]) -> Fleet:
    """The fleet after creating the plan's volumes (unattached, as the API creates them)."""
    new = [
        volume(f"vol_new_{n.group}_{n.region}_{i}", region=n.region, name=n.name)
        for n in plan
        for i in range(n.count)
    ]
    return fleet(the_fleet.machines, (*the_fleet.volumes, *new))


# -- where and how many ------------------------------------------------------------------------


def test_no_machines_yet_needs_one_volume_in_primary_region():
    plan = plan_volumes(config(SINGLE), fleet())
    assert summary(plan) == [("app", "syd", "data", 1)]


def test_no_machines_yet_one_volume_per_group_with_a_mount():
    plan = plan_volumes(config(INCIDENT), fleet())
    assert summary(plan) == [("app", "syd", "data", 1), ("worker", "syd", "data", 1)]


def test_group_without_a_mount_needs_nothing():
    text = INCIDENT.replace('processes = ["app", "worker"]', 'processes = ["app"]')
    assert summary(plan_volumes(config(text), fleet())) == [("app", "syd", "data", 1)]


def test_no_mounts_at_all_needs_nothing():
    assert plan_volumes(config('app = "mysite"\nprimary_region = "syd"\n'), fleet()) == []


def test_no_primary_region_and_no_machines_is_a_usage_error():
    with pytest.raises(UsageError, match="primary_region"):
        plan_volumes(config(NO_REGION), fleet())


def test_no_primary_region_is_fine_when_machines_say_where():
    plan = plan_volumes(config(NO_REGION), fleet([machine("m1", "ams")]))
    assert summary(plan) == [("app", "ams", "data", 1)]


def test_machines_in_two_regions_give_per_region_needs():
    machines = [machine("m1", "syd"), machine("m2", "syd"), machine("m3", "ams")]
    plan = plan_volumes(config(SINGLE), fleet(machines))
    assert summary(plan) == [("app", "ams", "data", 1), ("app", "syd", "data", 2)]


def test_machines_with_attached_volumes_need_nothing():
    machines = [machine("m1", "syd", volume="vol_1"), machine("m2", "ams", volume="vol_2")]
    volumes = [volume("vol_1", "syd", attached_to="m1"), volume("vol_2", "ams", attached_to="m2")]
    assert plan_volumes(config(SINGLE), fleet(machines, volumes)) == []


def test_only_the_machines_without_a_volume_count():
    machines = [machine("m1", volume="vol_1"), machine("m2")]
    plan = plan_volumes(config(SINGLE), fleet(machines, [volume("vol_1", attached_to="m1")]))
    assert summary(plan) == [("app", "syd", "data", 1)]


def test_unattached_volumes_in_the_machines_region_are_used():
    machines = [machine("m1", "syd"), machine("m2", "syd")]
    spares = [volume("vol_s1", "syd"), volume("vol_s2", "syd")]
    assert plan_volumes(config(SINGLE), fleet(machines, spares)) == []


def test_a_volume_attached_to_an_allocation_is_not_a_spare():
    """flyctl's deploy pops only volumes with neither attached_machine_id nor
    attached_alloc_id (FLYCTL internal/command/deploy/machines.go `setVolumes`)."""
    held = replace(volume("vol_a1"), attached_alloc_id="alloc-7f3a")
    plan = plan_volumes(config(SINGLE), fleet([machine("m1", "syd")], [held]))
    assert summary(plan) == [("app", "syd", "data", 1)]


def test_unattached_volumes_in_another_region_do_not_count():
    plan = plan_volumes(config(SINGLE), fleet([machine("m1", "syd")], [volume("vol_s1", "ams")]))
    assert summary(plan) == [("app", "syd", "data", 1)]


def test_unattached_volumes_of_another_name_do_not_count():
    spare = volume("vol_s1", "syd", name="scratch")
    plan = plan_volumes(config(SINGLE), fleet([machine("m1", "syd")], [spare]))
    assert summary(plan) == [("app", "syd", "data", 1)]


@pytest.mark.parametrize("host_status", ["unreachable", "unknown"])
def test_unattached_volume_on_an_unhealthy_host_does_not_count(host_status):
    spare = volume("vol_s1", "syd", host_status=host_status)
    plan = plan_volumes(config(SINGLE), fleet([machine("m1", "syd")], [spare]))
    assert summary(plan) == [("app", "syd", "data", 1)]


def test_unattached_volume_in_primary_region_serves_a_first_deploy():
    assert plan_volumes(config(SINGLE), fleet(volumes=[volume("vol_s1", "syd")])) == []


def test_the_unattached_pool_is_shared_by_groups_with_the_same_mount_name():
    # app and worker both mount "data": one spare volume serves only one of them.
    plan = plan_volumes(config(INCIDENT), fleet(volumes=[volume("vol_s1", "syd")]))
    assert sum(n.count for n in plan) == 1
    assert [(n.region, n.name) for n in plan] == [("syd", "data")]


def test_the_shared_pool_with_machines_in_both_groups():
    machines = [machine("m_app", group="app"), machine("m_wrk", group="worker")]
    plan = plan_volumes(config(INCIDENT), fleet(machines, [volume("vol_s1", "syd")]))
    assert sum(n.count for n in plan) == 1


def test_groups_argument_narrows_the_plan():
    plan = plan_volumes(config(INCIDENT), fleet(), groups=("worker",))
    assert summary(plan) == [("worker", "syd", "data", 1)]


# -- count -----------------------------------------------------------------------------------


def test_count_three_per_region_minus_what_exists():
    machines = [
        machine("m1", "syd", volume="vol_1"),
        machine("m2", "ams"),
    ]
    volumes = [volume("vol_1", "syd", attached_to="m1"), volume("vol_s1", "syd")]
    plan = plan_volumes(config(SINGLE), fleet(machines, volumes), count=3)
    # syd: 3 - 1 attached - 1 spare = 1; ams: 3 - 0 = 3
    assert summary(plan) == [("app", "ams", "data", 3), ("app", "syd", "data", 1)]


def test_count_without_machines_goes_to_primary_region():
    plan = plan_volumes(config(SINGLE), fleet(), count=3)
    assert summary(plan) == [("app", "syd", "data", 3)]


def test_count_already_met_needs_nothing():
    spares = [volume(f"vol_s{i}", "syd") for i in range(3)]
    assert plan_volumes(config(SINGLE), fleet(volumes=spares), count=3) == []


# -- size and options ------------------------------------------------------------------------


def test_size_from_initial_size():
    (need,) = plan_volumes(config(SIZED), fleet())
    assert need.size_gb == 10


def test_integer_initial_size_is_gb():
    text = SINGLE + "  initial_size = 20\n"
    (need,) = plan_volumes(config(text), fleet())
    assert need.size_gb == 20


def test_size_defaults_to_flyctls_1_gb():
    (need,) = plan_volumes(config(SINGLE), fleet())
    assert need.size_gb == 1


def test_size_override_wins():
    (need,) = plan_volumes(config(SIZED), fleet(), size_gb=25)
    assert need.size_gb == 25
    (need,) = plan_volumes(config(SINGLE), fleet(), size_gb=3)
    assert need.size_gb == 3


@pytest.mark.parametrize("size", ["lots", "10 zb", "15Mb", "0"])
def test_invalid_initial_size_is_a_usage_error(size):
    text = SINGLE + f'  initial_size = "{size}"\n'
    with pytest.raises(UsageError, match="initial_size"):
        plan_volumes(config(text), fleet())


def test_mount_options_reach_the_need():
    (need,) = plan_volumes(config(SIZED), fleet())
    assert need.snapshot_retention == 14
    assert need.auto_backup_enabled is False
    assert need.require_unique_zone is True


def test_require_unique_zone_can_be_turned_off():
    (need,) = plan_volumes(config(SINGLE), fleet(), require_unique_zone=False)
    assert need.request()["require_unique_zone"] is False


# -- VolumeNeed ------------------------------------------------------------------------------


def test_describe_plural():
    need = VolumeNeed(name="data", region="syd", group="app", count=2, size_gb=10)
    assert need.describe() == '+ 2 volumes "data" in syd (10 GB, for group app)'


def test_describe_singular():
    need = VolumeNeed(name="data", region="ams", group="worker", count=1, size_gb=1)
    assert need.describe() == '+ 1 volume "data" in ams (1 GB, for group worker)'


def test_request_always_has_the_required_keys():
    body = VolumeNeed(name="data", region="syd", group="app", count=1, size_gb=1).request()
    assert body["size_gb"] == 1
    assert body["name"] == "data"
    assert body["region"] == "syd"
    assert body["require_unique_zone"] is True
    assert "snapshot_retention" not in body
    assert "auto_backup_enabled" not in body


def test_request_from_a_plan_without_mount_options():
    (need,) = plan_volumes(config(SINGLE), fleet())
    body = need.request()
    assert {k: body[k] for k in ("name", "region", "size_gb", "require_unique_zone")} == {
        "name": "data",
        "region": "syd",
        "size_gb": 1,
        "require_unique_zone": True,
    }
    assert "snapshot_retention" not in body
    assert "auto_backup_enabled" not in body


def test_request_carries_the_mounts_snapshot_settings():
    (need,) = plan_volumes(config(SIZED), fleet())
    body = need.request()
    assert body["size_gb"] == 10
    assert body["snapshot_retention"] == 14
    assert body["auto_backup_enabled"] is False


def test_request_keeps_scheduled_snapshots_true():
    text = SINGLE + "  scheduled_snapshots = true\n"
    (need,) = plan_volumes(config(text), fleet())
    assert need.request()["auto_backup_enabled"] is True


# -- the guest the volume is placed for (compute) --------------------------------------------

PERF_2X = {"cpu_kind": "performance", "cpus": 2, "memory_mb": 4096}


def test_request_carries_the_groups_guest_as_compute():
    """flyctl sends the group's guest so the volume lands on a host that fits the Machine
    (FLYCTL scale/machine_defaults.go `CreateVolumeRequest`: ComputeRequirements)."""
    (need,) = plan_volumes(config(SINGLE), fleet([machine("m1", guest=PERF_2X)]))
    assert need.request()["compute"] == PERF_2X


def test_each_group_gets_its_own_guest():
    machines = [
        machine("m_a", group="app", guest=PERF_2X),
        machine("m_w", group="worker", guest={"cpu_kind": "shared", "cpus": 1, "memory_mb": 512}),
    ]
    plan = plan_volumes(config(INCIDENT), fleet(machines))
    assert {n.group: n.request()["compute"]["memory_mb"] for n in plan} == {
        "app": 4096,
        "worker": 512,
    }


def test_compute_keeps_only_fly_gos_guest_fields_that_are_set():
    guest = {
        **PERF_2X,
        "gpus": 0,
        "gpu_kind": "",
        "kernel_args": ["quiet"],
        "persist_rootfs": "never",
        "future_field": 1,
        "max_memory_mb": True,
    }
    (need,) = plan_volumes(config(SINGLE), fleet([machine("m1", guest=guest)]))
    assert need.request()["compute"] == PERF_2X


def test_the_first_listed_machine_gives_the_groups_guest():
    """`fly scale count` copies the group's first Machine's config (FLYCTL
    scale/count_machines.go: `mConfig := groupMachines[0].Config`)."""
    machines = [
        machine("m1", "syd", guest=PERF_2X),
        machine("m2", "ams", guest={"cpu_kind": "shared", "cpus": 1, "memory_mb": 256}),
    ]
    plan = plan_volumes(config(SINGLE), fleet(machines))
    assert [n.request()["compute"] for n in plan] == [PERF_2X, PERF_2X]


def test_a_first_machine_without_a_guest_sends_no_compute():
    """flyctl sends the first Machine's nil guest as null: the API's default placement."""
    machines = [machine("m1", "syd"), machine("m2", "syd", guest=PERF_2X)]
    plan = plan_volumes(config(SINGLE), fleet(machines), count=3)
    assert [n.compute for n in plan] == [None]
    assert "compute" not in plan[0].request()


def test_a_new_group_without_vm_section_takes_the_default_groups_guest():
    """machine_defaults.go `newDefaults`: the default group's guest (the last of its Machines
    that has one, lo.Associate), for a group fly.toml gives no [[vm]]."""
    text = INCIDENT
    machines = [
        machine("m_a1", group="app", volume="vol_a1", guest={"cpu_kind": "shared", "cpus": 2}),
        machine("m_a2", group="app", volume="vol_a2", guest=PERF_2X),
    ]
    volumes = [volume("vol_a1", attached_to="m_a1"), volume("vol_a2", attached_to="m_a2")]
    (need,) = plan_volumes(config(text), fleet(machines, volumes))
    assert need.group == "worker"
    assert need.request()["compute"] == PERF_2X


SHARED_1X = {"cpu_kind": "shared", "cpus": 1, "memory_mb": 256}


def test_a_group_without_machines_or_vm_section_asks_for_flyctls_default_size():
    """A first deploy and `fly volumes create` both send shared-cpu-1x (FLYCTL
    internal/flag/machines.go GetMachineGuest(ctx, nil))."""
    (need,) = plan_volumes(config(SINGLE), fleet())
    assert need.request()["compute"] == SHARED_1X


def test_a_group_without_machines_asks_for_its_vm_section():
    """flyctl's first deploy: ToMachineConfig(group).Guest, from the group's [[vm]]."""
    text = INCIDENT + (
        '\n[[vm]]\n  size = "performance-2x"\n  processes = ["app"]\n'
        '\n[[vm]]\n  memory = "1gb"\n  cpus = 2\n  processes = ["worker"]\n'
    )
    plan = plan_volumes(config(text), fleet())
    assert {n.group: n.request()["compute"] for n in plan} == {
        "app": PERF_2X,
        "worker": {"cpu_kind": "shared", "cpus": 2, "memory_mb": 1024},
    }


def test_the_groups_machines_win_over_its_vm_section():
    """`fly scale count` sends what the Machines run, whatever fly.toml now says."""
    text = SINGLE + '\n[[vm]]\n  size = "shared-cpu-8x"\n'
    (need,) = plan_volumes(config(text), fleet([machine("m1", guest=PERF_2X)]))
    assert need.request()["compute"] == PERF_2X


def test_a_gpu_vm_section_gets_flyctls_gpu_preset_and_100_gb_volume():
    """toMachineGuest: only a GPU kind means performance-8x; deploy_first.go sizes a GPU
    group's volume 100 GB unless the mount says otherwise."""
    text = SINGLE + '\n[[vm]]\n  gpu_kind = "l40s"\n'
    (need,) = plan_volumes(config(text), fleet())
    assert need.request()["compute"] == {
        "cpu_kind": "performance",
        "cpus": 8,
        "memory_mb": 16384,
        "gpu_kind": "l40s",
    }
    assert need.size_gb == 100


def test_an_unknown_vm_size_is_flyctls_error_before_anything_is_created():
    text = SINGLE + '\n[[vm]]\n  size = "shared-cpu-3x"\n'
    with pytest.raises(UsageError, match="'shared-cpu-3x' is an invalid machine size"):
        plan_volumes(config(text), fleet())


def test_auto_extend_settings_stay_out_of_the_create_body():
    """fly-go's CreateVolumeRequest has no auto-extend field: flyctl sets them on the
    Machine's mount (FLYCTL appconfig/machines.go), and the API schema is closed."""
    text = SIZED + (
        "  auto_extend_size_threshold = 80\n"
        '  auto_extend_size_increment = "1GB"\n'
        '  auto_extend_size_limit = "100GB"\n'
    )
    (need,) = plan_volumes(config(text), fleet([machine("m1", guest=PERF_2X)]))
    assert set(need.request()) == {
        "name",
        "region",
        "size_gb",
        "encrypted",
        "require_unique_zone",
        "snapshot_retention",
        "auto_backup_enabled",
        "compute",
    }


# -- idempotence -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "machines", "volumes", "count"),
    [
        (SINGLE, [], [], None),
        (SINGLE, [], [], 3),
        (INCIDENT, [], [volume("vol_s1")], None),
        (SINGLE, [machine("m1", "syd"), machine("m2", "ams"), machine("m3", "ams")], [], None),
        (
            INCIDENT,
            [machine("m_a", "syd", volume="vol_1"), machine("m_w", "ams", group="worker")],
            [volume("vol_1", attached_to="m_a"), volume("vol_x", "ams", host_status="unknown")],
            2,
        ),
    ],
    ids=["first-deploy", "count", "shared-pool", "two-regions", "mixed"],
)
def test_applying_the_plan_then_planning_again_gives_nothing(text, machines, volumes, count):
    cfg, before = config(text), fleet(machines, volumes)
    plan = plan_volumes(cfg, before, count=count)
    assert plan, "the case should need something"
    assert plan_volumes(cfg, applied(before, plan), count=count) == []
