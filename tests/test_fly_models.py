"""Machines API objects parsed from the JSON shapes documented in fly-facts §3.2 and §3.3."""

from __future__ import annotations

import copy
import datetime as dt

import pytest

from volguard.fly.models import Machine, MachineMount, Snapshot, Volume, parse_time

UTC = dt.UTC

# fly-facts §3.2, "List all the volumes" (DOCS volumes-resource), verbatim.
VOLUME = {
    "id": "vol_9vw681egy1jj5xm4",
    "name": "disk",
    "state": "created",
    "size_gb": 3,
    "region": "yul",
    "zone": "09cd",
    "encrypted": True,
    "attached_machine_id": "908057ef21e487",
    "attached_alloc_id": None,
    "created_at": "2023-09-01T19:47:14.774Z",
    "blocks": 768250,
    "block_size": 4096,
    "blocks_free": 768244,
    "blocks_avail": 730163,
    "fstype": "ext4",
    "snapshot_retention": 5,
    "auto_backup_enabled": True,
    "host_dedication_key": "",
}

# fly-facts §3.2, the snapshot object (DOCS), verbatim.
SNAPSHOT = {
    "id": "vs_4LNvXLLK0P6tk6KgqoexaBw",
    "size": 36007729,
    "digest": "76d64a69199766d1600d46f0fd48ad9c-1",
    "created_at": "2023-12-02T20:59:35+00:00",
    "retention_days": 5,
}

# fly-facts §3.3: the docs' list item, with the config composed from the metadata example
# (_machines_metadata_get_resp.erb) and the mounts example (warm-pool blueprint) plus `name`.
MACHINE = {
    "id": "a5c5de9ce64ca12",
    "name": "aged-wind-2649",
    "state": "started",
    "region": "ord",
    "image_ref": {
        "registry": "registry-1.docker.io",
        "repository": "rebelthor/sleep",
        "tag": "latest",
        "digest": "sha256:597c3e",
    },
    "instance_id": "1RREBN3T5K95DK9IVP4XHTTPEY2",
    "private_ip": "fdaa:0:18:a7b:196:e274:9ce1:2",
    "created_at": "2023-10-31T02:30:10Z",
    "updated_at": "2023-10-31T02:35:26Z",
    "config": {
        "env": {"FLY_PROCESS_GROUP": "worker", "PRIMARY_REGION": "ord", "MEDIA_ROOT": "/data"},
        "metadata": {
            "fly_flyctl_version": "0.2.8",
            "fly_platform_version": "v2",
            "fly_process_group": "worker",
            "fly_release_id": "Nj7oGMlVVpZ7JToybJoXLLjMl",
            "fly_release_version": "63",
        },
        "mounts": [{"volume": "vol_abc123", "path": "/data", "name": "data"}],
    },
    "events": [
        {"type": "start", "status": "started", "source": "flyd", "timestamp": 1698719726615}
    ],
}


def machine(**changes: object) -> dict:
    data = copy.deepcopy(MACHINE)
    data.update(changes)
    return data


def with_metadata(metadata: dict | None) -> dict:
    data = copy.deepcopy(MACHINE)
    if metadata is None:
        del data["config"]["metadata"]
    else:
        data["config"]["metadata"] = metadata
    return data


# -- Volume ------------------------------------------------------------------------------


def test_volume_from_the_documented_list_item():
    v = Volume.from_api(VOLUME)
    assert v.id == "vol_9vw681egy1jj5xm4"
    assert v.name == "disk"
    assert v.state == "created"
    assert v.size_gb == 3
    assert v.region == "yul"
    assert v.zone == "09cd"
    assert v.attached_machine_id == "908057ef21e487"
    assert v.attached is True
    assert v.live is True
    assert (v.blocks, v.blocks_free, v.blocks_avail, v.block_size) == (768250, 768244, 730163, 4096)
    assert v.snapshot_retention == 5
    assert v.auto_backup_enabled is True
    assert v.created_at == "2023-09-01T19:47:14.774Z"
    assert v.host_status == "ok"  # absent in the docs example: healthy by default


def test_volume_from_a_list_parses_every_item():
    second = {**VOLUME, "id": "vol_2", "attached_machine_id": None}
    volumes = [Volume.from_api(item) for item in [VOLUME, second]]
    assert [v.id for v in volumes] == ["vol_9vw681egy1jj5xm4", "vol_2"]
    assert [v.attached for v in volumes] == [True, False]


def test_volume_attached_machine_id_null_means_unattached():
    v = Volume.from_api({**VOLUME, "attached_machine_id": None})
    assert v.attached_machine_id is None
    assert v.attached is False


def test_volume_empty_attached_machine_id_means_unattached():
    v = Volume.from_api({**VOLUME, "attached_machine_id": ""})
    assert v.attached_machine_id is None
    assert not v.attached


def test_volume_attached_to_an_allocation_is_attached():
    """FLYGO volume_types.go `IsAttached`: attached_machine_id OR attached_alloc_id."""
    v = Volume.from_api({**VOLUME, "attached_machine_id": None, "attached_alloc_id": "a1b2c3"})
    assert v.attached
    assert v.attached_alloc_id == "a1b2c3"
    assert v.attached_machine_id is None


def test_volume_attached_to_neither_is_unattached():
    v = Volume.from_api({**VOLUME, "attached_machine_id": None, "attached_alloc_id": None})
    assert not v.attached


def test_volume_ignores_unknown_fields():
    v = Volume.from_api({**VOLUME, "brand_new_field": {"x": [1, 2]}, "another": None})
    assert v == Volume.from_api(VOLUME)


def test_volume_missing_optional_fields_get_defaults():
    v = Volume.from_api({"id": "vol_min"})
    assert v.id == "vol_min"
    assert (v.name, v.state, v.region, v.zone, v.created_at) == ("", "", "", "", "")
    assert v.size_gb is None
    assert v.attached_machine_id is None
    assert v.host_status == "ok"
    assert (v.blocks, v.blocks_free, v.blocks_avail, v.block_size) == (0, 0, 0, 0)
    assert v.snapshot_retention is None
    assert v.auto_backup_enabled is None
    assert v.used_fraction is None


def test_volume_reads_host_status():
    assert Volume.from_api({**VOLUME, "host_status": "unreachable"}).host_status == "unreachable"


def test_volume_wrongly_typed_fields_do_not_pass_through():
    v = Volume.from_api(
        {**VOLUME, "size_gb": "3", "auto_backup_enabled": "yes", "snapshot_retention": True}
    )
    assert v.size_gb is None
    assert v.auto_backup_enabled is None
    assert v.snapshot_retention is None


def test_volume_auto_backup_false_is_kept():
    assert Volume.from_api({**VOLUME, "auto_backup_enabled": False}).auto_backup_enabled is False


@pytest.mark.parametrize("state", ["pending_destroy", "destroying", "scheduling_destroy"])
def test_volume_in_a_destroy_state_is_not_live(state):
    assert Volume.from_api({**VOLUME, "state": state}).live is False


def test_used_fraction_from_blocks_and_blocks_free():
    v = Volume.from_api({**VOLUME, "blocks": 1000, "blocks_free": 360})
    assert v.used_fraction == pytest.approx(0.64)
    assert v.describe_usage() == "3 GB, 64% used"


def test_used_fraction_of_the_documented_example_is_tiny():
    used = Volume.from_api(VOLUME).used_fraction
    assert used == pytest.approx(1 - 768244 / 768250)
    assert 0 < used < 0.001


def test_used_fraction_is_none_when_blocks_is_zero():
    # Fresh or unattached volumes report 0 blocks (fly-facts §3.2): usage unknown, not 100%.
    v = Volume.from_api({**VOLUME, "blocks": 0, "blocks_free": 0, "blocks_avail": 0})
    assert v.used_fraction is None
    assert v.describe_usage() == "3 GB, usage not reported"


# -- Snapshot ----------------------------------------------------------------------------


def test_snapshot_from_the_documented_example():
    s = Snapshot.from_api(SNAPSHOT)
    assert s.id == "vs_4LNvXLLK0P6tk6KgqoexaBw"
    assert s.size == 36007729
    assert s.retention_days == 5
    assert s.created_at == dt.datetime(2023, 12, 2, 20, 59, 35, tzinfo=UTC)
    assert s.status == ""


def test_snapshot_reads_status_and_ignores_unknown_fields():
    s = Snapshot.from_api({**SNAPSHOT, "status": "created", "volume_size": 3, "zzz": 1})
    assert s.status == "created"
    assert s.id == SNAPSHOT["id"]


def test_snapshot_with_unparseable_time_has_no_time():
    assert Snapshot.from_api({**SNAPSHOT, "created_at": "yesterday"}).created_at is None
    assert Snapshot.from_api({"id": "vs_1"}).created_at is None


# A snapshot being taken, as `fly volumes snapshots list` sees it: no id (flyctl prints
# "(pending)" for it: FLYCTL internal/command/volumes/snapshots/list.go), no creation time,
# size 0, a status that is not `created` (fly-facts §3.2).
PENDING = {
    "id": "",
    "size": 0,
    "volume_size": 1073741824,
    "digest": "",
    "created_at": None,
    "status": "running",
    "retention_days": 5,
}


@pytest.mark.parametrize("status", ["waiting", "running"])
@pytest.mark.parametrize("created_at", [None, "0001-01-01T00:00:00Z"])
def test_a_snapshot_being_taken_is_read_as_pending(status, created_at):
    s = Snapshot.from_api({**PENDING, "status": status, "created_at": created_at})
    assert (s.id, s.status, s.created_at, s.size) == ("", status, None, 0)
    assert s.pending
    assert not s.completed


@pytest.mark.parametrize("data", [{}, {"id": None}, {"id": 12}, {"status": "waiting"}])
def test_a_snapshot_without_an_id_is_pending_not_an_error(data):
    assert Snapshot.from_api(data).pending


def test_only_a_created_snapshot_with_an_id_is_completed():
    assert Snapshot.from_api({**SNAPSHOT, "status": "created", "volume_size": 3}).completed
    assert Snapshot.from_api(SNAPSHOT).completed  # the DOCS example predates `status`
    assert not Snapshot.from_api({**SNAPSHOT, "status": "running"}).completed
    assert not Snapshot.from_api({**SNAPSHOT, "status": "failed"}).completed
    assert not Snapshot.from_api({**SNAPSHOT, "created_at": None}).completed


def test_snapshot_reads_volume_size():
    assert Snapshot.from_api({**SNAPSHOT, "volume_size": 1073741824}).volume_size == 1073741824


# -- Machine -----------------------------------------------------------------------------


def test_machine_from_the_documented_shape():
    m = Machine.from_api(MACHINE)
    assert m.id == "a5c5de9ce64ca12"
    assert m.name == "aged-wind-2649"
    assert m.state == "started"
    assert m.region == "ord"
    assert m.group == "worker"
    assert m.private_ip == "fdaa:0:18:a7b:196:e274:9ce1:2"
    assert m.host_status == "ok"
    assert m.mounts == (MachineMount(volume="vol_abc123", path="/data", name="data"),)
    assert m.mount == MachineMount("vol_abc123", "/data", "data")
    assert m.env["MEDIA_ROOT"] == "/data"
    assert m.env["FLY_PROCESS_GROUP"] == "worker"
    assert m.is_platform_helper is False


def test_machine_mount_without_name():
    data = machine()
    data["config"]["mounts"] = [{"volume": "vol_abc123", "path": "/data"}]
    assert Machine.from_api(data).mount == MachineMount("vol_abc123", "/data", "")


def test_machine_without_mounts():
    data = machine()
    del data["config"]["mounts"]
    m = Machine.from_api(data)
    assert m.mounts == ()
    assert m.mount is None


def test_machine_ignores_unknown_fields():
    data = machine(future_field=[1, 2, 3], cordoned=True, containers=[{"name": "x"}])
    data["config"]["brand_new"] = {"a": 1}
    assert Machine.from_api(data) == Machine.from_api(MACHINE)


def test_machine_missing_optional_fields():
    m = Machine.from_api({"id": "m1"})
    assert m.id == "m1"
    assert (m.name, m.state, m.region, m.private_ip) == ("", "", "", "")
    assert m.group == "app"
    assert m.mounts == ()
    assert m.env == {}
    assert m.host_status == "ok"


def test_machine_legacy_process_group_metadata_key():
    m = Machine.from_api(with_metadata({"process_group": "worker"}))
    assert m.group == "worker"


def test_machine_fly_process_group_wins_over_legacy_key():
    m = Machine.from_api(with_metadata({"fly_process_group": "app", "process_group": "worker"}))
    assert m.group == "app"


@pytest.mark.parametrize("metadata", [None, {}, {"fly_release_version": "63"}])
def test_machine_without_a_group_belongs_to_app(metadata):
    assert Machine.from_api(with_metadata(metadata)).group == "app"


def test_machine_uses_incomplete_config_when_config_is_absent():
    data = machine(host_status="unreachable")
    data["incomplete_config"] = data.pop("config")
    m = Machine.from_api(data)
    assert m.host_status == "unreachable"
    assert m.group == "worker"
    assert m.mount == MachineMount("vol_abc123", "/data", "data")


def test_machine_config_wins_over_incomplete_config():
    data = machine()
    data["incomplete_config"] = {"metadata": {"fly_process_group": "other"}}
    assert Machine.from_api(data).group == "worker"


def test_machine_without_any_config():
    data = machine(host_status="unknown")
    del data["config"]
    m = Machine.from_api(data)
    assert m.group == "app"
    assert m.mounts == ()
    assert m.host_status == "unknown"


@pytest.mark.parametrize(
    "group", ["fly_app_release_command", "fly_app_console"], ids=["release", "console"]
)
def test_machine_platform_helpers(group):
    m = Machine.from_api(with_metadata({"fly_process_group": group}))
    assert m.group == group
    assert m.is_platform_helper is True


@pytest.mark.parametrize("group", ["app", "worker", "fly_app"])
def test_ordinary_groups_are_not_platform_helpers(group):
    assert Machine.from_api(with_metadata({"fly_process_group": group})).is_platform_helper is False


# -- shape errors ------------------------------------------------------------------------


@pytest.mark.parametrize("cls", [Machine, Volume, Snapshot])
@pytest.mark.parametrize("data", [None, [], "vol_1", 42, [{"id": "x"}]])
def test_non_object_raises_value_error(cls, data):
    with pytest.raises(ValueError, match=r"expected an? \w+ object"):
        cls.from_api(data)


@pytest.mark.parametrize("cls", [Machine, Volume])
@pytest.mark.parametrize("data", [{}, {"id": None}, {"id": ""}, {"id": 12}, {"name": "data"}])
def test_missing_id_raises_value_error(cls, data):
    with pytest.raises(ValueError, match="id"):
        cls.from_api(data)


# -- parse_time --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2023-10-31T02:30:10Z", dt.datetime(2023, 10, 31, 2, 30, 10, tzinfo=UTC)),
        ("2023-12-02T20:59:35+00:00", dt.datetime(2023, 12, 2, 20, 59, 35, tzinfo=UTC)),
        ("2023-09-01T19:47:14.774Z", dt.datetime(2023, 9, 1, 19, 47, 14, 774000, tzinfo=UTC)),
        # Go writes nanoseconds (the snapshot POST example in fly-facts §3.2)
        (
            "2024-02-16T19:30:43.914350121Z",
            dt.datetime(2024, 2, 16, 19, 30, 43, 914350, tzinfo=UTC),
        ),
        (
            "2024-02-16T19:30:43.914350121+00:00",
            dt.datetime(2024, 2, 16, 19, 30, 43, 914350, tzinfo=UTC),
        ),
    ],
)
def test_parse_time(text, expected):
    parsed = parse_time(text)
    assert parsed == expected
    assert parsed.utcoffset() == dt.timedelta(0)


def test_parse_time_keeps_a_non_utc_offset():
    assert parse_time("2024-02-16T21:30:43+02:00") == dt.datetime(
        2024, 2, 16, 19, 30, 43, tzinfo=UTC
    )


@pytest.mark.parametrize(
    ("text", "microsecond"),
    [
        ("2024-02-16T21:30:43.914350121+02:00", 914350),
        ("2024-02-16T21:30:43.9143+02:00", 914300),
        ("2024-02-16T21:30:43.5+02:00", 500000),
        ("2024-02-16T14:00:43.5-05:30", 500000),
    ],
)
def test_parse_time_keeps_a_non_utc_offset_with_fractional_seconds(text, microsecond):
    assert parse_time(text) == dt.datetime(2024, 2, 16, 19, 30, 43, microsecond, tzinfo=UTC)


def test_parse_time_naive_value_is_taken_as_utc():
    assert parse_time("2023-10-31T02:30:10") == dt.datetime(2023, 10, 31, 2, 30, 10, tzinfo=UTC)


@pytest.mark.parametrize(
    "value",
    ["garbage", "", "   ", "2023-13-45T99:00:00Z", "2023-10-31T02:30:10.xyzZ", None, 1698719726615],
)
def test_parse_time_garbage_is_none(value):
    assert parse_time(value) is None
