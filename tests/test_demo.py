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
def test_the_demo_diagnoses_fixes_and_ends_with_a_clean_verify(workdir: Path) -> None:
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
    lint, diagnosis, damage, interlock, fix, final = (_section(out, n) for n in range(1, 7))
    assert "error   VG103  fly.toml:31:3" in lint
    assert "(exit 2)" in lint
    assert {"VG205", "VG306", "VG103"} <= set(re.findall(r"error\s+(VG\d+)", diagnosis))
    assert "Without a usable file: 4 (missing 4)" in damage
    assert "remediation refused: verify-volume finds VG205" in interlock
    assert "(exit 2)" in interlock
    assert 'destroy 1 "worker" machine' in fix
    assert "fix      changed" in fix
    assert "deploy succeeded" in fix
    verify = final.split("$ volguard remediate")[0]
    assert "warning VG204" in verify
    assert "error" not in verify
    assert "(exit 0)" in verify
    assert "(0 not yet failed)" in final
    # The run records of every runbook run stay in the work directory.
    runs = sorted(p.name.split("-")[0] for p in (tmp_path / ".volguard" / "runs").glob("*.json"))
    assert runs.count("deploy") == 1
    assert runs.count("remediate") == 2  # the refused one and deploy's fix
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
