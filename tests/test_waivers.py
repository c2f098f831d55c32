"""Waivers: inline `# volguard: ignore …` comments and config waivers (docs/checks.md#waivers)."""

from __future__ import annotations

import datetime as dt

import pytest

from volguard.config import Settings
from volguard.errors import ConfigError
from volguard.findings import Severity
from volguard.lint import lint

TODAY = dt.date(2026, 6, 1)

# VG107 (error) points at the [[mounts]] header on line 4; VG110 (warning) at line 7.
BASE = """\
app = "x"
[env]
  MEDIA_ROOT = "/data/media"
[[mounts]]{header_comment}
  source = "media"
  destination = "/data"
{above}  snapshot_retention = 2{trailing}
"""


def make(header_comment: str = "", above: str = "", trailing: str = "") -> str:
    return BASE.format(header_comment=header_comment, above=above, trailing=trailing)


def by_id(report, check_id):
    found = [f for f in report.findings if f.id == check_id]
    assert len(found) == 1, [(f.id, f.location.line) for f in report.findings]
    return found[0]


def test_unwaived_base(lint_text):
    report = lint_text(make(), today=TODAY)
    assert by_id(report, "VG107").location.line == 4
    assert by_id(report, "VG110").location.line == 7
    assert not any(f.waived for f in report.findings)
    assert report.exit_code(Severity.ERROR) == 2


def test_inline_trailing_waiver(lint_text):
    text = make(header_comment='  # volguard: ignore VG107 reason="region set by the CLI"')
    report = lint_text(text, today=TODAY)
    f = by_id(report, "VG107")
    assert f.waived is True
    assert f.waiver_reason == "region set by the CLI"
    assert f.severity is Severity.ERROR  # still reported as it is
    assert by_id(report, "VG110").waived is False
    assert report.exit_code(Severity.ERROR) == 0  # waived findings do not count
    assert report.exit_code(Severity.WARNING) == 2  # VG110 still does
    assert report.counts()["waived"] == 1


def test_inline_waiver_on_the_line_above(lint_text):
    text = make(above='  # volguard: ignore VG110 reason="staging app" until=2027-03-01\n')
    report = lint_text(text, today=TODAY)
    f = by_id(report, "VG110")
    assert f.location.line == 8  # moved down by the comment line
    assert f.waived is True
    assert f.waiver_reason.startswith("staging app")
    assert "2027-03-01" in f.waiver_reason
    assert by_id(report, "VG107").waived is False


def test_inline_waiver_single_quoted_and_lowercase_id(lint_text):
    text = make(trailing="  # volguard: ignore vg110 reason='kept short on purpose'")
    f = by_id(lint_text(text, today=TODAY), "VG110")
    assert f.waived is True
    assert f.waiver_reason == "kept short on purpose"


def test_inline_waiver_several_ids(lint_text):
    text = make(header_comment='  # volguard: ignore VG107, VG101 reason="known"')
    assert by_id(lint_text(text, today=TODAY), "VG107").waived is True


def test_inline_waiver_only_covers_its_own_line(lint_text):
    # a VG110 waiver on the [[mounts]] line does not reach VG110 on line 7
    text = make(header_comment='  # volguard: ignore VG110 reason="wrong line"')
    report = lint_text(text, today=TODAY)
    assert by_id(report, "VG110").waived is False


def test_inline_waiver_for_a_different_id_does_not_waive(lint_text):
    text = make(trailing='  # volguard: ignore VG108 reason="not this one"')
    assert by_id(lint_text(text, today=TODAY), "VG110").waived is False


def test_waiver_without_reason_is_a_config_error_naming_file_and_line(lint_text, tmp_path):
    text = make(trailing="  # volguard: ignore VG110")
    with pytest.raises(ConfigError) as exc:
        lint_text(text, today=TODAY)
    assert f"{tmp_path / 'fly.toml'}:7" in str(exc.value)
    assert "reason" in str(exc.value)


def test_waiver_with_empty_reason_is_a_config_error(lint_text):
    with pytest.raises(ConfigError, match=r"fly\.toml:7"):
        lint_text(make(trailing='  # volguard: ignore VG110 reason=""'), today=TODAY)


def test_unknown_check_id_is_a_config_error(lint_text):
    with pytest.raises(ConfigError, match="VG999"):
        lint_text(make(trailing='  # volguard: ignore VG999 reason="x"'), today=TODAY)


@pytest.mark.parametrize(
    "directive",
    [
        '# volguard: ignroe VG110 reason="typo"',
        '# volguard: ignore reason="no id"',
        "# volguard:",
        '# volguard: ignore VG110 reason="x" colour=blue',
        '# volguard: ignore VG110 reason="x" until=tomorrow',
    ],
)
def test_malformed_directive_is_a_config_error(lint_text, directive):
    with pytest.raises(ConfigError, match=r"fly\.toml:7"):
        lint_text(make(trailing="  " + directive), today=TODAY)


def test_directive_looking_text_inside_strings_is_not_a_waiver(lint_text):
    text = make() + (
        '[deploy]\n  release_command = "echo # volguard: bogus"\n'
        '  strategy = """\n# volguard: also bogus\n"""\n'
    )
    report = lint_text(text, today=TODAY)  # no ConfigError
    assert not any(f.waived for f in report.findings)


def test_ordinary_comments_mentioning_volguard_are_fine(lint_text):
    text = "# checked by volguard in CI\n" + make()
    report = lint_text(text, today=TODAY)
    assert by_id(report, "VG110").waived is False


def test_expired_inline_waiver_stops_waiving(lint_text):
    text = make(trailing='  # volguard: ignore VG110 reason="temporary" until=2026-01-31')
    report = lint_text(text, today=dt.date(2026, 2, 1))
    f = by_id(report, "VG110")
    assert f.waived is False
    assert f.evidence["waiver_expired"] == "2026-01-31"
    assert report.exit_code(Severity.WARNING) == 2


def test_waiver_is_valid_through_its_until_date(lint_text):
    text = make(trailing='  # volguard: ignore VG110 reason="temporary" until=2026-01-31')
    f = by_id(lint_text(text, today=dt.date(2026, 1, 31)), "VG110")
    assert f.waived is True
    assert "waiver_expired" not in f.evidence


# -- config waivers --------------------------------------------------------------------------


def test_config_waiver_without_file_applies_everywhere(lint_text):
    report = lint_text(
        make(), today=TODAY, waivers=[{"id": "VG107", "reason": "region comes from the CLI"}]
    )
    f = by_id(report, "VG107")
    assert f.waived is True
    assert f.waiver_reason == "region comes from the CLI"
    assert report.exit_code(Severity.ERROR) == 0


def test_config_waiver_with_matching_file(write_toml):
    path = write_toml(make())
    settings = Settings.load(None, waivers=[{"id": "VG110", "reason": "r", "file": str(path)}])
    assert by_id(lint(settings, str(path), today=TODAY), "VG110").waived is True


def test_config_waiver_for_another_file_does_not_apply(write_toml, tmp_path):
    path = write_toml(make())
    other = str(tmp_path / "fly.staging.toml")
    settings = Settings.load(None, waivers=[{"id": "VG110", "reason": "r", "file": other}])
    assert by_id(lint(settings, str(path), today=TODAY), "VG110").waived is False


def test_config_waiver_until_expired(lint_text):
    report = lint_text(
        make(),
        today=TODAY,
        waivers=[{"id": "VG110", "reason": "r", "until": dt.date(2026, 5, 31)}],
    )
    f = by_id(report, "VG110")
    assert f.waived is False
    assert f.evidence["waiver_expired"] == "2026-05-31"


def test_config_waiver_until_in_the_future(lint_text):
    report = lint_text(
        make(), today=TODAY, waivers=[{"id": "VG110", "reason": "r", "until": "2026-06-02"}]
    )
    assert by_id(report, "VG110").waived is True


@pytest.mark.parametrize(
    "waiver",
    [
        {"id": "VG110"},
        {"id": "VG110", "reason": "  "},
        {"id": "VG999", "reason": "r"},
        {"reason": "r"},
        {"id": "VG110", "reason": "r", "colour": "blue"},
        {"id": "VG110", "reason": "r", "until": "soon"},
    ],
)
def test_bad_config_waivers_raise(waiver):
    with pytest.raises(ConfigError):
        Settings.load(None, waivers=[waiver])


def test_use_waivers_false_ignores_inline_and_config_waivers(lint_text):
    text = make(
        header_comment='  # volguard: ignore VG107 reason="x"',
        trailing='  # volguard: ignore VG110 reason="y"',
    )
    report = lint_text(
        text, use_waivers=False, today=TODAY, waivers=[{"id": "VG110", "reason": "z"}]
    )
    assert not any(f.waived for f in report.findings)
    assert report.exit_code(Severity.ERROR) == 2


def test_use_waivers_false_does_not_read_broken_directives(lint_text):
    report = lint_text(make(trailing="  # volguard: ignore VG110"), use_waivers=False, today=TODAY)
    assert by_id(report, "VG110").waived is False
