"""The Fly Machines API simulator, tested over real HTTP with httpx.

volguard's platform tests are only as true as the simulator, so these pin its behaviour
to fly-facts §2, §3 and §5: shapes, auth schemes, defaults, delays, limits, faults.
"""

from __future__ import annotations

import json
import re
import signal
import ssl
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from volguard.sim.api import (
    Limits,
    Scenario,
    ScenarioError,
    SimServer,
    load_scenario,
    make_fleet_scenario,
    parse_scenario,
    scenario_path,
    shipped_scenarios,
)

APP = "test-blue-smoke-97"
#: Tests that are not about rate limits must not trip over them.
NO_LIMITS = Limits(rate_per_second=0, get_machine_rate=0, snapshot_delay_seconds=0.2)
#: Keys of the Volume object (DOCS volumes-resource example, plus FLYGO's host_status).
VOLUME_KEYS = {
    "id", "name", "state", "size_gb", "region", "zone", "encrypted", "attached_machine_id",
    "attached_alloc_id", "created_at", "blocks", "block_size", "blocks_free", "blocks_avail",
    "fstype", "snapshot_retention", "auto_backup_enabled", "host_dedication_key",
    "host_dedication_id", "host_status",
}  # fmt: skip
MACHINE_KEYS = {
    "id", "name", "state", "region", "image_ref", "instance_id", "version", "private_ip",
    "created_at", "updated_at", "config", "events", "host_status", "cordoned",
}  # fmt: skip
#: fly-go's VolumeSnapshot (volume_types.go): the DOCS example's keys plus volume_size, status.
SNAPSHOT_KEYS = {"id", "size", "volume_size", "digest", "created_at", "status", "retention_days"}
#: Built once: httpx would load the CA bundle for every client (~40 ms), and these are many.
TLS = ssl.create_default_context()


def serve(name: str = "incident", **changes: Any) -> SimServer:
    """A shipped scenario with changes (limits default to none), ready to `with`."""
    scenario = replace(load_scenario(name), **{"limits": NO_LIMITS, **changes})
    return SimServer(scenario)


def client_for(sim: SimServer, authorization: str | None = "default") -> httpx.Client:
    headers = {} if authorization is None else {"Authorization": authorization}
    if authorization == "default":
        headers["Authorization"] = sim.auth_header
    return httpx.Client(base_url=f"{sim.url}/v1/apps/{APP}", headers=headers, timeout=5, verify=TLS)


def control(sim: SimServer) -> httpx.Client:
    """The simulator's own endpoints (no auth)."""
    return httpx.Client(base_url=f"{sim.url}/__sim", timeout=5, verify=TLS)


@pytest.fixture
def sim() -> Iterator[SimServer]:
    with serve() as server:
        yield server


@pytest.fixture
def api(sim: SimServer) -> Iterator[httpx.Client]:
    with client_for(sim) as client:
        yield client


# --- auth ------------------------------------------------------------------------------


@pytest.fixture
def auth_sim() -> Iterator[SimServer]:
    tokens = ("fm2_macaroon", "oauth-abc123", "FlyV1 fm1r_printed,fm1a_discharge")
    with serve("healthy", tokens=tokens) as server:
        yield server


@pytest.mark.parametrize(
    ("header", "status"),
    [
        ("FlyV1 fm2_macaroon", 200),
        ("flyv1 fm2_macaroon", 200),  # schemes are case-insensitive
        ("Bearer fm2_macaroon", 401),  # the classic mistake: a macaroon sent as Bearer
        ("fm2_macaroon", 401),
        ("Bearer oauth-abc123", 200),
        ("FlyV1 oauth-abc123", 401),
        ("Bearer FlyV1 fm1r_printed,fm1a_discharge", 401),
        ("FlyV1 fm1r_printed,fm1a_discharge", 200),  # a token printed with its scheme: as is
        ("Bearer someone-elses-token", 401),
        ("Basic dXNlcjpwYXNz", 401),
    ],
)
def test_auth_scheme_depends_on_token_type(auth_sim: SimServer, header: str, status: int) -> None:
    with client_for(auth_sim, header) as client:
        response = client.get("/volumes")
    assert response.status_code == status
    assert response.headers["fly-request-id"]
    if status == 401:
        assert response.json() == {"error": "unauthorized"}
        assert response.headers["x-sim-reason"]


def test_missing_authorization_is_401(auth_sim: SimServer) -> None:
    with client_for(auth_sim, None) as client:
        response = client.get("/machines")
    assert response.status_code == 401
    assert "missing" in response.headers["x-sim-reason"]


def test_server_token_and_header(sim: SimServer) -> None:
    assert sim.token.startswith("fm2_")
    assert sim.auth_header == f"FlyV1 {sim.token}"


# --- shapes ----------------------------------------------------------------------------


def test_machine_list_shape_and_derived_config(api: httpx.Client) -> None:
    machines = api.get("/machines").json()
    assert [m["config"]["metadata"]["fly_process_group"] for m in machines] == ["app", "worker"]
    for machine in machines:
        assert set(machine) == MACHINE_KEYS
        assert re.fullmatch(r"[0-9a-f]{14}", machine["id"])
        config = machine["config"]
        assert config["env"]["MEDIA_ROOT"] == "/data/media"
        assert config["env"]["FLY_PROCESS_GROUP"] == config["metadata"]["fly_process_group"]
        assert config["env"]["PRIMARY_REGION"] == "syd"
        assert set(config["mounts"][0]) == {"volume", "path", "name"}
        assert config["mounts"][0]["path"] == "/data"
        assert machine["cordoned"] is False
    app, worker = machines
    assert app["config"]["init"]["cmd"][0] == "gunicorn"
    assert worker["config"]["init"]["cmd"][:3] == ["celery", "-A", "config"]
    assert app["config"]["mounts"][0]["volume"] != worker["config"]["mounts"][0]["volume"]


def test_get_machine_by_id(api: httpx.Client) -> None:
    first = api.get("/machines").json()[0]
    assert api.get(f"/machines/{first['id']}").json() == first


def test_volume_shape_and_attachment(api: httpx.Client) -> None:
    machines = {m["id"]: m for m in api.get("/machines").json()}
    volumes = api.get("/volumes").json()
    assert len(volumes) == 2
    for volume in volumes:
        assert set(volume) == VOLUME_KEYS
        assert re.fullmatch(r"vol_[0-9a-z]{16}", volume["id"])
        assert volume["attached_alloc_id"] is None
        mount = machines[volume["attached_machine_id"]]["config"]["mounts"][0]
        assert mount["volume"] == volume["id"]
        assert volume["block_size"] == 4096
        assert volume["blocks"] == volume["size_gb"] * 1024**3 // 4096
        assert volume["blocks_avail"] < volume["blocks_free"] < volume["blocks"]
        assert volume["fstype"] == "ext4"
        assert api.get(f"/volumes/{volume['id']}").json() == volume


def test_never_attached_volume_is_null_and_empty() -> None:
    with serve("missing-volume") as sim, client_for(sim) as api:
        (volume,) = api.get("/volumes").json()
        app = next(m for m in api.get("/machines").json() if m["id"] == "148e21ea4d3089")
    assert volume["attached_machine_id"] is None  # null, not absent
    assert (volume["blocks"], volume["block_size"], volume["blocks_free"]) == (0, 0, 0)
    assert volume["fstype"] == ""
    assert "mounts" not in app["config"]


def test_detached_volume_keeps_its_fill_level() -> None:
    with serve("detached-volume") as sim, client_for(sim) as api:
        volumes = api.get("/volumes").json()
    detached = next(v for v in volumes if v["attached_machine_id"] is None)
    used = 1 - detached["blocks_free"] / detached["blocks"]
    assert detached["name"] == "data"
    assert used == pytest.approx(0.64, abs=0.01)


def test_list_includes_release_machine_and_filters(sim: SimServer) -> None:
    with serve("healthy") as sim, client_for(sim) as api:
        groups = [m["config"]["metadata"]["fly_process_group"] for m in api.get("/machines").json()]
        only_app = api.get("/machines", params={"metadata.fly_process_group": "app"}).json()
        elsewhere = api.get("/machines", params={"region": "ams"}).json()
    assert groups == ["app", "fly_app_release_command"]
    assert [m["id"] for m in only_app] == ["148e21ea4d3089"]
    assert elsewhere == []


def test_destroyed_machines_only_with_include_deleted() -> None:
    base = load_scenario("healthy")
    gone = replace(base.machines[0], id="0000000000dead", state="destroyed", volume=None)
    with serve("healthy", machines=(*base.machines, gone)) as sim, client_for(sim) as api:
        default = {m["id"] for m in api.get("/machines").json()}
        everything = {m["id"] for m in api.get("/machines?include_deleted=true").json()}
    assert "0000000000dead" not in default
    assert "0000000000dead" in everything


def test_sick_host_gives_incomplete_config_and_legacy_group_key() -> None:
    base = load_scenario("healthy")
    sick = replace(base.machines[0], host_status="unreachable", legacy_group_key=True)
    with serve("healthy", machines=(sick, *base.machines[1:])) as sim, client_for(sim) as api:
        machine = api.get(f"/machines/{sick.id}").json()
    assert "config" not in machine
    assert machine["host_status"] == "unreachable"
    assert machine["incomplete_config"]["metadata"]["process_group"] == "app"


def test_snapshot_list_shape(api: httpx.Client) -> None:
    volume_id = api.get("/volumes").json()[0]["id"]
    (snapshot,) = api.get(f"/volumes/{volume_id}/snapshots").json()
    assert set(snapshot) == SNAPSHOT_KEYS
    assert snapshot["id"].startswith("vs_")
    assert snapshot["created_at"].endswith("+00:00")  # not "Z", unlike volumes
    assert snapshot["retention_days"] == 5


# --- create volume ---------------------------------------------------------------------


def test_create_volume_uses_api_defaults(sim: SimServer, api: httpx.Client) -> None:
    response = api.post("/volumes", json={"name": "data", "size_gb": None})
    assert response.status_code == 200
    volume = response.json()
    assert set(volume) == VOLUME_KEYS
    assert re.fullmatch(r"vol_[0-9a-z]{16}", volume["id"])
    assert volume["size_gb"] == 3  # the API's default, not flyctl's 1
    assert volume["region"] == "syd"  # primary_region
    assert volume["state"] == "created"
    assert volume["attached_machine_id"] is None
    assert (volume["blocks"], volume["fstype"]) == (0, "")
    assert volume["id"] in {v["id"] for v in api.get("/volumes").json()}
    action = sim.state.to_json()["actions"][-1]
    assert action == {
        "action": "create_volume",
        "id": volume["id"],
        "request": {"name": "data", "size_gb": None},
    }


def test_create_volume_empty_region_is_the_flyctl_hang_422(api: httpx.Client) -> None:
    response = api.post("/volumes", json={"name": "data", "region": "", "size_gb": 1})
    assert response.status_code == 422
    assert response.json() == {
        "error": "Region '' cannot host your machine. Please use an alternative region "
        "(see `fly platform regions`)."
    }


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({"region": "syd"}, 400),
        ({"name": "", "region": "syd"}, 400),
        ({"name": "data", "snapshot_retention": 0}, 422),
        ({"name": "data", "snapshot_retention": 61}, 422),
        ({"name": "data", "size_gb": 0}, 422),
        ({"name": "data", "fstype": "xfs"}, 422),
        ({"name": "data", "snapshot_id": "vs_nope"}, 404),
        (["not", "an", "object"], 400),
    ],
)
def test_create_volume_validation(api: httpx.Client, body: Any, status: int) -> None:
    response = api.post("/volumes", json=body)
    assert response.status_code == status
    assert set(response.json()) == {"error"}


def test_create_volume_malformed_json(api: httpx.Client) -> None:
    response = api.post("/volumes", content=b"{nope", headers={"Content-Type": "application/json"})
    assert response.status_code == 400


# --- snapshots -------------------------------------------------------------------------


def _listed(api: httpx.Client, volume_id: str) -> list[dict[str, Any]]:
    return api.get(f"/volumes/{volume_id}/snapshots").json()


def test_on_demand_snapshot_goes_through_its_life_cycle() -> None:
    """Listed at once without an id (flyctl's "(pending)"), `waiting` then `running`, and
    `created` with its id, time and size only at the end."""
    limits = replace(NO_LIMITS, snapshot_delay_seconds=1.0)
    with serve(limits=limits) as sim, client_for(sim) as api:
        _life_cycle(api, limits.snapshot_delay_seconds)


def _life_cycle(api: httpx.Client, delay: float) -> None:
    volume_id = api.get("/volumes").json()[0]["id"]
    response = api.post(f"/volumes/{volume_id}/snapshots")
    assert response.status_code == 200
    backup = response.json()["Msg"]["backup"]
    assert backup["state"] == "prepare"
    assert backup["type"] == "BACKUP_TYPE_ON_DEMAND"
    assert backup["finished_at"] is None
    pending = _listed(api, volume_id)[-1]
    assert pending == {
        "id": "",
        "size": 0,
        "volume_size": pending["volume_size"],
        "digest": "",
        "created_at": None,
        "status": "waiting",
        "retention_days": 5,
    }
    assert pending["volume_size"] == 1024**3
    time.sleep(delay * 0.6)
    running = _listed(api, volume_id)[-1]
    assert (running["status"], running["id"]) == ("running", "")
    time.sleep(delay * 0.5)
    done = _listed(api, volume_id)[-1]
    assert (done["id"], done["status"]) == (backup["graph_id"], "created")
    assert done["created_at"].endswith("+00:00")
    assert done["size"] > 0


def test_a_snapshot_being_taken_cannot_be_restored(api: httpx.Client) -> None:
    volume_id = api.get("/volumes").json()[0]["id"]
    graph_id = api.post(f"/volumes/{volume_id}/snapshots").json()["Msg"]["backup"]["graph_id"]
    refused = api.post("/volumes", json={"name": "data", "snapshot_id": graph_id})
    assert refused.status_code == 404
    time.sleep(NO_LIMITS.snapshot_delay_seconds + 0.05)
    assert api.post("/volumes", json={"name": "data", "snapshot_id": graph_id}).status_code == 200


def test_a_scheduled_snapshot_in_progress_is_listed_without_an_id() -> None:
    with serve("snapshot-in-progress") as sim, client_for(sim) as api:
        volume_id = api.get("/volumes").json()[0]["id"]
        snapshots = _listed(api, volume_id)
    assert [(s["status"], bool(s["id"])) for s in snapshots] == [
        ("created", True),
        ("running", False),
    ]
    assert snapshots[1]["created_at"] is None
    assert snapshots[1]["size"] == 0


def test_a_volume_attached_to_an_allocation() -> None:
    with serve("attached-alloc") as sim, client_for(sim) as api:
        volume = api.get("/volumes/vol_4ke2y7q1lp0zr9vd").json()
    assert volume["attached_machine_id"] is None
    assert volume["attached_alloc_id"] == "e2b1c6a4-7d0f-4c1a-9a55-3f6b2d8e91c0"
    assert volume["blocks"] > volume["blocks_free"] > 0  # it is mounted somewhere: stats


@pytest.mark.parametrize("state", ["suspended", "replacing"])
def test_machine_states_of_the_scenarios_reach_the_list(state: str) -> None:
    with serve(f"machine-{state}") as sim, client_for(sim) as api:
        states = {m["id"]: m["state"] for m in api.get("/machines").json()}
    assert states["a17ab76fb85284"] == state


def test_machine_checks_follow_fly_toml() -> None:
    with serve("snapshot-in-progress") as sim, client_for(sim) as api:
        machines = {m["id"]: m for m in api.get("/machines").json()}
    (check,) = machines["148e21ea4d3089"]["checks"]
    assert check["name"] == "servicecheck-00-http-8000"
    assert check["status"] == "passing"
    assert check["updated_at"].endswith("Z")
    assert "checks" not in machines["4441ecb5402efb"]  # stopped, and not served


def test_incomplete_config_scenario() -> None:
    with serve("incomplete-config") as sim, client_for(sim) as api:
        machine = api.get("/machines/148e21ea4d3089").json()
    assert "config" not in machine
    assert machine["host_status"] == "unknown"
    assert machine["incomplete_config"]["mounts"][0]["volume"] == "vol_668we58kuhntaa1u"


# --- errors ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    [
        "/v1/apps/nope/machines",
        f"/v1/apps/{APP}/machines/00000000000000",
        f"/v1/apps/{APP}/volumes/vol_doesnotexist0000",
        f"/v1/apps/{APP}/volumes/vol_doesnotexist0000/snapshots",
        "/v1/somewhere/else",
    ],
)
def test_not_found_is_fly_shaped(api: httpx.Client, path: str) -> None:
    response = api.get(api.base_url.copy_with(path=path))
    assert response.status_code == 404
    assert response.json()["error"].endswith("not found")
    assert response.headers["fly-request-id"]


def test_wrong_method_is_405(api: httpx.Client) -> None:
    response = api.delete("/machines")
    assert response.status_code == 405
    assert response.headers["Allow"] == "GET, POST"  # POST: create a Machine (#10)
    assert "error" in response.json()


# --- rate limits -----------------------------------------------------------------------


def test_documented_limits_are_the_defaults() -> None:
    assert Limits() == Limits(1.0, 3, 5.0, 10, 0.2)


def test_rate_limit_per_action_and_identifier() -> None:
    slow = Limits(rate_per_second=0.2, burst=3, get_machine_rate=0.2, get_machine_burst=10)
    with serve(limits=slow) as sim, client_for(sim) as api:
        first, second = (v["id"] for v in api.get("/volumes").json())
        statuses = [api.get(f"/volumes/{first}/snapshots").status_code for _ in range(4)]
        refused = api.get(f"/volumes/{first}/snapshots")
        other_volume = api.get(f"/volumes/{second}/snapshots")
        other_method = api.post(f"/volumes/{first}/snapshots")
        machine_id = api.get("/machines").json()[0]["id"]
        machine_statuses = [api.get(f"/machines/{machine_id}").status_code for _ in range(11)]
    assert statuses == [200, 200, 200, 429]
    assert refused.status_code == 429
    assert refused.json() == {"error": "rate limit exceeded"}
    assert int(refused.headers["Retry-After"]) >= 1
    assert other_volume.status_code == 200  # a different identifier is a different bucket
    assert other_method.status_code == 200  # and so is a different action
    assert machine_statuses == [200] * 10 + [429]  # Get Machine: burst 10


def test_query_string_does_not_make_a_new_bucket() -> None:
    with serve(limits=Limits(rate_per_second=0.2, burst=1)) as sim, client_for(sim) as api:
        assert api.get("/machines?region=syd").status_code == 200
        assert api.get("/machines?region=ams").status_code == 429


# --- faults ----------------------------------------------------------------------------


def test_fail_next_cycles_server_errors(sim: SimServer, api: httpx.Client) -> None:
    sim.inject(fail_next=3)
    responses = [api.get("/machines") for _ in range(4)]
    assert [r.status_code for r in responses] == [500, 502, 503, 200]
    assert all("error" in r.json() for r in responses[:3])


def test_drop_next_closes_without_response(sim: SimServer, api: httpx.Client) -> None:
    sim.inject(drop_next=1)
    with pytest.raises(httpx.RemoteProtocolError):
        api.get("/machines")
    assert api.get("/machines").status_code == 200
    assert [r["status"] for r in sim.requests()] == [None, 200]


def test_malformed_next_alternates_html_and_truncated_json(
    sim: SimServer, api: httpx.Client
) -> None:
    sim.inject(malformed_next=2)
    html = api.get("/volumes")
    truncated = api.get("/volumes")
    assert (html.status_code, truncated.status_code) == (200, 200)
    assert html.text.startswith("<html>")
    assert truncated.text.startswith("[{")
    with pytest.raises(json.JSONDecodeError):
        truncated.json()
    assert api.get("/volumes").json()


def test_rate_limit_next(sim: SimServer, api: httpx.Client) -> None:
    sim.inject(rate_limit_next=1)
    response = api.get("/volumes")
    assert response.status_code == 429
    assert response.headers["Retry-After"] == "1"


def test_latency_counts_in_service_time(sim: SimServer, api: httpx.Client) -> None:
    sim.inject(latency_ms=60)
    started = time.perf_counter()
    api.get("/volumes")
    assert time.perf_counter() - started >= 0.06
    assert sim.requests()[-1]["service_ms"] >= 60
    assert sim.service_seconds() >= 0.06


def test_faults_over_the_control_endpoint(sim: SimServer, api: httpx.Client) -> None:
    with control(sim) as sim_api:
        assert sim_api.post("/faults", json={"fail_next": 1}).json()["fail_next"] == 1
        assert api.get("/machines").status_code == 500
        assert sim_api.post("/faults", json={"explode_next": 1}).status_code == 400
        assert sim_api.post("/faults", json={"fail_next": -1}).status_code == 400
        assert sim_api.get("/faults").json()["fail_next"] == 0


def test_scenario_faults_apply_from_the_start_and_after_reset() -> None:
    with serve(faults={"fail_next": 1}) as sim, client_for(sim) as api:
        assert api.get("/volumes").status_code == 500
        assert api.get("/volumes").status_code == 200
        sim.reset()  # back to the scenario's own faults
        assert api.get("/volumes").status_code == 500


def test_concurrent_clients(sim: SimServer) -> None:
    def fetch(_: int) -> int:
        with client_for(sim) as api:
            return api.get("/machines").status_code

    with ThreadPoolExecutor(max_workers=8) as pool:
        statuses = list(pool.map(fetch, range(24)))
    assert statuses == [200] * 24
    assert len(sim.requests()) == 24


# --- control endpoints -----------------------------------------------------------------


def test_request_log_and_reset(sim: SimServer, api: httpx.Client) -> None:
    api.get("/machines", params={"region": "syd"})
    api.get("/volumes/vol_nope0000000000000")
    with control(sim) as sim_api:
        log = sim_api.get("/requests").json()  # control calls are not logged
        assert log == sim.requests()
        assert sim_api.post("/reset").status_code == 200
    assert [(r["method"], r["path"], r["status"]) for r in log] == [
        ("GET", f"/v1/apps/{APP}/machines", 200),
        ("GET", f"/v1/apps/{APP}/volumes/vol_nope0000000000000", 404),
    ]
    assert log[0]["query"] == "region=syd"
    assert {"method", "path", "query", "status", "service_ms", "at"} <= set(log[0])
    assert sim.requests() == []


def test_state_endpoint(sim: SimServer, api: httpx.Client) -> None:
    volume_id = api.get("/volumes").json()[0]["id"]
    api.post(f"/volumes/{volume_id}/snapshots")
    with control(sim) as sim_api:
        state = sim_api.get("/state").json()
    assert state["app"] == APP
    assert len(state["machines"]) == 2
    assert [s["status"] for s in state["snapshots"][volume_id]] == ["created", "waiting"]
    assert all(s["snapshot_id"].startswith("vs_") for s in state["snapshots"][volume_id])
    assert state["actions"][-1]["action"] == "create_snapshot"


# --- scenarios -------------------------------------------------------------------------


@pytest.mark.parametrize("name", shipped_scenarios())
def test_shipped_scenario_loads(name: str) -> None:
    scenario = load_scenario(name)
    assert load_scenario(scenario_path(name)).machines == scenario.machines
    assert scenario.description.strip()
    fly = tomllib.loads(scenario.fly_toml)
    assert fly["app"] == scenario.app
    assert fly["mounts"]["destination"] == "/data"
    for machine in scenario.machines:
        if machine.group in ("app", "worker") and machine.volume:
            assert machine.mount_path == fly["mounts"]["destination"]


def test_all_brief_scenarios_are_shipped() -> None:
    assert set(shipped_scenarios()) >= {
        "healthy", "incident", "missing-volume", "region-mismatch", "detached-volume",
        "two-app-machines", "old-snapshots",
    }  # fmt: skip


def test_incident_embeds_the_repo_fly_toml() -> None:
    repo = tomllib.loads((Path(__file__).parents[1] / "fly.toml").read_text(encoding="utf-8"))
    incident = load_scenario("incident").fly_config()
    assert incident["mounts"] == repo["mounts"]
    assert incident["processes"] == repo["processes"]


def test_old_snapshots_scenario_is_stale() -> None:
    with serve("old-snapshots") as sim, client_for(sim) as api:
        (volume,) = api.get("/volumes").json()
        snapshots = api.get(f"/volumes/{volume['id']}/snapshots").json()
    assert volume["auto_backup_enabled"] is False
    newest = max(datetime.fromisoformat(s["created_at"]) for s in snapshots)
    age = datetime.now(UTC) - newest
    assert age.total_seconds() == pytest.approx(240 * 3600, abs=120)


def test_fleet_scenario() -> None:
    fleet = make_fleet_scenario(50, limits=NO_LIMITS)
    assert len(fleet.machines) == len(fleet.volumes) == len(fleet.snapshots) == 50
    assert len(set(fleet.attachments())) == 50
    assert {m.group for m in fleet.machines} == {"app", "worker"}
    with SimServer(fleet) as sim, client_for(sim) as api:
        api.base_url = f"{sim.url}/v1/apps/{fleet.app}"
        machines = api.get("/machines").json()
        volumes = api.get("/volumes").json()
    assert len(machines) == 50
    assert all(v["attached_machine_id"] for v in volumes)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"colour": "blue"}, "unknown key"),
        (
            {"machines": [{"id": "a", "volume": "v"}, {"id": "b", "volume": "v"}]},
            "attached to both",
        ),
        ({"machines": [{"id": "a", "volume": "missing"}]}, "unknown volume"),
        ({"machines": [{"id": "a", "state": "running"}]}, "state"),
        ({"snapshots": [{"volume": "nope"}]}, "unknown volume"),
        ({"fly_toml": "app = "}, "does not parse"),
        ({"limits": {"burst": 0}}, "burst"),
        ({"faults": {"explode_next": 1}}, "unknown key"),
        ({"faults": {"fail_next": -1}}, "non-negative"),
    ],
)
def test_impossible_scenarios_are_refused(change: dict[str, Any], message: str) -> None:
    data = {"app": APP, "tokens": ["t"], "volumes": [{"id": "v", "name": "data"}], **change}
    with pytest.raises(ScenarioError, match=message):
        parse_scenario(data)


def test_scenario_path_for_unknown_name() -> None:
    with pytest.raises(ScenarioError, match="shipped: "):
        scenario_path("nope")


def test_server_accepts_a_scenario_name() -> None:
    with SimServer("healthy") as sim:
        assert isinstance(sim.scenario, Scenario)
        assert sim.url.startswith("http://127.0.0.1:")


# --- the command -----------------------------------------------------------------------


def test_module_serves_until_sigterm() -> None:
    command = [sys.executable, "-m", "volguard.sim", "--scenario", "incident", "--port", "0"]
    with subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    ) as proc:
        try:
            line = proc.stdout.readline()
            match = re.fullmatch(r"listening on (http://127\.0\.0\.1:\d+)\n", line)
            assert match, line
            headers = {"Authorization": "Bearer sim-oauth-token"}
            response = httpx.get(f"{match[1]}/v1/apps/{APP}/volumes", headers=headers, verify=TLS)
            assert response.status_code == 200
        finally:
            proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
