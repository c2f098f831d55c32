"""`volguard migrate-media`: move a Fly app's uploads from its volumes to object storage.

A split fleet (VG103, VG205) has files on several volumes: the web app's uploads on one,
the worker's outputs on another. This runbook runs ``manage.py migrate_media`` (the Django
side, docs/migrate-media.md) on EVERY started Machine of every media group, through
remediate's own `run_manage` (as the app user, in the app process's cwd, with the app
process's environment: the storage secrets ``fly storage create`` sets), and merges what
each Machine reports:

- a row is *missing* only when its file is on no volume (a Machine that lacks a file the
  other volume holds is the split, not a loss);
- the same name with other bytes on two volumes (or in the bucket already) is a *conflict*:
  ``migrate_media`` never overwrites an object it did not write, so the first copy in the
  bucket stays, the later Machine reports the conflict, and volguard lists both contents
  and chooses none; the cutover waits until the operator settles it.

Without ``--apply`` it only plans (each Machine's plan, merged). With ``--apply``, the steps
(`STEPS`), each recorded in a run record (`volguard.runs`, kind ``migrate-media``) under a
per-app lock, ``--resume`` from the first that did not finish:

1. ``plan``: the merged plan;
2. ``snapshot``: an on-demand snapshot of every media volume, waited for until ``created``
   (`volguard.fly.volumes.snapshot_media_volumes`), before any byte moves;
3. ``copy``: ``migrate_media --apply`` on each Machine, ONE Machine at a time: each run is
   already parallel (``--workers``), and one at a time makes the order in which volumes
   reach the bucket, and so which Machine reports a cross-volume conflict, deterministic;
4. ``check``: each Machine's plan again: nothing left to copy;
5. ``cutover``: with ``--setting NAME=VALUE``, the settings written into fly.toml's
   ``[env]`` (tomlkit: comments and layout kept; atomically, the file's mode kept; the
   previous values in the step's detail); without, printed for the operator and the run
   ends here (``skipped``). Conflicts or files still changing stop the run before any write;
   values already set are not written again. ``[env]`` loses to a Fly secret of the same
   name (docs/fly-facts.md: secrets override env), which volguard cannot see: it warns;
6. ``deploy``: the deploy runbook (`volguard.deploy.run_deploy`, ``--yes``, its own run
   record), its gates judging the new state: media in object storage (``media_storage:
   object``, VG115), held in memory for this run; skipped (``ok``) when every media Machine
   already runs with the settings, so a second run deploys nothing;
7. ``delta``: ``migrate_media --apply`` on every media Machine again, the copy step's code
   path, for what was uploaded to a volume between the copy and the deploy. After the
   deploy the default storage is the new one, so a performed cutover needs ``--from``
   naming the volume's own entry of ``STORAGES``;
8. ``verify``: `_verify`, the audit against the object store (``--verify``'s).

``--rollback`` is printed only, as the exact command: switching back is the operator's
decision.

``--verify`` (after the cutover): ``check_missing_files`` on a started Machine, now reading
the object store, must report no row missing except those that had no file on any volume
(the latest ``migrate-media`` run's merged missing rows). Rollback is switching the setting
back: volguard never deletes a source file or a volume.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import posixpath
import shlex
import stat
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from volguard.audit_document import PROBLEM_REASONS, find_document
from volguard.audit_log import AuditLog
from volguard.config import Settings
from volguard.errors import RemoteCommandError, StepFailed, UsageError, VolguardError
from volguard.fly.client import MachinesClient, Token
from volguard.fly.fleet import load_fleet
from volguard.fly.models import Machine
from volguard.flytoml import FlyConfig, go_string
from volguard.lint import static_context
from volguard.masking import MASK, Masker, url_passwords
from volguard.remediate import (
    DEFAULT_MANAGE_PY,
    STATE_DIR,
    _transport,
    choose_machine,
    media_destination,
    read_audit,
    run_manage,
    snapshot_first,
)
from volguard.runs import (
    RUNS_DIR,
    SKIPPED,
    RunLock,
    RunRecord,
    Step,
    file_sha256,
    finish_run,
    latest,
)

Out = Callable[[str], None]
ClientFactory = Callable[[Token], MachinesClient]

KIND = "migrate-media"
STEPS = ("plan", "snapshot", "copy", "check", "cutover", "deploy", "delta", "verify")
#: The secrets ``fly storage create`` sets (https://fly.io/docs/reference/tigris/): their
#: values are never shown; a ``--setting`` with one of these names is masked too.
STORAGE_SECRETS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
COUNTS = ("copied", "identical", "skipped", "verified", "to_copy", "delta", "conflicts",
          "missing_from_source", "changing")  # fmt: skip


# -- options and the outcome -----------------------------------------------------------------


@dataclass
class MigrateOptions:
    """The command's options."""

    to: str = ""  # the STORAGES alias to copy to (required)
    source: str | None = None  # --from; default: migrate_media's (the default storage)
    apply: bool = False
    resume: bool = False
    verify: bool = False  # after the cutover: the audit against the object store
    workers: int | None = None
    settings: tuple[str, ...] = ()  # NAME=VALUE the cutover sets (printed, values masked)
    rollback: tuple[str, ...] = ()  # NAME=VALUE switching back (printed)
    fly_toml: str | None = None
    machine_id: str | None = None  # --verify: the Machine to audit on
    timeout: float = 3600.0  # seconds one migrate_media run may take
    snapshot_timeout: float = 300.0
    snapshot_poll: float = 1.0


@dataclass
class MachineReport:
    """One Machine's ``migrate_media --json`` report."""

    machine: str
    group: str
    exit_code: int | None
    document: dict[str, Any]

    def as_dict(self) -> dict[str, Any]:
        return {"machine": self.machine, "group": self.group, "exit_code": self.exit_code,
                "report": self.document}  # fmt: skip

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MachineReport:
        return cls(str(data["machine"]), str(data["group"]), data.get("exit_code"),
                   dict(data.get("report") or {}))  # fmt: skip


@dataclass
class Merged:
    """Every Machine's report, merged: the split fleet seen as one store of files."""

    machines: list[str]
    files: dict[str, int]
    bytes: dict[str, int]
    conflicts: list[dict[str, Any]]
    missing: list[dict[str, Any]]  # rows whose file is on no volume
    changing: list[dict[str, Any]]

    @property
    def problems(self) -> bool:
        return bool(self.conflicts or self.missing or self.changing)

    def as_dict(self) -> dict[str, Any]:
        return {
            "machines": list(self.machines),
            "files": dict(self.files),
            "bytes": dict(self.bytes),
            "conflicts": list(self.conflicts),
            "missing_from_every_volume": list(self.missing),
            "changing": list(self.changing),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Merged:
        """A merge read back from a run record (a resumed run's carried-over step)."""
        return cls(
            machines=list(data.get("machines") or ()),
            files=dict(data.get("files") or {}),
            bytes=dict(data.get("bytes") or {}),
            conflicts=list(data.get("conflicts") or ()),
            missing=list(data.get("missing_from_every_volume") or ()),
            changing=list(data.get("changing") or ()),
        )

    def line(self) -> str:
        f = self.files
        return (
            f"{len(self.machines)} Machine(s): {f.get('verified', 0)} verified "
            f"({f.get('copied', 0)} copied, {f.get('identical', 0)} identical, "
            f"{f.get('skipped', 0)} skipped), {f.get('to_copy', 0)} to copy, "
            f"{len(self.conflicts)} conflict(s), {len(self.missing)} row(s) with a file on no "
            f"volume, {len(self.changing)} changing"
        )


def merge(reports: Sequence[MachineReport]) -> Merged:
    """The reports as one: counts added up; a conflict lists the Machine's copy and what the
    bucket holds; a row is missing only when every Machine that read its field lacks it."""
    files: dict[str, int] = {}
    size: dict[str, int] = {}
    conflicts: dict[str, dict[str, Any]] = {}
    missing_on: dict[tuple[str, str], tuple[dict[str, Any], set[str]]] = {}
    fields_on: dict[str, set[str]] = {}
    changing: list[dict[str, Any]] = []
    for report in reports:
        doc = report.document
        for key, value in (doc.get("files") or {}).items():
            files[key] = files.get(key, 0) + int(value or 0)
        for key, value in (doc.get("bytes") or {}).items():
            size[key] = size.get(key, 0) + int(value or 0)
        for f in doc.get("fields") or ():
            if isinstance(f, dict):
                fields_on.setdefault(str(f.get("field")), set()).add(report.machine)
        for c in doc.get("conflicts") or ():
            entry = conflicts.setdefault(
                str(c.get("name")),
                {
                    "name": c.get("name"),
                    "model": c.get("model"),
                    "pk": c.get("pk"),
                    "destination": {
                        "size": c.get("destination_size"),
                        "sha256": c.get("destination_sha256"),
                    },
                    "copies": [],
                },
            )
            entry["copies"].append({"machine": report.machine, "group": report.group,
                                    "size": c.get("source_size"),
                                    "sha256": c.get("source_sha256")})  # fmt: skip
        for m in doc.get("missing_from_source") or ():
            key = (str(m.get("model")), str(m.get("pk")))
            row, where = missing_on.setdefault(key, (dict(m), set()))
            where.add(report.machine)
        for c in doc.get("changing") or ():
            changing.append({**(c if isinstance(c, dict) else {"name": c}),
                             "machine": report.machine})  # fmt: skip
    missing = []
    for (model, _), (row, where) in missing_on.items():
        readers = fields_on.get(model) or {r.machine for r in reports}
        if readers <= where:  # no Machine that reads this field has the file
            missing.append({**row, "machines": sorted(where)})
    files["conflicts"] = len(conflicts)
    files["missing_from_source"] = len(missing)
    files["changing"] = len(changing)
    return Merged(
        machines=[r.machine for r in reports],
        files={k: files.get(k, 0) for k in COUNTS},
        bytes=size,
        conflicts=list(conflicts.values()),
        missing=sorted(missing, key=lambda r: (str(r.get("model")), str(r.get("pk")))),
        changing=changing,
    )


@dataclass
class Outcome:
    """What a run saw and did; ``exit_code`` is the command's."""

    app: str
    to: str
    applied: bool
    exit_code: int = 0
    plan: Merged | None = None
    after: Merged | None = None
    reports: list[MachineReport] = field(default_factory=list)
    snapshots: dict[str, str] = field(default_factory=dict)
    cutover: list[str] = field(default_factory=list)
    #: the cutover performed (``--setting``): fly.toml, each NAME's value before and after
    env_change: dict[str, Any] | None = None
    deployed: dict[str, Any] | None = None  # the deploy step's run: id, record, status
    delta: Merged | None = None  # the delta step's copy, merged
    verified: dict[str, Any] | None = None
    record: RunRecord | None = None
    error: VolguardError | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "tool": "volguard",
            "command": KIND,
            "app": self.app,
            "to": self.to,
            "applied": self.applied,
            "exit_code": self.exit_code,
            "plan": self.plan.as_dict() if self.plan else None,
            "after": self.after.as_dict() if self.after else None,
            "machines": [r.as_dict() for r in self.reports],
            "snapshots": self.snapshots,
            "cutover": list(self.cutover),
            "env_change": self.env_change,
            "deploy": self.deployed,
            "delta": self.delta.as_dict() if self.delta else None,
            "verify": self.verified,
            "record": self.record.path if self.record else None,
            "status": self.record.status if self.record else None,
            "error": str(self.error) if self.error else None,
        }


@dataclass
class MigrateContext:
    """What every step reads: the inputs, the options, and the `Outcome` the steps fill."""

    settings: Settings
    config: FlyConfig
    app: str
    token: Token
    options: MigrateOptions = field(default_factory=MigrateOptions)
    client_factory: ClientFactory = MachinesClient
    audit: AuditLog | None = None
    runs_dir: str = RUNS_DIR
    out: Out = print
    outcome: Outcome = field(init=False)
    mask: Masker = field(init=False)

    def __post_init__(self) -> None:
        self.outcome = Outcome(app=self.app, to=self.options.to, applied=self.options.apply)
        secrets = [v for n in STORAGE_SECRETS if (v := os.environ.get(n))]
        secrets += [_value(s) for s in self.options.settings + self.options.rollback
                    if _name(s) in STORAGE_SECRETS]  # fmt: skip
        self.mask = Masker(self.token, [*url_passwords(), *secrets])

    @property
    def manage_py(self) -> str:
        return self.settings.manage_py or DEFAULT_MANAGE_PY

    @property
    def fly_toml(self) -> str:
        return self.options.fly_toml or self.settings.fly_toml

    def machines_without(self, env: dict[str, str]) -> list[Machine]:
        """The media groups' Machines whose environment (the deployed ``[env]``, as the
        Machines API shows it) lacks one of ``env``'s values."""
        groups = static_context(self.config, self.settings).media_groups
        with self.client_factory(self.token) as client:
            fleet = load_fleet(client, self.app)
        return [m for g in groups for m in fleet.machines_of(g)
                if any(m.env.get(n) != v for n, v in env.items())]  # fmt: skip

    def machines(self) -> list[Machine]:
        """Every started Machine of every media group: each may hold files of its own."""
        groups = static_context(self.config, self.settings).media_groups
        if not groups:
            raise VolguardError(f"{self.app}: no media process group")
        with self.client_factory(self.token) as client:
            fleet = load_fleet(client, self.app)
        started = [m for g in groups for m in fleet.machines_of(g) if m.state == "started"]
        if not started:
            raise VolguardError(f"{self.app}: no started Machine in the media groups to run on")
        # the web group first: its copy of a name reaches the bucket first
        return sorted(started, key=lambda m: (m.group != "app", m.group, m.id))

    def argv(self, apply: bool) -> list[str]:
        argv = ["migrate_media", "--to", self.options.to, "--json"]
        if self.options.source:
            argv += ["--from", self.options.source]
        if apply:
            argv.append("--apply")
            if self.options.workers:
                argv += ["--workers", str(self.options.workers)]
        return argv

    def run_everywhere(self, apply: bool, machines: Sequence[Machine] | None = None
                       ) -> list[MachineReport]:  # fmt: skip
        """``migrate_media`` on each Machine in turn; exit 1 on one is RemoteCommandError."""
        reports = []
        for machine in machines if machines is not None else self.machines():
            reports.append(self.run_on(machine, apply))
        return reports

    def run_on(self, machine: Machine, apply: bool) -> MachineReport:
        # migrate_media keeps its manifest under <mount>/.volguard/, which root owns on a
        # fresh volume: root makes the directories for the app user, as remediate does.
        state = posixpath.join(media_destination(self.config, machine.group), STATE_DIR)
        dirs = (state, posixpath.join(state, "migrate-media")) if apply else ()
        with _transport(self.settings, self.app, self.options.timeout) as transport:
            run = run_manage(
                transport,
                machine,
                self.argv(apply),
                manage_py=self.manage_py,
                app_user=self.settings.app_user,
                make_dirs=dirs,
                timeout=self.options.timeout,
                token=self.token,
            )
        document = find_document(run.stdout) if run.returncode in (0, 2) else None
        if document is None:
            why = self.mask(run.last_error_line() or f"exit {run.returncode}")
            raise RemoteCommandError(
                f"manage.py migrate_media failed on Machine {machine.id} ({machine.group}, as "
                f"{run.user}): {why}"
            )
        return MachineReport(machine.id, machine.group, run.returncode, document)


# -- the public entry ------------------------------------------------------------------------


def migrate_media(ctx: MigrateContext) -> Outcome:
    """Plan, run the runbook (``--apply``) or verify the cutover (``--verify``)."""
    options, outcome = ctx.options, ctx.outcome
    if not options.to:
        raise UsageError("--to is required: the STORAGES alias of the object store")
    for flag, given in (("--resume", options.resume),):
        if given and not options.apply:
            raise UsageError(f"{flag} needs --apply")
    if options.verify and options.apply:
        raise UsageError("--verify runs after the cutover, on its own (not with --apply)")
    for setting in options.settings + options.rollback:
        _name(setting)
    if options.apply and options.settings:
        _check_performed_settings(options)
    if options.verify:
        return _verify(ctx)
    if not options.apply:
        outcome.reports = ctx.run_everywhere(apply=False)
        outcome.plan = merge(outcome.reports)
        outcome.exit_code = 2 if outcome.plan.problems else 0
        return outcome

    with RunLock(ctx.app, ctx.runs_dir):
        common: dict[str, Any] = {
            "fly_toml": options.fly_toml or ctx.settings.fly_toml,
            "runs_dir": ctx.runs_dir,
            "options": {"to": options.to, "from": options.source, "workers": options.workers,
                        "transport": ctx.settings.transport, "manage_py": ctx.manage_py,
                        "settings": [_shown(s) for s in options.settings]},
            "mask": ctx.mask,
        }  # fmt: skip
        if options.resume:
            record = RunRecord.resume(KIND, ctx.app, STEPS, **common)
        else:
            record = RunRecord.new(KIND, ctx.app, STEPS, **common)
        outcome.record = record
        try:
            for name in STEPS:
                step = record.get(name)
                if step.carried_over:
                    _carry_over(ctx, step)
                    continue
                if step.status == SKIPPED:
                    continue
                with record.step(name) as step:
                    STEP_FUNCTIONS[name](ctx, step)
            merged = outcome.after or outcome.plan
            if merged is not None and merged.problems:
                outcome.exit_code = 2
            if outcome.delta is not None and (outcome.delta.conflicts or outcome.delta.changing):
                outcome.exit_code = 2
        except VolguardError as e:
            outcome.error = e
            outcome.exit_code = e.exit_code
        finally:
            finish_run(record)
    return outcome


def _carry_over(ctx: MigrateContext, step: Step) -> None:
    """A resumed run: what the steps carried over found, read back from their details."""
    outcome = ctx.outcome
    if step.name == "plan" and "reports" in step.detail:
        outcome.reports = [MachineReport.from_dict(r) for r in step.detail["reports"]]
        outcome.plan = merge(outcome.reports)
    elif step.name == "snapshot":
        outcome.snapshots = dict(step.detail.get("snapshots") or {})
    elif step.name == "check" and "merged" in step.detail:
        outcome.after = Merged.from_dict(step.detail["merged"])
    elif step.name == "cutover":
        outcome.cutover = list(step.detail.get("commands") or ())
        if step.detail.get("performed"):
            outcome.env_change = dict(step.detail)
    elif step.name == "deploy" and step.detail:
        outcome.deployed = dict(step.detail)
    elif step.name == "delta" and "merged" in step.detail:
        outcome.delta = Merged.from_dict(step.detail["merged"])
    elif step.name == "verify" and "verify" in step.detail:
        outcome.verified = dict(step.detail["verify"])


# -- the steps -------------------------------------------------------------------------------


def plan_step(ctx: MigrateContext, step: Step) -> None:
    """Each Machine's plan, merged."""
    outcome = ctx.outcome
    outcome.reports = ctx.run_everywhere(apply=False)
    outcome.plan = merge(outcome.reports)
    step.detail = {"reports": [r.as_dict() for r in outcome.reports],
                   "merged": outcome.plan.as_dict()}  # fmt: skip
    step.ok(outcome.plan.line())


def snapshot_step(ctx: MigrateContext, step: Step) -> None:
    """A snapshot of every media volume, created, before any byte moves."""
    outcome = ctx.outcome
    if outcome.plan is not None and not outcome.plan.files.get("to_copy"):
        # Everything is in the object store already (a second run): no byte will move, and
        # a snapshot per run would only use up the volumes' snapshot retention.
        step.ok("nothing to copy: no new snapshot")
        return
    outcome.snapshots = snapshot_first(ctx, step, KIND, "migrate")


def copy_step(ctx: MigrateContext, step: Step) -> None:
    """``migrate_media --apply`` on each Machine, one at a time."""
    _copy_everywhere(ctx, step)


def _copy_everywhere(ctx: MigrateContext, step: Step) -> list[MachineReport]:
    """``migrate_media --apply`` on each Machine in turn, each recorded as it finishes."""
    outcome = ctx.outcome
    assert outcome.record is not None
    done: list[dict[str, Any]] = []
    reports: list[MachineReport] = []
    step.detail = {"machines": done}
    for machine in ctx.machines():
        report = ctx.run_on(machine, apply=True)
        reports.append(report)
        files = report.document.get("files") or {}
        done.append({"machine": machine.id, "group": machine.group,
                     "exit_code": report.exit_code, "files": files})  # fmt: skip
        outcome.record.save()  # a killed run still says which Machines finished
    copied = merge_counts(done, "copied")
    summary = f"{copied} file(s) copied from {len(done)} Machine(s), one at a time"
    step.changed(summary) if copied else step.ok(summary)
    return reports


def check_step(ctx: MigrateContext, step: Step) -> None:
    """Each Machine's plan again: nothing may be left to copy."""
    outcome = ctx.outcome
    outcome.reports = ctx.run_everywhere(apply=False)
    after = outcome.after = merge(outcome.reports)
    step.detail = {"merged": after.as_dict()}
    if after.files.get("to_copy"):
        step.failed(f"{after.files['to_copy']} file(s) still to copy: {after.line()}")
        raise StepFailed(step.summary)
    step.ok(after.line())


def cutover_step(ctx: MigrateContext, step: Step) -> None:
    """With ``--setting``: the settings into fly.toml ``[env]``; without: printed."""
    outcome = ctx.outcome
    after = outcome.after
    assert after is not None
    if after.conflicts or after.changing:
        step.skipped(
            f"not yet: {len(after.conflicts)} conflict(s), {len(after.changing)} file(s) "
            "still changing; settle them and run again"
        )
        return
    outcome.cutover = cutover_lines(ctx)
    missing = f" ({len(after.missing)} row(s) had a file on no volume)" if after.missing else ""
    if not ctx.options.settings:
        why = "no --setting: which setting switches the storage is the app's"
        step.detail = {"commands": outcome.cutover, "performed": False, "why": why}
        step.skipped(
            "every file on a volume is in the object store; no --setting, so the cutover is "
            "printed for the operator, not performed" + missing
        )
        return
    path = ctx.fly_toml
    wanted = {_name(s): _value(s) for s in ctx.options.settings}
    previous, written = set_env(path, wanted)
    record = outcome.record
    assert record is not None
    if written:
        # --resume compares fly.toml with the record's digest: this change is the run's own
        record.fly_toml_sha256 = file_sha256(path)
        record.save()
    outcome.env_change = step.detail = {
        "performed": True,
        "fly_toml": path,
        "env": {
            n: {"before": _shown_value(n, previous[n]), "after": _shown_value(n, v)}
            for n, v in wanted.items()
        },
        "written": written,
        "commands": outcome.cutover,
    }
    for name in wanted:
        ctx.out(
            f"warning: fly.toml [env] {name} loses to a Fly secret of the same name (secrets "
            f"override env); volguard cannot see secrets: check `fly secrets list --app "
            f"{ctx.app}`"
        )
    shown = ", ".join(
        f"{n}={_shown_value(n, v)} (was {_shown_value(n, previous[n]) or 'absent'})"
        for n, v in wanted.items()
    )
    if written:
        step.changed(f"fly.toml [env]: {shown}{missing}")
    else:
        step.ok(f"fly.toml [env] already has {', '.join(_shown(s) for s in ctx.options.settings)}")


def deploy_step(ctx: MigrateContext, step: Step) -> None:
    """The deploy runbook, its gates judging media in object storage."""
    from volguard.deploy import DeployContext, DeployOptions, run_deploy
    from volguard.flytoml import read_fly_toml

    outcome = ctx.outcome
    if outcome.env_change is None:
        step.skipped("no cutover performed")
        return
    wanted = _wanted(ctx)
    waiting = ctx.machines_without(wanted)
    if not waiting:
        step.detail = {"deployed": False}
        step.ok(f"every media Machine already runs with {_env_line(wanted)}: nothing to deploy")
        return
    ctx.out(
        "note: the media now live in object storage: add `media_storage: object` to the "
        "volguard section of invoke.yaml (this deploy's gates already judge it so, VG115)"
    )
    config, problems = read_fly_toml(ctx.fly_toml)
    if config is None:
        raise VolguardError(problems[0].message if problems else f"{ctx.fly_toml}: unreadable")
    ctx.config = config
    deploy = DeployContext(
        settings=dataclasses.replace(ctx.settings, media_storage="object"),
        config=config,
        app=ctx.app,
        token=ctx.token,
        options=DeployOptions(fly_toml=ctx.fly_toml, yes=True, audit=False),
        out=lambda line: ctx.out(f"  {line}"),
        confirm=None,
        client_factory=ctx.client_factory,
        runs_dir=ctx.runs_dir,
    )
    ctx.out(f"deploy: {len(waiting)} Machine(s) to switch to {_env_line(wanted)}")
    record = run_deploy(deploy)
    outcome.deployed = step.detail = {
        "deployed": True,
        "run": record.id,
        "record": record.path,
        "status": record.status,
        "steps": {s.name: s.status for s in record.steps},
    }
    if record.status != "succeeded":
        failed = next((s for s in record.steps if s.status == "failed"), None)
        why = f" at {failed.name}: {failed.summary}" if failed else ""
        step.failed(f"deploy {record.status}{why} (run record {record.path})")
        raise StepFailed(step.summary)
    step.changed(f"deploy succeeded: {ctx.app} (run record {record.path})")


def delta_step(ctx: MigrateContext, step: Step) -> None:
    """What reached a volume between the copy and the deploy: the copy again."""
    outcome = ctx.outcome
    if outcome.env_change is None:
        step.skipped("no cutover performed")
        return
    reports = _copy_everywhere(ctx, step)
    outcome.delta = merge(reports)
    step.detail["merged"] = outcome.delta.as_dict()
    if outcome.delta.conflicts or outcome.delta.changing:
        step.failed(f"after the deploy: {outcome.delta.line()}")
        raise StepFailed(step.summary)


def verify_step(ctx: MigrateContext, step: Step) -> None:
    """``--verify``: the audit on a started Machine, against the object store."""
    outcome = ctx.outcome
    if outcome.env_change is None:
        step.skipped("no cutover performed")
        return
    _verify(ctx)
    verified = outcome.verified
    assert verified is not None
    step.detail = {"verify": verified}
    if verified["missing"]:
        step.failed(
            f"{len(verified['missing'])} row(s) had a file on a volume and are missing now "
            f"(Machine {verified['machine']})"
        )
        raise StepFailed(step.summary)
    step.ok(
        f"{verified['audited_rows']} row(s) audited on Machine {verified['machine']}: none "
        "that had a file on a volume is missing"
    )


STEP_FUNCTIONS: dict[str, Callable[[MigrateContext, Step], None]] = {
    "plan": plan_step,
    "snapshot": snapshot_step,
    "copy": copy_step,
    "check": check_step,
    "cutover": cutover_step,
    "deploy": deploy_step,
    "delta": delta_step,
    "verify": verify_step,
}


def cutover_lines(ctx: MigrateContext) -> list[str]:
    """What the operator runs next (values of credentials masked): without ``--setting`` the
    whole cutover, with it only the way back."""
    to = shlex.quote(ctx.options.to)
    config = shlex.quote(ctx.fly_toml)
    if ctx.options.settings:
        back = [_shown(s) for s in ctx.options.rollback] or ["NAME=VALUE"]
        return [
            f"rollback: flyctl deploy --config {config} --app {ctx.app} "
            + " ".join(f"--env {b}" for b in back),
            "   (then the same values in fly.toml [env], or the next deploy switches back; the "
            "files on the volumes were never touched)",
        ]
    setting = " ".join(_shown(s) for s in ctx.options.settings) or "NAME=VALUE"
    rollback = " ".join(_shown(s) for s in ctx.options.rollback) or "NAME=VALUE"
    source = f" --from {shlex.quote(ctx.options.source)}" if ctx.options.source else ""
    return [
        f"1. switch the app's storage: fly secrets set --stage --app {ctx.app} {setting}",
        "   (or the same settings in fly.toml [env], or run this again with --setting to have "
        "volguard do 1-4); the app reads the object store first",
        "   (FallbackStorage over the object store and the volume, docs/migrate-media.md)",
        "2. deploy it: volguard deploy --yes",
        f"3. copy what was uploaded since: volguard migrate-media --to {to}{source} --apply",
        f"4. verify: volguard migrate-media --to {to} --verify",
        f"rollback: fly secrets set --stage --app {ctx.app} {rollback}, then volguard deploy "
        "(the files on the volumes were never touched)",
    ]


# -- fly.toml [env] --------------------------------------------------------------------------


def set_env(path: str, wanted: dict[str, str]) -> tuple[dict[str, str | None], bool]:
    """Write ``wanted`` into fly.toml's ``[env]`` (tomlkit keeps comments and layout),
    atomically and with the file's mode; each NAME's previous value (None: absent) and
    whether the file was written (not when every value is already there)."""
    import tomlkit
    from tomlkit.exceptions import TOMLKitError

    target = os.path.realpath(path)  # a symlinked fly.toml stays a symlink
    try:
        with open(target, encoding="utf-8") as fh:
            text = fh.read()
        mode = stat.S_IMODE(os.stat(target).st_mode)
    except OSError as e:
        raise VolguardError(f"cannot read {path}: {e.strerror or e}") from None
    try:
        document = tomlkit.parse(text)
    except TOMLKitError as e:
        raise VolguardError(f"{path}: not TOML ({' '.join(str(e).split())})") from None
    env = document.get("env")
    if env is None:
        env = tomlkit.table()
        document["env"] = env
    elif not isinstance(env, dict):
        raise VolguardError(f"{path}: env is not a table")
    before = {str(k): v for k, v in env.unwrap().items()} if hasattr(env, "unwrap") else {}
    previous = {n: None if n not in before else go_string(before[n]) for n in wanted}
    changes = {n: v for n, v in wanted.items() if previous[n] != v}
    if not changes:
        return previous, False
    # a new key takes the indent of the table's first key, as fly.toml files indent [env]
    indents = [v.trivia.indent for k, v in getattr(env, "value", env).body if k is not None]
    for name, value in changes.items():
        env[name] = value
        if previous[name] is None and indents and hasattr(env[name], "trivia"):
            env[name].trivia.indent = indents[0]
    directory = os.path.dirname(target)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".fly.toml-", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(tomlkit.dumps(document))
            fh.flush()
            os.fchmod(fh.fileno(), mode)
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except OSError as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise VolguardError(f"cannot write {path}: {e.strerror or e}") from None
    dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)  # the rename itself survives a crash
    finally:
        os.close(dir_fd)
    return previous, True


# -- verification after the cutover ----------------------------------------------------------


def _verify(ctx: MigrateContext) -> Outcome:
    """The audit on a started Machine, now reading the object store: nothing missing except
    the rows that had a file on no volume (the latest migrate-media run's)."""
    outcome = ctx.outcome
    with ctx.client_factory(ctx.token) as client:
        fleet = load_fleet(client, ctx.app)
    groups = tuple(static_context(ctx.config, ctx.settings).media_groups)
    machine = choose_machine(fleet, groups, ctx.options.machine_id)
    with _transport(ctx.settings, ctx.app, ctx.options.timeout) as transport:
        run = run_manage(
            transport,
            machine,
            ["check_missing_files", "--json"],
            manage_py=ctx.manage_py,
            app_user=ctx.settings.app_user,
            timeout=ctx.options.timeout,
            token=ctx.token,
        )
    document = read_audit(run, ctx.token)
    previous = latest(KIND, ctx.app, ctx.runs_dir)
    known: set[tuple[str, str]] = set()
    if previous is not None:
        for row in (
            previous.get("check").detail.get("merged", {}).get("missing_from_every_volume", [])
        ):
            known.add((str(row.get("model")), str(row.get("pk"))))
    missing = []
    for row in document.get("rows") or ():
        if not isinstance(row, dict) or row.get("reason") not in PROBLEM_REASONS:
            continue
        key = (f"{row.get('model')}.{row.get('field')}", str(row.get("pk")))
        if key not in known:
            missing.append({"model": key[0], "pk": row.get("pk"), "name": row.get("name"),
                            "reason": row.get("reason")})  # fmt: skip
    outcome.verified = {
        "machine": machine.id,
        "group": machine.group,
        "audited_rows": document.get("audited_rows"),
        "missing": missing,
        "known_missing": len(known),
        "run": previous.id if previous else None,
    }
    outcome.exit_code = 2 if missing else 0
    return outcome


# -- text ------------------------------------------------------------------------------------


def render_text(outcome: Outcome, limit: int = 20) -> str:
    """The plan, the steps and the cutover, for people."""
    if outcome.record is None and outcome.verified is not None:  # --verify on its own
        return "\n".join(_verify_lines(outcome, limit)) + "\n"
    lines: list[str] = []
    for report in outcome.reports:
        f = report.document.get("files") or {}
        lines.append(
            f"Machine {report.machine} ({report.group}): {f.get('to_copy', 0)} to copy, "
            f"{f.get('verified', 0)} verified, {f.get('conflicts', 0)} conflict(s), "
            f"{f.get('missing_from_source', 0)} not on this volume"
        )
    merged = outcome.after or outcome.plan
    if merged is not None:
        lines.append(f"merged: {merged.line()}")
        for c in merged.conflicts[:limit]:
            dest = c["destination"]
            lines.append(f"  conflict {c['name']} (row {c['model']} {c['pk']}): the object "
                         f"store holds {_digest(dest)}")  # fmt: skip
            lines += [f"    Machine {k['machine']} ({k['group']}) has {_digest(k)}"
                      for k in c["copies"]]  # fmt: skip
        for m in merged.missing[:limit]:
            lines.append(f"  on no volume: {m.get('model')} {m.get('pk')}: {m.get('name')}")
        if merged.conflicts:
            lines.append("  volguard chooses no copy: settle each conflict, then run again")
    if outcome.record is not None:
        lines += ["", f"migrate-media --apply: {outcome.record.status}", outcome.record.text()]
        if outcome.verified is not None:
            lines += ["", *_verify_lines(outcome, limit)]
        if outcome.cutover:
            heading = "The way back:" if outcome.env_change else "Next, the cutover:"
            lines += ["", heading, *(f"  {c}" for c in outcome.cutover)]
        lines.append(f"run record: {outcome.record.path}")
    elif outcome.plan is not None:
        lines.append("plan only: pass --apply to snapshot the volumes and copy")
    return "\n".join(lines) + "\n"


def _verify_lines(outcome: Outcome, limit: int) -> list[str]:
    v = outcome.verified
    assert v is not None
    lines = [
        f"app {outcome.app}: check_missing_files on Machine {v['machine']} ({v['group']}): "
        f"{v['audited_rows']} row(s) audited against the storage the app now uses"
    ]
    if v["missing"]:
        lines.append(f"{len(v['missing'])} row(s) had a file on a volume and are missing now:")
        lines += [f"  {r['model']} {r['pk']}: {r['name']} ({r['reason']})"
                  for r in v["missing"][:limit]]  # fmt: skip
        lines.append("roll back (switch the setting back), then run migrate-media again")
    else:
        lines.append(
            f"verified: no row that had a file on a volume is missing "
            f"({v['known_missing']} had a file on no volume before the move)"
        )
    return lines


# -- helpers ---------------------------------------------------------------------------------


def merge_counts(rows: Sequence[dict[str, Any]], key: str) -> int:
    return sum(int((r.get("files") or {}).get(key) or 0) for r in rows)


def _name(setting: str) -> str:
    name, sep, _ = setting.partition("=")
    if not sep or not name or not name.replace("_", "").isalnum():
        raise UsageError(f"--setting/--rollback {name or setting!r}: expected NAME=VALUE")
    return name


def _value(setting: str) -> str:
    return setting.partition("=")[2]


def _secret_name(name: str) -> bool:
    """A name whose value is shown masked: the storage credentials, and what names a secret."""
    upper = name.upper()
    return name in STORAGE_SECRETS or any(
        word in upper for word in ("SECRET", "PASSWORD", "TOKEN", "ACCESS_KEY", "PRIVATE")
    )


def _shown(setting: str) -> str:
    name = _name(setting)
    value = MASK if _secret_name(name) else _value(setting)
    return f"{name}={shlex.quote(value)}"


def _shown_value(name: str, value: str | None) -> str | None:
    return None if value is None else MASK if _secret_name(name) else value


def _check_performed_settings(options: MigrateOptions) -> None:
    """``--apply --setting``: what the performed cutover needs, refused before any step."""
    for setting in options.settings:
        name = _name(setting)
        if _secret_name(name):
            raise UsageError(
                f"--setting {name}: looks like a secret, and fly.toml [env] is plain text in "
                "your repository; set it with `fly secrets set` instead"
            )
        if name.upper().startswith("FLY_"):
            raise UsageError(f"--setting {name}: Fly reserves names that begin with FLY_")
    if not options.source:
        raise UsageError(
            "--setting performs the cutover, after which the default storage is the new one: "
            "name the volume's own entry of STORAGES with --from (e.g. --from volume), which "
            "the copy and the delta after the deploy read"
        )


def _wanted(ctx: MigrateContext) -> dict[str, str]:
    """The cutover's NAME=VALUE: the flags, or (a resumed run) what the cutover wrote."""
    if ctx.options.settings:
        return {_name(s): _value(s) for s in ctx.options.settings}
    change = ctx.outcome.env_change or {}
    return {n: str(v.get("after")) for n, v in (change.get("env") or {}).items()}


def _env_line(env: dict[str, str]) -> str:
    return ", ".join(f"{n}={shlex.quote(v)}" for n, v in env.items())


def _digest(copy: dict[str, Any]) -> str:
    sha = copy.get("sha256")
    return f"{copy.get('size')} bytes, sha256 {sha[:12] if sha else 'unknown'}"
