"""Lint and verify when media live in object storage (#11, part 4).

`media_storage: object` (configured) or the running app's Django (asked through manage_py)
says uploads go to a bucket: the volume checks for media (VOLUME_MEDIA_CHECKS) are skipped
and an info finding says so (VG115 configured, VG312 seen); Machines that disagree are a
fleet mid-cutover (VG313, an error). The local-fleet tests run the example app's Django on
simulated Machines whose environment carries what `fly storage create` sets.
"""

from __future__ import annotations

import os
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import tomlkit
from test_machine_rules import obs

from volguard.config import Settings
from volguard.errors import ConfigError
from volguard.findings import Finding, Severity
from volguard.fly.client import MachinesClient, Token
from volguard.lint import lint
from volguard.remote.probe import MachineFacts
from volguard.rules import VOLUME_MEDIA_CHECKS
from volguard.rules.machine import MachineContext, Observation, run_machine_rules
from volguard.sim.api import SimServer, load_scenario
from volguard.sim.scenario import scenario_path
from volguard.verify import set_aside_volume_checks, verify

REPO_FLY_TOML = str(Path(__file__).resolve().parents[1] / "fly.toml")

S3 = {
    "backend": "storages.backends.s3.S3Storage",
    "writes_to": "storages.backends.s3.S3Storage",
    "filesystem": False,
    "fallback": None,
}
VOLUME = {
    "backend": "django.core.files.storage.filesystem.FileSystemStorage",
    "writes_to": "django.core.files.storage.filesystem.FileSystemStorage",
    "filesystem": True,
    "fallback": None,
}
FALLBACK = {
    "backend": "volguard.django.storage.FallbackStorage",
    "writes_to": "storages.backends.s3.S3Storage",
    "filesystem": False,
    "fallback": "django.core.files.storage.filesystem.FileSystemStorage",
}


def ids(findings: list[Finding]) -> list[str]:
    return sorted(f.id for f in findings)


def one(findings: list[Finding], check_id: str) -> Finding:
    found = [f for f in findings if f.id == check_id]
    assert len(found) == 1, [(f.id, f.message) for f in findings]
    return found[0]


# -- the setting --------------------------------------------------------------------------


def test_media_storage_defaults_to_auto_and_refuses_other_values() -> None:
    assert Settings.load(None).media_storage == "auto"
    assert Settings.load({"media_storage": "object"}).media_storage == "object"
    with pytest.raises(ConfigError, match="media_storage must be one of auto, volume, object"):
        Settings.load({"media_storage": "s3"})


# -- lint ---------------------------------------------------------------------------------


def test_lint_of_the_incident_with_media_in_object_storage_is_vg115_not_vg103() -> None:
    report = lint(Settings.load(None, media_storage="object"), REPO_FLY_TOML)
    vg115 = one(report.findings, "VG115")
    assert vg115.severity is Severity.INFO
    assert "object storage" in vg115.message
    assert "VG103" in vg115.message
    assert vg115.evidence["skipped"] == list(VOLUME_MEDIA_CHECKS)
    assert not [f for f in report.findings if f.id in VOLUME_MEDIA_CHECKS]
    assert not [f for f in report.findings if f.severity is Severity.ERROR]


@pytest.mark.parametrize("storage", ["auto", "volume"])
def test_lint_keeps_vg103_unless_told_media_are_in_object_storage(storage: str) -> None:
    report = lint(Settings.load(None, media_storage=storage), REPO_FLY_TOML)
    assert one(report.findings, "VG103").severity is Severity.ERROR
    assert not [f for f in report.findings if f.id == "VG115"]


def test_object_storage_keeps_the_checks_that_are_not_about_media_placement(tmp_path) -> None:
    """VG110 (snapshots off) is about the volume itself, not where uploads go: it stays."""
    path = tmp_path / "fly.toml"
    path.write_text(
        'app = "a"\nprimary_region = "syd"\n[env]\n  MEDIA_ROOT = "/srv/media"\n'
        '[[mounts]]\n  source = "data"\n  destination = "/data"\n  scheduled_snapshots = false\n'
    )
    report = lint(Settings.load(None, media_storage="object"), str(path))
    assert ids(report.findings) == ["VG110", "VG115"]  # VG101 (outside the mount) skipped


# -- the platform layer (API simulator) ----------------------------------------------------


@pytest.mark.parametrize(("storage", "expected"), [("object", []), ("auto", ["VG205"])])
def test_verify_skips_vg205_only_when_media_are_in_object_storage(
    storage: str, expected: list[str], tmp_path, monkeypatch
) -> None:
    scenario = load_scenario("object-storage")
    (tmp_path / "fly.toml").write_text(scenario.fly_toml)
    with SimServer(scenario) as sim:
        report = verify(
            Settings.load(None, media_storage=storage, transport="ssh", ssh_config="/nonexistent"),
            str(tmp_path / "fly.toml"),
            token=Token(sim.token),
            client_factory=partial(MachinesClient, base_url=sim.url, backoff=0.01),
            machine_ids=("none-of-them",),  # the platform layer only
        )
    assert report.layers["platform"].status == "ran"
    assert [f.id for f in report.findings if f.id.startswith("VG2")] == expected
    if storage == "object":
        assert one(report.findings, "VG115").severity is Severity.INFO


# -- the Machine rules ----------------------------------------------------------------------


def on(storage: dict[str, Any] | None, id: str, group: str, **over: Any) -> Observation:
    o = obs(id=id, group=group, **over)
    return replace(o, facts=replace(o.facts, media_storage=storage))


def test_the_probe_answer_decides_the_storage_and_the_environment_alone_does_not() -> None:
    answer = {"media_storage": S3, "object_storage_env": {"BUCKET_NAME": "b"}}
    assert MachineFacts.from_probe({"destination": "/data", **answer}).storage == "object"
    assert MachineFacts.from_probe({"media_storage": FALLBACK}).storage == "object"
    assert MachineFacts.from_probe({"media_storage": VOLUME}).storage == "volume"
    env_only = MachineFacts.from_probe({"object_storage_env": {"BUCKET_NAME": "b"}})
    assert env_only.storage is None  # a bucket may exist while Django writes to the volume


def test_vg312_when_every_machine_writes_to_object_storage() -> None:
    fleet = [on(S3, "148e21ea4d3089", "app"), on(FALLBACK, "e6482d84693162", "worker")]
    findings = run_machine_rules(fleet, MachineContext())
    vg312 = one(findings, "VG312")
    assert vg312.severity is Severity.INFO
    assert "148e21ea4d3089" in vg312.message
    assert "FallbackStorage" not in vg312.message
    assert "reading django.core.files.storage.filesystem.FileSystemStorage as fallback" in (
        vg312.message
    )
    assert not [f for f in findings if f.id in ("VG313", "VG306")]


def test_no_vg312_when_one_machine_is_unknown_or_the_setting_decides() -> None:
    unknown = [on(S3, "148e21ea4d3089", "app"), on(None, "e6482d84693162", "worker")]
    assert not [f for f in run_machine_rules(unknown, MachineContext()) if f.id == "VG312"]
    both = [on(S3, "148e21ea4d3089", "app"), on(S3, "e6482d84693162", "worker")]
    for storage in ("volume", "object"):
        found = run_machine_rules(both, MachineContext(media_storage=storage))
        assert not [f for f in found if f.id == "VG312"]


def test_vg313_when_some_machines_write_to_the_volume_and_others_to_a_bucket() -> None:
    fleet = [on(FALLBACK, "148e21ea4d3089", "app"), on(VOLUME, "e6482d84693162", "worker")]
    for storage in ("auto", "volume", "object"):
        findings = run_machine_rules(fleet, MachineContext(media_storage=storage))
        vg313 = one(findings, "VG313")
        assert vg313.severity is Severity.ERROR
        assert vg313.location.machine == "e6482d84693162"
        assert vg313.evidence["object"] == ["148e21ea4d3089"]
        assert vg313.evidence["volume"] == ["e6482d84693162"]
        assert not [f for f in findings if f.id == "VG312"]


def test_vg306_is_skipped_when_media_are_in_object_storage() -> None:
    writer = on(S3, "148e21ea4d3089", "app")
    writer = replace(writer, facts=replace(writer.facts, visibility_probe=".volguard-probe-x"))
    reader = on(S3, "e6482d84693162", "worker")
    reader = replace(reader, facts=replace(reader.facts, visible={".volguard-probe-x": False}))
    assert not [f for f in run_machine_rules([writer, reader], MachineContext()) if f.id == "VG306"]
    volume = [replace(o, facts=replace(o.facts, media_storage=VOLUME)) for o in (writer, reader)]
    assert one(run_machine_rules(volume, MachineContext()), "VG306").severity is Severity.ERROR


def test_verify_sets_aside_what_earlier_layers_said_and_vg312_records_it() -> None:
    fleet = [on(S3, "148e21ea4d3089", "app"), on(S3, "e6482d84693162", "worker")]
    earlier = lint(Settings.load(None), REPO_FLY_TOML).findings
    kept = set_aside_volume_checks(earlier + run_machine_rules(fleet, MachineContext()))
    assert "VG103" not in ids(kept)
    assert one(kept, "VG312").evidence["set_aside"] == ["VG103"]
    assert set_aside_volume_checks(earlier) == earlier  # no VG312: nothing set aside


# -- on the local fleet: the example app's Django on simulated Machines -------------------


def fleet_or_skip():
    from volguard.sim.local_fleet import fleet_unavailable

    why = fleet_unavailable()
    if why:
        if os.environ.get("CI"):
            pytest.fail(f"CI must be able to run the local fleet, but: {why}")
        pytest.skip(why)


def scenario_with_python(tmp: Path, name: str, python_env: dict[str, str]) -> Path:
    """The shipped scenario, with what the app user needs to import Django (every Machine)."""
    document = tomlkit.parse(scenario_path(name).read_text())
    secrets = document.get("secrets") or tomlkit.table()
    secrets.update(python_env)
    document["secrets"] = secrets
    path = tmp / f"{name}.toml"
    path.write_text(tomlkit.dumps(document))
    return path


def verify_on_fleet(name: str, tmp_path: Path, monkeypatch, **settings: Any):
    fleet_or_skip()
    from volguard.sim import example_app
    from volguard.sim.local_fleet import LocalFleet

    try:
        python, python_env = example_app.app_python()
    except example_app.ExampleAppError as e:
        pytest.skip(str(e))
    scenario = load_scenario(scenario_with_python(tmp_path, name, python_env))
    (tmp_path / "fly.toml").write_text(scenario.fly_toml)
    with SimServer(scenario) as sim, LocalFleet(scenario) as fleet:
        monkeypatch.setenv("PATH", f"{fleet.flyctl_dir}{os.pathsep}{os.environ['PATH']}")
        return verify(
            Settings.load(
                None,
                transport="ssh",
                ssh_config=str(fleet.ssh_config),
                volume_fstypes=["ext4", "tmpfs"],
                manage_py=f"{python} {example_app.MANAGE}",
                **settings,
            ),
            str(tmp_path / "fly.toml"),
            token=Token(sim.token),
            client_factory=partial(MachinesClient, base_url=sim.url, backoff=0.01),
        )


def test_verify_volume_on_a_fleet_whose_django_uses_the_bucket(tmp_path, monkeypatch) -> None:
    report = verify_on_fleet("object-storage", tmp_path, monkeypatch)
    assert report.layers["machine"].status == "ran", report.layers["machine"].reason
    vg312 = one(report.findings, "VG312")
    assert vg312.evidence["buckets"] == ["test-blue-smoke-97-media"]
    assert sorted(vg312.evidence["set_aside"]) == ["VG103", "VG205"]
    assert not [f for f in report.findings if f.id in VOLUME_MEDIA_CHECKS]
    assert not [f for f in report.findings if f.severity is Severity.ERROR], [
        (f.id, f.message) for f in report.findings
    ]
    assert "tsec_simulated" not in repr(report.findings)  # the secret key is never read


def test_verify_volume_on_a_fleet_mid_cutover_is_vg313(tmp_path, monkeypatch) -> None:
    report = verify_on_fleet("mid-cutover", tmp_path, monkeypatch)
    vg313 = one(report.findings, "VG313")
    assert vg313.evidence["object"] == ["148e21ea4d3089"]
    assert vg313.evidence["volume"] == ["e6482d84693162"]
    assert "VG103" in ids(report.findings)  # the volume checks still apply mid-cutover
    assert not [f for f in report.findings if f.id == "VG312"]
