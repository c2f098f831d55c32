"""flyctl's own fly.toml test data, read by volguard with the verdict flyctl's tests expect.

The files in tests/data/flyctl-appconfig/ are flyctl's `internal/appconfig/testdata/*.toml` at
ad0172face303b77584eea95b46fa3ddc61d5ddd (README.md there). Each expectation below is copied
from the flyctl test that loads the file (`serde_test.go`, `processgroups_test.go`,
`machines_test.go`), not from what volguard prints.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from volguard.flytoml import read_fly_toml

DATA = Path(__file__).parent / "data" / "flyctl-appconfig"
FILES = sorted(p.name for p in DATA.glob("*.toml"))

#: TestLoadTOMLAppConfigInvalidV2: the only file flyctl's tests expect it to refuse
REFUSED = {"always-invalid-v2.toml"}


def read(name: str):
    return read_fly_toml(str(DATA / name))


def vg100(findings):
    return [f for f in findings if f.id == "VG100"]


def test_all_of_flyctls_testdata_is_carried():
    assert len(FILES) == 41
    assert set(FILES) >= REFUSED


@pytest.mark.parametrize("name", sorted(set(FILES) - REFUSED))
def test_a_file_flyctl_loads_has_no_vg100(name):
    config, findings = read(name)
    assert config is not None
    assert vg100(findings) == [], [f.message for f in vg100(findings)]


def test_a_concurrency_number_is_vg100_at_its_value_as_flyctl_refuses_the_file():
    # "Unknown type for service concurrency: int64" (patches.go _patchService)
    _, findings = read("always-invalid-v2.toml")
    [problem] = vg100(findings)
    lines = (DATA / "always-invalid-v2.toml").read_text().splitlines()
    line = next(i for i, text in enumerate(lines, 1) if text.strip().startswith("concurrency"))
    assert (problem.location.line, problem.location.column) == (
        line,
        lines[line - 1].index("20") + 1,
    )
    assert "services.concurrency" in problem.message


@pytest.mark.parametrize(
    ("name", "mounts"),
    [
        ("mounts-array.toml", [("pg_data", "/data", None, None)]),  # ...MountsArray
        ("format-quirks.toml", [("data", "/data", "200", 10)]),  # ...FormatQuirks
        ("old-format.toml", [("data", "/data", None, None)]),  # ...OldFormat
        ("full-reference.toml", [("data", "/data", "30gb", 17)]),  # ...ReferenceFormat
        ("experimental-alt.toml", []),
        ("old-processes.toml", []),
    ],
)
def test_mounts_are_the_ones_flyctl_loads(name, mounts):
    config, _ = read(name)
    assert [
        (m.source, m.destination, m.initial_size, m.snapshot_retention) for m in config.mounts
    ] == mounts


@pytest.mark.parametrize(
    ("name", "env"),
    [
        ("env-list.toml", {"FOO": "BAR", "TWO": "2", "TRUE": "true"}),  # ...EnvList
        ("old-format.toml", {"FOO": "STRING", "BAR": "123"}),  # ...OldFormat
        ("full-reference.toml", {"FOO": "BAR"}),  # ...ReferenceFormat
        ("mounts-array.toml", {}),
    ],
)
def test_env_is_the_one_flyctl_loads(name, env):
    config, _ = read(name)
    assert config.env == env


@pytest.mark.parametrize(
    ("name", "groups", "default"),
    [
        ("processes-one.toml", ["web"], "web"),  # TestProcessNames
        ("processes-multi.toml", ["bar", "foo", "zzz"], "bar"),
        ("processes-multiwithapp.toml", ["aaa", "abc", "app", "ass", "bbb"], "app"),
        ("old-processes.toml", ["web", "worker"], "web"),  # ...OldProcesses
        ("full-reference.toml", ["task", "web"], "task"),  # ...ReferenceFormat
        ("app-name.toml", ["app"], "app"),
    ],
)
def test_process_groups_are_the_ones_flyctl_loads(name, groups, default):
    config, _ = read(name)
    assert config.group_names == groups
    assert config.default_group == default


def test_old_processes_keep_their_commands():
    config, _ = read("old-processes.toml")  # TestLoadTOMLAppConfigOldProcesses
    assert config.processes == {"web": "./web", "worker": "./worker"}


@pytest.mark.parametrize(
    ("group", "mounts"),
    [("app", [("data", "/data")]), ("back", [("trash", "/trash")]), ("hola", [])],
)
def test_each_group_gets_the_mount_flyctl_gives_its_machines(group, mounts):
    # TestToReleaseMachineConfig_processGroupsAndMounts (machines_test.go)
    config, _ = read("tomachine-mounts.toml")
    assert [(m.source, m.destination) for m in config.mounts_of(group)] == mounts
