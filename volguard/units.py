"""Sizes the way flyctl parses them (helpers/units.go ParseSize + docker/go-units)."""

from __future__ import annotations

import re

from volguard.errors import SizeError

# docker/go-units sizeRegex, case-insensitive; FromHumanSize uses decimal units.
_HUMAN_SIZE = r"(?i)(\d+(?:\.\d+)*) ?([kmgtp])?i?b?"  # compiled on first use (re caches)
_DECIMAL = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12, "p": 10**15}
_GO_INT = r"[+-]?\d+"  # strconv.Atoi


def parse_size_gb(text: str) -> int:
    """A mount size in whole GB: a bare integer is GB, else a decimal human size truncated.

    "20" -> 20, "20gb" -> 20, "1.5GB" -> 1, "1GiB" -> 1 (go-units is decimal here),
    "15Mb" -> 0 (which flyctl then rejects as smaller than 1GB).
    """
    if re.fullmatch(_GO_INT, text) and len(text.lstrip("+-")) <= 19:
        value = int(text)
        if -(2**63) <= value < 2**63:  # else Atoi fails and go-units gets its turn
            return value
    m = re.fullmatch(_HUMAN_SIZE, text)
    if not m:
        raise SizeError(f"invalid size: '{text}'")
    try:
        number = float(m.group(1))
    except ValueError:  # "1.2.3" matches the regex but is no number
        raise SizeError(f"invalid size: '{text}'") from None
    size = number * _DECIMAL[(m.group(2) or "").lower()]
    if not size < 2**63:  # ParseFloat's ErrRange, or beyond int64 bytes (also catches inf)
        raise SizeError(f"invalid size: '{text}'")
    return int(size) // 10**9
