"""``manage.py migrate_media``: copy the files the rows reference to another storage
(an S3/Tigris bucket), verified and resumable. The work is `volguard.django.media_migration`'s.

Plans by default (what would be copied, what is already there, conflicts, rows whose file is
missing); ``--apply`` copies. Exit codes, as every volguard command: ``0`` every file verified
at the destination (or, as a plan, nothing in the way); ``2`` conflicts, rows whose file is
missing from the source, or files still changing at the end; ``1`` it could not run (an
unknown alias, credentials refused, a store refusing writes): one ``CommandError:`` line on
stderr, never a traceback and never a credential.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from django.core.management.base import CommandError, CommandParser

from volguard.django import media_migration
from volguard.django.management.base import VolguardCommand
from volguard.errors import VolguardError


class Command(VolguardCommand):
    help = (
        "Copy every file a row references (with --all-files, every file) from one storage "
        "to another, e.g. from the volume to an S3/Tigris bucket: verified, resumable, never "
        "overwriting. Plans unless --apply. Exit 0: all verified; 2: conflicts or files "
        "missing; 1: could not run."
    )
    requires_system_checks = ()

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--to",
            required=True,
            metavar="ALIAS",
            help="the STORAGES entry to copy to (e.g. an S3Storage of django-storages)",
        )
        parser.add_argument(
            "--from",
            dest="from_alias",
            metavar="ALIAS",
            help="the STORAGES entry to copy from (default: 'default', the current storage)",
        )
        parser.add_argument(
            "--apply", action="store_true", help="copy (default: only plan, change nothing)"
        )
        parser.add_argument(
            "--manifest",
            metavar="PATH",
            help="the resumable record of verified objects (default: "
            "<volume>/.volguard/migrate-media/<ALIAS>.jsonl, on the volume holding the "
            "source root, or under the source root when that is on no volume of its own)",
        )
        parser.add_argument(
            "--workers",
            type=int,
            default=media_migration.DEFAULT_WORKERS,
            metavar="N",
            help=f"parallel copies (default {media_migration.DEFAULT_WORKERS})",
        )
        parser.add_argument(
            "--all-files",
            action="store_true",
            help="also copy every file under the source root that no row references "
            "(volguard's own .volguard directory excepted)",
        )
        parser.add_argument(
            "--verify",
            choices=media_migration.VERIFY_MODES,
            default="read",
            help="how an upload is verified: read it back and hash it (read, the default), "
            "or have an S3 store check each upload's Content-MD5 (checksum: no second "
            "request; only for stores that check it)",
        )
        parser.add_argument(
            "--batch-size",
            type=int,
            default=2000,
            metavar="N",
            help="rows fetched from the database at a time (default 2000)",
        )
        parser.add_argument(
            "--json", action="store_true", help="print the report as one JSON document"
        )

    def handle(self, *args: Any, **options: Any) -> None:
        if options["batch_size"] < 1:
            raise CommandError("--batch-size must be at least 1")
        progress = media_migration.terminal_progress if sys.stderr.isatty() else None
        run = media_migration.Options(
            to_alias=options["to"],
            from_alias=options["from_alias"],
            apply=options["apply"],
            manifest=Path(options["manifest"]) if options["manifest"] else None,
            workers=options["workers"],
            all_files=options["all_files"],
            verify=options["verify"],
            batch_size=options["batch_size"],
            progress=progress,
        )
        try:
            report = media_migration.migrate(run)
        except VolguardError as e:
            raise CommandError(str(e)) from None
        self.exit_code = report.exit_code
        if options["json"]:
            self.stdout.write(json.dumps(report.as_dict(), indent=2, default=str))
            return
        self._text(report)

    def _text(self, report: media_migration.MigrationReport) -> None:
        from volguard.terminal import printable

        out = self.stdout.write
        verb = "Copied" if report.applied else "Would copy"
        out(f"{report.source} -> {report.destination} (manifest {report.manifest})")
        for f in report.fields:
            out(f"  {f['field']}: {f['rows']} rows")
        for f in report.other_storage_fields:
            out(f"  {f['field']}: left out, its files are on {f['storage']}")
        tally = report.copied if report.applied else report.to_copy
        out(f"{verb}: {tally.files} files ({tally.bytes} bytes)")
        if report.delta.files:
            out(f"  of which written during the copy (delta pass): {report.delta.files}")
        out(f"Already at the destination, identical: {report.identical.files}")
        out(f"Verified by an earlier run, unchanged: {report.skipped.files}")
        if report.applied:
            v = report.verified
            out(f"Verified at the destination: {v.files} files ({v.bytes} bytes)")
        for c in report.conflicts:
            row = f" ({c['model']} pk {c['pk']})" if "model" in c else ""
            out(
                f"CONFLICT {printable(c['name'])}{row}: the destination holds other bytes "
                f"({c['destination_size']} bytes); left as is"
            )
        for m in report.missing_from_source:
            out(
                f"MISSING {m['model']} pk {m['pk']}: {printable(m['name'])} "
                f"({m.get('detail', 'not in the source storage')})"
            )
        for name in report.changing:
            out(f"CHANGING {printable(name)}: still being written; run again to copy it")
        if report.exit_code == 0:
            out("✓ every file verified" if report.applied else "✓ nothing in the way")
