"""Import invoke without the two stdlib modules it loads for features volguard never uses.

`import invoke` costs about 3.5 times `import tomlkit` (bench/lint_startup.py), and `volguard
lint` runs on every commit as a pre-commit hook: its start-up budget is 4x tomlkit. Two thirds
of invoke's import is spent on two lines:

- ``invoke/__init__.py``: ``__version__ = metadata.version("invoke")`` imports
  ``importlib.metadata`` (email, zipfile, csv, pathlib, …) and scans ``sys.path``;
- ``invoke/context.py``: ``from unittest.mock import Mock`` imports ``unittest`` and
  ``unittest.mock`` (and asyncio through it) for ``MockContext``, a testing helper.

`import_invoke` puts stand-ins for those three modules in ``sys.modules`` while invoke's package
imports, then takes them out again, so the next ``import unittest.mock`` or ``import
importlib.metadata`` anywhere in the process loads the real module. What invoke kept stays
correct: ``invoke.__version__`` is answered on first use (a module ``__getattr__``, PEP 562),
and ``invoke.context.Mock`` builds a real ``unittest.mock.Mock``.

Anything unexpected (invoke already imported, a stand-in module already real, invoke's import
asking the stand-ins for something else) falls back to a plain ``import invoke``: the cost of
being wrong here is start-up time, never behaviour.
"""

from __future__ import annotations

import sys
import types
from typing import Any

_STANDINS = ("importlib.metadata", "unittest", "unittest.mock")


def import_invoke() -> None:
    """Import invoke once, without importlib.metadata and unittest.mock (see the module doc)."""
    if "invoke" in sys.modules or any(name in sys.modules for name in _STANDINS):
        return
    standins = _make_standins()
    sys.modules.update(standins)
    try:
        import invoke
    except Exception:  # the stand-ins did not suffice: import the plain way
        _forget("invoke")
        _restore(standins)
        return
    _restore(standins)
    del invoke.__version__
    invoke.__getattr__ = _invoke_getattr  # type: ignore[attr-defined]


def _make_standins() -> dict[str, types.ModuleType]:
    metadata = types.ModuleType("importlib.metadata", "volguard's stand-in (volguard._lean_invoke)")
    metadata.version = lambda name: ""  # type: ignore[attr-defined]  # replaced on first use
    mock = types.ModuleType("unittest.mock", "volguard's stand-in (volguard._lean_invoke)")
    mock.Mock = _mock  # type: ignore[attr-defined]
    unittest = types.ModuleType("unittest", "volguard's stand-in (volguard._lean_invoke)")
    return {"importlib.metadata": metadata, "unittest": unittest, "unittest.mock": mock}


def _restore(standins: dict[str, types.ModuleType]) -> None:
    for name, module in standins.items():
        if sys.modules.get(name) is module:
            del sys.modules[name]


def _forget(package: str) -> None:
    for name in [n for n in sys.modules if n == package or n.startswith(package + ".")]:
        del sys.modules[name]


def _mock(*args: Any, **kwargs: Any) -> Any:
    from unittest.mock import Mock

    return Mock(*args, **kwargs)


def _invoke_getattr(name: str) -> str:
    if name == "__version__":
        from importlib.metadata import version

        return version("invoke")
    raise AttributeError(f"module 'invoke' has no attribute {name!r}")
