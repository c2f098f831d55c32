"""Sizes the way flyctl parses them (helpers/units.go ParseSize + docker/go-units)."""

from __future__ import annotations

import re

from volguard.errors import SizeError

# docker/go-units sizeRegex, case-insensitive.
_HUMAN_SIZE = r"(?i)(\d+(?:\.\d+)*) ?([kmgtp])?i?b?"  # compiled on first use (re caches)
_DECIMAL = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12, "p": 10**15}  # FromHumanSize
_BINARY = {"": 1, "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40, "p": 2**50}  # RAMInBytes
_GO_INT = r"[+-]?\d+"  # strconv.Atoi


def parse_size_gb(text: str) -> int:
    """A mount size in whole GB: a bare integer is GB, else a decimal human size truncated.

    "20" -> 20, "20gb" -> 20, "1.5GB" -> 1, "1GiB" -> 1 (go-units is decimal here),
    "15Mb" -> 0 (which flyctl then rejects as smaller than 1GB).
    """
    return _parse_size(text, _DECIMAL, 10**9)


def parse_memory_mb(text: str) -> int:
    """A `[[vm]] memory` in MiB, as ParseSize(s, units.RAMInBytes, units.MiB): a bare integer
    is MiB, else a binary human size truncated ("1gb" and "1GiB" are 1024, "1.5g" 1536)."""
    return _parse_size(text, _BINARY, 2**20)


def _parse_size(text: str, units: dict[str, int], quotient: int) -> int:
    """FLYCTL helpers/units.go ParseSize: strconv.Atoi first, else go-units' parser."""
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
    size = number * units[(m.group(2) or "").lower()]
    if not size < 2**63:  # ParseFloat's ErrRange, or beyond int64 bytes (also catches inf)
        raise SizeError(f"invalid size: '{text}'")
    return int(size) // quotient
