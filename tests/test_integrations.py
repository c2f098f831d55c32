"""volguard where users' CI meets it: the pre-commit hook and the GitHub Action, run for real.

- The hook (.pre-commit-hooks.yaml) through `pre-commit try-repo`, as a user tries a hook
  before adopting it, on a sample project in a fresh git repository. try-repo installs this
  repository into its own environment with pip (the package index must be reachable).
- The action (action.yml): its `run:` steps taken from the file, their `${{ … }}`
  expressions filled in as GitHub fills them (inputs with their defaults, the action's path,
  earlier steps' outputs), run with bash in a sample workspace. The `uses:` steps
  (setup-python, upload-sarif) need GitHub; the test checks what they are given.

Both install this checkout: a clone of it (HEAD plus the uncommitted changes to tracked
files, as try-repo itself takes them), so the tests see what the next commit holds.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from test_render import _schema_errors, sarif_validator  # noqa: F401 (a fixture)

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
INCIDENT = (REPO / "fly.toml").read_text()  # VG103 at fly.toml:31:3
CLEAN = """\
app = "clean"
primary_region = "syd"

[env]
  MEDIA_ROOT = "/data/media"

[[mounts]]
  source = "data"
  destination = "/data"
"""

pytestmark = pytest.mark.slow


def run(argv: list[Any], cwd: Path, **kwargs: Any) -> subprocess.CompletedProcess[str]:
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


def base_env(home: Path) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("INVOKE_", "GITHUB_", "VOLGUARD_", "PRE_COMMIT"))
        and k not in {"PYTHONPATH", "VIRTUAL_ENV", "NO_COLOR"}
    }
    env["HOME"] = str(home)
    return env


@pytest.fixture(scope="module")
def checkout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """This repository as a clean clone: HEAD with the working tree's tracked changes."""
    clone = tmp_path_factory.mktemp("checkout") / "volguard"
    done = run(["git", "clone", "--quiet", "--no-hardlinks", REPO, clone], REPO)
    assert done.returncode == 0, done.stderr
    diff = subprocess.run(
        ["git", "diff", "HEAD", "--binary"], cwd=REPO, capture_output=True, check=True
    ).stdout
    if diff:
        subprocess.run(["git", "apply", "--index"], cwd=clone, input=diff, check=True)
        commit = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "tree"]
        assert run(commit, clone).returncode == 0
    return clone


def sample_project(root: Path, files: dict[str, str]) -> Path:
    """A git repository holding ``files`` (staged: pre-commit sees tracked files only)."""
    root.mkdir(parents=True)
    assert run(["git", "init", "--quiet"], root).returncode == 0
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    assert run(["git", "add", "."], root).returncode == 0
    return root


# -- the pre-commit hook -----------------------------------------------------------------------


def try_repo(checkout: Path, project: Path, home: Path) -> subprocess.CompletedProcess[str]:
    env = {**base_env(home), "PRE_COMMIT_HOME": str(home / "pre-commit")}
    cmd = [
        BIN / "pre-commit",
        "try-repo",
        checkout,
        "volguard-lint",
        "--all-files",
        "--color=never",
    ]
    return run(cmd, project, env=env)


def test_the_hook_fails_a_fly_toml_with_vg103_and_lints_each_file(
    checkout: Path, tmp_path: Path
) -> None:
    project = sample_project(
        tmp_path / "app",
        {
            "fly.toml": INCIDENT,
            "deploy/fly.staging.toml": CLEAN,
            "butterfly.toml": "not toml at all [",  # not a fly.toml: never linted
            "README.md": "an app\n",
        },
    )
    done = try_repo(checkout, project, tmp_path)
    out = done.stdout + done.stderr
    assert done.returncode == 1, out
    assert re.search(r"volguard lint .*\.+Failed", out), out
    assert "- exit code: 2" in out
    assert "VG103  fly.toml:31:3" in out
    assert "deploy/fly.staging.toml: no findings - ok" in out  # each file, linted alone
    assert "butterfly" not in out
    assert "Traceback" not in out


def test_the_hook_passes_a_good_fly_toml(checkout: Path, tmp_path: Path) -> None:
    project = sample_project(tmp_path / "app", {"fly.toml": CLEAN})
    done = try_repo(checkout, project, tmp_path)
    out = done.stdout + done.stderr
    assert done.returncode == 0, out
    assert re.search(r"volguard lint .*\.+Passed", out), out


# -- the repository's own .pre-commit-config.yaml -----------------------------------------------


def test_the_repos_pre_commit_config_runs_ci_lint_on_what_it_is_given(tmp_path: Path) -> None:
    """Its hooks are .ci/run's ruff commands under pyproject.toml's ruff settings."""
    ci = (REPO / ".ci" / "run").read_text()
    assert ".venv/bin/ruff check ." in ci
    assert ".venv/bin/ruff format --check ." in ci
    config = yaml.safe_load((REPO / ".pre-commit-config.yaml").read_text())
    hooks = {h["id"]: h for r in config["repos"] for h in r["hooks"]}
    assert [h["entry"].split(" --force-exclude")[0] for h in hooks.values()] == [
        "ruff check",
        "ruff format --check",
    ]
    ruff_settings = (REPO / "pyproject.toml").read_text().split("[tool.ruff]", 1)[1]
    files = {
        ".pre-commit-config.yaml": (REPO / ".pre-commit-config.yaml").read_text(),
        "pyproject.toml": "[tool.ruff]" + ruff_settings,
        "good.py": '"""Fine."""\n\nVALUE = 1\n',
        "bad.py": "import os\nx = {  'a':1 }\n",  # F401, and not formatted
    }
    project = sample_project(tmp_path / "repo", files)
    env = {**base_env(tmp_path), "PRE_COMMIT_HOME": str(tmp_path / "pre-commit")}
    argv = [BIN / "pre-commit", "run", "--all-files", "--color=never"]
    failed = run(argv, project, env=env)
    out = failed.stdout + failed.stderr
    assert failed.returncode == 1, out
    assert "F401" in out
    assert "1 file would be reformatted" in out
    assert "good.py" not in out
    (project / "bad.py").write_text('"""Fixed."""\n\nx = {"a": 1}\n')
    passed = run(argv, project, env=env)
    assert passed.returncode == 0, passed.stdout + passed.stderr
    assert passed.stdout.count("Passed") == 2, passed.stdout


# -- the GitHub Action -------------------------------------------------------------------------

ACTION = yaml.safe_load((REPO / "action.yml").read_text())
EXPRESSION = re.compile(r"\$\{\{\s*(.*?)\s*\}\}")
ANNOTATION = r"^::error title=VG103 [^\n]*,file=fly\.toml,line=31,col=3::"


class Runner:
    """Runs action.yml's `run:` steps as GitHub's runner does, for one workspace."""

    def __init__(self, action_path: Path, workspace: Path, home: Path) -> None:
        self.action_path = action_path
        self.workspace = workspace
        self.home = home
        self.temp = home / "runner-temp"
        self.temp.mkdir(exist_ok=True)
        self.summary = home / "step-summary.md"
        self.outputs: dict[str, dict[str, str]] = {}
        # setup-python's part: `python` on PATH (this interpreter)
        self.bin = home / "setup-python-bin"
        self.bin.mkdir(exist_ok=True)
        if not (self.bin / "python").exists():
            (self.bin / "python").symlink_to(sys.executable)

    def expand(self, text: str, inputs: dict[str, str]) -> str:
        def value(match: re.Match[str]) -> str:
            expression = match.group(1)
            if expression == "github.action_path":
                return str(self.action_path)
            if m := re.fullmatch(r"inputs\.([\w-]+)", expression):
                return inputs[m.group(1)]
            if m := re.fullmatch(r"steps\.([\w-]+)\.outputs\.([\w-]+)", expression):
                return self.outputs.get(m.group(1), {}).get(m.group(2), "")
            raise AssertionError(f"the test does not know how GitHub evaluates {expression!r}")

        return EXPRESSION.sub(value, text)

    def run_step(self, step: dict[str, Any], inputs: dict[str, str]) -> subprocess.CompletedProcess:
        output_file = self.temp / f"output-{step['id']}"
        output_file.write_text("")
        env = {
            **base_env(self.home),
            "PATH": f"{self.bin}{os.pathsep}{os.environ['PATH']}",
            "GITHUB_ACTIONS": "true",
            "GITHUB_WORKSPACE": str(self.workspace),
            "GITHUB_ACTION_PATH": str(self.action_path),
            "GITHUB_OUTPUT": str(output_file),
            "GITHUB_STEP_SUMMARY": str(self.summary),
            "RUNNER_TEMP": str(self.temp),
        }
        env.update({k: self.expand(str(v), inputs) for k, v in step.get("env", {}).items()})
        cwd = self.workspace / self.expand(step.get("working-directory", "."), inputs)
        assert step["shell"] == "bash"
        script = self.temp / f"step-{step['id']}.sh"
        script.write_text(self.expand(step["run"], inputs))
        # GitHub's `shell: bash` is `bash --noprofile --norc -eo pipefail {0}`
        done = run(["bash", "--noprofile", "--norc", "-eo", "pipefail", script], cwd, env=env)
        self.outputs[step["id"]] = dict(
            line.split("=", 1) for line in output_file.read_text().splitlines() if "=" in line
        )
        return done


def inputs_with(**given: str) -> dict[str, str]:
    inputs = {name: str(spec.get("default", "")) for name, spec in ACTION["inputs"].items()}
    for name, value in given.items():
        assert name.replace("_", "-") in inputs, name
        inputs[name.replace("_", "-")] = value
    return inputs


def step(step_id: str) -> dict[str, Any]:
    return next(s for s in ACTION["runs"]["steps"] if s.get("id") == step_id)


@pytest.fixture(scope="module")
def action_runner(checkout: Path, tmp_path_factory: pytest.TempPathFactory) -> Runner:
    """The action's install step, run once: volguard from the action's own path."""
    home = tmp_path_factory.mktemp("runner")
    workspace = home / "workspace"
    workspace.mkdir()
    runner = Runner(checkout, workspace, home)
    done = runner.run_step(step("install"), inputs_with())
    assert done.returncode == 0, done.stdout + done.stderr
    volguard = Path(runner.outputs["install"]["volguard"])
    assert volguard.is_relative_to(runner.temp)  # its own venv, not the caller's python
    return runner


def test_the_action_is_composite_and_uploads_only_a_written_sarif() -> None:
    assert ACTION["runs"]["using"] == "composite"
    uses = {s["uses"].split("@")[0]: s for s in ACTION["runs"]["steps"] if "uses" in s}
    assert set(uses) == {"actions/setup-python", "github/codeql-action/upload-sarif"}
    upload = uses["github/codeql-action/upload-sarif"]
    assert upload["with"]["sarif_file"] == "${{ steps.lint.outputs.sarif }}"
    # after a failing lint too (that is when the report matters), never without a report
    assert upload["if"].startswith("always() &&")
    assert "steps.lint.outputs.sarif != ''" in upload["if"]
    assert "inputs.upload-sarif == 'true'" in upload["if"]
    for s in ACTION["runs"]["steps"]:  # inputs reach scripts through env, not spliced in
        assert "${{" not in s.get("run", "")


def test_the_action_fails_on_vg103_with_annotations_and_a_valid_sarif(
    action_runner: Runner,
    sarif_validator: jsonschema.Draft4Validator,  # noqa: F811
) -> None:
    runner = action_runner
    (runner.workspace / "fly.toml").write_text(INCIDENT)
    done = runner.run_step(step("lint"), inputs_with())
    assert done.returncode == 2, done.stdout + done.stderr
    assert re.search(ANNOTATION, done.stdout, re.M), done.stdout
    outputs = runner.outputs["lint"]
    assert outputs["exit-code"] == "2"
    sarif = Path(outputs["sarif"])
    assert sarif == runner.workspace / "volguard.sarif"
    log = json.loads(sarif.read_text())
    assert _schema_errors(sarif_validator, log) == []
    assert [r["ruleId"] for r in log["runs"][0]["results"]] == ["VG103"]
    assert "VG103" in runner.summary.read_text()


def test_the_action_passes_a_clean_fly_toml_elsewhere_without_sarif(
    action_runner: Runner,
) -> None:
    runner = action_runner
    (runner.workspace / "apps" / "web").mkdir(parents=True)
    (runner.workspace / "apps" / "web" / "fly.staging.toml").write_text(CLEAN)
    inputs = inputs_with(working_directory="apps/web", fly_toml="fly.staging.toml", sarif="")
    done = runner.run_step(step("lint"), inputs)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "::error" not in done.stdout
    assert runner.outputs["lint"] == {"exit-code": "0"}  # no sarif: the upload step is skipped
    assert not list((runner.workspace / "apps" / "web").glob("*.sarif"))


def test_the_action_fail_on_input_reaches_volguard(action_runner: Runner) -> None:
    runner = action_runner
    (runner.workspace / "fly.toml").write_text(INCIDENT)
    done = runner.run_step(step("lint"), inputs_with(fail_on="never"))
    assert done.returncode == 0, done.stdout + done.stderr
    assert re.search(ANNOTATION, done.stdout, re.M)  # still annotated, not failed
