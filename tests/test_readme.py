"""README.md's two commands: each does its own set-up, and CI runs command 2 verbatim.

A reader copies the commands from README.md into a fresh clone; `.ci/run` is what CI runs.
If the two drifted apart, CI would pass on a command no reader runs.
"""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SETUP = "bash .ci/system-packages && "


def readme_commands() -> dict[str, str]:
    """The numbered commands of README.md's first ``sh`` block, by number: one line each."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    block = re.search(r"```sh\n(.*?)```", text, re.S)
    assert block, "README.md has no sh block"
    commands: dict[str, str] = {}
    number = None
    for line in block.group(1).splitlines():
        if heading := re.match(r"# (\d+)\. ", line):
            number = heading.group(1)
        elif line and not line.startswith("#"):
            assert number, f"a command before its numbered comment: {line!r}"
            assert number not in commands, f"command {number} is not one line: {line!r}"
            commands[number] = line
    return commands


def test_readme_has_two_one_line_commands() -> None:
    assert sorted(readme_commands()) == ["1", "2"]


def test_both_readme_commands_start_with_the_system_set_up() -> None:
    # Without it the simulated Machines' app user cannot reach a clone made in a 0700 directory
    # and the fleet tests and the demo cannot run.
    for number, command in readme_commands().items():
        assert command.startswith(SETUP), f"command {number}: {command}"


def test_readme_command_2_runs_the_linters_and_the_whole_suite() -> None:
    command = readme_commands()["2"]
    assert ".venv/bin/pip install -e '.[dev]'" in command
    assert command.endswith("&& .venv/bin/ruff format --check . && .venv/bin/pytest -q -n 2")


def test_ci_runs_readme_command_2_verbatim() -> None:
    script = (REPO / ".ci" / "run").read_text(encoding="utf-8")
    commands = [
        line
        for line in script.splitlines()
        if line and not line.startswith("#") and not line.startswith(("set ", "cd "))
    ]
    assert commands == [readme_commands()["2"]]
