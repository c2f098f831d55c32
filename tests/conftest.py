"""Small shared fixtures. Keep this file minimal: put anything specific in the test module."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from volguard.config import Settings
from volguard.lint import lint
from volguard.report import Report

#: The shared corpus of real fly.toml files (<root>/shared/corpus/flytoml, beside <root>/main).
CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpus" / "flytoml"


@pytest.fixture
def write_toml(tmp_path: Path) -> Callable[..., Path]:
    """Write fly.toml text (to ``name`` under tmp_path) and return its path."""

    def write(text: str, name: str = "fly.toml", *, newline: str | None = "") -> Path:
        path = tmp_path / name
        with open(path, "w", encoding="utf-8", newline=newline) as fh:
            fh.write(text)
        return path

    return write


@pytest.fixture
def lint_text(write_toml: Callable[..., Path]) -> Callable[..., Report]:
    """Lint fly.toml text; keyword arguments other than the lint() options go to Settings.load."""

    def run(text: str, *, use_waivers: bool = True, today=None, **settings) -> Report:
        path = write_toml(text)
        return lint(
            Settings.load(None, **settings), str(path), use_waivers=use_waivers, today=today
        )

    return run
