"""The API token (scheme, never shown) and the rate limiter, without any HTTP."""

from __future__ import annotations

import copy
import pickle

import pytest

from volguard.errors import VolguardError
from volguard.fly.client import RateLimiter, Token

MACAROON = "fm2_lJPECAAAAAAAAMHmxBDrLQeKEzn7bHn2Sl4OaCs0wrVodHRwczovL2FwaS5mbHkuaW8vdjGWAJ"
MACAROON_2 = "fm2_lJPEThird9PartyDischargeAAAAAAAAAAAAABBBBBBBBBCCCCCCCCCDDDDDDDD"
OAUTH = "Xq3tH1s1sAn0AuthT0kenV4lue0fF1yAuthT0ken"


# -- Token.authorization ---------------------------------------------------------------------


@pytest.mark.parametrize("prefix", ["fm2_", "fm1r_", "fm1a_"])
def test_macaroons_use_the_flyv1_scheme(prefix):
    raw = prefix + "abcdefghijklmnop"
    assert Token(raw).authorization() == f"FlyV1 {raw}"


def test_a_macaroon_bundle_is_sent_whole():
    raw = f"{MACAROON},{MACAROON_2}"
    assert Token(raw).authorization() == f"FlyV1 {raw}"


@pytest.mark.parametrize("raw", [OAUTH, "fo1_something_else_entirely", "fm3_notamacaroon"])
def test_other_tokens_use_bearer(raw):
    assert Token(raw).authorization() == f"Bearer {raw}"


@pytest.mark.parametrize(
    "raw", [f"FlyV1 {MACAROON}", f"FlyV1 {MACAROON},{MACAROON_2}", f"Bearer {OAUTH}"]
)
def test_a_value_with_its_scheme_is_sent_as_is(raw):
    assert Token(raw).authorization() == raw


def test_surrounding_whitespace_is_dropped():
    assert Token(f"  {MACAROON}\n").authorization() == f"FlyV1 {MACAROON}"


# -- never shown -----------------------------------------------------------------------------


@pytest.mark.parametrize("raw", [MACAROON, OAUTH, f"FlyV1 {MACAROON},{MACAROON_2}"])
def test_repr_and_str_never_show_the_token(raw):
    token = Token(raw)
    for text in (repr(token), str(token), f"{token}", f"{token!r}", repr([token])):
        assert raw not in text
        for part in raw.replace("FlyV1 ", "").split(","):
            assert part not in text
            assert part[:12] not in text


def test_redact_masks_the_token():
    token = Token(OAUTH)
    text = f"request failed: Authorization: Bearer {OAUTH} (twice: {OAUTH})"
    redacted = token.redact(text)
    assert OAUTH not in redacted
    assert redacted.count("[token]") == 2
    assert redacted.startswith("request failed: Authorization: Bearer ")


def test_redact_masks_each_macaroon_part():
    token = Token(f"FlyV1 {MACAROON},{MACAROON_2}")
    text = f"first {MACAROON} then {MACAROON_2} and whole FlyV1 {MACAROON},{MACAROON_2}"
    redacted = token.redact(text)
    assert MACAROON not in redacted
    assert MACAROON_2 not in redacted
    assert redacted.startswith("first [token] then [token] and whole ")


@pytest.mark.parametrize(
    ("raw", "secret"),
    [(f"Bearer {OAUTH}", OAUTH), (f"FlyV1 {MACAROON}", MACAROON)],
    ids=["bearer", "flyv1"],
)
def test_redact_masks_the_value_without_its_scheme(raw, secret):
    # FLY_API_TOKEN may carry its scheme; the bare value is just as secret.
    redacted = Token(raw).redact(f"echo {secret}")
    assert secret not in redacted
    assert redacted == "echo [token]"


def test_redact_leaves_other_text_alone():
    text = "GET /v1/apps/mysite/machines -> 401"
    assert Token(MACAROON).redact(text) == text


def test_pickling_a_token_fails():
    with pytest.raises(TypeError):
        pickle.dumps(Token(MACAROON))


def test_copying_a_token_fails_too():
    # copy goes through __reduce_ex__ as well: no second place for the secret to leak from
    with pytest.raises(TypeError):
        copy.copy(Token(MACAROON))


def test_a_token_has_no_instance_dict():
    token = Token(MACAROON)
    assert not hasattr(token, "__dict__")


@pytest.mark.parametrize("raw", ["", "   ", "\n\t"])
def test_an_empty_token_raises(raw):
    with pytest.raises(VolguardError, match="empty"):
        Token(raw)


def test_from_env_without_the_variable_is_none():
    assert Token.from_env({}) is None


def test_from_env_with_a_blank_variable_is_none():
    assert Token.from_env({"FLY_API_TOKEN": "  "}) is None


def test_from_env_reads_fly_api_token():
    token = Token.from_env({"FLY_API_TOKEN": f"FlyV1 {MACAROON}"})
    assert token is not None
    assert token.authorization() == f"FlyV1 {MACAROON}"


# -- RateLimiter -----------------------------------------------------------------------------


class FakeTime:
    """A clock that moves only when someone sleeps (or the test advances it)."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        assert seconds > 0
        self.sleeps.append(seconds)
        self.now += seconds


@pytest.fixture
def fake() -> FakeTime:
    return FakeTime()


def limiter(fake: FakeTime, rate: float = 1.0, burst: int = 3) -> RateLimiter:
    return RateLimiter(rate=rate, burst=burst, clock=fake.clock, sleep=fake.sleep)


def test_burst_of_three_passes_then_the_fourth_waits_about_a_second(fake):
    rl = limiter(fake)
    for _ in range(3):
        rl.wait("GET", "/v1/apps/a/machines")
    assert fake.sleeps == []
    rl.wait("GET", "/v1/apps/a/machines")
    assert sum(fake.sleeps) == pytest.approx(1.0)


def test_steady_rate_after_the_burst(fake):
    rl = limiter(fake)
    for _ in range(8):
        rl.wait("GET", "/v1/apps/a/volumes")
    # 3 free, then one per second
    assert sum(fake.sleeps) == pytest.approx(5.0)
    assert fake.now == pytest.approx(1005.0)


def test_the_bucket_refills_with_time(fake):
    rl = limiter(fake)
    for _ in range(3):
        rl.wait("GET", "/p")
    fake.now += 10  # idle long enough to refill fully, but never beyond the burst
    for _ in range(3):
        rl.wait("GET", "/p")
    assert fake.sleeps == []
    rl.wait("GET", "/p")
    assert sum(fake.sleeps) == pytest.approx(1.0)


def test_different_paths_are_different_buckets(fake):
    rl = limiter(fake)
    for path in ("/v1/apps/a/machines", "/v1/apps/a/volumes", "/v1/apps/b/machines"):
        for _ in range(3):
            rl.wait("GET", path)
    assert fake.sleeps == []


def test_different_methods_are_different_buckets(fake):
    rl = limiter(fake)
    for method in ("GET", "POST"):
        for _ in range(3):
            rl.wait(method, "/v1/apps/a/volumes")
    assert fake.sleeps == []


def test_a_slower_rate_waits_longer(fake):
    rl = limiter(fake, rate=0.5, burst=1)
    rl.wait("GET", "/p")
    rl.wait("GET", "/p")
    assert sum(fake.sleeps) == pytest.approx(2.0)


@pytest.mark.parametrize("rate", [0, 0.0, -1])
def test_rate_zero_disables_limiting(fake, rate):
    rl = limiter(fake, rate=rate)
    for _ in range(50):
        rl.wait("GET", "/p")
    assert fake.sleeps == []


# -- #8 item 18: a token that cannot be sent is refused without being shown ------------------

SECRET = "Xq3tH1s1sAn0AuthT0ken"
BAD_TOKENS = [
    f"{SECRET}\nV4lue0fF1yAuthT0ken",  # pasted over two lines
    f"{SECRET}\rV4lue0fF1yAuthT0ken",
    f"{SECRET}\x1b[2JV4lue0fF1yAuthT0ken",
    f"{SECRET}éV4lue0fF1yAuthT0ken",  # non-ASCII
    f"{SECRET}\u202eV4lue0fF1yAuthT0ken",
    f"{SECRET}\x00V4lue0fF1yAuthT0ken",
]


def _pieces(raw: str) -> list[str]:
    """Every run of 6+ token characters: none of them may appear in a message."""
    import re

    return [p for p in re.split(r"[^A-Za-z0-9_]", raw) if len(p) >= 6]


@pytest.mark.parametrize("raw", BAD_TOKENS)
def test_a_token_with_a_line_break_or_non_ascii_is_one_line_without_the_token(raw):
    with pytest.raises(VolguardError) as raised:
        Token(raw)
    message = str(raised.value)
    assert "FLY_API_TOKEN" in message
    assert "\n" not in message
    for piece in [*_pieces(raw), SECRET[:8], "V4lue0fF1y"]:
        assert piece not in message
        assert piece not in repr(raised.value)
    assert raised.value.__cause__ is None
    assert raised.value.__suppress_context__ or raised.value.__context__ is None


@pytest.mark.parametrize("raw", BAD_TOKENS)
def test_from_env_refuses_it_the_same_way(raw):
    with pytest.raises(VolguardError) as raised:
        Token.from_env({"FLY_API_TOKEN": raw})
    assert SECRET[:8] not in str(raised.value)


@pytest.mark.parametrize("raw", BAD_TOKENS[:4])
def test_the_cli_refuses_it_in_one_line_and_never_prints_it(raw, tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    (tmp_path / "fly.toml").write_text('app = "a"\n[mounts]\nsource = "d"\ndestination = "/data"\n')
    env = {**os.environ, "FLY_API_TOKEN": raw, "FLY_FLAPS_BASE_URL": "http://127.0.0.1:9"}
    for fmt in ("text", "json", "sarif"):
        done = subprocess.run(
            [str(Path(sys.executable).with_name("volguard")), "verify-volume", "--format", fmt],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 1, (fmt, done.stdout, done.stderr)
        assert len(done.stderr.strip().splitlines()) == 1, done.stderr
        assert "FLY_API_TOKEN" in done.stderr
        for piece in _pieces(raw):
            assert piece not in done.stdout + done.stderr
