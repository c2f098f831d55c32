"""Terminal safety: text from outside volguard never carries raw control sequences.

Strings that came from a Machine, the Machines API or the database (a Machine name, an
error text, a file name, a manage.py line) may hold ESC sequences that recolour, rewrite or
hide what an operator reads, or bidirectional-override characters that reorder it. Before
such a string reaches a terminal or a log in a text format, `printable` shows each such
character as a visible escape (``\\x1b``, ``\\u202e``). JSON and the other machine formats
keep the exact data; only text for people is escaped.
"""

from __future__ import annotations

import re

#: C0 controls (but tab), DEL, C1 controls, and the Unicode format characters that reorder or
#: hide text (bidi embeddings/overrides/isolates, zero-width marks, the BOM).
_UNSAFE = re.compile(
    "[\x00-\x08\x0a-\x1f\x7f-\x9f\u061c\u200b-\u200f\u202a-\u202e\u2060-\u2069\ufeff]"
)
_UNSAFE_KEEP_NEWLINES = re.compile(
    "[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200b-\u200f\u202a-\u202e\u2060-\u2069\ufeff]"
)


#: What str.splitlines() breaks a line at.
_LINE_BREAKS = re.compile("[\n\r\x0b\x0c\x1c-\x1e\x85\u2028\u2029]")


def single_line(text: str) -> str:
    """``text`` with its line breaks shown as escapes (``\\x0a``) and nothing else changed:
    a finding's message quoting outside data stays one line in every format, JSON
    included, while the rest of the data stays exact."""
    return _LINE_BREAKS.sub(_escape, text) if _LINE_BREAKS.search(text) else text


def printable(text: object, *, newlines: bool = False) -> str:
    """``text`` as a string with every control character escaped.

    ``newlines=True`` keeps ``\\n`` where the format is made of lines (a hint, a block of
    output); otherwise a newline is escaped too, so one value stays on one line.
    """
    value = text if isinstance(text, str) else str(text)
    pattern = _UNSAFE_KEEP_NEWLINES if newlines else _UNSAFE
    if not pattern.search(value):
        return value
    return pattern.sub(_escape, value)


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"
