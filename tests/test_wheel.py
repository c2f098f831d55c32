"""volguard as users install it: the wheel, built, checked, installed and run without a clone.

The wheel is built from this checkout (`python -m build --wheel`), checked with
`check-wheel-contents`, and pip-installed (not editable) with its dependencies into a fresh
virtualenv. Every command then runs that venv's `volguard` from a temporary directory with
PYTHONPATH unset, so nothing of the clone is importable: the Machine layer must find its
checks inside the installed package. The simulators (the Machines API, the local fleet and
its flyctl stand-in, the example app on the Machine) run from the development venv, as
they would stand in for Fly.io beside any install.

Building and installing need the package index (CI reaches it); the fleet needs root and
Linux: without it the fleet tests skip, except under CI, where they must run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest
from test_remediate import deployment

import volguard
from volguard.sim.api import SimServer, load_scenario
from volguard.sim.local_fleet import LocalFleet, fleet_unavailable

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

WHY = fleet_unavailable()
if WHY and os.environ.get("CI"):
    raise RuntimeError(f"CI must be able to run the local fleet, but: {WHY}")
needs_fleet = pytest.mark.skipif(WHY is not None, reason=WHY or "")
pytestmark = pytest.mark.slow

#: Variables of the test run that would make the installed tool see something else than a
#: user's machine shows it: a clone on the import path, another venv, volguard settings.
_DROPPED_PREFIXES = ("INVOKE_", "FLY_", "GITHUB_", "VOLGUARD_")
_DROPPED = {"PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "VIRTUAL_ENV"}


def run(argv: list[str | Path], cwd: Path, **kwargs) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(a) for a in argv],
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
        **kwargs,
    )


@dataclass(frozen=True)
class Install:
    """The built wheel and the fresh virtualenv it is installed in."""

    wheel: Path
    venv: Path

    @property
    def python(self) -> Path:
        return self.venv / "bin" / "python"

    @property
    def volguard(self) -> Path:
        return self.venv / "bin" / "volguard"

    def env(self, home: Path, *, path_first: Path | None = None, **extra: str) -> dict[str, str]:
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(_DROPPED_PREFIXES) and k not in _DROPPED
        }
        env["HOME"] = str(home)
        env["NO_COLOR"] = "1"
        if path_first:
            env["PATH"] = f"{path_first}{os.pathsep}{env['PATH']}"
        env.update(extra)
        return env


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Install:
    root = tmp_path_factory.mktemp("wheel")
    dist = root / "dist"
    built = run([sys.executable, "-m", "build", "--wheel", "--outdir", dist, REPO], root)
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    (wheel,) = dist.glob("volguard-*.whl")
    venv = root / "venv"
    made = run([sys.executable, "-m", "venv", venv], root)
    assert made.returncode == 0, made.stderr
    # pip resolves the dependencies from the package index, as for a user
    pip = run([venv / "bin" / "python", "-m", "pip", "install", "--quiet", wheel], root)
    assert pip.returncode == 0, pip.stdout[-3000:] + pip.stderr[-3000:]
    return Install(wheel, venv)


# -- the wheel ---------------------------------------------------------------------------------


def test_the_wheel_passes_check_wheel_contents(installed: Install, tmp_path: Path) -> None:
    done = run([BIN / "check-wheel-contents", installed.wheel], tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.strip().endswith("OK"), done.stdout


def test_the_wheel_carries_the_checks_and_py_typed_but_no_tests(installed: Install) -> None:
    names = zipfile.ZipFile(installed.wheel).namelist()
    shipped = sorted(n.split("/")[-1] for n in names if n.startswith("volguard/_checks/"))
    in_repo = sorted(p.name for p in (REPO / "checks").iterdir() if p.is_file())
    assert shipped == in_repo
    assert any(n.startswith("volguard/_checks/test_vg306_") for n in names)
    assert "volguard/py.typed" in names
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
    top = {n.split("/")[0] for n in names}
    assert top == {"volguard", f"volguard-{volguard.__version__}.dist-info"}
    assert not [n for n in names if n.startswith(("tests/", "checks/")) or n.endswith(".pyc")]


def test_the_installed_tool_imports_nothing_from_the_clone(
    installed: Install, tmp_path: Path
) -> None:
    probe = (
        "import json, sys, importlib.metadata as md, volguard\n"
        "from volguard.remote.checks_runner import builtin_checks_dir\n"
        "meta = md.metadata('volguard')\n"
        "print(json.dumps({'file': volguard.__file__, 'path': sys.path,\n"
        "    'checks': str(builtin_checks_dir()), 'license': meta['License-Expression'],\n"
        "    'classifiers': meta.get_all('Classifier'), 'urls': meta.get_all('Project-URL')}))\n"
    )
    done = run([installed.python, "-c", probe], tmp_path, env=installed.env(tmp_path))
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout)
    site = installed.venv / "lib"
    assert Path(seen["file"]).is_relative_to(site)
    assert Path(seen["checks"]).is_relative_to(site)
    assert (Path(seen["checks"]) / "test_vg301_separate_filesystem.py").is_file()
    assert not [p for p in seen["path"] if p and Path(p).resolve().is_relative_to(REPO)]
    assert seen["license"] == "MIT"
    assert "Typing :: Typed" in seen["classifiers"]
    assert any(u.startswith("Source, https://") for u in seen["urls"])
    version = run([installed.volguard, "--version"], tmp_path, env=installed.env(tmp_path))
    assert version.stdout.strip() == f"volguard {volguard.__version__}"


# -- the installed tool against the simulators -------------------------------------------------

# A user's own check module: a failing test becomes a finding with its marker's id.
USER_CHECK = """\
import pytest


@pytest.mark.volguard("ACME1", severity="warning")
def test_media_is_not_handled_by_the_worker(observation):
    assert observation.machine.group != "worker"
"""


@needs_fleet
def test_verify_volume_from_the_wheel_runs_all_three_layers(
    installed: Install, tmp_path: Path
) -> None:
    scenario = load_scenario("incident")
    (tmp_path / "fly.toml").write_text(scenario.fly_toml)
    (tmp_path / "invoke.yaml").write_text("volguard:\n  volume_fstypes: [ext4, tmpfs]\n")
    (tmp_path / "checks").mkdir()
    (tmp_path / "checks" / "test_acme.py").write_text(USER_CHECK)
    with SimServer(scenario) as sim, LocalFleet(scenario) as fleet:
        env = installed.env(
            tmp_path,
            path_first=fleet.flyctl_dir,
            FLY_FLAPS_BASE_URL=sim.url,
            FLY_API_TOKEN=sim.token,
        )
        done = run(
            [installed.volguard, "verify-volume", "--format", "json", "--verbose"],
            tmp_path,
            env=env,
        )
        worker = next(m.id for m in scenario.machines if m.group == "worker")
    assert done.returncode == 2, done.stderr
    report = json.loads(done.stdout)
    assert {name: layer["status"] for name, layer in report["layers"].items()} == {
        "static": "ran",
        "platform": "ran",
        "machine": "ran",
    }
    found = {(f["id"], f["location"].get("machine")) for f in report["findings"]}
    assert {i for i, _ in found} == {"VG103", "VG205", "VG306", "ACME1"}
    assert ("VG306", worker) in found  # from the wheel's own check module
    assert ("ACME1", worker) in found  # the user's checks/ joins the report
    assert "volguard: machine: 2 Machines checked" in done.stderr
    assert "Traceback" not in done.stderr
    assert sim.token not in done.stdout + done.stderr


@needs_fleet
def test_remediate_plan_from_the_wheel(installed: Install, tmp_path: Path) -> None:
    with deployment(tmp_path) as site:
        (tmp_path / "invoke.yaml").write_text(
            "volguard:\n"
            "  volume_fstypes: [ext4, tmpfs]\n"
            f"  ssh_config: {json.dumps(str(site.fleet.ssh_config))}\n"
            f"  manage_py: {json.dumps(site.manage_py)}\n"
        )
        before = site.rows()
        env = installed.env(
            tmp_path,
            path_first=site.fleet.flyctl_dir,
            FLY_FLAPS_BASE_URL=site.sim.url,
            FLY_API_TOKEN=site.sim.token,
        )
        done = run([installed.volguard, "remediate", "--json", "--samples", "1"], tmp_path, env=env)
        after = site.rows()
        snapshots = site.snapshots_taken()
    assert done.returncode == 2, done.stdout + done.stderr  # rows are missing
    document = json.loads(done.stdout)
    assert document["ran_as"]["user"] == "app"
    assert document["machine"]["id"] == site.machine
    assert document["plan"]["per_reason"]["missing"] == 3
    assert len(document["plan"]["samples"]["missing"]) == 1
    assert document["record"] is None  # a plan changes nothing
    assert after == before
    assert snapshots == []
    assert site.sim.token not in done.stdout + done.stderr
