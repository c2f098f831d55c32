"""`volguard deploy`: the runbook end to end against the API simulator and the local fleet.

As a user runs it: the `volguard` command in a project directory (fly.toml, invoke.yaml),
FLY_API_TOKEN and the simulator's URL in the environment, the flyctl stand-in on PATH.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from volguard.runs import RunLock
from volguard.sim.api import SimServer, load_scenario
from volguard.sim.local_fleet import LocalFleet, fleet_unavailable

WHY = fleet_unavailable()
if WHY and os.environ.get("CI"):
    raise RuntimeError(f"CI must be able to run the local fleet, but: {WHY}")

VOLGUARD = str(Path(sys.executable).with_name("volguard"))
SCENARIOS = Path(__file__).resolve().parents[1] / "volguard" / "sim" / "scenarios"
INVOKE_YAML = "volguard:\n  volume_fstypes: [ext4, tmpfs]\n"
needs_fleet = pytest.mark.skipif(WHY is not None, reason=WHY or "")


def _project(tmp_path: Path, fly_toml: str) -> Path:
    tmp_path.mkdir(exist_ok=True)
    (tmp_path / "fly.toml").write_text(fly_toml)
    (tmp_path / "invoke.yaml").write_text(INVOKE_YAML)
    return tmp_path


def _volguard(
    cwd: Path, sim: SimServer | None, fleet: LocalFleet | None, *args: str, **env: str
) -> subprocess.CompletedProcess[str]:
    environ = {
        **os.environ,
        "FLY_API_TOKEN": sim.token if sim else "fm2_unused",
        "NO_COLOR": "1",
        **env,
    }
    environ.pop("GITHUB_STEP_SUMMARY", None)
    environ.update(env)
    if sim:
        environ["FLY_FLAPS_BASE_URL"] = sim.url
    if fleet:
        environ["PATH"] = f"{fleet.flyctl_dir}{os.pathsep}{os.environ['PATH']}"
    return subprocess.run(
        [VOLGUARD, *args],
        cwd=cwd,
        env=environ,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def _instances(sim: SimServer) -> dict[str, str]:
    """Machine id -> instance_id, over the API (a deploy gives each Machine a new one)."""
    url = f"{sim.url}/v1/apps/{sim.scenario.app}/machines"
    machines = httpx.get(url, headers={"Authorization": sim.auth_header}).json()
    return {m["id"]: m["instance_id"] for m in machines}


def _record(cwd: Path) -> dict:
    records = sorted((cwd / ".volguard" / "runs").glob("deploy-*.json"))
    assert records, "no run record"
    return json.loads(records[-1].read_text())


def _statuses(record: dict) -> dict[str, str]:
    return {s["name"]: s["status"] for s in record["steps"]}


def test_the_lint_gate_stops_the_run_before_anything_changes(tmp_path: Path) -> None:
    cwd = _project(tmp_path, load_scenario("incident").fly_toml)
    summary = tmp_path / "summary.md"
    proc = _volguard(cwd, None, None, "deploy", "--no-deploy", GITHUB_STEP_SUMMARY=str(summary))
    assert proc.returncode == 2, proc.stdout + proc.stderr
    record = _record(cwd)
    assert _statuses(record) == {
        "lint": "failed",
        "volumes": "pending",
        "deploy": "pending",
        "wait": "pending",
        "verify": "pending",
        "audit": "pending",
        "fix": "pending",
    }
    assert record["status"] == "failed"
    assert "VG103" in record["steps"][0]["summary"]
    assert "deploy failed: test-blue-smoke-97" in proc.stdout
    assert "| lint | ❌ failed |" in summary.read_text()
    assert "fm2_unused" not in proc.stdout + proc.stderr


@needs_fleet
def test_a_healthy_fleet_passes_every_step(tmp_path: Path) -> None:
    scenario = load_scenario("healthy")
    cwd = _project(tmp_path, scenario.fly_toml)
    with SimServer(scenario) as sim, LocalFleet(scenario) as fleet:
        proc = _volguard(cwd, sim, fleet, "deploy", "--no-deploy", "--no-audit")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    record = _record(cwd)
    assert _statuses(record) == {
        "lint": "ok",
        "volumes": "ok",
        "deploy": "skipped",
        "wait": "ok",
        "verify": "ok",
        "audit": "skipped",
        "fix": "skipped",
    }
    assert record["status"] == "succeeded"
    verify = next(s for s in record["steps"] if s["name"] == "verify")
    assert verify["detail"]["layers"]["machine"][0] == "ran"
    assert sim.token not in proc.stdout + proc.stderr


@needs_fleet
def test_missing_volumes_fail_the_run_until_apply_creates_them(tmp_path: Path) -> None:
    # missing-volume without its spare unattached volume: a real shortfall of one.
    text = (SCENARIOS / "missing-volume.toml").read_text()
    (tmp_path / "no-volume.toml").write_text(text.split("[[volumes]]")[0])
    scenario = load_scenario(tmp_path / "no-volume.toml")
    cwd = _project(tmp_path / "project", scenario.fly_toml)
    with SimServer(scenario) as sim, LocalFleet(scenario) as fleet:
        first = _volguard(cwd, sim, fleet, "deploy", "--no-deploy", "--no-audit")
        assert first.returncode == 2, first.stdout + first.stderr
        assert _statuses(_record(cwd))["volumes"] == "failed"
        assert "re-run with --apply" in _record(cwd)["steps"][1]["summary"]
        creates = [r for r in sim.requests() if r["method"] == "POST"]
        assert creates == []

        second = _volguard(
            cwd, sim, fleet, "deploy", "--no-deploy", "--no-audit", "--apply", "--yes"
        )
        posts = [r for r in sim.requests() if r["method"] == "POST"]
    record = _record(cwd)
    assert _statuses(record)["volumes"] == "changed"
    assert len(posts) == len(record["steps"][1]["detail"]["created"]) >= 1
    # The Machine itself still runs without a volume: verify says so (VG201), exit 2.
    assert _statuses(record)["verify"] == "failed"
    assert "VG201" in record["steps"][4]["summary"]
    assert second.returncode == 2


def test_a_second_run_of_the_same_app_is_refused_while_one_holds_the_lock(
    tmp_path: Path,
) -> None:
    scenario = load_scenario("healthy")
    cwd = _project(tmp_path, scenario.fly_toml)
    with RunLock(scenario.app, str(cwd / ".volguard" / "runs")):
        proc = _volguard(cwd, None, None, "deploy", "--no-deploy")
    assert proc.returncode == 1
    assert proc.stderr.strip().startswith(
        f"volguard: error: another volguard run of {scenario.app} is in progress (pid "
    )
    assert proc.stderr.count("\n") == 1
    assert not list((cwd / ".volguard" / "runs").glob("deploy-*.json"))  # nothing started


def test_bad_flags_are_one_line_errors(tmp_path: Path) -> None:
    cwd = _project(tmp_path, load_scenario("healthy").fly_toml)
    proc = _volguard(cwd, None, None, "deploy", "--wait-timeout", "soon")
    assert proc.returncode == 1
    assert proc.stderr == "volguard: error: --wait-timeout must be a whole number, not 'soon'\n"
    proc = _volguard(cwd, None, None, "deploy", "--resume", "--no-deploy")
    assert proc.returncode == 1
    assert "--resume: no earlier deploy run of test-blue-smoke-97" in proc.stderr


@needs_fleet
def test_resume_continues_from_the_step_that_failed(tmp_path: Path) -> None:
    """flyctl deploy fails mid-run (injected); --resume carries lint and volumes over."""
    scenario = load_scenario("healthy")
    cwd = _project(tmp_path, scenario.fly_toml)
    with SimServer(scenario) as sim, LocalFleet(scenario) as fleet:
        failed = _volguard(cwd, sim, fleet, "deploy", "--no-audit", VOLGUARD_SIM_DEPLOY_FAIL="1")
        assert failed.returncode == 2, failed.stdout + failed.stderr
        first = _record(cwd)
        assert _statuses(first) == {
            "lint": "ok",
            "volumes": "ok",
            "deploy": "failed",
            "wait": "pending",
            "verify": "pending",
            "audit": "pending",
            "fix": "pending",
        }
        assert (
            "flyctl deploy exited 1: Error: release command failed" in first["steps"][2]["summary"]
        )
        before = _instances(sim)

        resumed = _volguard(cwd, sim, fleet, "deploy", "--no-audit", "--resume")
        after = _instances(sim)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert f"resuming run {first['id']}" in resumed.stdout
    second = _record(cwd)
    assert second["resumed_from"] == first["id"]
    steps = {s["name"]: s for s in second["steps"]}
    assert steps["lint"]["carried_over"]
    assert steps["volumes"]["carried_over"]
    assert not steps["deploy"]["carried_over"]
    assert _statuses(second)["deploy"] == "changed"
    assert _statuses(second)["verify"] == "ok"
    assert second["status"] == "succeeded"
    # The failed attempt changed nothing; the resumed one deployed (new instance ids).
    assert after != before
    # Nothing left to resume.
    again = _volguard(cwd, None, None, "deploy", "--resume")
    assert again.returncode == 1
    assert "succeeded; nothing to resume" in again.stderr


# -- the deploy step in-process: flyctl's output as it comes ----------------------------

FAKE_FLYCTL = """#!/bin/sh
echo "==> Building image"
i=0
while [ ! -e "$VG_SHOWN" ] && [ $i -lt 100 ]; do sleep 0.05; i=$((i+1)); done
[ -e "$VG_SHOWN" ] || { echo "Error: the first line was not shown while flyctl ran" >&2; exit 3; }
echo "--> v2 deployed successfully"
[ -z "$VG_FAIL" ] || { echo "Error: $VG_FAIL" >&2; exit 1; }
"""


def _deploy_step(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fail: str = "") -> tuple:
    from types import SimpleNamespace

    from volguard.deploy import deploy_step
    from volguard.runs import Step

    flyctl = tmp_path / "flyctl"
    flyctl.write_text(FAKE_FLYCTL)
    flyctl.chmod(0o755)
    shown = tmp_path / "shown"
    monkeypatch.setenv("VG_SHOWN", str(shown))
    monkeypatch.setenv("VG_FAIL", fail)
    lines: list[str] = []

    def out(line: str) -> None:
        lines.append(line)
        shown.touch()  # flyctl goes on only once its first line has been shown

    ctx = SimpleNamespace(
        options=SimpleNamespace(deploy=True, fly_toml="fly.toml"),
        settings=SimpleNamespace(flyctl=str(flyctl)),
        app="test-app",
        token=None,
        out=out,
    )
    step = Step("deploy")
    deploy_step(ctx, step)  # type: ignore[arg-type]
    return step, lines


def test_flyctl_deploy_output_is_shown_while_it_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    step, lines = _deploy_step(tmp_path, monkeypatch)
    assert lines == ["  ==> Building image", "  --> v2 deployed successfully"]
    assert (step.status, step.summary) == ("changed", "deployed")
    assert step.detail["command"][1:] == [
        "deploy",
        "--config",
        "fly.toml",
        "--app",
        "test-app",
        "--yes",
    ]


def test_a_failed_flyctl_deploy_is_one_line_from_its_stderr(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    step, lines = _deploy_step(tmp_path, monkeypatch, fail="release command failed")
    assert lines == ["  ==> Building image", "  --> v2 deployed successfully"]
    assert step.status == "failed"
    assert step.summary == "flyctl deploy exited 1: Error: release command failed"
