"""Masking: the API token and database passwords never reach output, in any form.

volguard passes on output it did not write (flyctl deploy's lines, a command's last error
line) to the terminal, run records and ``$GITHUB_STEP_SUMMARY``. A `Masker` removes from
such text the token (whole, without its scheme, each macaroon of a bundle) and every
password it knows of: the one in ``DATABASE_URL`` (and any other ``*_URL`` variable holding
``scheme://user:password@host``), as written and percent-decoded. A password inside any URL
in the text is masked too, known or not.
"""

from __future__ import annotations

import os
import re
import urllib.parse
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from volguard.fly.client import Token

MASK = "[masked]"
#: ``scheme://user:password@`` — the password runs to the last ``@`` before a slash or space
#: (a password may hold ``@`` when it was not percent-encoded).
_URL_PASSWORD = re.compile(
    r"(?P<head>[A-Za-z][A-Za-z0-9+.-]*://[^:/?#@\s]*:)(?P<password>[^\s/]+)@"
)
#: Shorter values are too likely to be ordinary words to be masked wherever they appear.
_MIN_SECRET = 4


def mask_url_passwords(text: str) -> str:
    """``text`` with the password of every ``scheme://user:password@host`` masked."""
    if "://" not in text:
        return text
    return _URL_PASSWORD.sub(lambda m: f"{m.group('head')}{MASK}@", text)


def url_passwords(environ: Mapping[str, str] | None = None) -> list[str]:
    """The passwords in the environment's URL variables (DATABASE_URL, REDIS_URL, …)."""
    env = os.environ if environ is None else environ
    found = []
    for name, value in env.items():
        if not (name.endswith("_URL") or name.endswith("_DSN")) or "://" not in value:
            continue
        try:
            password = urllib.parse.urlsplit(value).password
        except ValueError:
            continue
        if password:
            found += [password, urllib.parse.unquote(password)]
    return found


class Masker:
    """A callable ``text -> text`` that removes every secret it was given."""

    def __init__(self, token: Token | None = None, secrets: Iterable[str] = ()) -> None:
        self._token = token
        # Longest first, so a secret that contains another is masked whole.
        unique = {s for s in secrets if len(s) >= _MIN_SECRET}
        self._secrets = sorted(unique, key=len, reverse=True)

    @classmethod
    def from_environment(
        cls, token: Token | None = None, environ: Mapping[str, str] | None = None
    ) -> Masker:
        """A masker for the token and the passwords of this process's URL variables."""
        return cls(token, url_passwords(environ))

    def __call__(self, text: str) -> str:
        if self._token is not None:
            text = self._token.redact(text)
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, MASK)
        return mask_url_passwords(text)

    def __repr__(self) -> str:
        return f"Masker({len(self._secrets)} secret(s), token={'yes' if self._token else 'no'})"
