"""volguard imports invoke without importlib.metadata and unittest.mock, and nothing notices.

Each case runs in a fresh interpreter: pytest itself has both modules loaded long before.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap


def run_python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_the_cli_starts_without_importlib_metadata_or_unittest_mock() -> None:
    result = run_python(
        """
        import sys
        import volguard.cli
        print(sorted(m for m in ("importlib.metadata", "unittest", "unittest.mock")
                     if m in sys.modules))
        """
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_modules_imported_after_the_cli_are_the_real_ones() -> None:
    result = run_python(
        """
        import volguard.cli
        import importlib.metadata
        import unittest.mock
        assert hasattr(unittest.mock, "patch"), unittest.mock
        assert hasattr(importlib.metadata, "distributions"), importlib.metadata
        import unittest
        assert hasattr(unittest, "TestCase"), unittest
        print("real")
        """
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "real"


def test_invoke_keeps_its_version_and_its_mock_context() -> None:
    result = run_python(
        """
        import volguard.cli
        import invoke
        from importlib.metadata import version
        assert invoke.__version__ == version("invoke"), invoke.__version__
        from invoke.main import program  # reads `from . import __version__`
        assert program.version == version("invoke")
        context = invoke.MockContext(run=invoke.Result("hello\\n"))
        assert context.run("anything").stdout == "hello\\n"
        context.run.assert_called_once_with("anything")  # a real unittest.mock.Mock
        print("kept")
        """
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "kept"


def test_stand_ins_that_do_not_suffice_fall_back_to_a_plain_import() -> None:
    # A future invoke that asks importlib.metadata for more than version() must still import.
    result = run_python(
        """
        import sys, types
        import volguard._lean_invoke as lean
        lean._make_standins = lambda: {"importlib.metadata": types.ModuleType("importlib.metadata")}
        lean.import_invoke()
        assert "invoke" not in sys.modules and "importlib.metadata" not in sys.modules
        import invoke
        assert isinstance(invoke.__version__, str) and invoke.__version__, invoke.__version__
        import volguard.cli
        print("plain")
        """
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "plain"


def test_an_already_loaded_unittest_leaves_the_import_to_python() -> None:
    result = run_python(
        """
        import sys, unittest
        import volguard._lean_invoke as lean
        lean.import_invoke()
        assert "invoke" not in sys.modules
        print("untouched")
        """
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "untouched"
