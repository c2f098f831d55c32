"""Where things are in a TOML text: line and column of tables and keys, and comments.

tomlkit gives us the values but not their positions, and findings must point
at a fly.toml line (SARIF regions, GitHub annotations). This is a small
line scanner that understands exactly as much TOML as it needs to: table and
array-of-tables headers, (dotted, quoted) keys, strings including multi-line
ones, and brackets of multi-line values. It never decides validity; tomlkit
does that.
"""

from __future__ import annotations

import re
from typing import NamedTuple

Path = tuple  # of str keys and int array indexes

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


class Comment(NamedTuple):
    line: int
    column: int
    text: str  # without the leading '#'
    trailing: bool  # True when code precedes it on the same line


class SourceMap:
    """Positions of tables and keys in one TOML text (1-based lines and columns)."""

    def __init__(self, text: str) -> None:
        self.positions: dict[Path, tuple[int, int]] = {}
        self.value_positions: dict[Path, tuple[int, int]] = {}  # where `key = ` 's value starts
        self.comments: list[Comment] = []
        self.code_lines: list[int] = []
        self._scan(text)

    def position(self, path: Path) -> tuple[int, int] | None:
        """Position of ``path``, else of its nearest recorded ancestor."""
        path = tuple(path)
        while path:
            if path in self.positions:
                return self.positions[path]
            path = path[:-1]
        return None

    def value_position(self, path: Path) -> tuple[int, int] | None:
        """Where the value of ``path`` starts; else its key, else the nearest ancestor's.

        A value inside an inline table or a one-line array has no entry of its own: it is
        reported at the start of the enclosing `key = ` value, on the same line.
        """
        path = tuple(path)
        while path:
            found = self.value_positions.get(path) or self.positions.get(path)
            if found is not None:
                return found
            path = path[:-1]
        return None

    def next_code_line(self, after: int) -> int | None:
        """The first line after ``after`` that holds TOML code (not blank, not comment)."""
        for line in self.code_lines:
            if line > after:
                return line
        return None

    # -- scanning --------------------------------------------------------------

    def _scan(self, text: str) -> None:
        table: Path = ()
        aot_index: dict[Path, int] = {}  # array-of-tables path -> latest index
        multiline: str | None = None  # the closing delimiter of an open multi-line string
        depth = 0  # open brackets of a multi-line array or inline table
        for lineno, line in enumerate(text.splitlines(), start=1):
            start = 0
            if multiline:
                close = _find_closing(line, 0, multiline)
                if close < 0:
                    continue
                start = close
                multiline = None
            stripped_at = len(line) - len(line.lstrip(" \t"))
            code_at = max(start, stripped_at)
            if depth == 0 and start == 0 and code_at < len(line):
                head = line[code_at]
                if head == "[":
                    header = _parse_header(line, code_at)
                    if header is not None:
                        parts, is_array, end = header
                        table = _resolve(parts, aot_index, is_array)
                        self.positions.setdefault(table, (lineno, code_at + 1))
                        if is_array:
                            self.positions.setdefault(table[:-1], (lineno, code_at + 1))
                        start = end
                elif head != "#":
                    key = _parse_key(line, code_at)
                    if key is not None:
                        parts, end = key
                        eq = _skip_ws(line, end)
                        if eq < len(line) and line[eq] == "=":
                            full = table + tuple(parts)
                            for i in range(len(table) + 1, len(full) + 1):
                                self.positions.setdefault(full[:i], (lineno, code_at + 1))
                            start = eq + 1
                            value_at = _skip_ws(line, start) + 1
                            self.value_positions.setdefault(full, (lineno, value_at))
            delta, comment_at, multiline = _walk(line, start)
            has_code = bool(line[: comment_at if comment_at >= 0 else len(line)].strip())
            if has_code or depth > 0:
                self.code_lines.append(lineno)
            if comment_at >= 0:
                self.comments.append(
                    Comment(lineno, comment_at + 1, line[comment_at + 1 :], trailing=has_code)
                )
            depth = max(0, depth + delta)


def _resolve(parts: list[str], aot_index: dict[Path, int], is_array: bool) -> Path:
    """Turn a header's dotted key into a path with array-of-tables indexes."""
    path: Path = ()
    for i, part in enumerate(parts):
        path += (part,)
        last = i == len(parts) - 1
        if last and is_array:
            index = aot_index.get(path, -1) + 1
            aot_index[path] = index
            # a new element resets the numbering of arrays nested inside it
            for nested in [k for k in aot_index if len(k) > len(path) and k[: len(path)] == path]:
                del aot_index[nested]
            path += (index,)
        elif path in aot_index:
            path += (aot_index[path],)
    return path


def _skip_ws(line: str, i: int) -> int:
    while i < len(line) and line[i] in " \t":
        i += 1
    return i


def _parse_key(line: str, i: int) -> tuple[list[str], int] | None:
    """Parse a dotted key at ``line[i:]``; return its parts and the index after it."""
    parts: list[str] = []
    while True:
        i = _skip_ws(line, i)
        if i >= len(line):
            return None
        ch = line[i]
        if ch == '"':
            end = _end_of_basic(line, i + 1)
            if end < 0:
                return None
            parts.append(_unescape(line[i + 1 : end]))
            i = end + 1
        elif ch == "'":
            end = line.find("'", i + 1)
            if end < 0:
                return None
            parts.append(line[i + 1 : end])
            i = end + 1
        else:
            m = _BARE_KEY.match(line, i)
            if not m:
                return None
            parts.append(m.group())
            i = m.end()
        j = _skip_ws(line, i)
        if j < len(line) and line[j] == ".":
            i = j + 1
            continue
        return parts, i


def _parse_header(line: str, i: int) -> tuple[list[str], bool, int] | None:
    is_array = line.startswith("[[", i)
    key = _parse_key(line, i + (2 if is_array else 1))
    if key is None:
        return None
    parts, end = key
    end = _skip_ws(line, end)
    closing = "]]" if is_array else "]"
    if not line.startswith(closing, end):
        return None
    return parts, is_array, end + len(closing)


def _find_closing(line: str, i: int, delim: str) -> int:
    """Index just past the ``delim`` that closes a multi-line string, or -1.

    In a basic (\"\"\") string a backslash escapes the next character; up to two
    quotes right before the delimiter still belong to the content.
    """
    while i < len(line):
        if delim == '"""' and line[i] == "\\":
            i += 2
            continue
        if line.startswith(delim, i):
            end = i + 3
            while end < len(line) and line[end] == delim[0] and end - i < 5:
                end += 1
            return end
        i += 1
    return -1


def _end_of_basic(line: str, i: int) -> int:
    """Index of the closing quote of a basic string whose content starts at ``i``."""
    while i < len(line):
        if line[i] == "\\":
            i += 2
            continue
        if line[i] == '"':
            return i
        i += 1
    return -1


def _unescape(s: str) -> str:
    if "\\" not in s:
        return s
    try:
        return s.encode("utf-8").decode("unicode_escape").encode("latin-1").decode("utf-8")
    except (UnicodeDecodeError, UnicodeEncodeError):
        return s


def _walk(line: str, i: int) -> tuple[int, int, str | None]:
    """Scan a value: bracket balance, where a comment starts (-1: none), open multi-line string."""
    depth = 0
    while i < len(line):
        ch = line[i]
        if ch == "#":
            return depth, i, None
        if line.startswith('"""', i) or line.startswith("'''", i):
            delim = line[i : i + 3]
            i = _find_closing(line, i + 3, delim)
            if i < 0:
                return depth, -1, delim
            continue
        if ch == '"':
            end = _end_of_basic(line, i + 1)
            i = len(line) if end < 0 else end + 1
            continue
        if ch == "'":
            end = line.find("'", i + 1)
            i = len(line) if end < 0 else end + 1
            continue
        if ch in "[{":
            depth += 1
        elif ch in "]}":
            depth -= 1
        i += 1
    return depth, -1, None
