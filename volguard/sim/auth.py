"""Who may call the API: the Authorization header rules of fly-facts §0.8.

Macaroons (`fm1r_`, `fm1a_`, `fm2_`) must come as `FlyV1 <token>`, other tokens as
`Bearer <token>`. The common mistake, a macaroon sent as Bearer, is refused exactly as the
platform refuses it, so a client that gets the scheme wrong fails its tests here.
"""

from __future__ import annotations

from collections.abc import Iterable

MACAROON_PREFIXES = ("fm1r_", "fm1a_", "fm2_")


def is_macaroon(token: str) -> bool:
    return token.startswith(MACAROON_PREFIXES)


def authorization_header(token: str) -> str:
    """The header value a correct client sends for `token`.

    A token that already starts with `FlyV1 ` (as `fly tokens create` prints it) is sent
    as is; one that starts with `Bearer ` too.
    """
    if token.startswith(("FlyV1 ", "Bearer ")):
        return token
    return f"FlyV1 {token}" if is_macaroon(token) else f"Bearer {token}"


def refusal(header: str | None, tokens: Iterable[str]) -> str | None:
    """None when `header` carries one of `tokens` correctly, else why it does not.

    The reason is for people debugging a client (the simulator puts it in a header); the
    response body only says "unauthorized", like the platform.
    """
    if not header:
        return "missing Authorization header"
    scheme, _, value = header.strip().partition(" ")
    value = value.strip()
    normalized = f"{_canonical_scheme(scheme)} {value}"
    expected = {authorization_header(t) for t in tokens}
    if normalized in expected:
        return None
    if scheme.lower() == "bearer" and is_macaroon(value.removeprefix("FlyV1 ")):
        return "macaroon tokens must use the FlyV1 scheme, not Bearer"
    if scheme.lower() == "flyv1" and not is_macaroon(value):
        return "the FlyV1 scheme is for macaroon tokens; send this token as Bearer"
    if scheme.lower() not in ("bearer", "flyv1"):
        return f"unsupported authorization scheme {scheme!r}"
    return "unknown token"


def _canonical_scheme(scheme: str) -> str:
    """Auth schemes are case-insensitive (RFC 9110 §11.1)."""
    return {"bearer": "Bearer", "flyv1": "FlyV1"}.get(scheme.lower(), scheme)
