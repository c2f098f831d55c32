"""Hostile probe facts: the probe's JSON, mutated, through the parser and the Machine rules.

A Machine's probe answer is data from a host volguard does not control. Each case takes a
healthy answer (what volguard/remote/probe_script.py prints for a mounted volume and a
running app), mutates it (keys removed or null, values of the wrong type, huge numbers,
control characters), wraps it in the probe's markers, and runs `parse_facts` →
`MachineFacts.from_probe` → `run_machine_rules`. The promises (#8 item 17, "missing facts
never pass"): no traceback — the answer is facts or a `ProbeError` (VG300) — and a fact
that is missing or of the wrong type never yields "ok": at least one finding. Full count
1,000 (scaled by VOLGUARD_FUZZ_SCALE).
"""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
from hostile_inputs_support import fuzz, hang_guard, one_line, tally
from hypothesis import example, given
from hypothesis import strategies as st

from volguard.catalogue import CHECKS
from volguard.findings import Finding
from volguard.fly.models import Machine
from volguard.remote.probe import BEGIN, END, MachineFacts, ProbeError, parse_facts
from volguard.rules.machine import MachineContext, Observation, run_machine_rules

MACHINE = Machine(id="148ed599b6e7d8", state="started", region="syd", group="app")

#: A healthy answer: /data is its own ext4 device, the app runs as `app` with MEDIA_ROOT on it.
HEALTHY: dict[str, Any] = {
    "destination": "/data",
    "destination_exists": True,
    "destination_device": "253:16",
    "root_device": "253:0",
    "mount": {
        "mount_point": "/data",
        "fstype": "ext4",
        "options": ["rw", "relatime"],
        "super_options": ["rw"],
        "source": "/dev/vdc",
    },
    "bytes_total": 10 * 2**30,
    "bytes_free": 8 * 2**30,
    "inodes_total": 655_360,
    "inodes_free": 600_000,
    "processes": [
        {
            "pid": 312,
            "user": "app",
            "cwd": "/app",
            "command": "gunicorn config.wsgi",
            "media_root": "/data/media",
            "group": "app",
        }
    ],
    "app_user": "app",
    "media_root": "/data/media",
    "media_root_source": "process",
    "media_root_real": "/data/media",
    "media_root_exists": True,
    "media_root_owner": "app",
    "media_root_mode": "0755",
    "media_root_device": "253:16",
    "write_test": {"ok": True, "user": "app"},
    "visibility_probe": None,
    "visible": {},
    "errors": [],
}

#: The facts the rules judge, with the JSON types they may have. A value of another type, or
#: (for the first four) a missing one, must give a finding (VG310 or a rule's), never "ok".
TYPES: dict[str, tuple[type, ...]] = {
    "destination_exists": (bool,),
    "destination_device": (str,),
    "root_device": (str,),
    "mount": (dict,),
    "bytes_total": (int, type(None)),
    "bytes_free": (int, type(None)),
    "inodes_total": (int, type(None)),
    "inodes_free": (int, type(None)),
    "processes": (list, type(None)),
    "app_user": (str, type(None)),
    "media_root": (str, type(None)),
    "media_root_real": (str, type(None)),
    "media_root_exists": (bool, type(None)),
    "media_root_owner": (str, type(None)),
    "media_root_mode": (str, type(None)),
    "media_root_device": (str, type(None)),
    "write_test": (dict, type(None)),
    "visibility_probe": (str, type(None)),
    "visible": (dict, type(None)),
}
REQUIRED = ("destination_exists", "destination_device", "root_device", "mount")

hostile_values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    # Beyond float range (10**400) is test_a_count_beyond_float_range_is_not_a_traceback's.
    st.sampled_from([10**300, -(10**300), 2**64, -1, 0]),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=12),
    st.sampled_from(["", "0", "false", "\x1b[2J", "/", "/data\x00", "é" * 1_000, "0o777", "9"]),
    st.lists(st.integers() | st.text(max_size=4) | st.none(), max_size=4),
    st.dictionaries(st.text(max_size=5), st.integers() | st.text(max_size=4) | st.none()),
)


def _wrong_type(key: str, value: Any) -> bool:
    allowed = TYPES.get(key)
    if allowed is None:
        return False
    if isinstance(value, bool) and bool not in allowed:
        return True  # JSON true is not a count
    return not isinstance(value, allowed)


def answer(facts: Any) -> str:
    """The probe's stdout around ``facts``: flyctl chatter, the markers, the RC sentinel."""
    body = json.dumps(facts, allow_nan=True, ensure_ascii=False)
    return f"Connecting to fdaa::3...\n{BEGIN}{body}{END}\n__VOLGUARD_RC=0\n"


def judge(stdout: str) -> list[Finding] | None:
    """Findings for one Machine's probe answer; None when the answer is a ProbeError (VG300)."""
    with hang_guard(10):
        try:
            facts = MachineFacts.from_probe(parse_facts(stdout))
        except ProbeError as e:
            refusal = str(e)
        else:
            findings = run_machine_rules(
                [Observation(MACHINE, "/data", facts)], MachineContext(app_user=None)
            )
            for f in findings:
                assert f.id in CHECKS
                assert one_line(f.message), f
            return findings
    assert one_line(refusal), refusal
    return None


def test_the_healthy_answer_passes() -> None:
    assert judge(answer(HEALTHY)) == []


# -- mutations -------------------------------------------------------------------------------

top_ops = st.lists(
    st.tuples(st.sampled_from(["delete", "set"]), st.sampled_from(sorted(HEALTHY)), hostile_values),
    min_size=1,
    max_size=4,
)
NESTED_KEYS = ["mount_point", "fstype", "options", "super_options", "source", "pid", "user",
               "media_root", "ok", "error"]  # fmt: skip
nested_ops = st.lists(
    st.tuples(
        st.sampled_from(["mount", "processes", "write_test"]),
        st.sampled_from(NESTED_KEYS),
        hostile_values,
    ),
    max_size=3,
)


def mutate(top: list[tuple], nested: list[tuple]) -> tuple[dict[str, Any], set[str]]:
    """The mutated answer and the judged facts made missing or wrong-typed by it."""
    facts = copy.deepcopy(HEALTHY)
    spoiled: set[str] = set()
    for kind, key, value in top:
        if kind == "delete":
            facts.pop(key, None)
            if key in REQUIRED:
                spoiled.add(key)
            else:
                spoiled.discard(key)  # an optional fact may be absent
        else:
            facts[key] = value
            if _wrong_type(key, value) or (key in REQUIRED and value is None):
                spoiled.add(key)
            else:
                spoiled.discard(key)
    for where, key, value in nested:
        target = facts.get(where)
        if isinstance(target, list) and target and isinstance(target[0], dict):
            target[0][key] = value
        elif isinstance(target, dict):
            target[key] = value
    return facts, spoiled


@fuzz(1_000)
@given(top=top_ops, nested=nested_ops)
@example(top=[("set", "errors", 5)], nested=[])
@example(top=[("set", "app_user", "a\nY<")], nested=[])  # VG307 quoted it: two lines (full scale)
@example(top=[("set", "visible", [1, 2, 3])], nested=[])
@example(top=[("set", "processes", 7)], nested=[])
@example(top=[("set", "destination_exists", "false")], nested=[])
@example(top=[("delete", "destination_exists", None)], nested=[])
@example(top=[("set", "mount", "/data")], nested=[])
@example(top=[("set", "fatal", True), ("set", "errors", [1, None])], nested=[])
@example(top=[("set", "bytes_free", 10**300), ("set", "bytes_total", 1)], nested=[])
@example(top=[("set", "visibility_probe", None)], nested=[("mount", "options", "rw")])
def test_mutated_probe_facts_never_crash_and_never_pass_when_spoiled(
    top: list[tuple], nested: list[tuple]
) -> None:
    tally("probe facts")
    facts, spoiled = mutate(top, nested)
    findings = judge(answer(facts))
    if findings is not None and spoiled:
        assert findings, f"{sorted(spoiled)} missing or of the wrong type, yet no finding"


@fuzz(200)
@given(text=st.text(max_size=200) | st.sampled_from(["[" * 100_000, "1" * 5_000, "null"]))
@example(text="[" * 100_000)
def test_any_text_between_the_markers_is_facts_or_a_probe_error(text: str) -> None:
    tally("probe facts")
    judge(f"{BEGIN}{text}{END}\n")


@pytest.mark.parametrize("key", REQUIRED)
def test_a_missing_mount_fact_is_a_finding(key: str) -> None:
    facts = {k: v for k, v in HEALTHY.items() if k != key}
    findings = judge(answer(facts))
    assert findings, key


# -- found by the suites, owned elsewhere (see docs/safety.md, "Hostile-input suites") -------


@pytest.mark.parametrize(
    ("free", "total"), [(10**400, 1), (-1, 100), (2**64, 2**64 + 1), (101, 100)]
)
def test_counts_no_filesystem_can_report_are_vg310_not_a_traceback(free: int, total: int) -> None:
    findings = judge(answer({**HEALTHY, "bytes_free": free, "bytes_total": total}))
    assert [f.id for f in findings] == ["VG310"]
    assert "bytes_free" in findings[0].message
