"""`volguard recover`: find the lost uploads where the platform stranded them, copy them back.

In the incidents volguard exists for, the files a row names are usually not destroyed, only
stranded: on the worker's volume (the split, VG103/VG205), on a sibling app Machine's volume
(VG206). Without ``--apply`` it only reads:

1. what is missing: ``check_missing_files --json`` on the target Machine (the first started
   Machine of the web group, as `volguard remediate` chooses it), through remediate's own
   `audit_on` — the rows whose reason is ``missing`` or ``empty_file``;
2. where it may be: every `Source`, read-only, cheapest first: ``machines``
   (`MachineSource`: every other started Machine of the app, every group, in ONE probe
   session each: size, sha256, mtime of each name under that Machine's own MEDIA_ROOT),
   then ``volumes`` (`TemporarySource`: each unattached media volume that holds data,
   forked onto a temporary Machine), then ``snapshots`` (each `created` snapshot of a media
   volume, newest first, restored onto a temporary Machine). A volume or snapshot is
   searched only for the names no cheaper source had a copy of, and not at all (no fork, no
   restore) once every name is found. Temporary volumes and Machines are made and
   destroyed by `volguard.fly.temporary`, recorded in the run record's step while they
   live (``--apply``), kept from the search that made them to the run's end (the copy
   reads the copy it searched) and removed then, or by ``--resume`` after a kill;
3. the plan (`volguard.recover_document`): each row ``found``, ``conflict`` or
   ``not_found``.

With ``--apply``, the runbook's steps (`STEPS`), each recorded in a run record
(`volguard.runs`, kind ``recover``) under a per-app lock, ``--resume`` from the first that
did not finish: ``gate`` (verify-volume for the target passes), ``audit``, ``search``,
``confirm`` (``--yes`` for CI), ``snapshot`` (the target's volume, waited on until
``created``), ``copy`` (ONE streaming session per source Machine and ONE on the target: the
source's send mode writes frames, volguard relays them a chunk at a time into the target's
receive mode, which never replaces a file and verifies each sha256; a volume or snapshot
is read on the temporary Machine its search made), ``restore-rows``
(``manage.py restore_fixed_rows --apply`` on the target for the files this run and the runs it
resumes restored: rows an earlier ``--fix`` marked failed get their status and log back when
nobody changed them since), ``re-audit``.

The rows an earlier ``--fix`` marked failed are named by the change log on the target's volume
(``restore_fixed_rows --json``, a plan, beside the audit): flagged ``marked_failed`` in the
plan, and searched for even when the audit does not list them.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import posixpath
import select
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from volguard.audit_document import find_document
from volguard.audit_log import AuditLog
from volguard.config import Settings
from volguard.django.row_restore import RESTORED as ROW_RESTORED
from volguard.errors import (
    ProbeError,
    RemoteCommandError,
    StepFailed,
    TemporaryResourceError,
    Unreachable,
    UsageError,
    VolguardError,
)
from volguard.findings import Severity
from volguard.fly.client import MachinesClient, Token
from volguard.fly.fleet import Fleet, load_fleet
from volguard.fly.models import SNAPSHOT_CREATED, Machine, Snapshot, Volume
from volguard.fly.temporary import GROUP as TEMPORARY_GROUP
from volguard.fly.temporary import (
    Ledger,
    TemporaryMachine,
    TemporaryMachines,
    cleanup,
    temporary_machine,
)
from volguard.flytoml import FlyConfig
from volguard.lint import static_context
from volguard.recover_document import (
    ALREADY_RESTORED_STATUSES,
    MACHINE_KIND,
    PREFERENCES,
    SNAPSHOT_KIND,
    VERIFIED,
    VOLUME_KIND,
    Applied,
    Copy,
    MissingRow,
    PlanRow,
    RecoverDocument,
    Transfer,
    classify,
    missing_rows,
    transfers,
    with_marked_failed,
)
from volguard.remediate import (
    DEFAULT_MANAGE_PY,
    STATE_DIR,
    _transport,
    audit_on,
    choose_machine,
    media_destination,
    read_audit,
    run_manage,
)
from volguard.remote.probe import exit_status, parse_facts, probe_script
from volguard.remote.transports import Stream, Transport
from volguard.report import RAN, Report
from volguard.runs import RUNS_DIR, SKIPPED, RunLock, RunRecord, Step, finish_run
from volguard.terminal import printable

Out = Callable[[str], None]
Confirm = Callable[[str], bool]
ClientFactory = Callable[[Token], MachinesClient]

#: Source kinds, in the order of their cost (the order they are searched in).
SOURCE_KINDS = ("machines", "volumes", "snapshots")
#: Kinds read through a temporary Machine, which the `local` transport cannot reach.
TEMPORARY_KINDS = ("volumes", "snapshots")
LOCAL_ONLY = (
    "not available over the local transport: it reaches only this Machine, not a "
    "temporary one (use --transport ssh or fly)"
)
ALREADY_FOUND = "not searched: every missing row was found on a cheaper source"
STEPS = ("gate", "audit", "search", "confirm", "snapshot", "copy", "restore-rows", "re-audit")
#: Error findings that describe the split recover repairs (files stranded on other volumes),
#: not a fault of the target's storage: they do not stop the gate.
SPLIT_IDS = frozenset({"VG103", "VG112", "VG205", "VG206", "VG306"})
#: Must match the probe program's markers (volguard/remote/probe_script.py).
STREAM_BEGIN = b"__VOLGUARD_STREAM_BEGIN__"
RESULT = b"__VOLGUARD_RESULT__ "
CHUNK = 1 << 16
MAX_LINE = 1 << 20
#: How often the run record is rewritten while files are being verified (seconds).
SAVE_EVERY = 0.5
SAVE_SHARE = 10  # the copy saves its record after at least 10x the last save's duration
FLUSH_EVERY = 0.2  # seconds a relayed file may wait in the pipe to the target, at most


# -- options and the public entry ------------------------------------------------------------


def parse_sources(text: str | None) -> tuple[tuple[str, ...], bool]:
    """``--sources`` as kinds in the order of their cost, and whether they were asked for;
    an unknown kind is a one-line UsageError (exit 1)."""
    if not text:
        return SOURCE_KINDS, False
    kinds = {k.strip() for k in text.split(",") if k.strip()}
    unknown = sorted(k for k in kinds if k not in SOURCE_KINDS)
    if unknown or not kinds:
        raise UsageError(
            f"--sources {text!r}: choose from {', '.join(SOURCE_KINDS)} (comma-separated)"
        )
    return tuple(k for k in SOURCE_KINDS if k in kinds), True


def parse_before(text: str | None) -> dt.datetime | None:
    """``--snapshot-before``: an ISO 8601 date or time (UTC unless it says otherwise)."""
    if not text:
        return None
    try:
        when = dt.datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise UsageError(
            f"--snapshot-before {text!r}: give an ISO 8601 time, e.g. 2026-11-20 or "
            "2026-11-20T14:00:00Z"
        ) from None
    return when if when.tzinfo else when.replace(tzinfo=dt.UTC)


@dataclass
class RecoverOptions:
    """What to search, whether to act, and how long to wait."""

    apply: bool = False
    sources: tuple[str, ...] = SOURCE_KINDS
    prefer: str | None = None  # newest | largest: settles a conflict
    resume: bool = False
    fly_toml: str | None = None
    machine_id: str | None = None  # the target; default: as remediate chooses
    timeout: float = 900.0  # one audit or search session
    copy_timeout: float = 6 * 3600.0  # one copy session
    snapshot_timeout: float = 300.0
    snapshot_poll: float = 1.0
    snapshot_before: dt.datetime | None = None  # search only snapshots taken before this
    temporary_timeout: float = 300.0  # a fork, restore or temporary Machine becoming usable
    temporary_poll: float = 0.5


@dataclass
class Outcome:
    app: str
    exit_code: int = 0
    target: Machine | None = None
    document: RecoverDocument | None = None
    record: RunRecord | None = None
    after_missing: list[dict[str, Any]] | None = None
    error: VolguardError | None = None

    def as_dict(self) -> dict[str, Any]:
        """The ``--format json`` document (docs/recover.md)."""
        document = self.document or RecoverDocument(plan=[])
        out = document.as_dict()
        summary = out["summary"]
        summary["app"] = self.app
        summary["target"] = (
            {"machine": self.target.id, "group": self.target.group, "region": self.target.region}
            if self.target
            else None
        )
        summary["exit_code"] = self.exit_code
        summary["record"] = self.record.path if self.record else None
        summary["status"] = self.record.status if self.record else None
        summary["error"] = str(self.error) if self.error else None
        if self.after_missing is not None:
            summary["still_missing"] = self.after_missing
            summary["next"] = next_step(self.after_missing)
        return out


@dataclass
class RecoverContext:
    """What every step reads: inputs, options, and the `Outcome` the steps fill."""

    settings: Settings
    config: FlyConfig
    app: str
    token: Token
    options: RecoverOptions = field(default_factory=RecoverOptions)
    confirm: Confirm | None = None  # None: --yes
    client_factory: ClientFactory = MachinesClient
    audit: AuditLog | None = None  # the local change log (snapshots)
    runs_dir: str = RUNS_DIR
    out: Out = print
    outcome: Outcome = field(init=False)
    fleet: Fleet | None = None
    previous: RunRecord | None = None  # the run --resume continues
    missing: list[MissingRow] = field(default_factory=list)  # what the audit step found
    #: the run's temporary Machines, one per volume or snapshot searched, kept to its end
    temporaries: TemporaryMachines = field(default_factory=TemporaryMachines)

    def __post_init__(self) -> None:
        self.outcome = Outcome(app=self.app)

    @property
    def media_groups(self) -> tuple[str, ...]:
        return tuple(static_context(self.config, self.settings).media_groups)

    @property
    def manage_py(self) -> str:
        return self.settings.manage_py or DEFAULT_MANAGE_PY

    @property
    def target(self) -> Machine:
        assert self.outcome.target is not None
        return self.outcome.target

    @property
    def document(self) -> RecoverDocument:
        assert self.outcome.document is not None
        return self.outcome.document

    def load_fleet(self) -> Fleet:
        with self.client_factory(self.token) as client:
            self.fleet = load_fleet(client, self.app)
        return self.fleet

    def choose_target(self) -> Machine:
        fleet = self.fleet or self.load_fleet()
        self.outcome.target = choose_machine(fleet, self.media_groups, self.options.machine_id)
        return self.outcome.target

    def transport(self, timeout: float | None = None) -> Transport:
        return _transport(self.settings, self.app, timeout or self.options.timeout)

    def sources(self, transport: Transport, ledger: Ledger) -> Iterator[Source]:
        """The sources to search, cheapest first: every other started Machine, then each
        unattached media volume that holds data, then each `created` snapshot of a media
        volume (newest first; before --snapshot-before when given). Nothing is made here:
        a temporary source forks or restores when it is first searched or read, once per
        run (`temporaries`)."""
        fleet = self.fleet or self.load_fleet()
        target = self.target
        kinds = self.available_kinds()
        if "machines" in kinds:
            for m in fleet.machines:
                if m.state == "started" and m.id != target.id and not _temporary(m):
                    timeout = self.options.timeout
                    yield MachineSource(transport, m, self.settings, timeout, self.token)
        if "volumes" not in kinds and "snapshots" not in kinds:
            return
        media = [v for v in fleet.volumes if v.name in self.media_volume_names()]
        if "volumes" in kinds:
            for volume in media:
                if holds_data(volume):
                    yield self._temporary(transport, ledger, volume, None)
        if "snapshots" in kinds:
            taken: list[tuple[Snapshot, Volume]] = []
            with self.client_factory(self.token) as client:
                for volume in media:
                    taken += [(s, volume) for s in client.list_snapshots(self.app, volume.id)]
            for snapshot, volume in choose_snapshots(taken, self.options.snapshot_before):
                yield self._temporary(transport, ledger, volume, snapshot)

    def available_kinds(self) -> tuple[str, ...]:
        if self.settings.transport == "local":
            return tuple(k for k in self.options.sources if k not in TEMPORARY_KINDS)
        return self.options.sources

    def unavailable(self) -> dict[str, str]:
        return {k: LOCAL_ONLY for k in self.options.sources if k not in self.available_kinds()}

    def media_volume_names(self) -> set[str]:
        return {m.source for g in self.media_groups for m in self.config.mounts_of(g)}

    def _temporary(
        self, transport: Transport, ledger: Ledger, volume: Volume, snapshot: Snapshot | None
    ) -> TemporarySource:
        target = self.target
        media_root = (
            self.settings.media_root
            or target.env.get("MEDIA_ROOT")
            or self.config.env.get("MEDIA_ROOT")
        )
        return TemporarySource(
            transport=transport,
            settings=self.settings,
            timeout=self.options.timeout,
            token=self.token,
            client_factory=self.client_factory,
            app=self.app,
            volume=volume,
            snapshot=snapshot,
            template=target,
            mount_path=media_destination(self.config, target.group),
            media_root=media_root,
            ledger=ledger,
            kept=self.temporaries,
            make_timeout=self.options.temporary_timeout,
            poll=self.options.temporary_poll,
            out=lambda line: print(f"  {line}", file=sys.stderr, flush=True),
        )


def holds_data(volume: Volume) -> bool:
    """An unattached, usable volume whose filesystem has something on it. A volume never
    mounted reports no usage (0 blocks): it holds nothing to search."""
    used = volume.used_fraction
    return (
        not volume.attached
        and volume.state == "created"
        and volume.host_status == "ok"
        and used is not None
        and used > 0
    )


def choose_snapshots(
    taken: Sequence[tuple[Snapshot, Volume]], before: dt.datetime | None
) -> list[tuple[Snapshot, Volume]]:
    """The `created` snapshots (taken before ``before``, when given), newest first."""
    done = [
        (s, v)
        for s, v in taken
        if s.id and s.created_at is not None and (s.status or SNAPSHOT_CREATED) == SNAPSHOT_CREATED
    ]
    if before is not None:
        done = [(s, v) for s, v in done if s.created_at is not None and s.created_at < before]
    return sorted(done, key=lambda sv: sv[0].created_at or dt.datetime.min, reverse=True)


def _temporary(machine: Machine) -> bool:
    return machine.group == TEMPORARY_GROUP


def recover(ctx: RecoverContext) -> Outcome:
    """Plan (no ``--apply``) or run the recovery runbook; see the module docstring."""
    options, outcome = ctx.options, ctx.outcome
    if options.prefer not in (None, *PREFERENCES):
        raise UsageError(f"--prefer {options.prefer}: choose {' or '.join(PREFERENCES)}")
    if options.resume and not options.apply:
        raise UsageError("--resume needs --apply")
    if not options.apply:
        # No run record: a plan killed while a temporary copy is up leaves its vg_tmp_…
        # volume and volguard-tmp-… Machine (docs/recover.md says so).
        try:
            ctx.choose_target()
            missing = _what_is_missing(ctx)
            outcome.document = _search(ctx, missing, Ledger.in_memory())
            outcome.exit_code = outcome.document.exit_code()
        finally:
            _remove_temporaries(ctx)
        return outcome

    with RunLock(ctx.app, ctx.runs_dir):
        fly_toml = options.fly_toml or ctx.settings.fly_toml
        run_options = {
            "sources": list(options.sources),
            "prefer": options.prefer,
            "machine": options.machine_id,
            "transport": ctx.settings.transport,
        }
        if options.resume:
            record = RunRecord.resume(
                "recover", ctx.app, STEPS, fly_toml=fly_toml, runs_dir=ctx.runs_dir,
                options=run_options, mask=ctx.token.redact,
            )  # fmt: skip
            assert record.resumed_from is not None
            ctx.previous = RunRecord.load(os.path.join(ctx.runs_dir, f"{record.resumed_from}.json"))
            record.options["chain"] = [*ctx.previous.options.get("chain", []), ctx.previous.id]
        else:
            record = RunRecord.new(
                "recover", ctx.app, STEPS, fly_toml=fly_toml, runs_dir=ctx.runs_dir,
                options=run_options, mask=ctx.token.redact,
            )  # fmt: skip
        outcome.record = record
        try:
            if ctx.previous is not None:
                _clean_up_earlier(ctx, ctx.previous)
            _carry_over(ctx, record)
            for name in STEPS:
                step = record.get(name)
                if step.carried_over or step.status == SKIPPED:
                    continue
                with record.step(name) as step:
                    STEP_FUNCTIONS[name](ctx, step)
            document = outcome.document
            outcome.exit_code = document.exit_code() if document else 0
        except VolguardError as e:
            outcome.error = e
            outcome.exit_code = e.exit_code
        finally:
            _clean_up_run(ctx, record)
            finish_run(record)
    return outcome


def _clean_up_earlier(ctx: RecoverContext, previous: RunRecord) -> None:
    """--resume: destroy what the earlier runs of the chain made and did not destroy (a
    killed run), from their records; only what they recorded is touched."""
    chain = [*previous.options.get("chain", []), previous.id]
    records = [previous]
    for run_id in chain[:-1]:
        path = os.path.join(ctx.runs_dir, f"{run_id}.json")
        if os.path.exists(path):
            records.append(RunRecord.load(path))
    with ctx.client_factory(ctx.token) as client:
        for earlier in records:
            for gone in cleanup(earlier, client):
                ctx.out(f"{gone}: temporary resource of run {earlier.id} destroyed")


def _clean_up_run(ctx: RecoverContext, record: RunRecord) -> None:
    """The run's end, however it ends: its temporary Machines and copies are destroyed
    (each lives from the search that made it to here), then whatever else the record lists
    and is not destroyed yet (a removal that failed just now is tried once more)."""
    _remove_temporaries(ctx, report=False)  # what it could not remove, cleanup tries again
    if not any(s.detail.get("temporary") for s in record.steps):
        return
    try:
        with ctx.client_factory(ctx.token) as client:
            cleanup(record, client, out=ctx.out)
    except VolguardError as e:
        _failed(ctx, e)


def _remove_temporaries(ctx: RecoverContext, report: bool = True) -> None:
    """Destroy the run's kept temporary Machines and copies. With ``report``, what could
    not be removed is the outcome's error (unless it has one already)."""
    try:
        ctx.temporaries.close()
    except VolguardError as e:
        if report:
            _failed(ctx, e)


def _failed(ctx: RecoverContext, error: VolguardError) -> None:
    if ctx.outcome.error is None:
        ctx.outcome.error = error
        ctx.outcome.exit_code = error.exit_code


def _carry_over(ctx: RecoverContext, record: RunRecord) -> None:
    """A resumed run: the target and the plan from the steps carried over (the plan executed
    is the plan confirmed), and the copies already verified."""
    gate_step_ = record.get("gate")
    if gate_step_.carried_over:
        fleet = ctx.load_fleet()
        target_id = gate_step_.detail.get("target")
        target = next((m for m in fleet.machines if m.id == target_id), None)
        if target is None or target.state != "started":
            raise StepFailed(f"--resume: the target Machine {target_id} is no longer started")
        ctx.outcome.target = target
    search = record.get("search")
    if search.carried_over:
        ctx.outcome.document = _document_from(search.detail, ctx.options.prefer)
    if record.get("copy").carried_over:
        _applied_from(ctx, record.get("copy").detail.get("verified") or {})


# -- the steps -------------------------------------------------------------------------------


def gate_step(ctx: RecoverContext, step: Step) -> None:
    """verify-volume for the target Machine must pass (its volume mounted, writable, …);
    the split itself (SPLIT_IDS) is what recover repairs and does not stop it."""
    from volguard.verify import verify

    target = ctx.choose_target()
    report = verify(
        ctx.settings,
        ctx.options.fly_toml,
        token=ctx.token,
        client_factory=ctx.client_factory,
        machine_ids=(target.id,),
        groups=(target.group,),
    )
    passed, line, ids = gate(report, target)
    step.detail = {"target": target.id, "group": target.group, "finding_ids": ids}
    if not passed:
        step.failed(line)
        raise StepFailed(line)
    step.ok(line)


def audit_step(ctx: RecoverContext, step: Step) -> None:
    """The rows whose file is missing on the target; none stops the run here."""
    missing = _what_is_missing(ctx)
    step.detail = {"rows": len(missing)}
    ctx.outcome.document = RecoverDocument(plan=[])
    if not missing:
        step.ok("nothing is missing: nothing to recover")
        _skip_rest(ctx, "audit", "nothing to recover")
        return
    ctx.missing = missing
    step.ok(f"{_files(len(missing), 'row')} without their file on {ctx.target.id}")


def search_step(ctx: RecoverContext, step: Step) -> None:
    """Every source, read-only: the plan."""
    missing = ctx.missing or _what_is_missing(ctx)  # resumed: the audit step was carried over
    record = ctx.outcome.record
    assert record is not None
    document = ctx.outcome.document = _search(ctx, missing, Ledger.for_step(record, "search"))
    step.detail.update(document.as_dict())  # beside the ledger of temporary resources
    summary = document.summary()
    line = (
        f"found {summary['found']}, conflict {summary['conflict']}, not found "
        f"{summary['not_found']}; {_files(summary['files_to_copy'])} "
        f"({summary['bytes_to_copy']} bytes) to copy"
    )
    if not summary["files_to_copy"]:
        step.ok(f"{line}: nothing to copy")
        _skip_rest(ctx, "search", "no copy to restore", keep=("re-audit",))
        return
    step.ok(line)


def confirm_step(ctx: RecoverContext, step: Step) -> None:
    summary = ctx.document.summary()
    question = (
        f"Copy {_files(summary['files_to_copy'])} ({summary['bytes_to_copy']} bytes) to "
        f"Machine {ctx.target.id} of app {ctx.app}?"
    )
    if ctx.confirm is None:
        step.ok("--yes")
    elif ctx.confirm(question):
        step.ok("confirmed at the terminal")
    else:
        step.failed("not confirmed")
        raise VolguardError("not confirmed: nothing was copied")


def snapshot_step(ctx: RecoverContext, step: Step) -> None:
    """A snapshot of the target's volume, waited on until `created`, before any write."""
    from volguard.fly.snapshots import snapshot_volumes

    fleet = ctx.fleet or ctx.load_fleet()
    mount = ctx.target.mount
    volume = fleet.volume(mount.volume) if mount else None
    if volume is None:
        step.failed(f"Machine {ctx.target.id} has no volume: refusing to copy without a backup")
        raise StepFailed(step.summary)
    audit = ctx.audit or AuditLog(command="recover")

    def taken(v: Any, snapshot_id: str) -> None:
        audit.record("create_snapshot", v.id, after={"snapshot": snapshot_id}, app=ctx.app)
        ctx.out(f"{v.id}: snapshot {snapshot_id} created")

    with ctx.client_factory(ctx.token) as client:
        taken_ids = snapshot_volumes(
            client,
            ctx.app,
            [volume],
            timeout=ctx.options.snapshot_timeout,
            poll=ctx.options.snapshot_poll,
            on_taken=taken,
            progress=lambda line: print(line, file=sys.stderr, flush=True),
        )
    step.detail = {"snapshots": taken_ids}
    step.changed(", ".join(f"{v}: {s}" for v, s in taken_ids.items()))


def copy_step(ctx: RecoverContext, step: Step) -> None:
    """Stream each chosen copy to the target; what is verified goes into the record at once."""
    record = ctx.outcome.record
    assert record is not None
    moves = transfers(ctx.document.plan)
    earlier = (ctx.previous.get("copy").detail.get("verified") or {}) if ctx.previous else {}
    verified: dict[str, str] = {
        t.name: t.copy.sha256 for t in moves if earlier.get(t.name) == t.copy.sha256
    }
    results: dict[str, dict[str, Any]] = {}
    step.detail = {"verified": verified, "results": results, "carried": len(verified)}
    record.save()  # what earlier runs verified stays in the record even if this one is killed
    todo = [t for t in moves if t.name not in verified]
    lock = record.lock  # the receiving session's thread and this one both change the record
    last_save, save_cost = [time.monotonic()], [0.0]
    planned = {t.name: t.copy.sha256 for t in moves}

    def on_result(result: dict[str, Any]) -> None:
        name = result.get("name")
        if not isinstance(name, str):
            return
        with lock:
            results[name] = {k: v for k, v in result.items() if k != "name"}
            if result.get("status") in VERIFIED:
                verified[name] = str(result.get("sha256") or planned.get(name, ""))
            # a save writes the whole record (the plan, every result), holding the GIL the
            # relay needs: with 10,000 files it takes tenths of a second, so save at most
            # every SAVE_EVERY seconds and at most a tenth of the time. What a kill loses
            # is not sent again: the target answers first with the files already in place
            # (present_identical, logged once), and only the rest is sent
            now = time.monotonic()
            if now - last_save[0] >= max(SAVE_EVERY, SAVE_SHARE * save_cost[0]):
                record.save()
                last_save[0] = time.monotonic()
                save_cost[0] = last_save[0] - now

    sent = {"files": 0, "bytes": 0}
    step.detail["sent"] = sent
    if todo:
        sent.update(_copy(ctx, todo, on_result, record))
    with lock:
        record.save()
    _applied_from(ctx, verified)
    restored = sum(1 for r in results.values() if r.get("status") == "restored")
    problems = {n: r for n, r in results.items() if r.get("status") not in VERIFIED}
    not_sent = [t.name for t in todo if t.name not in results]
    for name in not_sent:
        problems[name] = {"status": "not_sent"}
    step.detail["problems"] = problems
    line = f"{_files(restored)} restored and verified"
    if verified and len(verified) > restored:
        line += f", {len(verified) - restored} already in place"
    if problems:
        kinds = sorted({str(p.get("status")) for p in problems.values()})
        line += f"; {_files(len(problems))} not restored ({', '.join(kinds)})"
    if restored:
        step.changed(line)
    else:
        step.ok(line)


def restore_rows_step(ctx: RecoverContext, step: Step) -> None:
    """Rows an earlier --fix marked failed whose file this run (or a run it resumes) restored
    and verified: ``restore_fixed_rows --apply`` on the target puts their fields back."""
    record = ctx.outcome.record
    assert record is not None
    document = ctx.document
    applied = document.applied or []
    if not any(a.marked_failed for a in applied):
        step.ok("no restored file belongs to a row an earlier --fix marked failed")
        return
    runs = [*(record.options.get("chain") or ()), record.id]
    argv = ["restore_fixed_rows", "--apply", "--json", "--audit-log", _change_log(ctx)]
    for run_id in runs:
        argv += ["--restored-by", run_id]
    report = _manage_json(ctx, argv, "restore_fixed_rows --apply")
    rows = {(str(r.get("model")), str(r.get("pk"))): r for r in report.get("rows") or ()}
    left: dict[str, str] = {}
    for a in applied:
        row = rows.get((a.model, str(a.pk)))
        status = str(row.get("status")) if row else None
        a.row_restored = status in ALREADY_RESTORED_STATUSES
        if a.marked_failed and not a.row_restored:
            left[f"{a.model}#pk={a.pk}"] = (
                f"{status}: {row.get('why')}" if row else "not found in the change log"
            )
    done = sum(1 for r in rows.values() if r.get("status") == ROW_RESTORED)
    step.detail = {"restored": done, "rows": list(rows.values()), "left": left}
    line = f"{_files(done, 'row')} back to their values before --fix"
    if left:
        line += f"; {_files(len(left), 'row')} left failed: " + ", ".join(
            f"{k} ({v})" for k, v in list(left.items())[:6]
        )
    if done:
        step.changed(line)
    else:
        step.ok(line)


def reaudit_step(ctx: RecoverContext, step: Step) -> None:
    """The audit again: the rows still without their file, and what to do next."""
    left = _audit(ctx)
    ctx.outcome.after_missing = [
        {"model": r.model, "pk": r.pk, "field": r.field, "name": r.name, "reason": r.reason}
        for r in left
    ]
    step.detail = {"still_missing": ctx.outcome.after_missing}
    step.ok(f"{_files(len(left), 'row')} still without their file; {next_step(left)}")


STEP_FUNCTIONS: dict[str, Callable[[RecoverContext, Step], None]] = {
    "gate": gate_step,
    "audit": audit_step,
    "search": search_step,
    "confirm": confirm_step,
    "snapshot": snapshot_step,
    "copy": copy_step,
    "restore-rows": restore_rows_step,
    "re-audit": reaudit_step,
}


# -- the gate --------------------------------------------------------------------------------


def gate(report: Report, target: Machine) -> tuple[bool, str, list[str]]:
    """Pass with the Machine layer run on the target and no unwaived error finding other
    than the split's own (SPLIT_IDS): (passed, line, blocking ids)."""
    blocking = [
        f for f in report.sorted_findings() if f.counts_at(Severity.ERROR) and f.id not in SPLIT_IDS
    ]
    if blocking:
        ids = list(dict.fromkeys(f.id for f in blocking))
        where = ", ".join(f"{f.id} ({f.location})" for f in blocking[:6])
        return (
            False,
            f"recovery refused: verify-volume finds {where}; never copy onto a volume that is "
            "not mounted and writable (nothing was copied)",
            ids,
        )
    layer = report.layers.get("machine")
    if layer is None or layer.status != RAN:
        why = f"{layer.status}: {layer.reason}" if layer else "not run"
        return False, f"recovery refused: the Machine layer did not run on {target.id} ({why})", []
    return True, f"verify-volume passed for Machine {target.id}", []


# -- what is missing, where it is --------------------------------------------------------------


def _audit(ctx: RecoverContext) -> list[MissingRow]:
    run, _ = audit_on(
        ctx.settings, ctx.app, ctx.target, ctx.manage_py, ctx.token, ctx.options.timeout
    )
    return missing_rows(read_audit(run, ctx.token))


def _what_is_missing(ctx: RecoverContext) -> list[MissingRow]:
    """The audit's rows, and the rows the change log says an earlier --fix marked failed
    (flagged, and added when their file is missing and the audit left them out)."""
    missing = _audit(ctx)
    argv = ["restore_fixed_rows", "--json", "--audit-log", _change_log(ctx)]
    fixed = _manage_json(ctx, argv, "restore_fixed_rows")
    return with_marked_failed(missing, fixed.get("rows") or ())


def _change_log(ctx: RecoverContext) -> str:
    """The change log on the target's volume, where --fix and the copy write theirs."""
    state = posixpath.join(media_destination(ctx.config, ctx.target.group), STATE_DIR)
    return posixpath.join(state, "audit.jsonl")


def _manage_json(ctx: RecoverContext, argv: list[str], what: str) -> dict[str, Any]:
    """``manage.py argv`` on the target as the app user; its JSON document (exit 0 or 2)."""
    with ctx.transport() as transport:
        run = run_manage(
            transport, ctx.target, argv, manage_py=ctx.manage_py,
            app_user=ctx.settings.app_user, timeout=ctx.options.timeout, token=ctx.token,
        )  # fmt: skip
    document = find_document(run.stdout) if run.returncode in (0, 2) else None
    if document is None:
        raise RemoteCommandError(
            ctx.token.redact(
                f"manage.py {what} failed (exit {run.returncode}, as {run.user}): "
                f"{run.last_error_line()}"
            )
        )
    return document


def _search(ctx: RecoverContext, missing: Sequence[MissingRow], ledger: Ledger) -> RecoverDocument:
    """Each source in the order of its cost. The Machines are each searched for every name
    (two that differ are a conflict); a volume or snapshot, which costs a fork or a restore
    and a temporary Machine, only for the names no earlier source had a usable copy of,
    and not at all once there are none."""
    names = list(dict.fromkeys(r.name for r in missing))
    document = RecoverDocument(plan=[], unavailable=ctx.unavailable(), prefer=ctx.options.prefer)
    copies: dict[str, list[Copy]] = {n: [] for n in names}
    if names:
        with ctx.transport() as transport:
            for source in ctx.sources(transport, ledger):
                wanted = names
                if source.kind != MACHINE_KIND:
                    wanted = [n for n in names if not any(c.size > 0 for c in copies[n])]
                if not wanted:
                    document.skipped[source.id] = ALREADY_FOUND
                    continue
                document.searched.append(source.id)
                try:
                    found = source.search(wanted)
                except VolguardError as e:
                    document.source_errors[source.id] = ctx.token.redact(str(e))
                    continue
                for name, copy in found.items():
                    copies.setdefault(name, []).append(copy)
    document.plan = [classify(r, copies.get(r.name, ()), ctx.options.prefer) for r in missing]
    return document


def _document_from(detail: dict[str, Any], prefer: str | None) -> RecoverDocument:
    summary = detail.get("summary") or {}
    return RecoverDocument(
        plan=[PlanRow.from_dict(p) for p in detail.get("plan") or ()],
        searched=list(summary.get("sources_searched") or ()),
        unavailable=dict(summary.get("sources_not_available") or {}),
        source_errors=dict(summary.get("sources_failed") or {}),
        skipped=dict(summary.get("sources_skipped") or {}),
        prefer=summary.get("prefer", prefer),
    )


def _applied_from(ctx: RecoverContext, verified: dict[str, str]) -> None:
    document = ctx.outcome.document
    if document is None:
        return
    document.applied = [
        Applied(r.model, r.pk, t.name, t.copy.sha256, marked_failed=r.marked_failed)
        for t in transfers(document.plan)
        if verified.get(t.name) == t.copy.sha256
        for r in t.rows
    ]


#: The names a send session is to send, or a function that returns them (called once the
#: session is under way).
Names = Sequence[str] | Callable[[], Sequence[str]]


class Source(Protocol):
    """Where a lost file may be. Read-only: ``search`` looks, ``open_reader`` streams the
    named files as frames (`FrameReader`): a started Machine (`MachineSource`), or an
    unattached volume or a snapshot read through a temporary Machine (`TemporarySource`)."""

    kind: str

    @property
    def id(self) -> str: ...

    def describe(self) -> str: ...

    def search(self, names: Sequence[str]) -> dict[str, Copy]: ...

    def open_reader(
        self, names: Names, timeout: float
    ) -> contextlib.AbstractContextManager[FrameReader]: ...


@dataclass
class MachineSource:
    """A started Machine of the app: its files under its own MEDIA_ROOT, as its app sees it."""

    transport: Transport
    machine: Machine
    settings: Settings
    timeout: float
    token: Token | None = None
    kind: str = MACHINE_KIND
    #: For a temporary Machine: the id its copies are reported under (the volume or the
    #: snapshot it holds a copy of), what it is, and where the app's MEDIA_ROOT is.
    source_id: str | None = None
    what: str | None = None
    media_root: str | None = None

    @property
    def id(self) -> str:
        return self.source_id or self.machine.id

    def describe(self) -> str:
        m = self.machine
        return self.what or f"Machine {m.id} (group {m.group}, {m.region})"

    def _spec(self, names: Sequence[str]) -> dict[str, Any]:
        return {
            "names": list(names),
            "group": self.machine.group,
            "app_user": self.settings.app_user,
            "media_root": self.media_root or self.settings.media_root,
        }

    def _spec_stdin(self) -> dict[str, Any]:
        # the names follow on stdin: a command line holds at most 128 KiB (MAX_ARG_STRLEN)
        return dict(self._spec(()), names_on_stdin=True)

    def search(self, names: Sequence[str]) -> dict[str, Copy]:
        """One probe session: each name's size, sha256 and mtime (absent names left out)."""
        where = f"{self.describe()} over the {self.transport.options.kind} transport"
        command = probe_script({"locate": self._spec_stdin()})
        try:  # a stream, so that the names go on stdin, not on the command line
            with self.transport.stream(self.machine, command, timeout=self.timeout) as stream:
                _names_in(stream, names)
                stdout = stream.stdout.read().decode("utf-8", "replace")
                stream.wait()
                stderr = stream.stderr_tail
        except Unreachable as e:
            raise RemoteCommandError(f"{where} is unreachable: {e}") from None
        except Exception as e:  # ssh and flyctl fail in assorted ways for a dead host
            raise RemoteCommandError(f"{where} is unreachable: {type(e).__name__}") from None
        if exit_status(stdout) is None:
            raise RemoteCommandError(f"{where} is unreachable: {_last(stderr)}")
        try:
            facts = parse_facts(stdout)
        except ProbeError as e:
            raise RemoteCommandError(f"{where}: {e}") from None
        files = facts.get("files")
        if not isinstance(files, dict):
            errors = "; ".join(str(e) for e in facts.get("errors") or ()) or "no answer"
            raise RemoteCommandError(f"{where}: {errors}")
        found: dict[str, Copy] = {}
        for name, seen in files.items():
            if isinstance(seen, dict) and seen.get("status") == "found":
                found[name] = Copy(
                    self.kind, self.id, int(seen["size"]), str(seen["sha256"]),
                    float(seen["mtime"]),
                )  # fmt: skip
        return found

    @contextlib.contextmanager
    def open_reader(self, names: Names, timeout: float) -> Iterator[FrameReader]:
        """One streaming session of the probe's send mode. ``names`` may be a function: it
        is called once the session is under way, so that its set-up overlaps the wait."""
        command = probe_script({"send": self._spec_stdin()})
        with self.transport.stream(self.machine, command, timeout=timeout) as stream:
            _names_in(stream, names() if callable(names) else names)
            reader = FrameReader(stream, self.describe())
            reader.start()
            yield reader


@dataclass
class TemporarySource:
    """An unattached volume (kind ``volume``) or one snapshot of a media volume (kind
    ``snapshot``), never touched itself: its first use forks the volume (or restores the
    snapshot into a new volume) and starts a temporary Machine in its region with the app's
    image (the target's) and the copy mounted where the app mounts its volume; each use
    (the search, the send session) reads that Machine like any other, in one session. The
    Machine and its copy are kept in `kept`, the run's `TemporaryMachines`, and destroyed
    when the run ends: the copy step reads the very copy the search read, and makes none."""

    transport: Transport
    settings: Settings
    timeout: float
    token: Token
    client_factory: ClientFactory
    app: str
    volume: Volume
    snapshot: Snapshot | None
    template: Machine
    mount_path: str
    media_root: str | None
    ledger: Ledger
    kept: TemporaryMachines
    make_timeout: float = 300.0
    poll: float = 0.5
    out: Out | None = None

    @property
    def kind(self) -> str:
        return SNAPSHOT_KIND if self.snapshot else VOLUME_KIND

    @property
    def id(self) -> str:
        return self.snapshot.id if self.snapshot else self.volume.id

    def describe(self) -> str:
        if self.snapshot:
            return f"snapshot {self.snapshot.id} of volume {self.volume.id}"
        return f"unattached volume {self.volume.id} ({self.volume.region})"

    @contextlib.contextmanager
    def _made(self) -> Iterator[TemporaryMachine]:
        with (
            self.client_factory(self.token) as client,
            temporary_machine(
                client, self.app, self.volume, ledger=self.ledger,
                snapshot_id=self.snapshot.id if self.snapshot else None,
                template=self.template, mount_path=self.mount_path,
                timeout=self.make_timeout, poll=self.poll, out=self.out,
            ) as tmp,
        ):  # fmt: skip
            yield tmp

    def _machine(self) -> MachineSource:
        tmp = self.kept.get(self.id, self._made)
        return MachineSource(
            self.transport, tmp.machine, self.settings, self.timeout, self.token,
            kind=self.kind, source_id=self.id,
            what=f"{self.describe()} (on temporary Machine {tmp.machine.id})",
            media_root=self.media_root,
        )  # fmt: skip

    def search(self, names: Sequence[str]) -> dict[str, Copy]:
        return self._machine().search(names)

    @contextlib.contextmanager
    def open_reader(self, names: Names, timeout: float) -> Iterator[FrameReader]:
        with self._machine().open_reader(names, timeout) as reader:
            yield reader


def _names_in(stream: Stream, names: Sequence[str]) -> None:
    """The names as one JSON line on the session's stdin, which is then closed."""
    with contextlib.suppress(OSError):  # a session that ended says why on its stdout/stderr
        stream.stdin.write(json.dumps(list(names)).encode() + b"\n")
    stream.close_stdin()


class FrameReader:
    """The send mode's frames: a JSON header line, exactly ``size`` bytes, a JSON trailer."""

    def __init__(self, stream: Stream, where: str) -> None:
        self.stream, self.where = stream, where

    def start(self) -> None:
        """Skip what a transport prints before the stream (at most MAX_LINE)."""
        skipped = 0
        while True:
            line = self.stream.stdout.readline(MAX_LINE)
            if not line:
                raise RemoteCommandError(
                    f"{self.where}: no stream ({_last(self.stream.stderr_tail)})"
                )
            if line.rstrip(b"\r\n") == STREAM_BEGIN:
                return
            skipped += len(line)
            if skipped > MAX_LINE:
                raise RemoteCommandError(f"{self.where}: no stream in the first {MAX_LINE} bytes")

    def ready(self) -> bool:
        """Input is waiting on the session's pipe (bytes in the reader's buffer may also be)."""
        return bool(select.select([self.stream.stdout], [], [], 0)[0])

    def header(self) -> dict[str, Any]:
        line = self.stream.stdout.readline(MAX_LINE)
        if not line.endswith(b"\n"):
            raise RemoteCommandError(
                f"{self.where}: the stream ended early ({_last(self.stream.stderr_tail)})"
            )
        data = json.loads(line)
        if not isinstance(data, dict):
            raise RemoteCommandError(f"{self.where}: a frame header that is not an object")
        return data

    def chunks(self, size: int) -> Iterator[bytes]:
        left = size
        while left:
            chunk = self.stream.stdout.read(min(CHUNK, left))
            if not chunk:
                raise RemoteCommandError(f"{self.where}: the stream ended inside a file")
            left -= len(chunk)
            yield chunk


class Receiver:
    """The target's receive session: frames in on stdin, one result line per file out."""

    def __init__(self, stream: Stream, on_result: Callable[[dict[str, Any]], None]) -> None:
        self.stream, self.on_result = stream, on_result
        self._flushed = time.monotonic()
        self.where = "the target"
        self.ready: dict[str, Any] | None = None
        self.ended: dict[str, Any] | None = None
        self._ready = threading.Event()
        self.checked: dict[str, Any] | None = None
        self._checked = threading.Event()
        #: what the sources sent through this session: the figure a resume must keep low
        self.sent_files = self.sent_bytes = 0
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        try:
            while line := self.stream.stdout.readline(MAX_LINE):
                if not line.startswith(RESULT):
                    continue
                try:
                    result = json.loads(line[len(RESULT) :])
                except ValueError:
                    continue
                if "ready" in result:
                    self.ready = result
                    self._ready.set()
                elif "end" in result:
                    self.ended = result
                elif "checked" in result:
                    self.checked = result
                    self._checked.set()
                elif "name" in result:
                    self.on_result(result)
        except (OSError, ValueError):
            pass
        finally:
            self._ready.set()
            self._checked.set()

    def wait_ready(self, where: str) -> dict[str, Any]:
        self._ready.wait(self.stream.timeout)
        if not self.ready or not self.ready.get("ready"):
            errors = "; ".join((self.ready or {}).get("errors") or ()) or _last(
                self.stream.stderr_tail
            )
            raise RemoteCommandError(f"{where}: cannot receive files: {errors}")
        return self.ready

    def ask(self, todo: Sequence[Transfer]) -> None:
        """Tell the target every file to come; before the first frame it answers (through
        ``on_result``) for those already in place, then with a ``checked`` line."""
        wanted = [{"name": t.name, "sha256": t.copy.sha256, "size": t.copy.size,
                   "source": t.copy.id} for t in todo]  # fmt: skip
        try:
            self.stream.stdin.write(json.dumps(wanted).encode() + b"\n")
            self.flush()
        except BrokenPipeError:
            pass  # it could not start: wait_ready says why

    def wait_checked(self, where: str) -> None:
        """Return once the target has answered for the files already in place."""
        self.wait_ready(where)
        self._checked.wait(self.stream.timeout)
        if not self.checked:
            raise RemoteCommandError(
                f"{where}: no answer on the files already in place "
                f"({_last(self.stream.stderr_tail)})"
            )

    def send(self, header: dict[str, Any], chunks: Iterator[bytes]) -> None:
        self.stream.stdin.write(json.dumps(header, sort_keys=True).encode() + b"\n")
        self.sent_files += 1
        for chunk in chunks:
            self.stream.stdin.write(chunk)
            self.sent_bytes += len(chunk)
        # the target verifies and links it when it arrives, not at the next file; but one
        # flush per file costs an ssh packet per file at every hop: _relay flushes before
        # it waits on the source, and here at most every FLUSH_EVERY seconds
        if time.monotonic() - self._flushed >= FLUSH_EVERY:
            self.flush()

    def flush(self) -> None:
        self.stream.stdin.flush()
        self._flushed = time.monotonic()

    def finish(self) -> None:
        self.stream.stdin.write(b'{"end": true}\n')
        self.stream.close_stdin()
        self._thread.join(self.stream.timeout)
        self.stream.wait()


def _copy(
    ctx: RecoverContext,
    todo: Sequence[Transfer],
    on_result: Callable[[dict[str, Any]], None],
    record: RunRecord,
) -> dict[str, int]:
    """ONE receive session on the target; ONE send session per source Machine, relayed a
    chunk at a time (memory bounded by the pipes and one chunk). The target first answers
    for the files already in place (a resumed run's record may not know of them: it is
    saved rarely), and only the rest is sent. Returns the files and bytes sent."""
    target = ctx.target
    state = posixpath.join(media_destination(ctx.config, target.group), STATE_DIR)
    spec = {
        "group": target.group,
        "app_user": ctx.settings.app_user,
        "media_root": ctx.settings.media_root,
        "run_id": record.id,
        "stale_runs": list(record.options.get("chain") or ()),
        "make_dirs": [state],
        "audit_log": posixpath.join(state, "audit.jsonl"),
        "check_first": True,
    }
    where = f"Machine {target.id} (the target)"
    timeout = ctx.options.copy_timeout
    by_source: dict[str, list[Transfer]] = {}
    for t in todo:
        by_source.setdefault(t.copy.id, []).append(t)
    ledger = Ledger.for_step(record, "copy")
    with ctx.transport(timeout) as transport:
        sources: dict[str, Source] = {}
        for source in ctx.sources(transport, ledger):  # cheapest first: stop once all are in
            if source.id in by_source:
                sources[source.id] = source
            if len(sources) == len(by_source):
                break
        missing = [i for i in by_source if i not in sources]
        if missing:
            raise StepFailed(
                f"source(s) {', '.join(missing)} no longer available (a Machine no longer "
                "started, a volume attached or gone, a snapshot gone)"
            )
        command = probe_script({"receive": spec})
        with transport.stream(target, command, timeout=timeout) as stream:
            receiver = Receiver(stream, on_result)
            receiver.where = where
            answered: set[str] = set()  # in place already: sent by no source

            def on_answer(result: dict[str, Any]) -> None:
                if receiver.checked is None:
                    answered.add(str(result.get("name")))
                on_result(result)

            receiver.on_result = on_answer
            try:
                receiver.ask(todo)
                for i, (source_id, wanted) in enumerate(by_source.items()):

                    def left(wanted: Sequence[Transfer] = wanted) -> list[Transfer]:
                        receiver.wait_checked(where)
                        return [t for t in wanted if t.name not in answered]

                    # the first Machine's send session starts while the target checks (the
                    # set-ups overlap; at worst it sends nothing); any other source, and a
                    # volume or snapshot (a fork, a temporary Machine) only if it has a
                    # file to send
                    first = i == 0 and sources[source_id].kind == MACHINE_KIND
                    if not first and not left():
                        continue
                    sent: list[str] = []
                    try:
                        _relay(sources[source_id], left, receiver, timeout, sent)
                    except TemporaryResourceError as e:
                        # its copy or Machine could not be made (a resumed run makes its
                        # own; nothing was sent from it): the other sources' files still go
                        ctx.out(f"{source_id}: {ctx.token.redact(str(e))}")
                        for t in wanted:
                            if t.name not in sent:
                                on_result({"name": t.name, "status": "source_error",
                                           "why": ctx.token.redact(str(e))})  # fmt: skip
                receiver.finish()
            except BrokenPipeError:
                raise RemoteCommandError(
                    f"{where}: the receiving session ended early: {_last(stream.stderr_tail)}"
                ) from None
            return {"files": receiver.sent_files, "bytes": receiver.sent_bytes}


def _relay(
    source: Source,
    wanted: Callable[[], Sequence[Transfer]],
    receiver: Receiver,
    timeout: float,
    sent: list[str] | None = None,
) -> None:
    """One send session of `source`: each frame relayed to the receiver (``sent`` gets
    the name of each file handed on, and of each the source could not read). ``wanted``
    is asked once the session is under way."""
    sent = [] if sent is None else sent
    by_name: dict[str, Transfer] = {}

    def names() -> list[str]:
        by_name.update((t.name, t) for t in wanted())
        return list(by_name)

    with source.open_reader(names, timeout) as reader:
        # both sessions start at once: the target's and the source's set-up overlap
        receiver.wait_ready(receiver.where)
        while True:
            if not reader.ready():  # the next frame may take a while: send what we have
                receiver.flush()
            header = reader.header()
            if header.get("end"):
                return
            name = header.get("name")
            move = by_name.get(name) if isinstance(name, str) else None
            if move is None:
                raise RemoteCommandError(f"{source.describe()}: sent {name!r}, never asked for")
            sent.append(name)
            if "error" in header:
                receiver.on_result({"name": name, "status": "source_error",
                                    "why": str(header["error"])})  # fmt: skip
                continue
            size = int(header["size"])
            receiver.send(
                {"name": name, "size": size, "sha256": move.copy.sha256,
                 "mode": header.get("mode"), "source": source.id},
                reader.chunks(size),
            )  # fmt: skip
            reader.header()  # the trailer; the target checks the sha256 itself


# -- text ------------------------------------------------------------------------------------


def next_step(left: Sequence[Any]) -> str:
    if not left:
        return "nothing left to do"
    return "for the rest, `volguard remediate --fix` marks the rows failed for their owners"


def render_text(outcome: Outcome, limit: int = 50) -> str:
    lines: list[str] = []
    document, target = outcome.document, outcome.target
    if target:
        lines.append(
            f"app {outcome.app}: recover onto Machine {target.id} (group {target.group}, "
            f"{target.region})"
        )
    if document is not None:
        s = document.summary()
        searched = ", ".join(s["sources_searched"]) or "none"
        lines.append(f"searched: {searched}")
        for kind, why in s["sources_not_available"].items():
            lines.append(f"  {kind}: {why}")
        for sid, why in s["sources_failed"].items():
            lines.append(f"  {sid}: could not be searched: {printable(why)}")
        if s["sources_skipped"]:
            lines.append(
                f"  not searched (every missing row was found on a cheaper source): "
                f"{', '.join(s['sources_skipped'])}"
            )
        for p in document.plan[:limit]:
            where = ", ".join(
                f"{'' if c.kind == MACHINE_KIND else c.kind + ' '}{c.id} ({c.size} bytes, "
                f"sha256 {c.sha256[:12]})"
                for c in p.sources
            )
            lines.append(
                f"  {p.status:<10} {p.row.model} ID {printable(p.row.pk)}: "
                f"{printable(p.row.name)}" + (f"  <- {where}" if where else "")
            )
        if len(document.plan) > limit:
            lines.append(f"  … {len(document.plan) - limit} more rows (--format json lists all)")
        lines.append(
            f"found {s['found']}, conflict {s['conflict']}, not found {s['not_found']} of "
            f"{_files(s['rows'], 'row')}; {_files(s['files_to_copy'])} "
            f"({s['bytes_to_copy']} bytes) to copy"
            + (
                f"; conflicts settled by --prefer {s['prefer']}: {s['conflicts_resolved']}"
                if s["conflicts_resolved"]
                else ""
            )
        )
        if s["conflict"]:
            lines.append("conflicts: copies differ; none is chosen (--prefer newest|largest)")
        lines.append(f"note: {s['rows_note']}")
        if document.applied is not None:
            lines.append(f"restored: {_files(len(document.applied), 'row')}")
    if outcome.record is not None:
        record = outcome.record
        lines += ["", f"recover --apply: {record.status}", record.text()]
        if outcome.after_missing is not None:
            lines.append(
                f"after: {_files(len(outcome.after_missing), 'row')} still without their file; "
                f"{next_step(outcome.after_missing)}"
            )
        lines.append(f"run record: {record.path}")
    return "\n".join(lines) + "\n"


# -- helpers ---------------------------------------------------------------------------------


def _skip_rest(ctx: RecoverContext, after: str, why: str, keep: tuple[str, ...] = ()) -> None:
    record = ctx.outcome.record
    assert record is not None
    for name in STEPS[STEPS.index(after) + 1 :]:
        if name not in keep:
            record.get(name).skipped(why)


def _files(count: int, word: str = "file") -> str:
    return f"{count} {word}" if count == 1 else f"{count} {word}s"


def _last(text: str | None) -> str:
    lines = [line.strip() for line in (text or "").splitlines() if line.strip()]
    return printable(lines[-1][:300]) if lines else "no output"
