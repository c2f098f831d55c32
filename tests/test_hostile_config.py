"""volguard's own configuration as a new user writes it (#8 item 20).

The README's `invoke.yaml` example must work as printed, and a bad value in invoke.yaml
(an impossible date, broken YAML, a mapping where another file has none) is one line on
stderr naming the file, never a traceback.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
VOLGUARD = str(Path(sys.executable).with_name("volguard"))


def readme_invoke_yaml() -> str:
    """The first ```yaml block of README.md that holds a `volguard:` section."""
    blocks = re.findall(r"```yaml\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)
    return next(b for b in blocks if b.startswith("volguard:"))


def lint_in(directory: Path, *args: str) -> subprocess.CompletedProcess[str]:
    if not (directory / "fly.toml").exists():
        (directory / "fly.toml").write_text((ROOT / "fly.toml").read_text())
    return subprocess.run(
        [VOLGUARD, "lint", *args],
        cwd=directory,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_the_readme_invoke_yaml_example_works_as_printed(tmp_path: Path) -> None:
    (tmp_path / "invoke.yaml").write_text(readme_invoke_yaml())
    done = lint_in(tmp_path)
    assert "Traceback" not in done.stderr
    assert done.returncode in (0, 2), done.stderr
    assert "fly.toml" in done.stdout


def test_the_readme_example_waiver_is_applied(tmp_path: Path) -> None:
    (tmp_path / "invoke.yaml").write_text(readme_invoke_yaml())
    (tmp_path / "fly.toml").write_text(
        'app = "test-blue-smoke-97"\nprimary_region = "syd"\n[env]\nMEDIA_ROOT = "/data/media"\n'
        '[processes]\napp = "gunicorn"\nworker = "celery"\n'
        '[mounts]\nsource = "data"\ndestination = "/data"\nsnapshot_retention = 2\n'
    )
    done = lint_in(tmp_path, "--format", "json")
    assert '"id": "VG110"' in done.stdout
    assert '"waived": true' in done.stdout, done.stdout


@pytest.mark.parametrize("until", ["2027-02-30", "2027-14-01", "27-03-01", "soon"])
def test_an_impossible_date_in_invoke_yaml_is_one_line_naming_file_and_line(
    tmp_path: Path, until: str
) -> None:
    (tmp_path / "invoke.yaml").write_text(
        f"volguard:\n  waivers:\n    - {{id: VG110, reason: staging, until: {until}}}\n"
    )
    done = lint_in(tmp_path)
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "invoke.yaml:3" in lines[0]
    assert until in lines[0]


def test_an_impossible_inline_waiver_date_is_one_line_naming_file_and_line(
    tmp_path: Path,
) -> None:
    (tmp_path / "fly.toml").write_text(
        'app = "a"\n[mounts]\nsource = "d"\ndestination = "/data"\n'
        'snapshot_retention = 2  # volguard: ignore VG110 reason="x" until=2027-02-30\n'
    )
    done = lint_in(tmp_path)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        "volguard: error: fly.toml:5: until='2027-02-30' is not a date like 2027-03-01"
    ]


@pytest.mark.parametrize(
    "text",
    [
        "volguard:\n  media_groups: [app\n",  # unclosed flow sequence
        "volguard: {fly_toml: a\n",
        "volguard:\n\tfly_toml: a\n",  # a tab
        "volguard:\n  machine_counts: {app: 1}\n  machine_counts: [1]\n",
    ],
)
def test_broken_yaml_is_one_line_naming_the_file(tmp_path: Path, text: str) -> None:
    (tmp_path / "invoke.yaml").write_text(text)
    done = lint_in(tmp_path)
    assert "Traceback" not in done.stderr
    assert done.returncode == 1
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert "invoke.yaml" in done.stderr


def test_a_mapping_that_cannot_merge_with_another_file_is_one_line(tmp_path: Path) -> None:
    """~/.invoke.yaml with a list where the project's invoke.yaml has a mapping."""
    home = tmp_path / "home"
    home.mkdir()
    (home / ".invoke.yaml").write_text("volguard:\n  machine_counts: [1, 2]\n")
    project = tmp_path / "project"
    project.mkdir()
    (project / "invoke.yaml").write_text("volguard:\n  machine_counts: {app: 1}\n")
    (project / "fly.toml").write_text((ROOT / "fly.toml").read_text())
    done = subprocess.run(
        [VOLGUARD, "lint"],
        cwd=project,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={"HOME": str(home), "PATH": "/usr/bin:/bin"},
    )
    assert "Traceback" not in done.stderr
    assert done.returncode == 1
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
