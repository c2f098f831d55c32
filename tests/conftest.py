"""Small shared fixtures. Keep this file minimal: put anything specific in the test module."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from volguard.config import Settings
from volguard.lint import lint
from volguard.report import Report

#: The shared corpus of real fly.toml files, beside the clone (<root>/main, <root>/shared);
#: VOLGUARD_CORPUS overrides. Tests skip without it, except under CI, where it must exist.
CORPUS = Path(
    os.environ.get("VOLGUARD_CORPUS")
    or Path(__file__).resolve().parents[2] / "shared" / "corpus" / "flytoml"
)
if os.environ.get("CI") and not CORPUS.is_dir():
    raise RuntimeError(f"CI must see the fly.toml corpus at {CORPUS} (set VOLGUARD_CORPUS)")


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
