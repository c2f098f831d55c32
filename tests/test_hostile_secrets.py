"""The token and database passwords never reach output (#8 item 18).

flyctl deploy's output, a run record, its terminal text and $GITHUB_STEP_SUMMARY all quote
text volguard did not write; each is masked before it is shown or saved.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from volguard.deploy import deploy_step
from volguard.fly.client import Token
from volguard.masking import Masker, mask_url_passwords, url_passwords
from volguard.runs import RunRecord, Step, write_step_summary

TOKEN = "fm2_lJPECAAAAAAAAMHmxBDrLQeKEzn7bHn2Sl4OaCs0wrVodHRwczovL2FwaS5mbHkuaW8vdjGWAJ"
PASSWORD = "s3cr3t-Pa55w0rd"
DATABASE_URL = f"postgres://shop:{PASSWORD}@shop-db.flycast:5432/shop"

LEAKY_FLYCTL = f"""#!/bin/sh
echo "==> Building image with FLY_API_TOKEN=$FLY_API_TOKEN"
echo "release_command env: DATABASE_URL=$DATABASE_URL"
echo "password alone: {PASSWORD}"
echo "Error: could not connect to postgres://shop:{PASSWORD}@db:5432 with $FLY_API_TOKEN" >&2
exit 1
"""


def _secrets_in(text: str) -> list[str]:
    return [s for s in (TOKEN, TOKEN[4:], TOKEN[:20], PASSWORD) if s in text]


@pytest.fixture
def leaky_deploy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    flyctl = tmp_path / "flyctl"
    flyctl.write_text(LEAKY_FLYCTL)
    flyctl.chmod(0o755)
    monkeypatch.setenv("FLY_API_TOKEN", TOKEN)
    monkeypatch.setenv("DATABASE_URL", DATABASE_URL)
    lines: list[str] = []
    ctx = SimpleNamespace(
        options=SimpleNamespace(deploy=True, fly_toml="fly.toml"),
        settings=SimpleNamespace(flyctl=str(flyctl)),
        app="shop",
        token=Token(TOKEN),
        out=lines.append,
    )
    step = Step("deploy")
    deploy_step(ctx, step)  # type: ignore[arg-type]
    return step, lines


def test_flyctl_deploy_output_is_masked_before_it_is_shown(leaky_deploy) -> None:
    _step, lines = leaky_deploy
    shown = "\n".join(lines)
    assert "Building image" in shown
    assert _secrets_in(shown) == []
    assert "[token]" in shown
    assert "[masked]" in shown


def test_a_failed_deploy_summary_is_masked(leaky_deploy) -> None:
    step, _ = leaky_deploy
    assert step.status == "failed"
    assert step.summary.startswith("flyctl deploy exited 1: Error: could not connect")
    assert _secrets_in(step.summary) == []


def test_a_run_record_its_text_and_the_step_summary_are_masked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DATABASE_URL", DATABASE_URL)
    mask = Masker.from_environment(Token(TOKEN))
    record = RunRecord.new("deploy", "shop", ["one"], runs_dir=str(tmp_path), mask=mask)
    with record.step("one") as step:
        step.failed(f"flyctl said {TOKEN} and {DATABASE_URL}")
        step.detail["output"] = [f"password={PASSWORD}", {"nested": TOKEN}]
    record.finish()
    summary = tmp_path / "summary.md"
    write_step_summary(record, {"GITHUB_STEP_SUMMARY": str(summary)})
    for text in (Path(record.path).read_text(), record.text(), summary.read_text()):
        assert _secrets_in(text) == [], text
    saved = json.loads(Path(record.path).read_text())
    assert saved["steps"][0]["summary"].startswith("flyctl said [token] and postgres://shop:")


def test_a_record_without_a_masker_still_masks_passwords_in_urls(tmp_path: Path) -> None:
    record = RunRecord.new("deploy", "shop", ["one"], runs_dir=str(tmp_path))
    with record.step("one") as step:
        step.ok(f"connected to {DATABASE_URL}")
    assert PASSWORD not in Path(record.path).read_text()
    assert PASSWORD not in record.markdown()


@pytest.mark.parametrize(
    ("text", "masked"),
    [
        (DATABASE_URL, "postgres://shop:[masked]@shop-db.flycast:5432/shop"),
        ("redis://:pw-with@sign@redis:6379", "redis://:[masked]@redis:6379"),
        ("https://example.com/a:b@c", "https://example.com/a:b@c"),  # not credentials
        ("no url here: a:b@c", "no url here: a:b@c"),
    ],
)
def test_url_passwords_are_masked_wherever_they_appear(text: str, masked: str) -> None:
    assert mask_url_passwords(text) == masked


def test_percent_encoded_passwords_are_known_both_ways() -> None:
    found = url_passwords({"DATABASE_URL": "postgres://u:p%40ss%2Fw0rd@h/d", "HOME": "/root"})
    assert set(found) == {"p%40ss%2Fw0rd", "p@ss/w0rd"}
    assert "p@ss/w0rd" not in Masker(None, found)("the password is p@ss/w0rd")


def test_a_masker_never_shows_what_it_holds() -> None:
    masker = Masker(Token(TOKEN), [PASSWORD])
    assert _secrets_in(repr(masker)) == []
