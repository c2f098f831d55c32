"""The platform layer end to end, over real HTTP against the Fly API simulator."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from datetime import UTC, datetime
from functools import partial
from pathlib import Path

import pytest

from volguard.audit_log import AuditLog
from volguard.config import Settings
from volguard.errors import SnapshotTimeout
from volguard.fly.client import MachinesClient, RateLimiter, Token
from volguard.fly.volumes import ensure_volumes, snapshot_media_volumes
from volguard.flytoml import parse_fly_toml
from volguard.sim.api import SimServer, load_scenario
from volguard.sim.scenario import Limits, SnapshotSpec
from volguard.verify import verify

VOLGUARD = str(Path(sys.executable).with_name("volguard"))

#: Each shipped scenario and exactly the platform findings it must yield.
EXPECTED = {
    "healthy": [],
    "incident": ["VG205"],
    "missing-volume": ["VG201", "VG204"],
    "region-mismatch": ["VG203"],
    "detached-volume": ["VG204"],
    "two-app-machines": ["VG206"],
    "old-snapshots": ["VG207"],
    "snapshot-in-progress": [],
    "only-pending-snapshot": ["VG207"],
    "attached-alloc": [],
    "machine-suspended": ["VG209"],
    "machine-replacing": ["VG209"],
    "incomplete-config": ["VG203"],
}


def fast_client(sim: SimServer, **kwargs):
    """A client for the simulator with short back-offs, so fault tests stay quick."""
    kwargs.setdefault("backoff", 0.01)
    return partial(MachinesClient, base_url=sim.url, **kwargs)


def run_verify(sim: SimServer, tmp_path: Path, token: str | None = None, **kwargs):
    path = tmp_path / "fly.toml"
    path.write_text(sim.scenario.fly_toml)
    factory = kwargs.pop("client_factory", None) or fast_client(sim)
    return verify(
        Settings.load(None),
        str(path),
        token=Token(token or sim.token),
        client_factory=factory,
        **kwargs,
    )


def platform_ids(report) -> list[str]:
    return sorted(f.id for f in report.findings if f.id.startswith("VG2"))


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_each_scenario_yields_exactly_its_findings(name, tmp_path):
    with SimServer(name) as sim:
        report = run_verify(sim, tmp_path)
    assert report.layers["platform"].status == "ran"
    assert platform_ids(report) == EXPECTED[name]


def test_the_incident_names_both_machines_and_both_volumes(tmp_path):
    with SimServer("incident") as sim:
        report = run_verify(sim, tmp_path)
        machines = {m.id: m.volume for m in sim.scenario.machines}
    (vg205,) = [f for f in report.findings if f.id == "VG205"]
    for machine_id, volume_id in machines.items():
        assert machine_id in vg205.message
        assert volume_id in vg205.message
    assert "syd" in vg205.message
    assert set(vg205.evidence["groups"]) == {"app", "worker"}
    assert {f.id for f in report.findings} == {"VG103", "VG205"}  # static and live agree


@pytest.mark.parametrize(("name", "calls"), [("healthy", 3), ("incident", 4)])
def test_api_calls_are_two_lists_plus_one_snapshot_list_per_media_volume(name, calls, tmp_path):
    with SimServer(name) as sim:
        report = run_verify(sim, tmp_path)
        log = sim.requests()
    assert report.stats["api_calls"] == calls
    assert len(log) == calls
    assert sum(1 for r in log if r["path"].endswith("/snapshots")) == calls - 2


def test_both_token_schemes_are_accepted(tmp_path):
    scenario = load_scenario("healthy")
    macaroon, oauth = scenario.tokens
    for token in (macaroon, oauth, f"FlyV1 {macaroon}"):
        with SimServer(scenario) as sim:
            report = run_verify(sim, tmp_path, token=token)
        assert report.layers["platform"].status == "ran", token[:6]


def test_a_refused_token_is_vg200_and_never_shown(tmp_path):
    token = "fm2_not-a-real-but-secret-token-value"
    with SimServer("healthy") as sim:
        report = run_verify(sim, tmp_path, token=token)
    (vg200,) = [f for f in report.findings if f.id == "VG200"]
    assert "HTTP 401" in vg200.message
    assert report.layers["platform"].status == "broken"
    assert token not in json.dumps(report.as_dict(None), default=str)


@pytest.mark.parametrize(
    "fault", [{"fail_next": 2}, {"drop_next": 1}, {"malformed_next": 2}, {"rate_limit_next": 1}]
)
def test_transient_faults_end_in_a_successful_retry(fault, tmp_path):
    with SimServer("incident") as sim:
        sim.inject(**fault)
        report = run_verify(sim, tmp_path)
        log = sim.requests()
    assert platform_ids(report) == ["VG205"]
    assert any(r.get("fault") for r in log), "the fault was not exercised"


@pytest.mark.parametrize(
    ("fault", "says"),
    [
        ({"fail_next": 50}, "HTTP 50"),
        ({"malformed_next": 50}, "not JSON"),
        ({"drop_next": 50}, "talking to"),
    ],
)
def test_lasting_faults_end_in_a_clear_vg200(fault, says, tmp_path):
    with SimServer("healthy") as sim:
        sim.inject(**fault)
        report = run_verify(sim, tmp_path)
    ids = [f.id for f in report.findings]
    assert ids == ["VG200"]
    assert says in report.findings[0].message
    assert "after 4 attempts" in report.findings[0].message


def test_a_hanging_api_times_out_as_vg200(tmp_path):
    with SimServer("healthy") as sim:
        sim.inject(latency_ms=2000)
        report = run_verify(sim, tmp_path, client_factory=fast_client(sim, timeout=0.2, attempts=2))
    assert [f.id for f in report.findings] == ["VG200"]
    assert "timed out" in report.findings[0].message.lower()


def test_an_unknown_app_is_vg200_with_the_http_status(tmp_path):
    with SimServer("healthy") as sim:
        path = tmp_path / "fly.toml"
        path.write_text(sim.scenario.fly_toml)
        report = verify(
            Settings.load(None, app="no-such-app"),
            str(path),
            token=Token(sim.token),
            client_factory=fast_client(sim),
        )
    assert [f.id for f in report.findings] == ["VG200"]
    assert "HTTP 404" in report.findings[0].message


# -- create-volume -------------------------------------------------------------------------


def _ensure(sim: SimServer, tmp_path: Path, **kwargs) -> list[str]:
    config, problems = parse_fly_toml(sim.scenario.fly_toml, str(tmp_path / "fly.toml"))
    assert config is not None
    assert not problems
    lines: list[str] = []
    kwargs.setdefault("client_factory", fast_client(sim))
    created = ensure_volumes(
        config,
        sim.scenario.app,
        Token(sim.token),
        confirm=None,
        audit=AuditLog(str(tmp_path / "audit.jsonl"), command="create-volume"),
        out=lines.append,
        **kwargs,
    )
    return created, lines


def _posts(sim: SimServer) -> list[dict]:
    return [r for r in sim.requests() if r["method"] == "POST" and r["path"].endswith("/volumes")]


def test_create_volume_twice_creates_the_shortfall_once(tmp_path):
    with SimServer("healthy") as sim:
        created, lines = _ensure(sim, tmp_path, apply=True, count=3)
        assert len(created) == 2
        assert len(_posts(sim)) == 2
        assert '+ 2 volumes "data" in syd (1 GB, for group app)' in lines
        again, lines = _ensure(sim, tmp_path, apply=True, count=3)
        assert again == []
        assert len(_posts(sim)) == 2
        assert any("nothing to create" in line for line in lines)
        made = [v for v in sim.state.list_volumes() if v["id"] in created]
    assert {(v["name"], v["region"], v["size_gb"]) for v in made} == {("data", "syd", 1)}
    audit = [json.loads(line) for line in (tmp_path / "audit.jsonl").read_text().splitlines()]
    assert [a["target"] for a in audit] == created
    assert all(a["action"] == "create_volume" and a["user"] for a in audit)


def test_create_volume_without_apply_changes_nothing(tmp_path):
    with SimServer("healthy") as sim:
        created, lines = _ensure(sim, tmp_path, apply=False, count=2)
        assert created == []
        assert _posts(sim) == []
    assert any(line.startswith("+ 1 volume") for line in lines)
    assert any("pass --apply" in line for line in lines)


def test_an_unattached_volume_is_used_before_creating_one(tmp_path):
    with SimServer("missing-volume") as sim:
        created, _lines = _ensure(sim, tmp_path, apply=True)
        assert created == []
        assert _posts(sim) == []


def test_a_create_that_fails_ambiguously_is_replanned_not_repeated(tmp_path):
    class FlakyOnce(MachinesClient):
        tripped = False

        def create_volume(self, app, request):
            if not FlakyOnce.tripped:
                FlakyOnce.tripped = True
                sim.inject(fail_next=1)  # the server answers this POST with a 5xx
            return super().create_volume(app, request)

    with SimServer("healthy") as sim:
        factory = partial(FlakyOnce, base_url=sim.url, backoff=0.01)
        _created, lines = _ensure(sim, tmp_path, apply=True, count=3, client_factory=factory)
        volumes = [v for v in sim.state.list_volumes() if v["name"] == "data"]
    assert FlakyOnce.tripped
    assert len(volumes) == 3  # exactly the shortfall of 2, whatever the failed POST did
    assert any("re-reading the volumes" in line for line in lines)


def test_the_request_always_carries_size_and_fly_toml_snapshot_settings(tmp_path):
    scenario = load_scenario("healthy")
    fly_toml = scenario.fly_toml.replace(
        'destination = "/data"',
        'destination = "/data"\n  initial_size = "10gb"\n  snapshot_retention = 14\n'
        "  scheduled_snapshots = true",
    )
    assert fly_toml != scenario.fly_toml
    with SimServer(replace(scenario, fly_toml=fly_toml)) as sim:
        created, _ = _ensure(sim, tmp_path, apply=True, count=2)
        (volume,) = [v for v in sim.state.list_volumes() if v["id"] in created]
    assert volume["size_gb"] == 10
    assert volume["snapshot_retention"] == 14
    assert volume["auto_backup_enabled"] is True


# -- snapshot-volumes ---------------------------------------------------------------------


def _snapshot(sim: SimServer, tmp_path: Path, lines: list[str], **kwargs) -> dict[str, str]:
    """snapshot-volumes --apply, polling often and without the client's own rate limit, so
    every status of the snapshot's life cycle is seen."""
    config, _ = parse_fly_toml(sim.scenario.fly_toml)
    kwargs.setdefault("poll", 0.05)
    return snapshot_media_volumes(
        config,
        Settings.load(None),
        sim.scenario.app,
        Token(sim.token),
        apply=True,
        audit=AuditLog(str(tmp_path / "audit.jsonl")),
        out=lines.append,
        client_factory=fast_client(sim, limiter=RateLimiter(rate=0)),
        **kwargs,
    )


def test_snapshot_volumes_waits_until_the_snapshot_is_created(tmp_path, capsys):
    limits = Limits(rate_per_second=0, get_machine_rate=0, snapshot_delay_seconds=0.6)
    scenario = replace(load_scenario("healthy"), limits=limits)
    with SimServer(scenario) as sim:
        lines: list[str] = []
        taken = _snapshot(sim, tmp_path, lines)
        ((volume_id, snapshot_id),) = taken.items()
        listed = {s["id"]: s["status"] for s in sim.state.list_snapshots(volume_id)}
    assert listed[snapshot_id] == "created"
    progress = capsys.readouterr().err
    assert f"{volume_id}: snapshot waiting" in progress  # the life cycle, on stderr
    assert f"{volume_id}: snapshot running" in progress
    assert any(f"snapshot {snapshot_id} created" in line for line in lines)


def test_snapshot_volumes_fails_clearly_when_the_snapshot_never_completes(tmp_path):
    scenario = replace(load_scenario("healthy"), limits=Limits(snapshot_delay_seconds=3600))
    with SimServer(scenario) as sim, pytest.raises(SnapshotTimeout) as raised:
        _snapshot(sim, tmp_path, [], timeout=0.4)
    message = str(raised.value)
    assert "vol_668we58kuhntaa1u" in message
    assert "not created within 0.4 s" in message
    assert "waiting" in message or "running" in message  # what it was last seen doing


def test_snapshot_volumes_while_a_scheduled_snapshot_runs(tmp_path):
    with SimServer("snapshot-in-progress") as sim:
        taken = _snapshot(sim, tmp_path, [])
    assert list(taken) == ["vol_668we58kuhntaa1u"]
    assert taken["vol_668we58kuhntaa1u"].startswith("vs_")


def test_a_snapshot_in_progress_keeps_every_platform_finding(tmp_path):
    """The incident while each volume's scheduled snapshot runs: still VG205, not VG200."""
    scenario = load_scenario("incident")
    running = tuple(
        SnapshotSpec(volume=v.id, created_at=datetime.now(UTC), status=status)
        for v in scenario.volumes
        for status in ("waiting", "running")
    )
    with SimServer(replace(scenario, snapshots=scenario.snapshots + running)) as sim:
        report = run_verify(sim, tmp_path)
    assert report.layers["platform"].status == "ran"
    assert platform_ids(report) == EXPECTED["incident"]


def test_create_volume_does_not_count_a_volume_attached_to_an_allocation(tmp_path):
    with SimServer("attached-alloc") as sim:
        _created, lines = _ensure(sim, tmp_path, apply=False, count=2)
    assert '+ 1 volume "data" in syd (1 GB, for group app)' in lines


# -- the commands, as a user runs them ----------------------------------------------------


def _cli(sim: SimServer, tmp_path: Path, *args: str, token: str | None = None):
    (tmp_path / "fly.toml").write_text(sim.scenario.fly_toml)
    env = {
        **os.environ,
        "FLY_FLAPS_BASE_URL": sim.url,
        "FLY_API_TOKEN": token or sim.token,
        "NO_COLOR": "1",
    }
    return subprocess.run(
        [VOLGUARD, *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=60,
    )


def test_verify_volume_command_reports_the_incident_live(tmp_path):
    with SimServer("incident") as sim:
        run = _cli(sim, tmp_path, "verify-volume", "--format", "json", "--verbose")
    assert run.returncode == 2, run.stderr
    report = json.loads(run.stdout)
    assert {f["id"] for f in report["findings"]} == {"VG103", "VG205"}
    assert report["layers"]["platform"]["status"] == "ran"
    assert report["layers"]["machine"]["status"] == "skipped"
    assert "volguard: platform: 4 API calls" in run.stderr


def test_verify_volume_without_a_token_skips_the_platform_layer(tmp_path):
    (tmp_path / "fly.toml").write_text(load_scenario("healthy").fly_toml)
    env = {k: v for k, v in os.environ.items() if k != "FLY_API_TOKEN"}
    run = subprocess.run(
        [VOLGUARD, "verify-volume"], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "platform: skipped (no FLY_API_TOKEN)" in run.stdout


@pytest.mark.parametrize(
    ("fault", "token"),
    [(None, None), ({"fail_next": 50}, None), (None, "fm2_refused-secret-token-1234")],
)
def test_the_token_is_nowhere_in_the_output(fault, token, tmp_path):
    with SimServer("incident") as sim:
        if fault:
            sim.inject(**fault)
        secret = token or sim.token
        runs = [
            _cli(sim, tmp_path, "verify-volume", "--format", fmt, "--verbose", token=token)
            for fmt in ("text", "json", "sarif", "github")
        ]
        runs.append(_cli(sim, tmp_path, "create-volume", "--count", "2", token=token))
    for run in runs:
        assert run.returncode in (0, 1, 2)
        assert "Traceback" not in run.stderr
        for part in (secret, secret.removeprefix("fm2_")):
            assert part not in run.stdout
            assert part not in run.stderr


def test_create_volume_command_asks_before_acting_and_is_idempotent(tmp_path):
    with SimServer("healthy") as sim:
        refused = _cli(sim, tmp_path, "create-volume", "--count", "2", "--apply")
        assert refused.returncode == 1
        assert "Create 1 volume(s) for app" in refused.stderr
        assert sim.scenario.app in refused.stderr
        assert _posts(sim) == []
        first = _cli(sim, tmp_path, "create-volume", "--count", "2", "--apply", "--yes")
        second = _cli(sim, tmp_path, "create-volume", "--count", "2", "--apply", "--yes")
        posts = len(_posts(sim))
    assert first.returncode == 0, first.stderr
    assert "created 1 volume(s)" in first.stdout
    assert second.returncode == 0
    assert "nothing to create" in second.stdout
    assert posts == 1
