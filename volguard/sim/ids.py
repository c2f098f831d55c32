"""Identifiers and timestamps shaped like Fly's, so clients parse what they will meet.

Scenario objects get ids *derived* from a seed (the same scenario always looks the same,
which keeps test output and benchmarks stable); objects created through the API get
random ones, as on the platform.
"""

from __future__ import annotations

import hashlib
import secrets
import string
from datetime import datetime

HEX = "0123456789abcdef"
LOWER_ALNUM = string.digits + string.ascii_lowercase
ALNUM = string.digits + string.ascii_letters
CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"

_ADJECTIVES = ("aged", "bold", "calm", "damp", "eager", "fancy", "green", "hidden", "icy")
_NOUNS = ("wind", "field", "river", "sun", "smoke", "leaf", "frost", "dawn", "paper")


def derive(seed: str, length: int, alphabet: str = HEX) -> str:
    """A stable pseudo-random string: the same seed always gives the same id."""
    digest = hashlib.sha256(seed.encode()).digest()
    while len(digest) < length:
        digest += hashlib.sha256(digest).digest()
    return "".join(alphabet[b % len(alphabet)] for b in digest[:length])


def random_string(length: int, alphabet: str) -> str:
    return "".join(secrets.choice(alphabet) for _ in range(length))


def volume_id(seed: str | None = None) -> str:
    """`vol_` + 16 of [0-9a-z], like `vol_9vw681egy1jj5xm4` in the docs."""
    tail = derive(seed, 16, LOWER_ALNUM) if seed else random_string(16, LOWER_ALNUM)
    return f"vol_{tail}"


def snapshot_id(seed: str | None = None) -> str:
    """`vs_` + 23 mixed-case alphanumerics, like `vs_4LNvXLLK0P6tk6KgqoexaBw`."""
    tail = derive(seed, 23, ALNUM) if seed else random_string(23, ALNUM)
    return f"vs_{tail}"


def request_id(region: str) -> str:
    """A `fly-request-id` header value: a ULID-like id plus the edge region."""
    return f"{random_string(26, CROCKFORD)}-{region or 'syd'}"


def machine_name(seed: str) -> str:
    """A generated Machine name like the docs' `aged-wind-2649`."""
    digest = hashlib.sha256(seed.encode()).digest()
    number = int.from_bytes(digest[2:4], "big") % 9000 + 1000
    return f"{_ADJECTIVES[digest[0] % len(_ADJECTIVES)]}-{_NOUNS[digest[1] % len(_NOUNS)]}-{number}"


def private_ip(seed: str) -> str:
    """A 6PN address like `fdaa:0:18:a7b:196:e274:9ce1:2`."""
    a, b, c, d = (derive(f"{seed}/{i}", 4).lstrip("0") or "0" for i in range(4))
    return f"fdaa:0:{a}:a7b:{b}:{c}:{d}:2"


# The API is not consistent about time formats; each object keeps the one the docs show,
# so a client that parses only one of them fails here, not in production.


def machine_time(at: datetime) -> str:
    """Machines: `2023-10-31T02:30:10Z`."""
    return at.strftime("%Y-%m-%dT%H:%M:%SZ")


def volume_time(at: datetime) -> str:
    """Volumes: milliseconds and `Z`, `2023-09-01T19:47:14.774Z`."""
    return at.strftime("%Y-%m-%dT%H:%M:%S.") + f"{at.microsecond // 1000:03d}Z"


def snapshot_time(at: datetime) -> str:
    """Snapshots: an offset instead of `Z`, `2023-12-02T20:59:35+00:00`."""
    return at.strftime("%Y-%m-%dT%H:%M:%S+00:00")


def backup_time(at: datetime) -> str:
    """The on-demand snapshot reply: nanoseconds, `2024-02-16T19:30:43.914350121Z`."""
    return at.strftime("%Y-%m-%dT%H:%M:%S.") + f"{at.microsecond:06d}{at.microsecond % 997:03d}Z"


def epoch_ms(at: datetime) -> int:
    """Machine event timestamps are Unix milliseconds."""
    return int(at.timestamp() * 1000)
