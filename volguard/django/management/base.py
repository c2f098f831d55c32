"""What volguard's management commands share: an exit status that is part of the contract.

`check_missing_files`, `restore_fixed_rows` and `migrate_media` each exit 0 (nothing to act
on), 2 (the command's own "something to act on": rows missing, rows left failed, conflicts)
or 1 (it could not run). Django's BaseCommand gives neither: a finished `handle()` exits 0,
and argparse exits 2 on a bad flag, which would read as "rows missing". `VolguardCommand`
turns a bad flag into the one-line ``CommandError: …`` every other bad input gets, with exit
1, and exits with `exit_code` after `handle()` when run from the command line.
"""

from __future__ import annotations

import shlex
import sys
from typing import Any

from django.core.management.base import BaseCommand, CommandParser


class VolguardCommand(BaseCommand):
    #: Set by `handle()`: 0, or 2 for the command's own findings (a failure raises instead).
    exit_code = 0

    def create_parser(self, prog_name: str, subcommand: str, **kwargs: Any) -> CommandParser:
        parser = super().create_parser(prog_name, subcommand, **kwargs)
        if parser.called_from_command_line:

            def error(message: str) -> None:
                sys.stderr.write(f"CommandError: {message} (see --help)\n")
                sys.exit(1)

            parser.error = error  # type: ignore[method-assign]
        return parser

    def run_from_argv(self, argv: list[str]) -> None:
        super().run_from_argv(argv)
        if self.exit_code:
            sys.exit(self.exit_code)


def command_line(name: str) -> str:
    """The command as typed, for the audit log: ``manage.py <name> <flags>``; only the name
    when it was not run from the command line (call_command, where sys.argv is the caller's)."""
    if len(sys.argv) > 1 and sys.argv[1] == name:
        return shlex.join(["manage.py", *sys.argv[1:]])
    return name
