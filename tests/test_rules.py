"""Static rules VG101–VG114: one bad fly.toml that produces each, one good one that does not."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from volguard.config import Settings
from volguard.errors import UsageError
from volguard.findings import Severity
from volguard.lint import lint

REPO_FLY_TOML = Path(__file__).resolve().parents[1] / "fly.toml"

# A base that is clean on its own: one group, one mount, region set, MEDIA_ROOT on the volume.
CLEAN = """\
app = "mysite"
primary_region = "ams"

[env]
  MEDIA_ROOT = "/data/media"

[[mounts]]
  source = "data"
  destination = "/data"
"""


def toml(text: str) -> str:
    return textwrap.dedent(text).lstrip("\n")


def of(report, check_id: str):
    return [f for f in report.findings if f.id == check_id]


def one(report, check_id: str):
    found = of(report, check_id)
    assert len(found) == 1, [(f.id, f.message) for f in report.findings]
    return found[0]


def line_of(text: str, needle: str, occurrence: int = 1) -> int:
    """1-based line number of the ``occurrence``-th line containing ``needle``."""
    hits = [i for i, ln in enumerate(text.splitlines(), 1) if needle in ln]
    return hits[occurrence - 1]


def test_clean_base_has_no_findings(lint_text):
    report = lint_text(CLEAN)
    assert report.findings == []
    assert report.exit_code(Severity.ERROR) == 0


# -- the repo's own fly.toml (the incident) --------------------------------------------------


def test_repo_fly_toml_reports_vg103_on_the_processes_line():
    assert REPO_FLY_TOML.is_file()
    report = lint(Settings.load(None), str(REPO_FLY_TOML))
    f = one(report, "VG103")
    assert f.severity is Severity.ERROR
    assert f.location.line == 31
    assert f.location.column == 3
    assert REPO_FLY_TOML.read_text().splitlines()[30].strip().startswith("processes")
    assert sorted(f.evidence["groups"]) == ["app", "worker"]
    assert report.exit_code(Severity.ERROR) == 2
    assert report.exit_code(None) == 0  # --report-only / --fail-on never


def test_repo_fly_toml_has_no_other_errors():
    report = lint(Settings.load(None), str(REPO_FLY_TOML))
    errors = [f.id for f in report.findings if f.severity is Severity.ERROR]
    assert errors == ["VG103"]


# -- VG101: MEDIA_ROOT inside the mount ----------------------------------------------------


def with_media_root(value: str, destination: str = "/data") -> str:
    return CLEAN.replace('"/data/media"', f'"{value}"').replace(
        'destination = "/data"', f'destination = "{destination}"'
    )


@pytest.mark.parametrize(
    "media_root",
    ["/database/media", "/data/../srv/media", "/srv/media", "/dat", "/"],
)
def test_vg101_media_root_outside_the_mount(lint_text, media_root):
    text = with_media_root(media_root)
    f = one(lint_text(text), "VG101")
    assert f.severity is Severity.ERROR
    assert f.location.line == line_of(text, "MEDIA_ROOT")
    assert f.evidence["media_root"] == media_root


@pytest.mark.parametrize(
    ("media_root", "destination"),
    [
        ("/data/media/", "/data"),
        ("/data", "/data"),
        ("/data/media", "/data/"),
        ("/data/./media", "/data"),
        ("/data/x/../media", "/data"),
        ("//data/media", "/data"),  # Linux resolves a leading "//" to "/"
        ("/anything", "/"),
    ],
)
def test_vg101_media_root_inside_the_mount(lint_text, media_root, destination):
    report = lint_text(with_media_root(media_root, destination))
    assert of(report, "VG101") == []


@pytest.mark.parametrize("media_root", ["media", "data/media", "./data/media"])
def test_vg101_relative_media_root_is_an_error(lint_text, media_root):
    text = with_media_root(media_root)
    f = one(lint_text(text), "VG101")
    assert f.severity is Severity.ERROR
    assert f.location.line == line_of(text, "MEDIA_ROOT")


def test_relative_media_root_without_mounts_is_still_an_error(lint_text):
    # docs/checks.md: "A relative MEDIA_ROOT is always an error"; it is a known MEDIA_ROOT, so the
    # no-mounts case must not fall back to the "MEDIA_ROOT is unknown" info.
    text = toml(
        """
        app = "x"
        [env]
          MEDIA_ROOT = "media"
        """
    )
    report = lint_text(text)
    errors = [f for f in report.findings if f.id in ("VG101", "VG102")]
    assert errors
    assert all(f.severity is Severity.ERROR for f in errors)
    assert report.exit_code(Severity.ERROR) == 2


def test_unknown_media_root_is_vg113_not_vg101(lint_text):
    text = CLEAN.replace('  MEDIA_ROOT = "/data/media"\n', '  PORT = "8000"\n')
    report = lint_text(text)
    assert of(report, "VG101") == []  # VG101 is only ever "MEDIA_ROOT is not on the volume"
    f = one(report, "VG113")
    assert f.severity is Severity.INFO
    assert "MEDIA_ROOT is unknown" in f.message
    assert f.evidence == {"destination": "/data"}
    assert f.location.line == line_of(text, "[[mounts]]")
    assert report.exit_code(Severity.ERROR) == 0
    assert report.exit_code(Severity.INFO) == 2


def test_vg101_media_root_flag_overrides_env(lint_text):
    text = with_media_root("/srv/media")
    assert of(lint_text(text), "VG101")  # from [env]
    assert of(lint_text(text, media_root="/data/uploads"), "VG101") == []
    # and the other way round: a good [env] value, a bad flag
    f = one(lint_text(CLEAN, media_root="/srv/uploads"), "VG101")
    assert f.evidence["media_root"] == "/srv/uploads"
    assert f.severity is Severity.ERROR
    # no [env] line to point at: the finding points at the mount's destination
    assert f.location.line == line_of(CLEAN, "destination")


def test_vg101_media_root_flag_when_env_has_none(lint_text):
    text = CLEAN.replace('  MEDIA_ROOT = "/data/media"\n', "")
    assert [f.id for f in lint_text(text).findings] == ["VG113"]
    assert lint_text(text, media_root="/data/media").findings == []
    assert [(f.id, f.severity) for f in lint_text(text, media_root="/tmp/media").findings] == [
        ("VG101", Severity.ERROR)
    ]


def test_vg101_each_group_mount_is_checked(lint_text):
    # app mounts /data, worker mounts /srv: MEDIA_ROOT /data/media is off worker's volume
    text = toml(
        """
        primary_region = "ams"
        [env]
          MEDIA_ROOT = "/data/media"
        [processes]
          app = "web"
          worker = "celery"
        [[mounts]]
          source = "a"
          destination = "/data"
          processes = ["app"]
        [[mounts]]
          source = "w"
          destination = "/srv"
          processes = ["worker"]
        """
    )
    f = one(lint_text(text), "VG101")
    assert f.evidence["groups"] == ["worker"]
    assert f.evidence["destination"] == "/srv"


# -- VG102: a media group gets no mount ------------------------------------------------------

TWO_GROUPS_DEFAULT_MOUNT = toml(
    """
    primary_region = "ams"
    [env]
      MEDIA_ROOT = "/data/media"
    [processes]
      app = "gunicorn mysite.wsgi"
      worker = "celery -A mysite worker"
    [[mounts]]
      source = "media"
      destination = "/data"
    """
)


def test_vg102_mount_without_processes_leaves_worker_without_volume(lint_text):
    text = TWO_GROUPS_DEFAULT_MOUNT
    f = one(lint_text(text), "VG102")
    assert f.severity is Severity.ERROR
    assert f.evidence["group"] == "worker"
    assert f.evidence["default_group"] == "app"
    assert f.location.line == line_of(text, "[[mounts]]")


def test_vg102_not_when_one_group_handles_everything(lint_text):
    text = TWO_GROUPS_DEFAULT_MOUNT.replace('  worker = "celery -A mysite worker"\n', "")
    report = lint_text(text)
    assert of(report, "VG102") == []
    assert report.findings == []


def test_vg102_mount_listing_another_group(lint_text):
    text = TWO_GROUPS_DEFAULT_MOUNT + '  processes = ["worker"]\n'
    f = one(lint_text(text), "VG102")
    assert f.evidence["group"] == "app"
    assert f.location.line == line_of(text, "processes = [")


def test_no_mounts_and_no_media_root_is_vg114_not_vg102(lint_text):
    report = lint_text('app = "x"\nprimary_region = "ams"\n')
    assert of(report, "VG102") == []  # VG102 is only ever "a media group gets no volume"
    f = one(report, "VG114")
    assert f.severity is Severity.INFO
    assert "nothing to verify" in f.message
    assert report.exit_code(Severity.ERROR) == 0
    assert report.exit_code(Severity.INFO) == 2


def test_vg114_not_when_mounts_are_declared_but_unreadable(lint_text):
    # a [mounts] that could not be read is VG100's business, not "nothing to verify"
    report = lint_text('app = "x"\nmounts = "oops"\n')
    assert of(report, "VG100")
    assert of(report, "VG114") == []


def test_vg102_error_when_media_root_set_but_no_mounts(lint_text):
    text = toml(
        """
        app = "x"
        primary_region = "ams"
        [env]
          MEDIA_ROOT = "/data/media"
        """
    )
    report = lint_text(text)
    f = one(report, "VG102")
    assert f.severity is Severity.ERROR
    assert f.location.line == line_of(text, "MEDIA_ROOT")
    assert report.exit_code(Severity.ERROR) == 2


def test_vg102_error_when_media_root_flag_but_no_mounts(lint_text):
    f = one(lint_text('app = "x"\n', media_root="/data/media"), "VG102")
    assert f.severity is Severity.ERROR


# -- VG103: several media groups, each on its own volume -----------------------------------

SHARED_MOUNT = TWO_GROUPS_DEFAULT_MOUNT + '  processes = ["app", "worker"]\n'


def test_vg103_one_mount_listing_two_groups(lint_text):
    f = one(lint_text(SHARED_MOUNT), "VG103")
    assert f.severity is Severity.ERROR
    assert f.location.line == line_of(SHARED_MOUNT, "processes = [")
    assert f.evidence["groups"] == ["app", "worker"]
    assert f.evidence["volumes"] == ["media"]


def test_vg103_two_separate_mounts_for_app_and_worker(lint_text):
    text = toml(
        """
        primary_region = "ams"
        [env]
          MEDIA_ROOT = "/data/media"
        [processes]
          app = "web"
          worker = "celery"
        [[mounts]]
          source = "web_data"
          destination = "/data"
          processes = ["app"]
        [[mounts]]
          source = "worker_data"
          destination = "/data"
          processes = ["worker"]
        """
    )
    report = lint_text(text)
    f = one(report, "VG103")
    assert f.severity is Severity.ERROR
    assert f.location.line == line_of(text, "[[mounts]]", 2)
    assert f.evidence["volumes"] == ["web_data", "worker_data"]
    assert of(report, "VG102") == []
    assert of(report, "VG105") == []


def test_vg103_media_groups_narrowing_removes_it(lint_text):
    report = lint_text(SHARED_MOUNT, media_groups=["app"])
    assert of(report, "VG103") == []
    assert report.exit_code(Severity.ERROR) == 0


def test_vg103_media_groups_as_comma_string(lint_text):
    assert of(lint_text(SHARED_MOUNT, media_groups="worker"), "VG103") == []
    assert one(lint_text(SHARED_MOUNT, media_groups="app, worker"), "VG103")


def test_vg102_media_groups_narrowing_removes_it(lint_text):
    assert of(lint_text(TWO_GROUPS_DEFAULT_MOUNT, media_groups=["app"]), "VG102") == []


def test_unknown_media_group_is_a_usage_error(lint_text):
    with pytest.raises(UsageError, match="celery"):
        lint_text(SHARED_MOUNT, media_groups=["app", "celery"])


def test_vg103_repo_fly_toml_narrowed_to_app_is_clean():
    report = lint(Settings.load(None, media_groups=["app"]), str(REPO_FLY_TOML))
    assert of(report, "VG103") == []
    assert report.exit_code(Severity.ERROR) == 0


# -- VG104: mount names an unknown group ---------------------------------------------------


def test_vg104_unknown_group_in_processes(lint_text):
    text = CLEAN + '  processes = ["web"]\n'
    report = lint_text(text)
    f = one(report, "VG104")
    assert f.severity is Severity.ERROR
    assert f.location.line == line_of(text, "processes = [")
    assert f.evidence["unknown"] == ["web"]
    # flyctl never mounts it, so the only group (app) has no volume
    assert one(report, "VG102").evidence["group"] == "app"


def test_vg104_not_for_app_without_processes_table(lint_text):
    report = lint_text(CLEAN + '  processes = ["app"]\n')
    assert of(report, "VG104") == []
    assert report.findings == []


# -- VG105: more than one mount per group ----------------------------------------------------


def test_vg105_two_mounts_reach_one_group(lint_text):
    text = toml(
        """
        primary_region = "ams"
        [env]
          MEDIA_ROOT = "/media/uploads"
        [[mounts]]
          source = "media"
          destination = "/media"
        [[mounts]]
          source = "db"
          destination = "/db"
        """
    )
    f = one(lint_text(text), "VG105")
    assert f.severity is Severity.ERROR
    assert f.evidence == {"group": "app", "volumes": ["media", "db"]}
    assert f.location.line == line_of(text, "[[mounts]]", 2)


def test_vg105_default_mount_plus_named_mount(lint_text):
    text = toml(
        """
        primary_region = "ams"
        [processes]
          app = "web"
          worker = "celery"
        [[mounts]]
          source = "a"
          destination = "/data"
        [[mounts]]
          source = "b"
          destination = "/other"
          processes = ["app"]
        """
    )
    f = one(lint_text(text, media_groups=["app"]), "VG105")
    assert f.evidence["group"] == "app"


def test_vg105_not_for_one_mount_per_group(lint_text):
    text = toml(
        """
        primary_region = "ams"
        [processes]
          app = "web"
          worker = "celery"
        [[mounts]]
          source = "a"
          destination = "/data"
          processes = ["app"]
        [[mounts]]
          source = "b"
          destination = "/data"
          processes = ["worker"]
        """
    )
    assert of(lint_text(text), "VG105") == []


# -- VG106: bad destination --------------------------------------------------------------


@pytest.mark.parametrize(
    "destination",
    ["data", "/", "/etc", "/proc/x", "/proc", "/sys/fs", "/dev/shm", "/usr", "/var/run", "/etc/"],
)
def test_vg106_bad_destination(lint_text, destination):
    text = CLEAN.replace('destination = "/data"', f'destination = "{destination}"')
    f = one(lint_text(text), "VG106")
    assert f.severity is Severity.ERROR
    assert f.location.line == line_of(text, "destination")
    assert f.location.column == 3
    assert f.evidence["destination"] == destination


@pytest.mark.parametrize("destination", ["/data", "/etcetera", "/var/lib/app", "/srv/proc", "/app"])
def test_vg106_good_destination(lint_text, destination):
    text = CLEAN.replace('destination = "/data"', f'destination = "{destination}"')
    assert of(lint_text(text), "VG106") == []


# -- VG107: mounts without primary_region ----------------------------------------------------


def test_vg107_mounts_without_primary_region(lint_text):
    text = CLEAN.replace('primary_region = "ams"\n', "")
    f = one(lint_text(text), "VG107")
    assert f.severity is Severity.ERROR
    assert f.location.line == line_of(text, "[[mounts]]")


def test_vg107_empty_primary_region_points_at_it(lint_text):
    text = CLEAN.replace('primary_region = "ams"', 'primary_region = ""')
    f = one(lint_text(text), "VG107")
    assert f.location.line == line_of(text, "primary_region")


def test_vg107_not_without_mounts(lint_text):
    assert of(lint_text('app = "x"\n'), "VG107") == []


def test_vg107_not_with_primary_region(lint_text):
    assert of(lint_text(CLEAN), "VG107") == []


# -- VG108: flyctl's validateMounts --------------------------------------------------------


def mount_with(*lines: str) -> str:
    return CLEAN + "".join(f"  {ln}\n" for ln in lines)


@pytest.mark.parametrize(
    ("lines", "key", "message"),
    [
        (
            ['initial_size = "15Mb"'],
            "initial_size",
            "mount 'data' has an initial_size '15Mb' value which is smaller than 1GB",
        ),
        (['initial_size = "abc"'], "initial_size", "with initial_size 'abc' will fail because of"),
        (["initial_size = 0"], "initial_size", "smaller than 1GB"),
        (
            ["snapshot_retention = 0"],
            "snapshot_retention",
            "snapshot_retention value which is not between 1 and 60 days inclusive",
        ),
        (["snapshot_retention = 61"], "snapshot_retention", "not between 1 and 60"),
        (
            ["auto_extend_size_threshold = 80"],
            "auto_extend_size_threshold",
            "auto_extend_size_threshold, auto_extend_size_increment and "
            "auto_extend_size_limit must be all defined or none",
        ),
        (
            [
                "auto_extend_size_threshold = 40",
                'auto_extend_size_increment = "1GB"',
                'auto_extend_size_limit = "20GB"',
            ],
            "auto_extend_size_threshold",
            "auto_extend_size_threshold must be between 50 and 99",
        ),
        (
            [
                "auto_extend_size_threshold = 80",
                'auto_extend_size_increment = "200gb"',
                'auto_extend_size_limit = "300gb"',
            ],
            "auto_extend_size_increment",
            "auto_extend_size_increment must be between 1GB and 100GB",
        ),
        (
            [
                "auto_extend_size_threshold = 80",
                'auto_extend_size_increment = "1gb"',
                'auto_extend_size_limit = "600gb"',
            ],
            "auto_extend_size_limit",
            "auto_extend_size_limit must be between 1GB and 500GB",
        ),
        (
            ['auto_extend_size_increment = "500mb"', "auto_extend_size_threshold = 80"],
            "auto_extend_size_increment",
            "auto_extend_size_increment '500mb' value which is smaller than 1GB",
        ),
    ],
    ids=[
        "initial-15Mb",
        "initial-abc",
        "initial-0",
        "retention-0",
        "retention-61",
        "threshold-alone",
        "threshold-40",
        "increment-200gb",
        "limit-600gb",
        "increment-500mb",
    ],
)
def test_vg108_flyctl_rules(lint_text, lines, key, message):
    text = mount_with(*lines)
    report = lint_text(text)
    found = of(report, "VG108")
    assert found, report.findings
    hit = [f for f in found if message in f.message]
    assert hit, [f.message for f in found]
    f = hit[0]
    assert f.severity is Severity.ERROR
    assert f.evidence["key"] == key
    assert f.location.line == line_of(text, key + " =")
    assert f.location.column == 3


def test_vg108_threshold_alone_is_reported_once_per_message(lint_text):
    found = of(lint_text(mount_with("auto_extend_size_threshold = 80")), "VG108")
    messages = [f.message for f in found]
    assert len(messages) == len(set(messages))
    assert any("must be all defined or none" in m for m in messages)
    # flyctl also complains about the missing increment (0 is not in 1..100)
    assert any("increment must be between 1GB and 100GB" in m for m in messages)


@pytest.mark.parametrize(
    "lines",
    [
        ['initial_size = "10gb"'],
        ["initial_size = 10"],
        ['initial_size = "1"'],
        ['initial_size = "1GB"'],
        ['initial_size = "20GB"', "snapshot_retention = 60"],
        ["snapshot_retention = 1"],
        [
            "auto_extend_size_threshold = 80",
            'auto_extend_size_increment = "1GB"',
            'auto_extend_size_limit = "20GB"',
        ],
        # flyctl allows the limit to be absent (0) when the increment is set
        ["auto_extend_size_threshold = 50", 'auto_extend_size_increment = "100gb"'],
        [
            "auto_extend_size_threshold = 99",
            'auto_extend_size_increment = "1gb"',
            'auto_extend_size_limit = "500gb"',
        ],
    ],
)
def test_vg108_valid_settings(lint_text, lines):
    report = lint_text(mount_with(*lines))
    assert of(report, "VG108") == [], [f.message for f in of(report, "VG108")]


# -- VG109: canary / bluegreen with mounts ---------------------------------------------------


@pytest.mark.parametrize("strategy", ["canary", "bluegreen", "Canary", "BLUEGREEN", "BlueGreen"])
def test_vg109_strategy_with_mounts(lint_text, strategy):
    text = CLEAN + f'\n[deploy]\n  strategy = "{strategy}"\n'
    f = one(lint_text(text), "VG109")
    assert f.severity is Severity.ERROR
    assert f.location.line == line_of(text, "strategy")
    assert f.evidence["strategy"] == strategy


@pytest.mark.parametrize("strategy", ["canary", "bluegreen"])
def test_vg109_not_without_mounts(lint_text, strategy):
    assert of(lint_text(f'app = "x"\n[deploy]\n  strategy = "{strategy}"\n'), "VG109") == []


@pytest.mark.parametrize("strategy", ["rolling", "immediate"])
def test_vg109_not_for_rolling_or_immediate(lint_text, strategy):
    assert of(lint_text(CLEAN + f'[deploy]\n  strategy = "{strategy}"\n'), "VG109") == []


# -- VG110: snapshots off or short -------------------------------------------------------------


def test_vg110_scheduled_snapshots_false(lint_text):
    text = mount_with("scheduled_snapshots = false")
    report = lint_text(text)
    f = one(report, "VG110")
    assert f.severity is Severity.WARNING
    assert f.location.line == line_of(text, "scheduled_snapshots")
    assert report.exit_code(Severity.ERROR) == 0
    assert report.exit_code(Severity.WARNING) == 2


def test_vg110_retention_below_policy(lint_text):
    text = mount_with("snapshot_retention = 2")
    f = one(lint_text(text), "VG110")
    assert f.severity is Severity.WARNING
    assert f.location.line == line_of(text, "snapshot_retention")
    assert f.evidence["retention"] == 2
    assert f.evidence["policy"] == 5


def test_vg110_min_snapshot_retention_policy(lint_text):
    text = mount_with("snapshot_retention = 7")
    assert of(lint_text(text), "VG110") == []
    f = one(lint_text(text, min_snapshot_retention=14), "VG110")
    assert f.evidence["policy"] == 14
    # the Fly default (5 days) is below a policy of 7 too
    assert one(lint_text(CLEAN, min_snapshot_retention=7), "VG110").evidence["retention"] == 5


@pytest.mark.parametrize(
    "lines",
    [[], ["snapshot_retention = 5"], ["snapshot_retention = 14", "scheduled_snapshots = true"]],
)
def test_vg110_good(lint_text, lines):
    assert of(lint_text(mount_with(*lines)), "VG110") == []


# -- VG111: release_command relies on the volume ---------------------------------------------

RELEASE = toml(
    """
    primary_region = "ams"
    [deploy]
      release_command = "python manage.py migrate --noinput"
    [env]
      MEDIA_ROOT = "/data/media"
    [[mounts]]
      source = "data"
      destination = "/data"
    """
)


def test_vg111_sqlite_database_url_under_the_mount(lint_text):
    text = RELEASE.replace(
        '  MEDIA_ROOT = "/data/media"\n',
        '  MEDIA_ROOT = "/data/media"\n  DATABASE_URL = "sqlite:////data/db.sqlite3"\n',
    )
    f = one(lint_text(text), "VG111")
    assert f.severity is Severity.WARNING
    assert f.location.line == line_of(text, "release_command")
    assert any("DATABASE_URL" in r for r in f.evidence["reasons"])


def test_vg111_command_names_the_mount(lint_text):
    text = RELEASE.replace("migrate --noinput", "loaddata /data/fixtures.json")
    f = one(lint_text(text), "VG111")
    assert f.location.line == line_of(text, "release_command")


@pytest.mark.parametrize(
    "env_line",
    [
        "",  # MEDIA_ROOT under the mount is not something migrate opens
        'UPLOAD_FOLDER = "/data/uploads"',
        'DATABASE_URL = "postgres://u:p@db.internal:5432/app"',
        'DATABASE_URL = "sqlite:////database/db.sqlite3"',  # /database is not /data
        'DATABASE_URL = "sqlite:////srv/data/db.sqlite3"',  # /srv/data is not /data
    ],
)
def test_vg111_not_for_unrelated_env_paths(lint_text, env_line):
    text = RELEASE.replace("[env]\n", f"[env]\n  {env_line}\n")
    report = lint_text(text)
    assert of(report, "VG111") == [], [f.message for f in of(report, "VG111")]


@pytest.mark.parametrize(
    "command",
    [
        "python manage.py check_missing_files",
        "python manage.py check_missing_files --fix --yes",
        "python /app/manage.py check_missing_files --delete --export /tmp/rows.json",
        "django-admin check_missing_files --json",
        "sh -c 'python manage.py migrate --noinput && python manage.py check_missing_files'",
    ],
)
def test_vg111_a_release_command_running_the_media_audit(lint_text, command):
    # the release Machine has no volume (machines.go ToReleaseMachineConfig): MEDIA_ROOT is empty
    text = RELEASE.replace('"python manage.py migrate --noinput"', f'"{command}"')
    f = one(lint_text(text), "VG111")
    assert f.location.line == line_of(text, "release_command")
    assert any("check_missing_files" in r and "/data/media" in r for r in f.evidence["reasons"])


def test_vg111_a_media_audit_release_command_without_mounts(lint_text):
    # no volume anywhere: the release Machine's MEDIA_ROOT holds only what the image holds
    text = toml(
        """
        app = "mysite"
        [deploy]
          release_command = "python manage.py check_missing_files"
        """
    )
    f = one(lint_text(text), "VG111")
    assert "check_missing_files" in f.message


def test_vg111_not_for_a_command_that_only_shares_the_name_prefix(lint_text):
    text = RELEASE.replace("migrate --noinput", "check_missing_files_report_cleanup")
    assert of(lint_text(text), "VG111") == []


def test_vg111_not_without_release_command(lint_text):
    text = CLEAN.replace("[env]\n", '[env]\n  DATABASE_URL = "sqlite:////data/db.sqlite3"\n')
    assert of(lint_text(text), "VG111") == []


# -- VG112: a media group meant to run several Machines ---------------------------------------


def test_vg112_http_service_min_machines_running_2(lint_text):
    text = CLEAN + "\n[http_service]\n  internal_port = 8000\n  min_machines_running = 2\n"
    report = lint_text(text)
    f = one(report, "VG112")
    assert f.severity is Severity.WARNING
    assert f.location.line == line_of(text, "min_machines_running")
    assert f.evidence == {"group": "app", "machines": 2}
    assert report.exit_code(Severity.ERROR) == 0


def test_vg112_services_entry_naming_the_group(lint_text):
    text = CLEAN + (
        '\n[[services]]\n  internal_port = 8000\n  processes = ["app"]\n'
        "  min_machines_running = 3\n"
    )
    f = one(lint_text(text), "VG112")
    assert f.evidence["machines"] == 3
    assert f.location.line == line_of(text, "min_machines_running")


def test_vg112_machine_counts_setting(lint_text):
    f = one(lint_text(CLEAN, machine_counts={"app": 2}), "VG112")
    assert f.severity is Severity.WARNING
    assert f.evidence == {"group": "app", "machines": 2}


@pytest.mark.parametrize("count", [0, 1])
def test_vg112_not_for_one_machine(lint_text, count):
    text = CLEAN + f"\n[http_service]\n  internal_port = 8000\n  min_machines_running = {count}\n"
    assert of(lint_text(text), "VG112") == []
    assert of(lint_text(CLEAN, machine_counts={"app": count}), "VG112") == []


def test_vg112_not_for_a_group_without_a_mount(lint_text):
    text = toml(
        """
        primary_region = "ams"
        [env]
          MEDIA_ROOT = "/data/media"
        [processes]
          app = "web"
          api = "api"
        [[mounts]]
          source = "data"
          destination = "/data"
          processes = ["app"]
        [http_service]
          internal_port = 8000
          processes = ["api"]
          min_machines_running = 4
        """
    )
    assert of(lint_text(text, media_groups=["app"]), "VG112") == []
