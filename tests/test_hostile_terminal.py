"""Text from outside volguard never acts on the operator's terminal (#8 item 16)."""

from __future__ import annotations

import pytest
from invoke import Context
from invoke.exceptions import Exit

from volguard.errors import VolguardError
from volguard.tasks import _edge
from volguard.terminal import printable

ESCAPES = "\x1b[2J\x1b]0;owned\x07\x9b31m\u202e\x00\x7f\r"


def test_printable_escapes_every_control_and_reordering_character() -> None:
    shown = printable(f"a{ESCAPES}b\nc\td")
    assert shown == "a\\x1b[2J\\x1b]0;owned\\x07\\x9b31m\\u202e\\x00\\x7f\\x0db\\x0ac\td"
    assert printable("line one\nline two", newlines=True) == "line one\nline two"
    assert printable("plain text, ünïcödé, 日本") == "plain text, ünïcödé, 日本"


@pytest.mark.parametrize("internal", [False, True])
def test_a_one_line_error_from_outside_data_is_escaped(
    internal: bool, capsys: pytest.CaptureFixture[str]
) -> None:
    @_edge
    def task(c: Context) -> None:
        if internal:
            raise RuntimeError(f"the API said {ESCAPES}")
        raise VolguardError(f"the API said {ESCAPES}")

    with pytest.raises(Exit):
        task(Context())
    err = capsys.readouterr().err
    assert "\x1b" not in err
    assert "\\x1b[2J" in err
    assert err.count("\n") == 1
