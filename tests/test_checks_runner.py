"""run_checks: the checks/ modules (and the user's own) run in-process over hand-built Observations.

The transport is a fake: run_checks only asks it for `.host(machine)`, which here is the
local testinfra Host, recorded so that a test can see which Machine a check asked about.
"""

from __future__ import annotations

import textwrap
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import testinfra

from volguard.findings import Finding, Severity
from volguard.fly.models import Machine
from volguard.remote.checks_runner import CUSTOM_ID, builtin_checks_dir, run_checks
from volguard.remote.probe import AppProcess, MachineFacts, MountEntry
from volguard.rules import RULES
from volguard.rules.machine import MachineContext, Observation, run_machine_rules

VOLUME, ROOT = "253:16", "254:0"
PROBE = ".volguard-probe-r1-v-web1"


class FakeTransport:
    def __init__(self) -> None:
        self.asked: list[str] = []

    def host(self, machine: Machine) -> Any:
        self.asked.append(machine.id)
        return testinfra.get_host("local://")


S3 = {"backend": "storages.backends.s3.S3Storage", "writes_to": "storages.backends.s3.S3Storage",
      "filesystem": False, "fallback": None}  # fmt: skip
FS = {**S3, "writes_to": "django.core.files.storage.FileSystemStorage", "filesystem": True}


def healthy(**over: Any) -> MachineFacts:
    base = MachineFacts(
        destination="/data",
        destination_exists=True,
        destination_device=VOLUME,
        root_device=ROOT,
        mount=MountEntry("/data", "ext4", ("rw", "relatime"), ("rw",), "/dev/vdc"),
        bytes_total=1000,
        bytes_free=600,
        inodes_total=1000,
        inodes_free=900,
        processes=(AppProcess(7, "app", "/app", "gunicorn", "/data/media", "app"),),
        app_user="app",
        media_root="/data/media",
        media_root_source="process environment",
        media_root_real="/data/media",
        media_root_exists=True,
        media_root_owner="app",
        media_root_mode="0755",
        media_root_device=VOLUME,
        write_test={"ok": True, "user": "app", "error": None},
    )
    return replace(base, **over)


def observe(id: str, group: str, region: str = "syd", **over: Any) -> Observation:
    return Observation(
        Machine(id=id, state="started", region=region, group=group), "/data", healthy(**over)
    )


def pairs(findings: list[Finding]) -> list[tuple[str, str | None]]:
    return sorted((f.id, f.location.machine) for f in findings)


def user_checks(tmp_path: Path, name: str, source: str) -> Path:
    """A user's checks directory with one module; module names are unique per test on purpose
    (run_checks imports them into this very process)."""
    directory = tmp_path / "user_checks"
    directory.mkdir(parents=True, exist_ok=True)
    (directory / name).write_text(textwrap.dedent(source))
    return directory


# A fleet where most checks have something to say: the web Machine is healthy and wrote the
# visibility probe; one worker has no volume, MEDIA_ROOT elsewhere and cannot see the probe;
# another worker is read-only, nearly full, root-owned and not writable; on a third worker
# volguard found no app process (VG308), on a fourth the app has no MEDIA_ROOT (VG309); the
# last three have facts that cannot be judged (VG310) or a MEDIA_ROOT that does not exist (VG311).
FLEET = [
    observe("web1", "app", visibility_probe=PROBE),
    observe(
        "work1",
        "worker",
        "ams",
        destination_device=ROOT,
        media_root="/app/media",
        media_root_real="/app/media",
        visible={PROBE: False},
    ),
    observe(
        "work2",
        "worker",
        "fra",
        mount=MountEntry("/data", "ext4", ("ro",), ("ro",), "/dev/vdd"),
        bytes_free=20,
        media_root_owner="root",
        write_test={"ok": False, "user": "app", "error": "PermissionError: denied"},
        visible={PROBE: True},
    ),
    observe("work3", "worker", processes=(), media_root=None, write_test=None, media_storage=FS),
    observe("work4", "worker", media_root=None, write_test=None, media_storage=S3),  # VG313
    observe("work5", "worker", mount=None),  # a separate device, no mount entry: VG310
    observe(
        "work6", "worker", processes=(), app_user=None, media_root_exists=False, write_test=None
    ),  # VG311
    observe("work7", "worker", bytes_free="lots", visible={PROBE: "no"}),  # wrong types: VG310
]


#: Every Machine's Django on object storage (VG312), which no one fleet can share with VG313.
OBJECT_FLEET = [
    observe("obj1", "app", media_storage=S3),
    observe("obj2", "worker", media_storage=S3),
]


def test_builtin_checks_match_the_rules() -> None:
    context = MachineContext()
    fleets = (FLEET, OBJECT_FLEET)
    expected = [p for fleet in fleets for p in pairs(run_machine_rules(fleet, context))]
    # the fleets exercise every registered Machine rule, so the comparison means something
    assert {i for i, _ in expected} == set(RULES["machine"]) | set(RULES["fleet"])
    assert {i for i, _ in expected} == {f"VG3{n:02}" for n in range(1, 14)}
    for fleet in fleets:
        found = run_checks(fleet, context, FakeTransport())
        # exactly the same findings, not only the same ids: severity, message, evidence
        assert sorted(map(repr, found)) == sorted(map(repr, run_machine_rules(fleet, context)))


def test_a_user_check_under_a_catalogued_id_keeps_the_catalogue_severity(tmp_path: Path) -> None:
    directory = user_checks(
        tmp_path,
        "test_acme_relabelled.py",
        """
        import pytest

        @pytest.mark.volguard("VG301", severity="info")
        def test_fails(observation):
            assert False
        """,
    )
    fleet = [observe("web1", "app")]
    found = run_checks(fleet, MachineContext(), FakeTransport(), [str(directory)])
    assert [(f.id, f.severity) for f in found] == [("VG301", Severity.ERROR)]


def test_builtin_checks_on_a_healthy_fleet_find_nothing() -> None:
    fleet = [observe("web1", "app"), observe("work1", "worker")]
    assert run_checks(fleet, MachineContext(), FakeTransport()) == []


def test_builtin_checks_use_the_context() -> None:
    fleet = [observe("web1", "app", bytes_free=150)]  # 15% free
    assert pairs(run_checks(fleet, MachineContext(min_free_percent=20), FakeTransport())) == [
        ("VG305", "web1")
    ]
    assert run_checks(fleet, MachineContext(min_free_percent=10), FakeTransport()) == []


def test_user_checks_join_the_report(tmp_path: Path) -> None:
    directory = user_checks(
        tmp_path,
        "test_acme_thumbnails.py",
        """\
        import pytest


        @pytest.mark.volguard("ACME1", severity="warning")
        def test_thumbnails(observation):
            assert observation.facts.media_root == "/nowhere", "no thumbnails dir"


        def test_unmarked(observation):
            assert observation.machine.group != "app"


        def test_passes(observation):
            assert observation.facts.media_root
        """,
    )
    fleet = [observe("web1", "app"), observe("work1", "worker")]
    found = run_checks(fleet, MachineContext(), FakeTransport(), [str(directory)])
    assert pairs(found) == [("ACME1", "web1"), ("ACME1", "work1"), (CUSTOM_ID, "web1")]
    by_key = {(f.id, f.location.machine): f for f in found}
    acme = by_key[("ACME1", "web1")]
    assert acme.severity is Severity.WARNING
    assert "test_thumbnails" in acme.message
    assert "web1" in acme.message
    custom = by_key[(CUSTOM_ID, "web1")]
    assert custom.severity is Severity.ERROR
    assert "test_unmarked" in custom.message
    assert "test_acme_thumbnails.py" in custom.evidence["check"]


def test_user_checks_use_the_machines_host(tmp_path: Path) -> None:
    directory = user_checks(
        tmp_path,
        "test_acme_host.py",
        """\
        import pytest


        def test_root_is_a_directory(host):
            assert host.file("/").is_directory


        @pytest.mark.volguard("ACME2")
        def test_root_is_not_a_directory(host):
            assert not host.file("/").is_directory
        """,
    )
    transport = FakeTransport()
    fleet = [observe("web1", "app"), observe("work1", "worker")]
    found = run_checks(fleet, MachineContext(), transport, [str(directory)])
    # the passing test passed; the failing one failed once per Machine, on that Machine
    assert pairs(found) == [("ACME2", "web1"), ("ACME2", "work1")]
    # `host` is the transport's Host for each probed Machine, not testinfra's own local one
    assert sorted(set(transport.asked)) == ["web1", "work1"]


def test_a_broken_user_module_does_not_silence_the_builtin_checks(tmp_path: Path) -> None:
    directory = user_checks(tmp_path, "test_acme_broken.py", "def test_x(:\n")
    fleet = [observe("work1", "worker", destination_device=ROOT)]
    found = run_checks(fleet, MachineContext(), FakeTransport(), [str(directory)])
    assert ("VG301", "work1") in pairs(found), "the built-in checks did not run"
    assert any(
        "test_acme_broken" in f.message or "test_acme_broken" in str(f.evidence) for f in found
    ), "the broken user module was not reported"


def test_two_user_dirs_with_the_same_module_name_in_one_process(tmp_path: Path) -> None:
    source = """\
        import pytest


        @pytest.mark.volguard("ACME3")
        def test_fails(observation):
            assert False
        """
    first = user_checks(tmp_path / "a", "test_acme_same_name.py", source)
    second = user_checks(tmp_path / "b", "test_acme_same_name.py", source)
    fleet = [observe("web1", "app")]
    for directory in (first, second):
        found = run_checks(fleet, MachineContext(), FakeTransport(), [str(directory)])
        assert pairs(found) == [("ACME3", "web1")], directory


def test_missing_user_dir_is_ignored() -> None:
    fleet = [observe("web1", "app", media_root_owner="root")]
    found = run_checks(fleet, MachineContext(), FakeTransport(), ["/nonexistent/volguard-checks"])
    assert pairs(found) == [("VG307", "web1")]


def test_run_checks_prints_nothing(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    directory = user_checks(
        tmp_path,
        "test_acme_quiet.py",
        """\
        def test_fails(observation):
            assert False
        """,
    )
    found = run_checks(FLEET, MachineContext(), FakeTransport(), [str(directory)])
    assert found  # it did run
    out, _ = capfd.readouterr()
    assert out == ""


def test_builtin_checks_dir_is_the_repos() -> None:
    directory = builtin_checks_dir()
    assert (directory / "test_vg301_separate_filesystem.py").is_file()
