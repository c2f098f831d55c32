"""`invoke demo`, as the README's first command runs it: the incident, end to end."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from volguard.demo import fixed_fly_toml, prerequisites
from volguard.sim.scenario import load_scenario

REPO = Path(__file__).resolve().parents[1]
WHY = prerequisites()
if WHY and os.environ.get("CI"):
    raise RuntimeError(f"CI must be able to run the demo, but: {WHY}")


@pytest.fixture
def workdir() -> Iterator[Path]:
    """A work directory the Machines' app user can enter (pytest's tmp_path is 0700)."""
    path = Path(tempfile.mkdtemp(prefix="volguard-demo-test-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _section(out: str, number: int) -> str:
    start = out.index(f"== {number}.")
    end = out.find(f"== {number + 1}.", start)
    return out[start : end if end >= 0 else None]


@pytest.mark.skipif(WHY is not None, reason=WHY or "")
def test_the_demo_diagnoses_deploys_recovers_fixes_the_rest_and_verifies_clean(
    workdir: Path,
) -> None:
    tmp_path = workdir
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FLY_", "INVOKE_"))}
    done = subprocess.run(
        [str(Path(sys.executable).with_name("invoke")), "demo", "--workdir", str(tmp_path)],
        cwd=REPO,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    out = done.stdout
    assert done.returncode == 0, out[-3000:] + done.stderr
    sections = [_section(out, n) for n in range(1, 9)]
    lint, diagnosis, damage, interlock, deploy, recovery, fix, final = sections
    assert "error   VG103  fly.toml:31:3" in lint
    assert "(exit 2)" in lint
    assert {"VG205", "VG306", "VG103"} <= set(re.findall(r"error\s+(VG\d+)", diagnosis))
    assert "Without a usable file: 4 (missing 4)" in damage
    assert "remediation refused: verify-volume finds VG205" in interlock
    assert "(exit 2)" in interlock
    assert 'destroy 1 "worker" machine' in deploy
    assert "deploy succeeded" in deploy
    assert "fix      skipped" in deploy
    # recover: the two uploads the worker wrote come back from its old volume (unattached
    # after the deploy), through a fork; the two with no copy anywhere are not found
    plan, applied = recovery.split("$ volguard recover --apply --yes")
    stranded = ("user_1/2026/11/20/survey-2026-q4.csv", "user_2/2026/11/20/inventory-old.csv")
    nowhere = ("user_3/2026/11/20/trial-2.csv", "user_3/2026/11/20/trial-3.csv")
    for name in stranded:
        assert re.search(
            rf"found +services.UserDataFile ID \d+: user_data/{name}  <- volume vol_", plan
        )
    for name in nowhere:
        assert re.search(rf"not_found +services.UserDataFile ID \d+: user_data/{name}", plan)
    assert "fork of volume vol_qtze732rf4dqo0ky" in plan
    assert "copy          changed" in applied
    assert "2 files restored and verified" in applied
    assert "after: 2 rows still without their file" in applied
    # only the rows with no copy anywhere are marked failed
    assert "2 rows marked failed" in fix
    marked = re.findall(r"missing +ID \d+: user_data/(\S+)", fix)
    assert sorted(set(marked)) == sorted(nowhere)
    assert "(exit 0)" in fix
    verify = final.split("$ volguard remediate")[0]
    assert "warning VG204" in verify
    assert "error" not in verify
    assert "(exit 0)" in verify
    assert "Without a usable file: 2 (missing 2)" in final
    assert "(0 not yet failed)" in final
    # The run records of every runbook run stay in the work directory.
    runs = sorted(p.name.split("-")[0] for p in (tmp_path / ".volguard" / "runs").glob("*.json"))
    assert runs.count("deploy") == 1
    assert runs.count("recover") == 1
    assert runs.count("remediate") == 2  # the refused one and the fix
    assert os.environ.get("FLY_API_TOKEN", "\0") not in out


def test_the_fix_keeps_one_media_group_and_the_rest_of_fly_toml() -> None:
    fixed = fixed_fly_toml(load_scenario("incident").fly_toml)
    import tomllib

    config = tomllib.loads(fixed)
    assert config["processes"] == {"app": "honcho start -f Procfile.fly"}
    assert config["mounts"]["processes"] == ["app"]
    assert config["mounts"]["destination"] == "/data"
    assert config["env"]["MEDIA_ROOT"] == "/data/media"
    assert config["http_service"]["processes"] == ["app"]
