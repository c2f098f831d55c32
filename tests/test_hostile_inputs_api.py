"""Hostile Machines API answers: spec-shaped objects, mutated, into volguard's parsers and client.

The objects start as the simulator builds them (volguard/sim/objects.py, the shapes of
fly-facts §3.2/§3.3) and are mutated: fields removed or null, values of the wrong type,
extra fields, huge lists, unicode and control characters. (1) `Machine/Volume/Snapshot.
from_api` parse one object or raise ValueError (the client's cue for VG200), and the parsed
object's properties work. (2) For a sample, a tiny HTTP server on loopback serves them and
verify's platform layer (httpx → MachinesClient → load_fleet → the platform rules) answers
with findings — VG200 for a malformed answer — never a traceback, never a hang. Full count
1,000 parses and 200 served fleets (scaled by VOLGUARD_FUZZ_SCALE).
"""

from __future__ import annotations

import copy
import datetime as dt
import http.server
import json
import threading
from collections.abc import Iterator
from typing import Any, ClassVar

import pytest
from hostile_inputs_support import fuzz, hang_guard, one_line, tally
from hypothesis import example, given
from hypothesis import strategies as st

from volguard.catalogue import CHECKS
from volguard.config import Settings
from volguard.findings import Finding, Severity
from volguard.fly.client import MachinesClient, RateLimiter, Token
from volguard.fly.models import Machine, Snapshot, Volume
from volguard.flytoml import parse_fly_toml
from volguard.render import render
from volguard.report import Report
from volguard.sim import objects
from volguard.sim.scenario import MachineSpec, Scenario, SnapshotSpec, VolumeSpec
from volguard.verify import check_platform

NOW = dt.datetime(2026, 12, 1, 12, 0, tzinfo=dt.UTC)
FLY_TOML = """\
app = "shop"
primary_region = "syd"
[env]
  MEDIA_ROOT = "/data/media"
[processes]
  app = "gunicorn"
  worker = "celery"
[mounts]
  source = "data"
  destination = "/data"
  processes = ["app", "worker"]
"""
SCENARIO = Scenario(name="hostile", app="shop", primary_region="syd", tokens=("t",),
                    fly_toml=FLY_TOML)  # fmt: skip

# -- spec-shaped objects, from the simulator -------------------------------------------------

machine_ids = st.text("0123456789abcdef", min_size=14, max_size=14)
regions = st.sampled_from(["syd", "ams", "ord"])


@st.composite
def volume_json(draw: st.DrawFn) -> dict[str, Any]:
    spec = VolumeSpec(
        id="vol_" + draw(st.text("abcdefghjkmnpqrstvwxyz0123456789", min_size=16, max_size=16)),
        name=draw(st.sampled_from(["data", "media", "pg_data"])),
        region=draw(regions),
        size_gb=draw(st.integers(1, 500)),
        state=draw(st.sampled_from(["created", "attached", "pending_destroy", "restoring"])),
        host_status=draw(st.sampled_from(["ok", "unreachable"])),
        used_percent=draw(st.floats(0, 100)),
        snapshot_retention=draw(st.integers(1, 60)),
        auto_backup_enabled=draw(st.booleans()),
    )
    attached = draw(st.none() | machine_ids)
    return objects.Volume.from_spec(spec, attached, NOW).to_json()


@st.composite
def snapshot_json(draw: st.DrawFn) -> dict[str, Any]:
    volume = objects.Volume.from_spec(VolumeSpec(id="vol_x", name="data", region="syd"), None, NOW)
    created = NOW - dt.timedelta(hours=draw(st.integers(0, 24 * 60)))
    spec = SnapshotSpec(volume="vol_x", created_at=created, status=draw(st.sampled_from(
        ["created", "running", "failed"])))  # fmt: skip
    return objects.Snapshot.from_spec(spec, volume).to_json(now=1e12)  # long done


@st.composite
def machine_json(draw: st.DrawFn) -> dict[str, Any]:
    spec = MachineSpec(
        id=draw(machine_ids),
        region=draw(regions),
        group=draw(st.sampled_from(["app", "worker", "fly_app_release_command"])),
        state=draw(st.sampled_from(["started", "stopped", "destroyed", "replacing"])),
        host_status=draw(st.sampled_from(["ok", "unreachable"])),
        volume=draw(st.none() | st.just("vol_x")),
        legacy_group_key=draw(st.booleans()),
    )
    return objects.build_machine(spec, SCENARIO, SCENARIO.fly_config(), {"vol_x": "data"}, NOW)


# -- mutations -------------------------------------------------------------------------------

CONTROL = "\x00\x07\x1b[2J\x1b]0;owned\x07\r\n\t\x7f\u202e\ufeff\ud800"
hostile_values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.sampled_from([2**63, -(2**63) - 1, 10**100, -1, 0]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
    st.text(alphabet=CONTROL, max_size=10),
    st.integers(1_000, 100_000).map(lambda n: "é" * n),
    st.lists(st.integers() | st.none() | st.text(max_size=3), max_size=4),
    st.dictionaries(st.text(max_size=4), st.integers() | st.none(), max_size=3),
    st.integers(1_000, 50_000).map(lambda n: [{}] * n),  # a huge list
)


def _paths(value: Any, path: tuple = ()) -> Iterator[tuple]:
    yield path
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _paths(v, (*path, k))
    elif isinstance(value, list):
        for i, v in enumerate(value[:50]):
            yield from _paths(v, (*path, i))


def mutate(obj: Any, ops: list[tuple]) -> Any:
    obj = copy.deepcopy(obj)
    for kind, index, value in ops:
        paths = [p for p in _paths(obj) if p]
        if not paths:
            return value if kind == "set" else obj
        path = paths[index % len(paths)]
        parent = obj
        for k in path[:-1]:
            parent = parent[k]
        key = path[-1]
        if kind == "delete":
            del parent[key]
        elif kind == "set":
            parent[key] = value
        elif kind == "extra" and isinstance(parent, dict):
            parent[f"{key}\x1b_extra"] = value
    return obj


ops = st.lists(
    st.tuples(st.sampled_from(["delete", "set", "extra"]), st.integers(0, 1000), hostile_values),
    max_size=4,
)
kinds = {"machine": (machine_json(), Machine), "volume": (volume_json(), Volume),
         "snapshot": (snapshot_json(), Snapshot)}  # fmt: skip


@st.composite
def mutated_object(draw: st.DrawFn) -> tuple[type, Any]:
    kind = draw(st.sampled_from(sorted(kinds)))
    strategy, model = kinds[kind]
    obj = draw(strategy)
    return model, mutate(obj, draw(ops)) if draw(st.integers(0, 9)) else draw(hostile_values)


# -- (1) the parsers -------------------------------------------------------------------------


@fuzz(1_000)
@given(case=mutated_object())
@example(case=(Machine, {"id": "148ed599b6e7d8", "config": {"mounts": [{"volume": 1}]}}))
@example(case=(Volume, {"id": "vol_x", "blocks": 10, "blocks_free": 2**70}))
@example(case=(Snapshot, {"id": "vs_x", "created_at": "9999-12-31T23:59:59.999999999-23:59"}))
def test_mutated_api_objects_parse_or_raise_value_error(case: tuple[type, Any]) -> None:
    tally("API objects parsed")
    model, data = case
    with hang_guard(10):
        try:
            parsed = model.from_api(data)
        except ValueError as e:
            refusal = str(e)
        else:
            refusal = None
            check_parsed(parsed)
    assert refusal is None or one_line(refusal), refusal


def check_parsed(parsed: Machine | Volume | Snapshot) -> None:
    """What later code uses of a parsed object works, whatever the API sent."""
    if isinstance(parsed, Machine):
        assert isinstance(parsed.id, str)
        assert parsed.id
        _ = (parsed.mount, parsed.is_platform_helper, dict(parsed.env))
    elif isinstance(parsed, Volume):
        assert isinstance(parsed.describe_usage(), str)
        _ = (parsed.live, parsed.attached)
    else:
        assert parsed.created_at is None or parsed.created_at.tzinfo is not None


# -- (2) served over HTTP, through verify's platform layer -----------------------------------


class _FlyAPI(http.server.BaseHTTPRequestHandler):
    """Answers GET …/machines, …/volumes, …/snapshots with the bodies the test set."""

    bodies: ClassVar[dict[str, bytes]] = {}

    def do_GET(self) -> None:
        body = self.bodies.get(self.path.rstrip("/").rsplit("/", 1)[-1], b"[]")
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def fly_api() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _FlyAPI)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def _encode(value: Any) -> bytes:
    if isinstance(value, bytes):
        return value
    return json.dumps(value).encode("utf-8", "surrogatepass")


bodies = st.one_of(
    st.lists(ops, max_size=4).map(lambda o: ("objects", o)),
    hostile_values,
    st.sampled_from([b"", b"not json", b"\xff\xfe", b"[" * 500, b'{"error": "\x1b[31m"}']),
)


@st.composite
def served_fleet(draw: st.DrawFn) -> dict[str, bytes]:
    out = {}
    for endpoint, kind in (("machines", "machine"), ("volumes", "volume"),
                           ("snapshots", "snapshot")):  # fmt: skip
        body = draw(bodies)
        if isinstance(body, tuple):  # a list of spec-shaped objects, each mutated
            body = [mutate(draw(kinds[kind][0]), o) for o in body[1]]
        out[endpoint] = _encode(body)
    return out


@fuzz(200, deadline_seconds=20)
@given(served=served_fleet())
@example(served={"machines": b'[{"id": "\x1b[2J"}]', "volumes": b"{}", "snapshots": b"[]"})
def test_served_api_answers_give_findings_never_a_crash(
    fly_api: str, served: dict[str, bytes]
) -> None:
    tally("API fleets served over HTTP")
    _FlyAPI.bodies = served
    findings, _ = platform_layer(fly_api)
    for f in findings:
        assert f.id in CHECKS
        assert one_line(f.message), f


def platform_layer(base_url: str) -> tuple[list[Finding], str]:
    """verify's platform layer against ``base_url``: its findings and their text rendering."""
    config, _ = parse_fly_toml(FLY_TOML)
    assert config is not None

    def client(token: Token) -> MachinesClient:
        return MachinesClient(token, base_url, timeout=5, attempts=1,
                              limiter=RateLimiter(rate=0))  # fmt: skip

    report = Report(inputs={"fly_toml": "fly.toml"})
    with hang_guard(20):
        findings, _ = check_platform(config, Settings(), Token("fm2_hostile"), client, report, NOW)
        report.extend(findings)
        return findings, render(report, "text", fail_on=Severity.ERROR)


# -- found by the suites and fixed (see docs/safety.md, "Hostile-input suites") -----------


def test_deeply_nested_json_from_the_api_is_vg200(fly_api: str) -> None:
    _FlyAPI.bodies = {"machines": b"[" * 100_000, "volumes": b"[]", "snapshots": b"[]"}
    findings, _ = platform_layer(fly_api)
    assert [f.id for f in findings] == ["VG200"]


def test_api_text_reaches_the_terminal_escaped(fly_api: str) -> None:
    _FlyAPI.bodies = {"machines": b'[{"id": "\x1b[2J"}]', "volumes": b"[]", "snapshots": b"[]"}
    findings, text = platform_layer(fly_api)
    assert [f.id for f in findings] == ["VG200"]
    assert "\x1b" not in text
