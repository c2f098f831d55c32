"""``manage.py restore_fixed_rows``: undo an earlier ``check_missing_files --fix`` for the rows
whose file is back. The work and its safety rules are `volguard.django.row_restore`'s.

Plan by default (what would be restored, and why each other row is left); ``--apply`` acts;
``--json`` prints `RestoreReport.as_dict`. ``--rows FILE`` (a JSON list of ``{model, pk,
name}``; ``-`` reads stdin) and ``--restored-by RUN`` (the files a ``volguard recover`` run
logged as restored, repeatable) narrow the rows to those asked about.

Exit codes, as every volguard command: ``0`` every row considered is (or would be) restored,
``2`` some are left failed (named: file still missing, changed since the fix, deleted), ``1``
bad input, as one ``CommandError:`` line.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from django.core.management.base import CommandError, CommandParser

from volguard.audit_log import DEFAULT_PATH as DEFAULT_AUDIT_LOG
from volguard.audit_log import AuditLog
from volguard.django import row_restore
from volguard.django.management.base import VolguardCommand, command_line
from volguard.errors import VolguardError


class Command(VolguardCommand):
    help = (
        "Put back the status and log an earlier check_missing_files --fix changed, for the "
        "rows whose file is back in storage and whose fields nobody changed since. Plan by "
        "default; --apply acts. Exit 0: all restored; 2: some left (named); 1: bad input."
    )
    requires_system_checks = ()  # an incident tool must run even when a check fails

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--audit-log",
            default=DEFAULT_AUDIT_LOG,
            metavar="PATH",
            help=f"the change log --fix wrote, where restores are logged too "
            f"(default {DEFAULT_AUDIT_LOG})",
        )
        parser.add_argument(
            "--rows",
            metavar="FILE",
            help="only these rows: a JSON list of {model, pk, name} ('-': stdin); a row "
            "whose file name is no longer NAME is left alone",
        )
        parser.add_argument(
            "--restored-by",
            action="append",
            default=[],
            metavar="RUN",
            help="only the rows whose file the volguard recover run RUN logged as restored "
            "(restore_file); repeatable",
        )
        parser.add_argument("--apply", action="store_true", help="restore (default: plan)")
        parser.add_argument(
            "--batch-size",
            type=int,
            default=row_restore.DEFAULT_BATCH,
            metavar="N",
            help=f"rows per transaction (default {row_restore.DEFAULT_BATCH})",
        )
        parser.add_argument("--json", action="store_true", help="print one JSON document")

    def handle(self, *args: Any, **options: Any) -> None:
        from django.db import DatabaseError

        if options["batch_size"] < 1:
            raise CommandError("--batch-size must be at least 1")
        try:
            selection = self._selection(options)
            log = AuditLog(options["audit_log"], command=command_line("restore_fixed_rows"))
            report = row_restore.restore(
                log, selection, apply=options["apply"], batch_size=options["batch_size"]
            )
        except VolguardError as e:
            raise CommandError(str(e)) from None
        except DatabaseError as e:
            raise CommandError(f"database error: {' '.join(str(e).split())}") from None
        self.exit_code = report.exit_code()
        if options["json"]:
            self.stdout.write(json.dumps(report.as_dict(), default=str, ensure_ascii=False))
        else:
            self._text(report)

    def _selection(self, options: dict[str, Any]) -> row_restore.RowSelection:
        keys = names = None
        if options["rows"]:
            where = "--rows " + options["rows"]
            try:
                if options["rows"] == "-":
                    text = sys.stdin.read()
                else:
                    with open(options["rows"], encoding="utf-8") as f:
                        text = f.read()
            except OSError as e:
                raise CommandError(f"{where}: {e.strerror}") from None
            keys = row_restore.parse_rows(text, where)
        if options["restored_by"]:
            names = row_restore.restored_names(options["audit_log"], set(options["restored_by"]))
        return row_restore.RowSelection(keys=keys, names=names)

    def _text(self, report: row_restore.RestoreReport) -> None:
        logged, dropped = report.settled
        if logged or dropped:
            self.stderr.write(
                f"note: settled an interrupted run's journal: {logged} change(s) logged, "
                f"{dropped} rolled back"
            )
        if not report.rows:
            self.stdout.write("No row an earlier --fix marked failed is waiting: nothing to do.")
            return
        for r in report.rows:
            why = f" ({r.why})" if r.why else ""
            self.stdout.write(f"  {r.status:<17} {r.model} ID {r.pk}: {r.name or ''}{why}")
        counts = report.counts()
        self.stdout.write(", ".join(f"{s} {n}" for s, n in sorted(counts.items())))
        if not report.apply and counts.get(row_restore.RESTORABLE):
            self.stdout.write("Plan only: --apply restores them.")
        if report.apply and counts.get(row_restore.RESTORED):
            self.stdout.write(f"  logged to {report.audit_log}")
