"""One exception tree: every exception class of the product is a `VolguardError`, lives in
`volguard.errors`, and is drawn in that module's docstring; none is left unused.

The product's modules are walked for real (imported, with Django configured so its modules
import too); the simulator (`volguard.sim`) is a test tool with its own errors and is left
out.
"""

from __future__ import annotations

import importlib
import pkgutil
import re
import subprocess
import sys
from pathlib import Path

import pytest

import volguard
from volguard import errors
from volguard.errors import VolguardError

REPO = Path(__file__).resolve().parents[1]


def _product_exceptions() -> dict[str, type[BaseException]]:
    """``{"module.Name": class}`` of every exception class reachable in the product."""
    found: dict[str, type[BaseException]] = {}
    for module in pkgutil.walk_packages(volguard.__path__, "volguard."):
        if module.name == "volguard.sim" or module.name.startswith("volguard.sim."):
            continue
        namespace = importlib.import_module(module.name)
        for value in vars(namespace).values():
            # type(value), not isinstance: Django's lazy settings object answers isinstance
            # by loading the settings.
            if not (issubclass(type(value), type) and issubclass(value, BaseException)):
                continue
            where = value.__module__
            if where.startswith("volguard.") and not where.startswith("volguard.sim"):
                found[f"{where}.{value.__qualname__}"] = value
    return found


@pytest.fixture(scope="module")
def exceptions() -> dict[str, type[BaseException]]:
    django = pytest.importorskip("django")
    from django.conf import settings

    if not settings.configured:
        settings.configure()
        django.setup()
    return _product_exceptions()


def test_every_product_exception_is_a_volguard_error_defined_in_errors(
    exceptions: dict[str, type[BaseException]],
) -> None:
    assert exceptions, "the walk found no exception at all"
    outside = sorted(n for n, cls in exceptions.items() if cls.__module__ != "volguard.errors")
    assert outside == [], "defined outside volguard.errors"
    strays = sorted(n for n, cls in exceptions.items() if not issubclass(cls, VolguardError))
    assert strays == [], "not under VolguardError"


def test_the_docstring_draws_every_exception_at_its_place_in_the_tree() -> None:
    drawn: dict[str, int] = {}
    root = None
    for line in (errors.__doc__ or "").splitlines():
        match = re.search(r"([A-Z][A-Za-z]+)\s{2,}\S", line)
        if not match or not re.fullmatch(r"[\s│├└─]*", line[: match.start(1)]):
            continue
        root = match.start(1) if root is None else root
        drawn[match[1]] = (match.start(1) - root) // 4  # four columns per level
    defined = {
        name: cls
        for name, cls in vars(errors).items()
        if isinstance(cls, type) and issubclass(cls, BaseException)
    }
    assert set(drawn) == set(defined)
    for name, cls in defined.items():
        # The depth drawn is the depth below VolguardError (SizeError's ValueError aside).
        depth = sum(1 for base in cls.__mro__ if issubclass(base, VolguardError)) - 1
        assert drawn[name] == depth, name


def test_every_exception_in_the_tree_is_raised_somewhere() -> None:
    sources = [
        p.read_text()
        for p in (REPO / "volguard").rglob("*.py")
        if "sim" not in p.relative_to(REPO / "volguard").parts
    ]
    text = "\n".join(sources)
    for name, cls in vars(errors).items():
        if not (isinstance(cls, type) and issubclass(cls, BaseException)):
            continue
        if name in ("VolguardError",):
            continue  # the base: raised directly and caught by meaning everywhere
        raised = re.search(rf"raise {name}\(|\b{name} if\b|else {name}\b", text)
        assert raised, f"{name} is never raised: delete it"


def test_missing_files_error_stays_importable_from_the_helpers() -> None:
    # Public API: an app's own code catches it from the module it calls require_files from.
    done = subprocess.run(
        [sys.executable, "-c", "from volguard.django.helpers import MissingFilesError as E; "
         "from volguard.errors import VolguardError as V; assert issubclass(E, V)"],
        capture_output=True,
        text=True,
        check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
