"""The corpus of real fly.toml files: volguard must read all of them like flyctl does.

The files live in tests/data/flytoml/, byte-for-byte copies of public repositories' configs;
its INDEX.md names each file's source (repository, path, commit) and licence. Expectations
were checked against each file's contents and docs/fly-facts.md §0/§1, not against what
volguard happens to print. Mount presence and [env] are read with tomllib, independently of
volguard's own reader.
"""

from __future__ import annotations

import tomllib

import pytest
from conftest import CORPUS

from volguard.config import Settings
from volguard.findings import Severity
from volguard.flytoml import read_fly_toml
from volguard.lint import lint
from volguard.report import Report

FILES = sorted(p.name for p in CORPUS.glob("*.toml"))


def _raw(name: str) -> dict:
    return tomllib.loads((CORPUS / name).read_text(encoding="utf-8-sig"))


def _has_mounts(data: dict) -> bool:
    return bool(data.get("mounts") or data.get("mount"))


NO_MOUNTS = [
    n for n in FILES if not _has_mounts(_raw(n)) and "MEDIA_ROOT" not in _raw(n).get("env", {})
]
WITH_MOUNTS = [n for n in FILES if _has_mounts(_raw(n))]


def run(name: str, **settings) -> Report:
    return lint(Settings.load(None, **settings), str(CORPUS / name))


def ids(report: Report, check_id: str):
    return [f for f in report.findings if f.id == check_id]


def test_corpus_is_complete():
    # INDEX.md lists 54 files and carries 53 (not 29, for its licence), 23 without any mount
    index = (CORPUS / "INDEX.md").read_text(encoding="utf-8")
    assert len(FILES) == 53
    assert all(f"`{name}`" in index for name in FILES)
    assert len(NO_MOUNTS) == 23


@pytest.mark.parametrize("name", FILES)
def test_every_corpus_file_lints(name):
    report = run(name)
    assert isinstance(report, Report)
    assert report.layers["static"].status == "ran"
    # these are real configs that flyctl loads; none of them is unreadable for volguard
    assert ids(report, "VG100") == [], [f.message for f in ids(report, "VG100")]


@pytest.mark.parametrize("name", FILES)
def test_every_corpus_file_models_all_its_mounts(name):
    raw = _raw(name)
    expected = []
    for key in ("mount", "mounts"):
        value = raw.get(key)
        if isinstance(value, dict):
            expected.append(value)
        elif isinstance(value, list):
            expected.extend(value)
    config, _ = read_fly_toml(str(CORPUS / name))
    assert [(m.source, m.destination) for m in config.mounts] == [
        (m["source"], m["destination"]) for m in expected
    ]


@pytest.mark.parametrize("name", NO_MOUNTS)
def test_files_without_mounts_and_media_root_get_vg114_info(name):
    report = run(name)
    found = ids(report, "VG114")
    assert len(found) == 1
    assert found[0].severity is Severity.INFO
    assert report.exit_code(Severity.ERROR) == 0


@pytest.mark.parametrize("name", WITH_MOUNTS)
def test_files_with_mounts_but_no_media_root_get_vg113_info(name):
    found = ids(run(name), "VG113")
    assert len(found) == 1
    assert found[0].severity is Severity.INFO


def test_44_docecho_web_and_worker_split_is_vg103():
    name = "44_Moodyw03_docecho.toml"
    assert 'processes = ["web", "worker"]' in (CORPUS / name).read_text()
    report = run(name)
    (f,) = ids(report, "VG103")
    assert f.severity is Severity.ERROR
    assert f.location.line == 49
    assert f.evidence["groups"] == ["web", "worker"]
    assert f.evidence["volumes"] == ["docecho_data"]
    assert report.exit_code(Severity.ERROR) == 2


def test_44_docecho_upload_folder_as_media_root_is_on_the_volume():
    report = run("44_Moodyw03_docecho.toml", media_root="/app/data/uploads")
    assert ids(report, "VG101") == []
    assert len(ids(report, "VG103")) == 1


def test_32_gvhc_mount_goes_to_beat_so_celery_has_none():
    name = "32_Finanzasparahippies_gvhc.toml"
    raw = _raw(name)
    assert sorted(raw["processes"]) == ["beat", "celery"]
    assert "processes" not in raw["mounts"]
    report = run(name)
    (f,) = ids(report, "VG102")
    assert f.severity is Severity.ERROR
    assert f.evidence == {"group": "celery", "default_group": "beat"}
    assert f.location.line == 31  # the [mounts] header
    assert ids(report, "VG103") == []


def test_35_rainfall_mount_only_on_worker_leaves_app_without_volume():
    name = "35_audiodude_rainfall.toml"
    assert _raw(name)["mounts"]["processes"] == ["worker"]
    report = run(name)
    (f,) = ids(report, "VG102")
    assert f.severity is Severity.ERROR
    assert f.evidence["group"] == "app"
    assert f.location.line == 18  # processes = ["worker"]
    assert ids(report, "VG103") == []


def test_22_mastodon_has_only_the_app_group_and_no_vg103():
    name = "22_tmm1_flyapp-mastodon.toml"
    config, findings = read_fly_toml(str(CORPUS / name))
    assert findings == []
    assert config.group_names == ["app"]  # [processes] is commented out
    report = run(name)
    assert ids(report, "VG103") == []
    assert ids(report, "VG102") == []
    assert ids(report, "VG104") == []
    assert report.exit_code(Severity.ERROR) == 0


def test_28_indie_stack_has_mounts_without_primary_region():
    name = "28_remix-run_indie-stack.toml"
    assert "primary_region" not in _raw(name)
    report = run(name)
    (f,) = ids(report, "VG107")
    assert f.severity is Severity.ERROR
    assert f.location.line == 14  # [mounts]


@pytest.mark.parametrize(
    "name",
    [
        "01_fly-apps_postgres-flex.toml",
        "02_fly-apps_redis.toml",
        "03_fly-apps_postgres-ha.toml",
        "05_fly-apps_docker-daemon.toml",
        "10_fly-apps_keydb.toml",
        "14_fly-apps_cockroachdb.toml",
        "23_tmm1_flyapp-mastodon.toml",
        "28_remix-run_indie-stack.toml",
        "54_tmm1_flyapp-mastodon.toml",
    ],
)
def test_vg107_exactly_for_mounts_without_primary_region(name):
    raw = _raw(name)
    assert _has_mounts(raw)
    assert "primary_region" not in raw
    assert len(ids(run(name), "VG107")) == 1


def test_vg107_set_matches_the_corpus():
    expected = {n for n in WITH_MOUNTS if not _raw(n).get("primary_region")}
    actual = {n for n in FILES if ids(run(n), "VG107")}
    assert actual == expected


def test_43_services_ports_only_file_loads():
    name = "43_FACorreiaa_go-website.toml"
    config, findings = read_fly_toml(str(CORPUS / name))
    assert findings == []
    assert config.env["SERVER_PORT"] == "8090"  # integer in [env], stringified like flyctl
    assert config.env["MODE"] == "production"
    assert len(config.services) == 2  # [http_service] + the [[services.ports]]-only service
    report = run(name)
    assert ids(report, "VG100") == []
    assert [f.severity for f in ids(report, "VG114")] == [Severity.INFO]


def test_51_nftbk_one_day_retention_is_vg110():
    report = run("51_0xmichalis_nftbk.toml")
    (f,) = ids(report, "VG110")
    assert f.severity is Severity.WARNING
    assert f.location.line == 23
    assert ids(report, "VG108") == []  # 1 day is within flyctl's 1..60


def test_40_tallibase_auto_extend_is_valid():
    report = run("40_mennotech_tallibase.toml")
    assert ids(report, "VG108") == []


def test_25_changelog_bluegreen_without_mounts_is_fine():
    assert _raw("25_thechangelog_changelog.com.toml")["deploy"]["strategy"] == "bluegreen"
    assert ids(run("25_thechangelog_changelog.com.toml"), "VG109") == []


def test_31_django_formset_media_root_flag_on_the_volume():
    name = "31_jrief_django-formset.toml"
    assert _raw(name)["env"]["DJANGO_MEDIA_ROOT"] == "/web/workdir/media"
    assert [f.severity for f in ids(run(name), "VG113")] == [Severity.INFO]
    report = run(name, media_root="/web/workdir/media")
    assert ids(report, "VG101") == []
    assert report.exit_code(Severity.ERROR) == 0
