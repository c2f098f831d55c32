"""The simulator is a tool of the tests and the demo, not part of the product.

Two promises, each checked here:
- the product never imports `volguard.sim` (only the demos' entries do), so a user's
  `volguard lint`/`verify-volume`/`remediate` cannot reach simulator code;
- where the simulator reads fly.toml itself (which mounts a process group gets, the default
  group) it is an independent oracle, and it agrees with volguard's own reading on real
  files and on generated ones; sizes it does not re-derive: it calls `volguard.units`.
"""

from __future__ import annotations

import ast
import string
from pathlib import Path

import pytest
import tomlkit
from conftest import CORPUS
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from volguard.fly.fleet import Fleet
from volguard.fly.guest import guest_for_new_volume
from volguard.flytoml import parse_fly_toml
from volguard.sim import deployment
from volguard.sim.objects import _guest as sim_guest
from volguard.units import parse_size_gb

PACKAGE = Path(__file__).resolve().parents[1] / "volguard"
#: The product modules allowed to import the simulator: the demos' entries (`invoke demo`,
#: `invoke demo-migrate`) run it.
DEMO_ENTRIES = {PACKAGE / "demo.py", PACKAGE / "demo_migrate.py"}


def _imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
    return found


def test_the_product_never_imports_the_simulator():
    offenders = {
        str(path.relative_to(PACKAGE.parent)): sorted(
            m
            for m in _imported_modules(path)
            if m == "volguard.sim" or m.startswith("volguard.sim.")
        )
        for path in PACKAGE.rglob("*.py")
        if PACKAGE / "sim" not in path.parents and path not in DEMO_ENTRIES
    }
    assert {k: v for k, v in offenders.items() if v} == {}


def test_the_boundary_check_sees_an_import_of_the_simulator(tmp_path):
    # The scan above must be able to fail: a module importing the simulator is seen.
    module = tmp_path / "leaky.py"
    module.write_text("from volguard.sim import api\nimport volguard.sim.state\n")
    assert {"volguard.sim.api", "volguard.sim.state"} <= _imported_modules(module)


# -- sizes: shared code, so the two readings agree by construction ---------------------------


@pytest.mark.parametrize("text", ["+5", "-1", "1" * 25, " 7 ", "7", "20gb", "1.5GB", "15Mb", ""])
def test_the_simulator_sizes_a_mount_exactly_as_volguard_does(text):
    def outcome(parse):
        try:
            return parse(text)
        except ValueError as e:
            return f"error: {e}"

    assert outcome(deployment.size_gb) == outcome(parse_size_gb)


def test_a_toml_number_is_sized_as_flyctl_casts_it():
    assert deployment.size_gb(3) == 3
    with pytest.raises(ValueError, match="invalid size"):
        deployment.size_gb(True)


# -- mounts: an independent oracle, kept honest by a differential test -----------------------


def _mounts_by_group(text: str) -> dict[str, list[tuple[str, str]]] | None:
    """Each group's mounts (source, destination) as volguard reads them; None if refused."""
    config, findings = parse_fly_toml(text)
    if config is None or any(f.id == "VG100" for f in findings):
        return None
    return {
        group: [(m.source, m.destination) for m in config.mounts_of(group)]
        for group in config.group_names
    }


def _sim_mounts_by_group(text: str) -> dict[str, list[tuple[str, str]]]:
    raw = tomlkit.parse(text).unwrap()
    return {
        group: [
            (str(m.get("source", "")), str(m.get("destination", "")))
            for m in deployment.group_mounts(raw, group)
        ]
        for group in deployment.process_names(raw)
    }


def _corpus_files() -> list[Path]:
    return sorted(CORPUS.glob("*.toml")) if CORPUS.is_dir() else []


@pytest.mark.parametrize("path", _corpus_files(), ids=lambda p: p.name)
def test_the_simulator_gives_each_group_the_mounts_volguard_reads_in_real_files(path):
    text = path.read_text(encoding="utf-8")
    ours = _mounts_by_group(text)
    if ours is None:
        pytest.skip("volguard refuses this file (VG100); flyctl would not deploy it either")
    assert _sim_mounts_by_group(text) == ours
    raw = tomlkit.parse(text).unwrap()
    config, _ = parse_fly_toml(text)
    assert deployment.default_group(raw) == config.default_group


def test_the_corpus_is_there_for_the_differential_test():
    assert len(_corpus_files()) >= 50


_group = st.text(string.ascii_lowercase, min_size=1, max_size=6)


@st.composite
def _configs(draw) -> str:
    groups = draw(st.lists(_group, max_size=4, unique=True))
    lines = ['app = "shop"', 'primary_region = "ams"']
    if groups:
        lines.append("[processes]")
        lines += [f'{g} = "run {g}"' for g in groups]
    for i in range(draw(st.integers(0, 3))):
        names = draw(st.lists(st.one_of(st.sampled_from(groups or ["app"]), _group), max_size=3))
        lines.append("[[mounts]]")
        lines.append(f'source = "data{i}"')
        lines.append(f'destination = "/data{i}"')
        if draw(st.booleans()):
            lines.append("processes = [" + ", ".join(f'"{n}"' for n in names) + "]")
    return "\n".join(lines) + "\n"


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_configs())
def test_the_simulator_and_volguard_agree_on_generated_mounts(text):
    ours = _mounts_by_group(text)
    if ours is not None:
        assert _sim_mounts_by_group(text) == ours


_size = st.sampled_from(["shared-cpu-1x", "shared-cpu-4x", "performance-2x", "a10"])


@st.composite
def _vm_configs(draw) -> str:
    """fly.toml with groups and [[vm]]/[compute] sections: which one a group gets, and how
    size, memory and the guest fields combine."""
    groups = draw(st.lists(_group, min_size=1, max_size=3, unique=True))
    lines = ['app = "shop"', "[processes]", *[f'{g} = "run {g}"' for g in groups]]
    for _ in range(draw(st.integers(0, 4))):
        lines.append("[[vm]]")
        if draw(st.booleans()):
            lines.append(f'size = "{draw(_size)}"')
        if draw(st.booleans()):
            lines.append(f'memory = "{draw(st.sampled_from(["512", "1gb", "2GiB"]))}"')
        if draw(st.booleans()):
            lines.append(f"cpus = {draw(st.integers(0, 8))}")
        if draw(st.booleans()):
            lines.append(f'cpu_kind = "{draw(st.sampled_from(["shared", "performance"]))}"')
        if draw(st.booleans()):
            names = draw(st.lists(st.sampled_from([*groups, ""]), max_size=2))
            lines.append("processes = [" + ", ".join(f'"{n}"' for n in names) + "]")
    return "\n".join(lines) + "\n"


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_vm_configs())
def test_the_simulator_and_volguard_agree_on_each_groups_guest(text):
    """A new volume's `compute` (volguard.fly.guest) is the guest the simulator's deploy gives
    the group's new Machines (volguard.sim.objects): written apart, both from flyctl."""
    config, findings = parse_fly_toml(text)
    assert config is not None, findings
    raw = tomlkit.parse(text).unwrap()
    no_machines = Fleet(app="shop", machines=(), volumes=())
    for group in config.group_names:
        assert guest_for_new_volume(config, group, no_machines) == sim_guest(raw, group), group
