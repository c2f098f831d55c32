"""The guest fly.toml gives a group, as flyctl computes it (volguard.fly.guest)."""

from __future__ import annotations

import pytest

from volguard.errors import UsageError
from volguard.fly.guest import MACHINE_PRESETS, compute_for_group, config_guest
from volguard.flytoml import parse_fly_toml
from volguard.units import SizeError, parse_memory_mb

GROUPS = """\
app = "mysite"
[processes]
  app = "gunicorn"
  worker = "celery"
"""


def guest(text: str, group: str = "app") -> dict | None:
    config, findings = parse_fly_toml(GROUPS + text)
    assert config is not None, findings
    return config_guest(config, group)


def test_no_vm_section_gives_no_guest():
    assert guest("") is None


def test_a_section_without_processes_applies_to_every_group():
    text = '[[vm]]\n  size = "shared-cpu-2x"\n'
    assert guest(text, "app") == guest(text, "worker") == MACHINE_PRESETS["shared-cpu-2x"]


def test_the_last_section_naming_the_group_wins_over_a_global_one():
    """ComputeForGroup: lo.MaxBy keeps the first candidate unless a later one names the group."""
    text = (
        '[[vm]]\n  size = "shared-cpu-1x"\n'
        '[[vm]]\n  size = "performance-1x"\n  processes = ["worker"]\n'
        '[[vm]]\n  size = "performance-4x"\n  processes = ["worker"]\n'
    )
    assert guest(text, "app") == MACHINE_PRESETS["shared-cpu-1x"]
    assert guest(text, "worker") == MACHINE_PRESETS["performance-4x"]


def test_the_first_of_two_global_sections_wins():
    text = '[[vm]]\n  size = "shared-cpu-4x"\n[[vm]]\n  size = "shared-cpu-8x"\n'
    assert guest(text) == MACHINE_PRESETS["shared-cpu-4x"]


def test_legacy_compute_spellings_merge_before_vm():
    """patchCompute appends compute, computes, then vm."""
    text = '[compute]\n  size = "performance-2x"\n[[vm]]\n  size = "shared-cpu-2x"\n'
    assert guest(text) == MACHINE_PRESETS["performance-2x"]


def test_memory_then_explicit_fields_override_the_preset():
    text = '[[vm]]\n  size = "performance-2x"\n  memory = 8192\n  cpu_kind = "shared"\n'
    assert guest(text) == {"cpu_kind": "shared", "cpus": 2, "memory_mb": 8192}


def test_explicit_zero_fields_are_empty_and_keep_the_preset():
    """copier's IgnoreEmpty: cpus = 0 does not unset the preset's CPUs."""
    text = '[[vm]]\n  size = "shared-cpu-2x"\n  cpus = 0\n'
    assert guest(text) == MACHINE_PRESETS["shared-cpu-2x"]


def test_top_level_host_dedication_id_joins_the_guest():
    config, _ = parse_fly_toml('app = "a"\nhost_dedication_id = "h1"\n[[vm]]\n  cpus = 2\n')
    assert config_guest(config, "app") == {
        "cpu_kind": "shared",
        "cpus": 2,
        "memory_mb": 256,
        "host_dedication_id": "h1",
    }


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('size = "huge"', "expected to start with 'shared' or 'performance'"),
        ('size = "performance-3x"', "choose one of: performance-10x, "),
        ('memory = "lots"', "invalid size: 'lots'"),
        ('memory = "0"', "memory cannot be zero"),
    ],
)
def test_a_section_flyctl_refuses_is_a_usage_error_naming_the_value(text, message):
    with pytest.raises(UsageError, match=message.replace("(", r"\(")):
        guest(f"[[vm]]\n  {text}\n")


def test_a_group_not_named_and_no_global_section_has_no_compute():
    text = '[[vm]]\n  size = "performance-1x"\n  processes = ["app"]\n'
    config, _ = parse_fly_toml(GROUPS + text)
    assert compute_for_group(config, "worker") is None
    assert config_guest(config, "worker") is None


@pytest.mark.parametrize(
    ("text", "mib"),
    [("512", 512), ("1gb", 1024), ("1GiB", 1024), ("1.5g", 1536), ("2048mb", 2048), ("1k", 0)],
)
def test_memory_is_binary_and_a_bare_number_is_mib(text, mib):
    assert parse_memory_mb(text) == mib


def test_memory_that_is_no_size_is_a_size_error():
    with pytest.raises(SizeError):
        parse_memory_mb("1.2.3gb")
