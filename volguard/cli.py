"""The `volguard` command: Invoke's Program over the same tasks as tasks.py.

Two differences from plain `invoke`, both small:
- the project configuration (invoke.yaml) is read from the current directory,
  as `invoke` reads it from the directory of tasks.py;
- a task's positional argument may be left out (`volguard lint` lints the
  configured fly.toml). Invoke's parser has no optional positionals
  (pyinvoke/invoke#159), so an empty value is filled in before parsing.
"""

from __future__ import annotations

import os
import sys

from invoke import Program
from invoke.exceptions import AmbiguousEnvVar, UncastableEnvVar

from volguard import __version__
from volguard.tasks import OPTIONAL_POSITIONALS, ns


class VolguardProgram(Program):
    def run(self, argv: list[str] | None = None, exit: bool = True) -> None:
        try:
            super().run(argv, exit)
        except (UncastableEnvVar, AmbiguousEnvVar) as e:
            # e.g. INVOKE_VOLGUARD_VOLUME_FSTYPES set while invoke.yaml holds a list there
            sys.stderr.write(f"volguard: error: environment: {e}\n")
            raise SystemExit(1) from None

    def parse_collection(self) -> None:
        super().parse_collection()
        self.config.set_project_location(os.getcwd())
        self.config.load_project()

    def parse_tasks(self) -> None:
        self.core.unparsed = fill_optional_positionals(self.core.unparsed, self.collection)
        super().parse_tasks()


def fill_optional_positionals(argv: list[str], collection) -> list[str]:
    """Insert "" after each task in ``argv`` whose optional positional was not given."""
    names = set(collection.task_names) | {a for t in collection.task_names.values() for a in t}
    out: list[str] = []
    i = 0
    while i < len(argv):
        token = argv[i]
        out.append(token)
        i += 1
        task_name = collection.transform(token) if token in names else None
        positional = OPTIONAL_POSITIONALS.get(task_name or "")
        if not positional:
            continue
        value_flags = _value_flags(collection[task_name])
        j, given = i, False
        while j < len(argv) and argv[j] not in names and argv[j] != "--":
            if argv[j].startswith("-"):
                j += 2 if argv[j] in value_flags else 1  # `--flag value` or `--flag=value`
                continue
            given = True
            break
        if not given:
            out.append("")
    return out


def _value_flags(task) -> set[str]:
    """`--flag` spellings that take a value (Task.get_arguments() consumes help=, so not it)."""
    params = list(task.argspec(task.body).parameters.values())[1:]  # after the Context
    return {"--" + p.name.replace("_", "-") for p in params if not isinstance(p.default, bool)}


program = VolguardProgram(name="volguard", binary="volguard", namespace=ns, version=__version__)


def main() -> None:
    program.run()
