"""volguard's static rules as Django system checks (volguard.django).

Two kinds of test: in-process ones, with Django configured by this module, for
the mapping from findings to CheckMessages; and end-to-end ones that run
`manage.py check --deploy` in a subprocess on a throwaway project, which is how
users meet these checks.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from io import StringIO
from pathlib import Path

import pytest

django = pytest.importorskip("django")

from conftest import configure_django_in_process  # noqa: E402

configure_django_in_process()

from django.conf import settings  # noqa: E402
from django.core.checks import CheckMessage, Error, Info, Warning  # noqa: E402
from django.core.checks.registry import registry  # noqa: E402
from django.core.management import call_command  # noqa: E402
from django.core.management.base import SystemCheckError  # noqa: E402
from django.test import override_settings  # noqa: E402

from volguard.catalogue import CHECKS  # noqa: E402
from volguard.django import checks  # noqa: E402
from volguard.findings import Finding, Location, Severity  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
INCIDENT_FLY_TOML = REPO / "fly.toml"

GOOD_FLY_TOML = """\
app = "mysite"
primary_region = "syd"

[env]
  MEDIA_ROOT = "/data/media"

[processes]
  app = "honcho start"

[[mounts]]
  source = "data"
  destination = "/data"
  processes = ["app"]
"""

# app and worker on one mount: VG103 at line 12
SPLIT_FLY_TOML = """\
app = "mysite"
primary_region = "syd"

[env]
  MEDIA_ROOT = "/data/media"

[processes]
  app = "gunicorn mysite.wsgi"
  worker = "celery -A mysite worker"

[[mounts]]
  source = "data"
  destination = "/data"
  processes = ["app", "worker"]
"""


def write(tmp_path: Path, text: str, name: str = "fly.toml") -> str:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return str(path)


def run_check(**overrides: object) -> list[CheckMessage]:
    overrides.setdefault("MEDIA_ROOT", "")
    with override_settings(**overrides):
        return checks.check_fly_toml(None)


def ids(messages: list[CheckMessage]) -> list[str]:
    return [m.id for m in messages]


# -- registration and the app --------------------------------------------------------


def test_import_of_volguard_django_does_not_import_django():
    out = subprocess.run(
        [sys.executable, "-c", "import volguard.django, sys; print('django' in sys.modules)"],
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO,
    )
    assert out.stdout.strip() == "False"


def test_check_is_registered_as_a_deploy_check_with_the_volguard_tag():
    assert checks.check_fly_toml in registry.get_checks(include_deployment_checks=True)
    assert checks.check_fly_toml not in registry.get_checks(include_deployment_checks=False)
    assert set(checks.check_fly_toml.tags) == {"files", "volguard"}


def test_app_config():
    from django.apps import apps

    from volguard.django.apps import VolguardConfig

    if not apps.is_installed("volguard.django"):
        pytest.skip("Django was configured by another module without volguard.django")
    config = apps.get_app_config("volguard")
    assert isinstance(config, VolguardConfig)
    assert config.name == "volguard.django"
    assert config.default_auto_field


# -- the mapping from Finding to CheckMessage ------------------------------------------


@pytest.mark.parametrize(
    ("severity", "vg_id", "cls", "django_id"),
    [
        (Severity.ERROR, "VG101", Error, "volguard.E101"),
        (Severity.WARNING, "VG110", Warning, "volguard.W110"),
        (Severity.INFO, "VG113", Info, "volguard.I113"),
        (Severity.INFO, "VG114", Info, "volguard.I114"),
        (Severity.ERROR, "VG100", Error, "volguard.E100"),
    ],
)
def test_level_and_id_follow_the_severity(severity, vg_id, cls, django_id):
    finding = Finding(vg_id, severity, "something is off", hint="do this")
    message = checks.to_check_message(finding, "/srv/fly.toml")
    assert type(message) is cls
    assert message.id == django_id


def test_one_django_id_per_vg_id_at_the_catalogued_level():
    # a Finding built by hand with another severity still maps to the id's one Django id
    message = checks.to_check_message(Finding("VG101", Severity.INFO, "x"), "fly.toml")
    assert (type(message), message.id) == (Error, "volguard.E101")
    static = [c for c in CHECKS.values() if c.layer == "static"]
    django_ids = {checks.django_check_id(c.id) for c in static}
    assert len(django_ids) == len(static)  # no two VG ids share a Django id
    assert checks.TOOL_ERROR_ID not in django_ids
    letters = {Severity.ERROR: "E", Severity.WARNING: "W", Severity.INFO: "I"}
    for c in static:
        assert checks.django_check_id(c.id) == f"volguard.{letters[c.severity]}{c.id[2:]}"


def test_message_carries_location_hint_and_obj():
    finding = Finding(
        "VG103",
        Severity.ERROR,
        "one mount lists app and worker",
        hint="handle media in one group",
        location=Location(file="/srv/fly.toml", line=31, column=3),
    )
    message = checks.to_check_message(finding, "/srv/fly.toml")
    assert message.msg == "/srv/fly.toml:31:3: one mount lists app and worker"
    assert message.hint == "handle media in one group"
    assert message.obj == "/srv/fly.toml"


def test_location_is_not_repeated_when_the_message_starts_with_it():
    finding = Finding(
        "VG100", Severity.ERROR, "/srv/fly.toml does not exist", location=Location("/srv/fly.toml")
    )
    message = checks.to_check_message(finding, "/srv/fly.toml")
    assert message.msg == "/srv/fly.toml does not exist"
    assert message.hint is None


# -- the check on real fly.toml files ----------------------------------------------------


def test_incident_fly_toml_gives_e103(tmp_path):
    path = str(shutil.copy(INCIDENT_FLY_TOML, tmp_path / "fly.toml"))
    messages = run_check(VOLGUARD_FLY_TOML=path)
    assert ids(messages) == ["volguard.E103"]
    (message,) = messages
    assert isinstance(message, Error)
    assert message.obj == path
    assert message.msg.startswith(f"{path}:31:3: ")
    assert '"app" and "worker"' in message.msg
    assert "object storage" in message.hint


def test_good_fly_toml_gives_nothing(tmp_path):
    assert run_check(VOLGUARD_FLY_TOML=write(tmp_path, GOOD_FLY_TOML)) == []


def test_warning_level_finding(tmp_path):
    path = write(tmp_path, GOOD_FLY_TOML + "  snapshot_retention = 2\n")
    (message,) = run_check(VOLGUARD_FLY_TOML=path)
    assert isinstance(message, Warning)
    assert message.id == "volguard.W110"
    assert message.msg.startswith(f"{path}:14:")


def test_info_level_finding_when_no_media_root_is_known(tmp_path):
    path = write(tmp_path, GOOD_FLY_TOML.replace('  MEDIA_ROOT = "/data/media"\n', ""))
    (message,) = run_check(VOLGUARD_FLY_TOML=path)
    assert isinstance(message, Info)
    assert message.id == "volguard.I113"
    assert "MEDIA_ROOT is unknown" in message.msg


def test_waived_findings_are_not_reported(tmp_path):
    waived = '  snapshot_retention = 2  # volguard: ignore VG110 reason="staging app"\n'
    path = write(tmp_path, SPLIT_FLY_TOML + waived)
    assert ids(run_check(VOLGUARD_FLY_TOML=path)) == ["volguard.E103"]


def test_missing_fly_toml_is_e100(tmp_path):
    path = str(tmp_path / "nope.toml")
    (message,) = run_check(VOLGUARD_FLY_TOML=path)
    assert isinstance(message, Error)
    assert message.id == "volguard.E100"
    assert message.obj == path
    assert message.msg == f"{path} does not exist"


def test_unparseable_fly_toml_is_e100_with_its_position(tmp_path):
    path = write(tmp_path, 'app = "mysite"\n[[mounts]\n')
    (message,) = run_check(VOLGUARD_FLY_TOML=path)
    assert message.id == "volguard.E100"
    assert message.msg.startswith(f"{path}:2:")


# -- where the settings come from -------------------------------------------------------


def test_django_media_root_overrides_fly_toml_env(tmp_path):
    path = write(tmp_path, GOOD_FLY_TOML)  # [env] MEDIA_ROOT = "/data/media": fine
    assert ids(run_check(VOLGUARD_FLY_TOML=path, MEDIA_ROOT="/app/media")) == ["volguard.E101"]
    (message,) = run_check(VOLGUARD_FLY_TOML=path, MEDIA_ROOT=Path("/app/media"))
    assert "/app/media" in message.msg


def test_django_media_root_good_while_fly_toml_env_is_wrong(tmp_path):
    path = write(tmp_path, GOOD_FLY_TOML.replace("/data/media", "/app/media"))
    assert ids(run_check(VOLGUARD_FLY_TOML=path)) == ["volguard.E101"]
    assert run_check(VOLGUARD_FLY_TOML=path, MEDIA_ROOT=Path("/data/media")) == []


def test_media_groups_narrow_the_check(tmp_path):
    path = write(tmp_path, SPLIT_FLY_TOML)
    assert ids(run_check(VOLGUARD_FLY_TOML=path)) == ["volguard.E103"]
    assert run_check(VOLGUARD_FLY_TOML=path, VOLGUARD_MEDIA_GROUPS=["app"]) == []


def test_default_fly_toml_is_in_base_dir(tmp_path, monkeypatch):
    write(tmp_path, SPLIT_FLY_TOML)
    monkeypatch.chdir(tmp_path.parent)  # not where fly.toml is
    (message,) = run_check(BASE_DIR=tmp_path)
    assert message.id == "volguard.E103"
    assert message.obj == str(tmp_path / "fly.toml")


def test_relative_volguard_fly_toml_is_relative_to_base_dir(tmp_path, monkeypatch):
    (tmp_path / "deploy").mkdir()
    write(tmp_path / "deploy", SPLIT_FLY_TOML, "fly.production.toml")
    monkeypatch.chdir(tmp_path.parent)
    (message,) = run_check(BASE_DIR=str(tmp_path), VOLGUARD_FLY_TOML="deploy/fly.production.toml")
    assert message.obj == str(tmp_path / "deploy" / "fly.production.toml")


def test_without_base_dir_fly_toml_is_in_the_current_directory(tmp_path, monkeypatch):
    write(tmp_path, SPLIT_FLY_TOML)
    monkeypatch.chdir(tmp_path)
    with override_settings(MEDIA_ROOT=""):
        del settings.BASE_DIR
        messages = checks.check_fly_toml(None)
    assert ids(messages) == ["volguard.E103"]
    assert messages[0].obj == "fly.toml"


# -- volguard's own errors: one volguard.E001, never an exception -------------------------


def test_unknown_media_group_is_e001(tmp_path):
    path = write(tmp_path, SPLIT_FLY_TOML)
    (message,) = run_check(VOLGUARD_FLY_TOML=path, VOLGUARD_MEDIA_GROUPS=["web"])
    assert isinstance(message, Error)
    assert message.id == "volguard.E001"
    assert "'web'" in message.msg
    assert message.obj == path


def test_malformed_waiver_comment_is_e001(tmp_path):
    path = write(tmp_path, SPLIT_FLY_TOML + "  # volguard: ignore VG103\n")
    (message,) = run_check(VOLGUARD_FLY_TOML=path)
    assert message.id == "volguard.E001"
    assert "reason" in message.msg


@pytest.mark.parametrize(
    ("setting", "value", "words"),
    [
        ("VOLGUARD_MEDIA_GROUPS", "app", "VOLGUARD_MEDIA_GROUPS must be a list"),
        ("VOLGUARD_MEDIA_GROUPS", [1], "VOLGUARD_MEDIA_GROUPS must be a list"),
        ("VOLGUARD_FLY_TOML", 42, "VOLGUARD_FLY_TOML must be a path"),
        ("MEDIA_ROOT", 42, "MEDIA_ROOT must be a path"),
    ],
)
def test_setting_of_the_wrong_type_is_e001(tmp_path, setting, value, words):
    overrides = {"VOLGUARD_FLY_TOML": write(tmp_path, GOOD_FLY_TOML), setting: value}
    (message,) = run_check(**overrides)
    assert message.id == "volguard.E001"
    assert words in message.msg


# -- through Django's check command -------------------------------------------------------


def test_check_command_fails_on_e103(tmp_path):
    path = write(tmp_path, SPLIT_FLY_TOML)
    with (
        override_settings(VOLGUARD_FLY_TOML=path, MEDIA_ROOT=""),
        pytest.raises(SystemCheckError, match=r"volguard\.E103"),
    ):
        call_command("check", deploy=True, tags=["volguard"], stdout=StringIO())


def test_silenced_system_checks_are_honoured(tmp_path):
    path = write(tmp_path, SPLIT_FLY_TOML + "  snapshot_retention = 2\n")
    out = StringIO()
    with override_settings(
        VOLGUARD_FLY_TOML=path,
        MEDIA_ROOT="",
        SILENCED_SYSTEM_CHECKS=["volguard.E103", "volguard.W110"],
    ):
        call_command("check", deploy=True, tags=["volguard"], stdout=out, stderr=out)
    assert "volguard." not in out.getvalue()
    assert "2 silenced" in out.getvalue()


# -- end to end: manage.py check --deploy in a throwaway project ---------------------------

MANAGE_PY = """\
import os
import sys

if __name__ == "__main__":
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "mysite.settings")
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)
"""

# Deployment-grade settings, so that Django's own --deploy checks stay quiet.
SETTINGS_PY = """\
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent
SECRET_KEY = "x7Qm2vL9pR4tK8wZ1nB6cY3hJ5dF0sG2aE7uV9iO4lP1qW8rT6yU3zX5mN0bC9"
DEBUG = False
ALLOWED_HOSTS = ["mysite.fly.dev"]
INSTALLED_APPS = ["volguard.django"]
MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]
DATABASES = {{}}
USE_TZ = True
SECURE_SSL_REDIRECT = True
SECURE_HSTS_SECONDS = 31536000
SECURE_HSTS_INCLUDE_SUBDOMAINS = True
SECURE_HSTS_PRELOAD = True
SESSION_COOKIE_SECURE = True
CSRF_COOKIE_SECURE = True
VOLGUARD_FLY_TOML = {fly_toml!r}
"""


def make_project(tmp_path: Path, fly_toml: str) -> Path:
    """A minimal Django project whose VOLGUARD_FLY_TOML points outside BASE_DIR."""
    project = tmp_path / "project"
    (project / "mysite").mkdir(parents=True)
    (project / "manage.py").write_text(MANAGE_PY, encoding="utf-8")
    (project / "mysite" / "__init__.py").write_text("", encoding="utf-8")
    (project / "mysite" / "settings.py").write_text(
        SETTINGS_PY.format(fly_toml=fly_toml), encoding="utf-8"
    )
    return project


def manage(project: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "DJANGO_SETTINGS_MODULE"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_manage_py_check_deploy_reports_the_incident(tmp_path):
    (tmp_path / "deploy").mkdir()
    fly_toml = str(shutil.copy(INCIDENT_FLY_TOML, tmp_path / "deploy" / "fly.toml"))
    project = make_project(tmp_path, fly_toml)

    result = manage(project, "check", "--deploy")
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert "volguard.E103" in output
    assert f"{fly_toml}:31:3:" in output
    assert "HINT: Volumes are never shared" in output

    # a plain `check` (runserver, migrate) does not run deploy checks
    plain = manage(project, "check")
    assert plain.returncode == 0, plain.stdout + plain.stderr
    assert "volguard." not in plain.stdout + plain.stderr


def test_manage_py_check_deploy_passes_a_good_fly_toml(tmp_path):
    (tmp_path / "deploy").mkdir()
    fly_toml = write(tmp_path / "deploy", GOOD_FLY_TOML)
    project = make_project(tmp_path, fly_toml)

    result = manage(project, "check", "--deploy")
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "volguard." not in output

    # volguard alone, failing on anything it says, still has nothing to say
    only_volguard = manage(
        project, "check", "--deploy", "--tag", "volguard", "--fail-level", "INFO"
    )
    assert only_volguard.returncode == 0, only_volguard.stdout + only_volguard.stderr
    assert "no issues" in only_volguard.stdout


def test_manage_py_check_deploy_honours_silenced_system_checks(tmp_path):
    (tmp_path / "deploy").mkdir()
    fly_toml = str(shutil.copy(INCIDENT_FLY_TOML, tmp_path / "deploy" / "fly.toml"))
    project = make_project(tmp_path, fly_toml)
    settings_py = project / "mysite" / "settings.py"
    settings_py.write_text(
        settings_py.read_text(encoding="utf-8") + 'SILENCED_SYSTEM_CHECKS = ["volguard.E103"]\n',
        encoding="utf-8",
    )

    result = manage(project, "check", "--deploy")
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "volguard.E103" not in output
    assert "1 silenced" in output


def test_an_audit_only_project_without_fly_toml_passes_check_deploy(tmp_path):
    """volguard.django installed for check_missing_files alone: no fly.toml, no error."""
    project = make_project(tmp_path, "")
    settings_py = project / "mysite" / "settings.py"
    settings_py.write_text(
        settings_py.read_text(encoding="utf-8").replace("VOLGUARD_FLY_TOML = ''\n", ""),
        encoding="utf-8",
    )
    assert "VOLGUARD_FLY_TOML" not in settings_py.read_text(encoding="utf-8")

    result = manage(project, "check", "--deploy")
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "volguard." not in output

    # Asked for by name, a missing fly.toml is still an error.
    (message,) = run_check(VOLGUARD_FLY_TOML=str(tmp_path / "nope.toml"))
    assert message.id == "volguard.E100"


# -- media in object storage (VOLGUARD_MEDIA_STORAGE, or Django's own default storage) ------

S3_STORAGES = {
    "default": {
        "BACKEND": "storages.backends.s3.S3Storage",
        "OPTIONS": {
            "bucket_name": "mysite-media",
            "endpoint_url": "https://fly.storage.tigris.dev",
        },
    },
    "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
}


def test_media_storage_object_setting_skips_e103_and_says_i115():
    messages = run_check(VOLGUARD_FLY_TOML=str(INCIDENT_FLY_TOML), VOLGUARD_MEDIA_STORAGE="object")
    assert "volguard.I115" in ids(messages)
    assert "volguard.E103" not in ids(messages)
    assert isinstance(messages[ids(messages).index("volguard.I115")], Info)


def test_a_django_whose_default_storage_is_s3_skips_e103_by_itself():
    pytest.importorskip("storages")
    messages = run_check(VOLGUARD_FLY_TOML=str(INCIDENT_FLY_TOML), STORAGES=S3_STORAGES)
    assert ids(messages) == ["volguard.I115"]
    # told otherwise, the volume checks run whatever the storage
    told = run_check(
        VOLGUARD_FLY_TOML=str(INCIDENT_FLY_TOML),
        STORAGES=S3_STORAGES,
        VOLGUARD_MEDIA_STORAGE="volume",
    )
    assert "volguard.E103" in ids(told)


def test_a_django_on_the_filesystem_keeps_e103():
    assert "volguard.E103" in ids(run_check(VOLGUARD_FLY_TOML=str(INCIDENT_FLY_TOML)))


def test_a_bad_media_storage_setting_is_e001():
    messages = run_check(VOLGUARD_FLY_TOML=str(INCIDENT_FLY_TOML), VOLGUARD_MEDIA_STORAGE="s3")
    assert ids(messages) == [checks.TOOL_ERROR_ID]
    assert "VOLGUARD_MEDIA_STORAGE must be one of auto, volume, object" in messages[0].msg


def test_manage_py_check_deploy_with_s3_default_storage_passes_the_incident(tmp_path):
    pytest.importorskip("storages")
    (tmp_path / "deploy").mkdir()
    fly_toml = str(shutil.copy(INCIDENT_FLY_TOML, tmp_path / "deploy" / "fly.toml"))
    project = make_project(tmp_path, fly_toml)
    with (project / "mysite" / "settings.py").open("a", encoding="utf-8") as fh:
        fh.write(f"STORAGES = {S3_STORAGES!r}\n")
    result = manage(project, "check", "--deploy")
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "volguard.I115" in output
    assert "volguard.E103" not in output
