"""Hostile CLI flags and invoke.yaml values, through volguard's own program in-process.

Each case runs `volguard <task> --<flag> <value>` (the flags each task's --help lists) with
a hostile value — huge or negative numbers, NaN, unicode, control characters, empty, very
long — or an invoke.yaml whose values have the wrong type or nesting, via
`volguard.cli.program.run(argv, exit=False)`. No network: FLY_API_TOKEN is unset and the
API base URL is a closed loopback port. The promise: no traceback on stderr, an exit code
volguard documents (0, 1, 2), and exit 1 comes with a message. Full count 300 (scaled by
VOLGUARD_FUZZ_SCALE).
"""

from __future__ import annotations

import contextlib
import io
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from hostile_inputs_support import fuzz, hang_guard, tally
from hypothesis import example, given
from hypothesis import strategies as st

from volguard.cli import program

ROOT = Path(__file__).resolve().parents[1]

#: Each task's value flags (from --help), and its boolean flags that keep it off the network.
FLAGS = {
    "lint": ["--fail-on", "--format", "--media-groups", "--media-root", "--path", "--output"],
    "verify-volume": ["--app", "--fail-on", "--format", "--group", "--machine",
                      "--media-groups", "--media-root", "--path", "--transport", "--output"],
    "create-volume": ["--app", "--count", "--group", "--path", "--size", "--audit-log"],
    "snapshot-volumes": ["--app", "--path", "--timeout", "--audit-log"],
    "remediate": ["--app", "--machine", "--manage-py", "--max-missing", "--path", "--samples",
                  "--timeout", "--transport"],
}  # fmt: skip
HOSTILE = [
    "",
    " ",
    "-1",
    "0",
    "NaN",
    "nan%",
    "inf",
    "-inf",
    "1e309",
    "9" * 400,
    "-" + "9" * 400,
    "10%",
    "101%",
    "-5%",
    "0x10",
    "1_000",
    "\x1b[2J",
    "\x00",
    "a\nb",
    "\u202eevil",
    "é" * 5_000,
    "x" * 100_000,
    "--",
    "-h",
    "json:",
    "sarif:",
    ":x",
    "text:/",
]
values = st.sampled_from(HOSTILE) | st.text(max_size=30).filter(lambda t: "\x00" not in t)

YAML_VALUES = ["[]", "{}", "null", "1e999", "-1", "'x'", "[1, [2, [3]]]", "{a: {b: {c: 1}}}",
               "!!binary aGk=", "2027-02-30", "yes", "~", "'\\x1b'"]  # fmt: skip
CONFIG_KEYS = ["fly_toml", "app", "media_root", "media_groups", "waivers", "transport",
               "min_snapshot_retention", "machine_counts", "volume_fstypes",
               "min_free_percent", "probe_ttl", "machine_parallel", "checks_dirs",
               "snapshot_max_age_hours"]  # fmt: skip


@pytest.fixture(scope="module")
def project() -> Iterator[Path]:
    """A checkout-like directory: the repo's fly.toml, no token, the API on a closed port."""
    saved_env, saved_cwd = dict(os.environ), os.getcwd()
    with tempfile.TemporaryDirectory(prefix="volguard-hostile-cli-") as d:
        (Path(d) / "fly.toml").write_text((ROOT / "fly.toml").read_text())
        os.environ.pop("FLY_API_TOKEN", None)
        os.environ["FLY_FLAPS_BASE_URL"] = "http://127.0.0.1:9"
        os.chdir(d)
        try:
            yield Path(d)
        finally:
            os.chdir(saved_cwd)
            os.environ.clear()
            os.environ.update(saved_env)


def run(argv: list[str]) -> tuple[int, str]:
    """volguard with ``argv`` in-process: (exit code, stderr)."""
    err, out = io.StringIO(), io.StringIO()
    code = 0
    with hang_guard(20), contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        try:
            program.run(["volguard", *argv], exit=False)
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 1
    return code, err.getvalue()


def check(code: int, stderr: str) -> None:
    assert "Traceback" not in stderr, stderr[-2000:]
    assert code in (0, 1, 2), (code, stderr[-2000:])
    if code == 1:
        assert stderr.strip(), "exit 1 without a message"


@fuzz(250, deadline_seconds=30)
@given(task=st.sampled_from(sorted(FLAGS)), data=st.data())
@example(task="lint", data=None)
def test_hostile_flag_values_never_give_a_traceback(
    project: Path, task: str, data: st.DataObject | None
) -> None:
    tally("CLI flags and config values")
    if data is None:  # the explicit example: a plain lint of the project
        argv = [task]
    else:
        flags = data.draw(st.lists(st.sampled_from(FLAGS[task]), min_size=1, max_size=3))
        argv = [task]
        for flag in flags:
            argv += [f"{flag}={data.draw(values)}"]
        if task == "verify-volume":
            argv.append("--offline")
    for leftover in project.glob("*"):  # e.g. an --output file the last case wrote
        if leftover.is_file() and leftover.name not in ("fly.toml", "invoke.yaml"):
            leftover.unlink()
    check(*run(argv))


@fuzz(50, deadline_seconds=30)
@given(key=st.sampled_from(CONFIG_KEYS), value=st.sampled_from(YAML_VALUES))
def test_hostile_invoke_yaml_values_never_give_a_traceback(
    project: Path, key: str, value: str
) -> None:
    tally("CLI flags and config values")
    (project / "invoke.yaml").write_text(f"volguard:\n  {key}: {value}\n")
    try:
        check(*run(["lint"]))
    finally:
        (project / "invoke.yaml").unlink()
