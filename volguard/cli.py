"""The `volguard` command: Invoke's Program over the same tasks as tasks.py.

Three differences from plain `invoke`, all small:
- the project configuration (invoke.yaml) is read from the current directory,
  as `invoke` reads it from the directory of tasks.py;
- a task's positional argument may be left out (`volguard lint` lints the
  configured fly.toml). Invoke's parser has no optional positionals
  (pyinvoke/invoke#159), so an empty value is filled in before parsing;
- only the core options that mean something to volguard are offered (CORE_OPTIONS).
  Invoke's options for running shell commands (--pty, --echo, --dry, --warn-only,
  --hide, --command-timeout, --prompt-for-sudo-password) and its own switches
  (--debug, --write-pyc, --list-depth, --list-format) are neither shown nor accepted:
  volguard's tasks run no shell commands through invoke.
"""

from __future__ import annotations

import os
import sys

from volguard._lean_invoke import import_invoke

import_invoke()  # before anything imports invoke: the start-up budget of `volguard lint`

from invoke import Argument, Program  # noqa: E402
from invoke.config import AmbiguousMergeError  # noqa: E402
from invoke.exceptions import AmbiguousEnvVar, UncastableEnvVar  # noqa: E402
from invoke.parser import Parser, ParserContext  # noqa: E402

from volguard import __version__  # noqa: E402
from volguard.config import InvokeConfig  # noqa: E402
from volguard.errors import ConfigError  # noqa: E402
from volguard.tasks import OPTIONAL_POSITIONALS, ns  # noqa: E402

#: Invoke's core options that volguard offers, with volguard's help text where invoke's
#: speaks of its own concepts (tasks, run()).
CORE_OPTIONS = {
    "help": "Show this help, or a subcommand's (volguard --help lint), and exit.",
    "version": "Show volguard's version and exit.",
    "list": "List the subcommands and exit.",
    "config": "Also read this configuration file (YAML, JSON or .py; its values win over "
    "./invoke.yaml and INVOKE_VOLGUARD_* variables).",
    "print-completion-script": "Print the tab-completion script for your shell (bash|zsh|fish).",
    "complete": "Print tab-completion candidates (used by the completion script).",
}


class VolguardProgram(Program):
    def core_args(self) -> list[Argument]:
        kept = [a for a in super().core_args() if a.name in CORE_OPTIONS]
        for argument in kept:
            argument.help = CORE_OPTIONS[argument.name]
        return kept

    def parse_core_args(self) -> None:
        super().parse_core_args()
        # Program's later steps read every invoke core option by name (update_config,
        # parse_core); the ones volguard leaves out are added back here, unparsed, so
        # they keep invoke's defaults and no command line can set them.
        args = self.core[0].args
        for argument in super().core_args():
            if argument.name not in args:
                args[argument.name] = argument

    def run(self, argv: list[str] | None = None, exit: bool = True) -> None:
        try:
            super().run(argv, exit)
        except (UncastableEnvVar, AmbiguousEnvVar) as e:
            # e.g. INVOKE_VOLGUARD_VOLUME_FSTYPES set while invoke.yaml holds a list there
            sys.stderr.write(f"volguard: error: environment: {e}\n")
            raise SystemExit(1) from None
        except AmbiguousMergeError as e:  # a mapping in one config file, a list in another
            sys.stderr.write(f"volguard: error: configuration files disagree: {e}\n")
            raise SystemExit(1) from None
        except ConfigError as e:  # invoke.yaml itself cannot be read (load_yaml)
            sys.stderr.write(f"volguard: error: {e}\n")
            raise SystemExit(1) from None

    def parse_collection(self) -> None:
        super().parse_collection()
        self.config.set_project_location(os.getcwd())
        self.config.load_project()

    def parse_tasks(self) -> None:
        self.core.unparsed = fill_optional_positionals(self.core.unparsed, self.collection)
        super().parse_tasks()

    def _make_parser(self) -> Parser:
        """A parser over the tasks the command line names (all of them when it names none).

        Invoke's parser deep-copies every task's flags when it is made, a cost that grows with
        each task in the collection and that `volguard lint`, a CI gate, pays at every start.
        """
        named = {self.collection.transform(t) for t in self.core.unparsed if t[:1] != "-"}
        chosen = {p: a for p, a in self.collection.task_names.items() if {p, *a} & named}
        if not chosen:
            return super()._make_parser()
        ignore = self.config.tasks.ignore_unknown_help
        contexts = [
            ParserContext(
                name=primary,
                aliases=aliases,
                args=self.collection[primary].get_arguments(ignore_unknown_help=ignore),
            )
            for primary, aliases in chosen.items()
        ]
        return Parser(initial=self.initial_context, contexts=contexts)


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


program = VolguardProgram(
    name="volguard", binary="volguard", namespace=ns, version=__version__, config_class=InvokeConfig
)


def main() -> None:
    try:
        program.run()
    except BrokenPipeError:
        # the reader stopped early (`volguard --help | head`): no traceback; Python would
        # report the pipe again while flushing stdout at exit, so point stdout at devnull
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        raise SystemExit(1) from None
