"""The simulator answers, and volguard asks, in the Machines API's own shapes.

The reference is tests/data/machines-api/machines-api.schema.json: the Swagger copy's
definitions plus the fields fly-go reads that the copy predates, with the top-level
objects closed, so a key no source names fails here (README.md beside it says where each
part comes from). Every response of every shipped scenario is checked, the pending row
of a snapshot being taken and the Machines a deploy leaves included, and so is every
request body volguard sends while it verifies, creates volumes and takes snapshots.
"""

from __future__ import annotations

import json
import time
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import pytest

from volguard.audit_log import AuditLog
from volguard.config import Settings
from volguard.errors import FlyAPIError
from volguard.fly.client import MachinesClient, RateLimiter, Token
from volguard.fly.volumes import ensure_volumes, snapshot_media_volumes
from volguard.flytoml import parse_fly_toml
from volguard.sim.api import SimServer, load_scenario, make_fleet_scenario, shipped_scenarios
from volguard.sim.scenario import Limits, Scenario
from volguard.verify import verify

SCHEMA = json.loads(
    (Path(__file__).parent / "data" / "machines-api" / "machines-api.schema.json").read_text()
)
NO_LIMITS = Limits(rate_per_second=0, get_machine_rate=0, snapshot_delay_seconds=0.3)


def validator(definition: str | None, *, array: bool = False) -> jsonschema.Validator:
    ref: dict[str, Any] = {"$ref": f"#/definitions/{definition}"} if definition else {}
    schema = {"type": "array", "items": ref} if array else ref
    return jsonschema.Draft7Validator({**schema, "definitions": SCHEMA["definitions"]})


#: Each route the simulator serves, with the schema of its 200 answer (Swagger `paths`).
#: The on-demand snapshot's answer has no schema in the Swagger copy (only "200 OK"), and
#: fly-go ignores it: an object, no more.
RESPONSES = {
    ("GET", "machines"): validator("Machine", array=True),
    ("GET", "machine"): validator("Machine"),
    ("GET", "volumes"): validator("Volume", array=True),
    ("POST", "volumes"): validator("Volume"),
    ("GET", "volume"): validator("Volume"),
    ("GET", "snapshots"): validator("VolumeSnapshot", array=True),
    ("POST", "snapshots"): jsonschema.Draft7Validator({"type": "object"}),
    # Temporary Machines (#10). POST /machines answers a Machine (SWAGGER Machines_create);
    # DELETE /volumes/{id} a Volume (SWAGGER Volume_delete); the wait and the Machine's
    # DELETE have no schema in the copy ("200 OK") and fly-go ignores both bodies.
    ("POST", "machines"): validator("Machine"),
    ("DELETE", "volume"): validator("Volume"),
    ("GET", "wait"): jsonschema.Draft7Validator({"type": "object"}),
    ("DELETE", "machine"): jsonschema.Draft7Validator({"type": "object"}),
}
ERROR = validator("ErrorResponse")
#: Request bodies: CreateVolumeRequest; the snapshot POST has no body in the Swagger copy
#: and fly-go sends none (flaps_volumes.go CreateVolumeSnapshot): nothing, or `{}`.
REQUESTS = {
    ("POST", "volumes"): validator("CreateVolumeRequest"),
    ("POST", "snapshots"): jsonschema.Draft7Validator({"type": "object", "maxProperties": 0}),
    ("POST", "machines"): validator("CreateMachineRequest"),
}


def route(method: str, path: str) -> tuple[str, str]:
    """("GET", "/v1/apps/a/volumes/vol_x/snapshots") -> ("GET", "snapshots")."""
    parts = path.split("?")[0].strip("/").split("/")[3:]  # after v1/apps/{app}
    kind = {1: parts[0], 2: parts[0].removesuffix("s"), 3: parts[-1]}[len(parts)]
    return method, kind


def problems(validator: jsonschema.Validator, body: Any) -> list[str]:
    return [
        f"{'/'.join(map(str, e.absolute_path)) or '(top)'}: {e.message}"
        for e in validator.iter_errors(body)
    ]


def check_response(method: str, path: str, status: int, body: Any) -> list[str]:
    schema = RESPONSES[route(method, path)] if 200 <= status < 300 else ERROR
    return [f"{method} {path} -> {status}: {p}" for p in problems(schema, body)]


def walk(api: httpx.Client) -> list[tuple[str, str, int, Any]]:
    """Every read the API offers volguard, for every object of the app."""
    seen = []

    def get(path: str) -> Any:
        response = api.get(path)
        seen.append(("GET", str(response.request.url.path), response.status_code, response.json()))
        return response.json()

    for machine in get("machines?include_deleted=true"):
        get(f"machines/{machine['id']}")
    get("machines")
    for volume in get("volumes"):
        get(f"volumes/{volume['id']}")
        get(f"volumes/{volume['id']}/snapshots")
    get("volumes/vol_doesnotexist0000")  # an error body too
    return seen


def client_for(sim: SimServer) -> httpx.Client:
    return httpx.Client(
        base_url=f"{sim.url}/v1/apps/{sim.scenario.app}/",
        headers={"Authorization": sim.auth_header},
        timeout=10,
    )


@pytest.mark.parametrize("name", shipped_scenarios())
def test_every_read_of_every_scenario_has_the_apis_shape(name: str) -> None:
    with SimServer(replace(load_scenario(name), limits=NO_LIMITS)) as sim, client_for(sim) as api:
        seen = walk(api)
    assert len(seen) > 4
    assert [p for s in seen for p in check_response(*s)] == []


def test_a_snapshot_being_taken_and_then_created_has_the_apis_shape() -> None:
    scenario = replace(load_scenario("incident"), limits=NO_LIMITS)
    with SimServer(scenario) as sim, client_for(sim) as api:
        volume_id = api.get("volumes").json()[0]["id"]
        posted = api.post(f"volumes/{volume_id}/snapshots")
        pending = api.get(f"volumes/{volume_id}/snapshots")
        time.sleep(NO_LIMITS.snapshot_delay_seconds + 0.1)
        created = api.get(f"volumes/{volume_id}/snapshots")
    assert pending.json()[-1]["id"] == ""
    assert created.json()[-1]["status"] == "created"
    for response in (posted, pending, created):
        request = response.request
        assert (
            check_response(request.method, request.url.path, response.status_code, response.json())
            == []
        )


def test_the_machines_a_deploy_leaves_have_the_apis_shape() -> None:
    with SimServer(replace(load_scenario("incident"), limits=NO_LIMITS)) as sim:
        sim.deploy(None, yes=True)
        with client_for(sim) as api:
            seen = walk(api)
    assert [p for s in seen for p in check_response(*s)] == []


def test_a_big_fleet_has_the_apis_shape() -> None:
    scenario = make_fleet_scenario(6, limits=NO_LIMITS)
    with SimServer(scenario) as sim, client_for(sim) as api:
        assert [p for s in walk(api) for p in check_response(*s)] == []


# -- what volguard sends, and what it gets back ------------------------------------------


class Recorder(httpx.BaseTransport):
    """The real HTTP transport, keeping each request body and each answer."""

    def __init__(self) -> None:
        self.inner = httpx.HTTPTransport()
        self.exchanges: list[tuple[str, str, bytes, int, Any]] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        sent = request.read()
        response = self.inner.handle_request(request)
        received = response.read()
        body = json.loads(received) if received else None
        self.exchanges.append((request.method, request.url.path, sent, response.status_code, body))
        return httpx.Response(
            response.status_code, headers=response.headers, content=received, request=request
        )

    def close(self) -> None:
        self.inner.close()


def run_volguard(name: str | Scenario, tmp_path: Path) -> Recorder:
    """verify-volume, create-volume --apply and snapshot-volumes --apply, as a user runs them."""
    recorder = Recorder()
    scenario = load_scenario(name) if isinstance(name, str) else name
    with SimServer(replace(scenario, limits=NO_LIMITS)) as sim:
        factory = partial(
            MachinesClient,
            base_url=sim.url,
            transport=recorder,
            backoff=0.01,
            limiter=RateLimiter(rate=0),
        )
        path = tmp_path / "fly.toml"
        path.write_text(sim.scenario.fly_toml)
        verify(Settings.load(None), str(path), token=Token(sim.token), client_factory=factory)
        config, _ = parse_fly_toml(sim.scenario.fly_toml, str(path))
        audit = AuditLog(str(tmp_path / "audit.jsonl"))
        app, token = sim.scenario.app, Token(sim.token)
        common = {"audit": audit, "out": lambda line: None, "client_factory": factory}
        ensure_volumes(config, app, token, apply=True, confirm=None, count=2, **common)
        snapshot_media_volumes(
            config, Settings.load(None), app, token, apply=True, poll=0.05,
            progress=lambda line: None, **common,
        )  # fmt: skip
    return recorder


@pytest.mark.parametrize("name", ["incident", "healthy", "snapshot-in-progress", "attached-alloc"])
def test_every_request_volguard_sends_and_every_answer_has_the_apis_shape(name, tmp_path):
    recorder = run_volguard(name, tmp_path)
    sent = [(m, p, json.loads(b)) for m, p, b, _s, _r in recorder.exchanges if b]
    assert {route(m, p) for m, p, _ in sent} == {("POST", "volumes"), ("POST", "snapshots")}
    assert [
        f"{m} {p}: {e}" for m, p, body in sent for e in problems(REQUESTS[route(m, p)], body)
    ] == []
    assert [
        p for m, path, _b, status, body in recorder.exchanges
        for p in check_response(m, path, status, body)
    ] == []  # fmt: skip


def test_create_volume_sends_what_flyctl_sends_for_a_group(tmp_path):
    """The group's guest as `compute`, `require_unique_zone`, and the mount's snapshot
    settings (FLYCTL deploy/deploy_first.go, scale/machine_defaults.go @ad0172fa); the
    auto-extend settings belong to the Machine's mount, not to this body."""
    healthy = load_scenario("healthy")
    fly_toml = healthy.fly_toml.replace(
        'destination = "/data"\n',
        'destination = "/data"\n  snapshot_retention = 14\n  scheduled_snapshots = false\n'
        '  auto_extend_size_threshold = 80\n  auto_extend_size_increment = "1GB"\n'
        '  auto_extend_size_limit = "10GB"\n',
    ).replace('memory = "1gb"\n  cpu_kind = "shared"', 'memory = "4gb"\n  cpu_kind = "performance"')
    recorder = run_volguard(replace(healthy, fly_toml=fly_toml), tmp_path)
    (body,) = [
        json.loads(sent) for m, p, sent, _s, _r in recorder.exchanges
        if sent and route(m, p) == ("POST", "volumes")
    ]  # fmt: skip
    assert body == {
        "name": "data",
        "region": "syd",
        "size_gb": 1,
        "encrypted": True,
        "require_unique_zone": True,
        "snapshot_retention": 14,
        "auto_backup_enabled": False,
        "compute": {"cpu_kind": "performance", "cpus": 1, "memory_mb": 4096},
    }
    assert problems(REQUESTS[("POST", "volumes")], body) == []


def test_the_create_volume_schema_takes_fly_gos_null_compute() -> None:
    """`compute` is a *MachineGuest in fly-go: flyctl's first deploy sends null for it."""
    request = {"name": "data", "region": "syd", "compute": None}
    assert problems(REQUESTS[("POST", "volumes")], request) == []
    assert problems(REQUESTS[("POST", "volumes")], {**request, "compute": {"cpus": "2"}})
    assert problems(REQUESTS[("POST", "volumes")], {**request, "auto_extend_size_limit": 10})


# -- the reference itself ---------------------------------------------------------------


def test_a_field_no_source_names_fails_the_check() -> None:
    """The schema is closed: a key the simulator invented (or a misspelt one) is caught."""
    with SimServer("healthy") as sim, client_for(sim) as api:
        volume = api.get("volumes").json()[0]
        machine = api.get("machines").json()[0]
    assert problems(RESPONSES[("GET", "volume")], volume) == []
    assert problems(RESPONSES[("GET", "volume")], {**volume, "bytes_total": 1})
    assert problems(RESPONSES[("GET", "machine")], {**machine, "host_dedication_id": ""})
    assert problems(RESPONSES[("GET", "volume")], {**volume, "size_gb": "1"})


def test_fly_gos_always_written_fields_are_required() -> None:
    with SimServer("healthy") as sim, client_for(sim) as api:
        volume = api.get("volumes").json()[0]
        (snapshot,) = api.get(f"volumes/{volume['id']}/snapshots").json()
    for key in ("host_dedication_id", "attached_alloc_id"):
        assert problems(RESPONSES[("GET", "volume")], {k: v for k, v in volume.items() if k != key})
    for key in ("volume_size", "status", "retention_days"):
        assert problems(
            RESPONSES[("GET", "snapshots")], [{k: v for k, v in snapshot.items() if k != key}]
        )


def test_nulls_only_where_fly_go_has_a_pointer() -> None:
    with SimServer("healthy") as sim, client_for(sim) as api:
        volume = api.get("volumes").json()[0] | {"attached_machine_id": None}
    assert problems(RESPONSES[("GET", "volume")], volume) == []
    assert problems(RESPONSES[("GET", "volume")], {**volume, "name": None})
    request = {"name": "data", "size_gb": None, "snapshot_retention": None}
    assert problems(REQUESTS[("POST", "volumes")], request) == []
    assert problems(REQUESTS[("POST", "volumes")], {**request, "name": None})


def test_temporary_forks_restores_and_machines_send_and_get_the_apis_shapes(tmp_path):
    """What volguard.fly.temporary sends (a fork, a restore, a Machine, its wait and the
    destroys) and every answer, errors included (a refused Machine, a bound volume)."""
    from volguard.errors import TemporaryResourceError
    from volguard.fly.snapshots import snapshot_volumes
    from volguard.fly.temporary import Ledger, temporary_machine

    recorder = Recorder()
    scenario = replace(load_scenario("incident"), limits=NO_LIMITS)
    with SimServer(scenario) as sim:
        app = sim.scenario.app
        client = MachinesClient(
            Token(sim.token), base_url=sim.url, transport=recorder, limiter=RateLimiter(rate=0)
        )
        volume = client.list_volumes(app)[0]
        with temporary_machine(client, app, volume, ledger=Ledger.in_memory(), poll=0.05):
            pass
        (taken,) = snapshot_volumes(client, app, [volume], poll=0.05).values()
        with temporary_machine(
            client, app, volume, ledger=Ledger.in_memory(), snapshot_id=taken, poll=0.05
        ):
            pass
        sim.inject(refuse_machine_next=1)
        with pytest.raises(TemporaryResourceError):  # noqa: SIM117 - the error is the point
            with temporary_machine(client, app, volume, ledger=Ledger.in_memory(), poll=0.05):
                pass
        with pytest.raises(FlyAPIError):
            client.destroy_volume(app, volume.id)  # bound to its Machine: 412
        with client_for(sim) as api:
            seen = walk(api)  # the Machines and volumes left destroyed read as the API's too
        client.close()
    routes = {route(m, p) for m, p, *_ in recorder.exchanges}
    assert {("POST", "machines"), ("GET", "wait"), ("DELETE", "machine")} <= routes
    assert {("DELETE", "volume"), ("POST", "volumes")} <= routes
    sent = [(m, p, json.loads(b)) for m, p, b, _s, _r in recorder.exchanges if b]
    assert [
        f"{m} {p}: {e}" for m, p, body in sent for e in problems(REQUESTS[route(m, p)], body)
    ] == []
    assert [
        p for m, path, _b, status, body in recorder.exchanges
        for p in check_response(m, path, status, body)
    ] == []  # fmt: skip
    assert [p for s in seen for p in check_response(*s)] == []


def test_create_volume_asks_for_a_new_groups_vm_section_as_flyctl_would(tmp_path):
    """A group with no Machine yet: its `[[vm]]` (size preset, then memory), as flyctl's first
    deploy and `fly scale count` send it (volguard.fly.guest)."""
    healthy = load_scenario("healthy")
    fly_toml = (
        healthy.fly_toml.replace(
            'app = "honcho start -f Procfile.fly"\n',
            'app = "honcho start -f Procfile.fly"\n  worker = "celery -A config worker"\n',
        ).replace(
            'destination = "/data"\n', 'destination = "/data"\n  processes = ["app", "worker"]\n'
        )
        + '\n[[vm]]\n  size = "performance-2x"\n  memory = "8gb"\n  processes = ["worker"]\n'
    )
    recorder = run_volguard(replace(healthy, fly_toml=fly_toml), tmp_path)
    bodies = [
        json.loads(sent) for m, p, sent, _s, _r in recorder.exchanges
        if sent and route(m, p) == ("POST", "volumes")
    ]  # fmt: skip
    worker = {"cpu_kind": "performance", "cpus": 2, "memory_mb": 8192}
    assert [b["compute"] for b in bodies].count(worker) == 2, bodies
    assert all(problems(REQUESTS[("POST", "volumes")], b) == [] for b in bodies)
