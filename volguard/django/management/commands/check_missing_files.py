"""``manage.py check_missing_files``: the widely copied command, made fast, and read-only.

Keeps that command's familiar output — ``Total file records in database: N``, then ``✗ Found N
missing files:`` grouped by user, each ``ID n: name (status=…, reason=…)`` and its ``Path:``
line, or ``✓ All N files are present in storage.`` — over every model with a FileField or
ImageField, each field with its own storage. The work is `volguard.django.missing_files.audit`'s;
the ``--json`` document is `volguard.audit_document`'s. The command parses its own values
(``--filter``, ``--older-than``: `parse_filter`, `parse_duration`).

Exit codes, as every volguard command: ``0`` nothing missing (shared files alone are a
warning), ``2`` rows missing, empty or with an invalid name, ``1`` bad input (an unknown
model, a bad filter or flag, a broken setting) or an unreadable storage, as one
``CommandError:`` line on stderr, never a traceback.

Without ``--fix`` or ``--delete`` it changes nothing. With one of them it prints the plan
(rows per reason), then hands the rows to `volguard.django.repair`, which holds the
safety rules: the VG404 interlock (refused with exit ``2`` and one line unless ``--force``;
under ``--json`` the audit's document with its ``refused`` object goes to stdout too),
a re-check of each row just before it changes, batched bulk updates, the JSONL audit log,
and for ``--delete`` a confirmation (``yes`` typed at a terminal, or ``--yes``) and a
``loaddata``-compatible export written first.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterable
from datetime import timedelta
from typing import Any

from django.core.management.base import CommandError, CommandParser

from volguard.audit_document import (
    DEFAULT_MAX_MISSING,
    EMPTY,
    INVALID_NAME,
    PROBLEM_REASONS,
    REASONS,
    SHARED,
    MaxMissing,
    Plan,
    PlanKey,
    Refusal,
    parse_max_missing,
    plan_refusal,
)
from volguard.audit_log import DEFAULT_PATH as DEFAULT_AUDIT_LOG
from volguard.audit_log import AuditLog
from volguard.django import repair
from volguard.django.audit_result import AuditResult, AuditRow
from volguard.django.management.base import VolguardCommand, command_line
from volguard.django.missing_files import audit
from volguard.django.storage_index import STRATEGIES
from volguard.django.targets import discover
from volguard.errors import UsageError, VolguardError

_FILTER_KEY = re.compile(r"[A-Za-z_]\w*(?:__\w+)*")
_DURATION = re.compile(r"(\d+)([smhd]?)")
_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
#: Longest --older-than: a century (``now`` minus more is before year 1 for Python).
MAX_DURATION_DAYS = 36500


class Command(VolguardCommand):
    help = (
        "Report rows whose file is missing from storage, empty, or stored under an invalid "
        "name, and files shared by several rows. Read-only. Exit 0: nothing missing; "
        "2: rows missing; 1: bad input."
    )
    # An incident tool must run even when an unrelated system check fails.
    requires_system_checks = ()

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--user-id",
            metavar="ID",
            help="only the rows of this user (each model's owner field, default 'owner')",
        )
        parser.add_argument(
            "--filter",
            action="append",
            default=[],
            metavar="FIELD=VALUE",
            help="only rows matching this Django lookup, e.g. processing_status=failed or "
            "created_at__lt=2024-06-01; repeatable (ANDed)",
        )
        parser.add_argument(
            "--model",
            action="append",
            default=[],
            metavar="APP.MODEL[.FIELD]",
            help="audit only this model (or field); repeatable. Default: every model with "
            "a FileField or ImageField",
        )
        parser.add_argument(
            "--older-than",
            default="10m",
            metavar="DURATION",
            help="grace period for uploads in flight: skip rows created or changed more "
            "recently (30s, 10m, 2h, 1d; 0 to disable; default 10m)",
        )
        parser.add_argument(
            "--batch-size",
            type=int,
            default=2000,
            metavar="N",
            help="rows fetched from the database at a time (default 2000)",
        )
        parser.add_argument(
            "--strategy",
            choices=STRATEGIES,
            default="auto",
            help="how storage is checked: list it (directories, or an S3 prefix), one "
            "check per row (exists), or choose from the row count (auto, the default)",
        )
        parser.add_argument(
            "--sizes",
            action="store_true",
            default=None,
            help="on a volume listed by directory, also stat each file for its size, so "
            "0-byte files (empty_file, VG405) are reported (slower; per-row checks and S3 "
            "listings read sizes always; default: the VOLGUARD_AUDIT_SIZES setting)",
        )
        parser.add_argument(
            "--json",
            action="store_true",
            help="print one JSON document (totals, per-reason counts, strategy, rows)",
        )
        act = parser.add_mutually_exclusive_group()
        act.add_argument(
            "--fix",
            action="store_true",
            help="mark each row whose file is missing (or empty and required) failed and "
            "append the configured message to its log; idempotent",
        )
        act.add_argument(
            "--delete",
            action="store_true",
            help="delete those rows (never their files, never a row sharing its file) after "
            "exporting them; asks for 'yes' unless --yes",
        )
        parser.add_argument(
            "--yes", action="store_true", help="--delete without asking (for scripts)"
        )
        parser.add_argument(
            repair.ALLOW_RECEIVERS_FLAG,
            action="store_true",
            help="let --delete run the app's pre_delete/post_delete receivers, which may "
            "delete files (django-cleanup and the like); without it a --delete that would "
            "run any refuses, naming them",
        )
        parser.add_argument(
            "--export",
            metavar="PATH",
            help="where --delete writes the rows first, as loaddata JSON, owner-only, "
            "never over an existing file (default .volguard/exports/<model>-<UTC "
            "timestamp>.json); with --fix, export there before fixing",
        )
        parser.add_argument(
            "--max-missing",
            default=DEFAULT_MAX_MISSING,
            metavar="N|P%",
            help="refuse --fix/--delete (VG404) when more audited rows than this are "
            "missing: a count (50) or a percentage (default 10%%)",
        )
        parser.add_argument(
            "--force",
            action="store_true",
            help="override the VG404 interlock (recorded in the audit log)",
        )
        parser.add_argument(
            "--plan",
            metavar="PLAN",
            help="act only if the rows to change are exactly this confirmed plan (the value "
            "volguard remediate passes: rows:… or sha256:…); else refuse, naming the rows "
            "that appeared and went, and change nothing (exit 2)",
        )
        parser.add_argument(
            "--audit-log",
            default=DEFAULT_AUDIT_LOG,
            metavar="PATH",
            help=f"append-only JSONL log of every change (default {DEFAULT_AUDIT_LOG})",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        from django.db import DatabaseError

        try:
            self._handle(options)
        except (DatabaseError, OverflowError) as e:
            # A database that fails mid-run (a lost connection, a dropped table, a value
            # out of range) is one line, as every other failure; the rows are as they were
            # or as the audit log says.
            raise CommandError(f"database error: {' '.join(str(e).split())}") from None

    def _handle(self, options: dict[str, Any]) -> None:
        action = "fix" if options["fix"] else "delete" if options["delete"] else None
        try:
            max_missing = parse_max_missing(options["max_missing"])
            filters = [parse_filter(text) for text in options["filter"]]
            older_than = parse_duration(options["older_than"])
            plan = Plan.decode(options["plan"]) if options["plan"] else None
        except UsageError as e:
            raise CommandError(str(e)) from None
        if action is None:
            for flag in ("yes", "force", "export", "plan"):
                if options[flag]:
                    raise CommandError(f"--{flag} needs --fix or --delete")
        if action != "delete" and options["allow_delete_receivers"]:
            raise CommandError(f"{repair.ALLOW_RECEIVERS_FLAG} needs --delete")
        try:
            targets = discover(options["model"])
            if action == "fix" and options["model"]:
                _require_status_fields(t.model for t in targets)  # before a long audit
            result = audit(
                targets,
                filters=filters,
                user_id=options["user_id"],
                older_than=older_than,
                batch_size=options["batch_size"],
                strategy=options["strategy"],
                sizes=options["sizes"],
            )
        except VolguardError as e:
            raise CommandError(str(e)) from None
        self.exit_code = 2 if result.problem_count else 0
        for note in result.notes:
            self.stderr.write(f"note: {note}")
        if action is None:
            if options["json"]:
                self.stdout.write(json.dumps(result.as_dict(), default=str, ensure_ascii=False))
            else:
                _Text(self, result, int(options["verbosity"])).write()
            return
        if not options["json"]:
            _Text(self, result, int(options["verbosity"])).write()
        report = self._remediate(action, result, max_missing, options, plan)
        if options["json"]:
            document = result.as_dict()
            document["remediation"] = report.as_dict()
            self.stdout.write(json.dumps(document, default=str, ensure_ascii=False))

    def _remediate(
        self,
        action: str,
        result: AuditResult,
        max_missing: MaxMissing,
        options: dict[str, Any],
        plan: Plan | None = None,
    ) -> repair.Remediation:
        """Plan, interlock, confirm, then act; the plan and the outcome in text mode."""
        text = not options["json"]
        # The plan goes to stderr under --json, so stdout stays one JSON document.
        say = self.stdout.write if text else self.stderr.write
        log = AuditLog(options["audit_log"], command=command_line("check_missing_files"))
        try:
            logged, dropped = repair.recover(log)
        except (OSError, ValueError) as e:
            raise CommandError(f"cannot settle the journal of {log.path}: {e}") from None
        if logged or dropped:
            self.stderr.write(
                f"note: settled an interrupted run's journal: {logged} change(s) logged, "
                f"{dropped} rolled back"
            )
        report, rows = repair.plan(result, action)
        if action == "fix":
            from django.apps import apps

            try:
                _require_status_fields(apps.get_model(label) for label in {r.model for r in rows})
            except UsageError as e:
                raise CommandError(str(e)) from None
        if plan is not None and (why := plan.change(_plan_keys(rows))):
            refused = plan_refusal(why)
            if options["json"]:
                document = {**result.as_dict(), "refused": refused}
                self.stdout.write(json.dumps(document, default=str, ensure_ascii=False))
            raise CommandError(refused["message"], returncode=2)
        report.audit_log = options["audit_log"]
        say("")
        say(f"Plan (--{action}): {_counts(report.planned) or 'nothing to do'}")
        if report.left_alone:
            say(f"  left alone: {_counts(report.left_alone)}")
        if not rows:
            return report
        reasons = repair.interlock(result, rows, max_missing)
        if reasons:
            why = "; ".join(reasons)
            if not options["force"]:
                refusal = Refusal(tuple(reasons))
                if options["json"]:
                    # The caller reads the refusal from stdout; stderr keeps its one line.
                    document = {**result.as_dict(), "refused": refusal.as_dict()}
                    self.stdout.write(json.dumps(document, default=str, ensure_ascii=False))
                raise CommandError(refusal.message, returncode=2)
            report.forced = True
            report.overridden = reasons
            self.stderr.write(f"warning: --force overrides VG404: {why}")
        try:
            if options["export"]:
                repair.check_export_path(options["export"])  # before anything changes
            if action == "fix":
                if options["export"]:
                    repair.export_rows(report, rows, options["export"])
                    say(f"  exported first to {report.export} (restore: manage.py loaddata PATH)")
                repair.fix(report, rows, log=log, batch_size=options["batch_size"])
            else:
                self._delete(report, rows, log, options)
        except (VolguardError, OSError) as e:
            raise CommandError(str(e)) from None
        for note in report.notes:
            self.stderr.write(f"note: {note}")
        done = "Marked failed" if action == "fix" else "Deleted"
        say(f"{done}: {_rows(report.changed)}")
        if report.already_done:
            say(f"  already failed with the message: {_rows(report.already_done)}")
        if report.rechecked_away:
            say(f"  no longer missing when re-checked: {_rows(report.rechecked_away)}")
        if report.export and action == "delete":
            say(f"  exported first to {report.export} (restore: manage.py loaddata PATH)")
        if report.cascade:
            say(f"  removed with them (exported, logged): {repair.per_model(report.cascade)}")
        if report.changed:
            say(f"  logged to {report.audit_log}")
        return report

    def _delete(
        self,
        report: repair.Remediation,
        rows: list[AuditRow],
        log: AuditLog,
        options: dict[str, Any],
    ) -> None:
        """What the delete takes with it (plan), refusals, confirmation, then the delete."""
        say = self.stdout.write if not options["json"] else self.stderr.write
        plan = repair.plan_delete(report, rows)
        if plan.cascade:
            say(f"  also removes (exported, logged): {repair.per_model(plan.cascade)}")
        if plan.receivers:
            say(f"  runs delete receivers of the app: {', '.join(plan.receivers)}")
        allow = options["allow_delete_receivers"]
        if reasons := plan.refusals(allow_receivers=allow):
            raise CommandError(f"--delete refused: {'; '.join(reasons)}; nothing deleted")
        if not plan.rows:
            return
        self._confirm(plan.rows, options, plan.cascade)
        repair.delete(
            report,
            plan,
            log=log,
            batch_size=options["batch_size"],
            export=options["export"] or None,
            allow_receivers=allow,
        )
        if options["json"] and report.export:
            self.stderr.write(f"note: exported first to {report.export}")

    def _confirm(self, rows: list[AuditRow], options: dict[str, Any], cascade: Any = None) -> None:
        """``yes`` typed at a terminal for each model, or ``--yes``; else refuse (exit 1)."""
        if options["yes"]:
            return
        if not sys.stdin.isatty():
            raise CommandError("--delete needs a terminal to confirm, or --yes; nothing deleted")
        from django.apps import apps

        counts: dict[str, int] = {}
        for row in rows:
            counts[row.model] = counts.get(row.model, 0) + 1
        for label, count in counts.items():
            name = apps.get_model(label)._meta.object_name
            rows_whose = "row whose file is" if count == 1 else "rows whose files are"
            prompt = f"Delete {count} {name} {rows_whose} missing"
            if cascade:
                prompt += f", and with them {repair.per_model(cascade)}"
            prompt += "? "
            stream = self.stdout if not options["json"] else self.stderr
            stream.write(prompt + "Type yes: ", ending="")
            stream.flush()
            if sys.stdin.readline().strip() != "yes":
                raise CommandError("not confirmed; nothing deleted")


class _Text:
    """The human output, in the familiar command's format."""

    def __init__(self, command: Command, result: AuditResult, verbosity: int) -> None:
        self.out = command.stdout
        self.style = command.style
        self.result = result
        self.verbosity = verbosity
        # Name the model field in headings only when the rows come from several.
        self.several_fields = len({(r.model, r.field) for r in result.rows}) > 1
        self.users = _owner_names(result)

    def write(self) -> None:
        result = self.result
        self.out.write(f"Total file records in database: {result.total_rows}")
        if result.skipped_recent:
            self.out.write(
                f"Skipped {_rows(result.skipped_recent)} created or changed in the last "
                f"{format_duration(result.older_than)} (grace period for uploads in flight; "
                "--older-than 0 includes them)."
            )
        problems = [r for r in result.rows if r.reason in PROBLEM_REASONS]
        if problems:
            noun = "file" if len(problems) == 1 else "files"
            self.out.write(self.style.ERROR(f"✗ Found {len(problems)} missing {noun}:"))
            self._grouped(problems)
        else:
            noun = "file is" if result.files_checked == 1 else "files are"
            self.out.write(
                self.style.SUCCESS(f"✓ All {result.files_checked} {noun} present in storage.")
            )
        shared = [r for r in result.rows if r.reason == SHARED]
        if shared:
            self.out.write("")
            self.out.write(
                self.style.WARNING(
                    f"! {_rows(len(shared))} share a file with another row (VG403): deleting "
                    "one row's file would take it from the others:"
                )
            )
            self._grouped(shared)
        if self.verbosity >= 2:
            self._costs()

    def _grouped(self, rows: Iterable[AuditRow]) -> None:
        """Rows grouped by model field and owner, ordered by id; written in one go."""
        groups: dict[tuple[str, str, Any], list[AuditRow]] = {}
        for r in rows:
            groups.setdefault((r.model, r.field, r.owner), []).append(r)
        lines: list[str] = []
        for model, field_name, owner in sorted(groups, key=lambda k: (k[0], k[1], _sortable(k[2]))):
            members = groups[(model, field_name, owner)]
            members.sort(key=_pk_order)  # stable: rows come from the audit in key order
            heading = self._user(members[0])
            if self.several_fields:
                heading = f"{model}.{field_name} — {heading}"
            lines += ["", heading]
            facts, shown = self._facts, _shown
            for row in members:
                name = shown(row.name) if row.name else "(empty)"
                lines.append(f"  ID {row.pk}: {name} ({facts(row)})\n    Path: {_path(row)}")
        if lines:
            self.out.write("\n".join(lines))

    def _user(self, row: AuditRow) -> str:
        config = next(f.config for f in self.result.fields if f.model == row.model)
        if config.owner_field is None:
            return "No owner field"
        if row.owner is None:
            return "User: (none)"
        name = self.users.get((row.model, row.owner))
        return f"User: {_shown(name)} (ID: {row.owner})" if name else f"User ID: {row.owner}"

    @staticmethod
    def _facts(row: AuditRow) -> str:
        status = row.status if row.status is not None else "-"
        if row.reason == SHARED:
            return f"status={status}, reason={row.reason}, {row.shared_with} rows"
        return f"status={status}, reason={row.reason}"

    def _costs(self) -> None:
        self.out.write("")
        for f in self.result.fields:
            self.out.write(
                f"{f.model}.{f.field}: {f.storage}: strategy {f.strategy} "
                f"({f.strategy_detail}), {f.storage_requests} storage requests, "
                f"{f.audited_rows} rows audited"
            )
            for note in f.notes:
                self.out.write(f"  note: {note}")
        self.out.write(
            f"{self.result.storage_requests} storage requests in {self.result.duration:.2f} s"
        )


# -- the command line's own values: filters and durations ------------------------------


def parse_filter(text: str) -> tuple[str, Any]:
    """``field=value`` (any Django lookup) as a ``(lookup, value)`` pair.

    ``…__in=a,b`` gives a list; ``…__isnull=true|false`` a boolean.
    """
    key, sep, value = text.partition("=")
    key = key.strip()
    if not sep or not _FILTER_KEY.fullmatch(key):
        raise UsageError(f"bad filter {text!r}: use field=value, e.g. processing_status=failed")
    if key.endswith("__in"):
        return key, [v.strip() for v in value.split(",")]
    if key.endswith("__isnull"):
        flag = value.strip().lower()
        if flag not in ("true", "false", "1", "0"):
            raise UsageError(f"bad filter {text!r}: __isnull takes true or false")
        return key, flag in ("true", "1")
    return key, value


def parse_duration(text: str) -> timedelta:
    """``30s``, ``10m``, ``2h``, ``1d``, or ``0`` (no grace period) as a timedelta."""
    match = _DURATION.fullmatch(text.strip().lower())
    if not match or (not match[2] and int(match[1]) != 0):
        raise UsageError(
            f"bad duration {text!r}: use a number and a unit (30s, 10m, 2h, 1d), or 0 to disable"
        )
    seconds = int(match[1]) * _DURATION_UNITS.get(match[2], 1)
    if seconds > MAX_DURATION_DAYS * 86400:
        raise UsageError(f"bad duration {text!r}: at most {MAX_DURATION_DAYS}d")
    return timedelta(seconds=seconds)


def format_duration(value: timedelta) -> str:
    """The shortest `parse_duration` text for ``value`` (``600 s`` → ``10m``)."""
    seconds = int(value.total_seconds())
    for unit in ("d", "h", "m"):
        if seconds and seconds % _DURATION_UNITS[unit] == 0:
            return f"{seconds // _DURATION_UNITS[unit]}{unit}"
    return f"{seconds}s" if seconds else "0"


def _plan_keys(rows: Iterable[AuditRow]) -> list[PlanKey]:
    """The rows as a confirmed plan names them (`volguard.audit_document.Plan`)."""
    return [(r.model, r.field, str(r.pk)) for r in rows]


def _require_status_fields(models: Iterable[Any]) -> None:
    """``--fix`` marks rows through a status field: a model without one is refused before
    anything runs, naming the setting (a `UsageError`, exit 1), rather than planned and then
    left unmarked."""
    from volguard.django.targets import SETTING, model_config

    lacking = sorted({m._meta.label for m in models if model_config(m).status_field is None})
    if lacking:
        settings = ", ".join(f"{SETTING}[{label!r}]['status_field']" for label in lacking)
        raise UsageError(
            f"--fix cannot mark rows of {', '.join(lacking)}: no status field; set {settings} "
            "(and failed_value), or leave the model out with --model"
        )


def _owner_names(result: AuditResult) -> dict[tuple[str, Any], str]:
    """``str()`` of each reported owner that is a related object (a user), in one query each."""
    from django.apps import apps

    names: dict[tuple[str, Any], str] = {}
    for report in result.fields:
        owner_field = report.config.owner_field
        if owner_field is None:
            continue
        related = apps.get_model(report.model)._meta.get_field(owner_field).related_model
        ids = {r.owner for r in result.rows if r.model == report.model and r.owner is not None}
        if related is None or not ids:
            continue
        for pk, obj in related._default_manager.in_bulk(list(ids)).items():
            names[(report.model, pk)] = str(obj)
    return names


def _path(row: AuditRow) -> str:
    if row.reason == EMPTY:
        return "(empty file field)"
    if row.reason == INVALID_NAME:
        return f"(not looked up: the name {row.detail})"
    if not row.path:
        return "(not looked up: invalid name)"
    return _shown(row.path)


def _shown(text: Any) -> str:
    """Text safe for one terminal line: control characters (NUL, newline, …) escaped."""
    text = str(text)
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def _pk_order(row: AuditRow) -> tuple[int, Any]:
    return _sortable(row.pk)


def _sortable(value: Any) -> tuple[int, Any]:
    """Numbers in numeric order, then anything else as text, then None."""
    if value is None:
        return (2, "")
    if isinstance(value, int):
        return (0, value)
    return (1, str(value))


def _counts(counter: Any) -> str:
    """``missing 2, empty 1`` (reasons in the audit's order)."""
    order = {reason: i for i, reason in enumerate(REASONS)}
    items = sorted(counter.items(), key=lambda kv: order.get(kv[0], len(order)))
    return ", ".join(f"{reason} {count}" for reason, count in items if count)


def _rows(count: int) -> str:
    return f"{count} row" if count == 1 else f"{count} rows"
