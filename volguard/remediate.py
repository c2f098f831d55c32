"""`volguard remediate`: the missing-file audit on one Machine, and the repair behind interlocks.

Without ``--fix``/``--delete`` it only reads: ``manage.py check_missing_files --json`` runs
on one started Machine of the web group, and the plan (totals, counts per reason and per
owner, a few sample rows) is shown. With one of them, the runbook's steps, each recorded in
a run record (`volguard.runs`, kind ``remediate``) under a per-app lock:

1. ``gate``: `volguard.verify.verify` over the media groups must pass, with the Machine layer
   actually run (never remediate a fleet whose volume is not mounted);
2. ``audit``: the plan; nothing to do stops here;
3. ``confirm``: ``--delete`` asks, naming the app and the count (``--yes`` for CI);
4. ``snapshot``: an on-demand snapshot of every media volume, waited for until it is
   ``created`` (`volguard.fly.snapshots`);
5. ``remediate``: ``check_missing_files --fix|--delete --yes --json --export … --audit-log …
   --plan …`` with the export and the log beside MEDIA_ROOT, under
   ``<mount destination>/.volguard/``; ``--plan`` carries the rows step 2 showed (and step 3
   confirmed), so the Machine acts on exactly those or refuses, naming the rows that
   appeared or went since;
6. ``re-audit``: what is left.

The steps are small functions over one `RemediateContext` (the options and what the steps
share), in `STEP_FUNCTIONS`, as `volguard.deploy` has them. The command's document is read
with `volguard.audit_document`, the definition the Django side writes it with: the
reasons, the counts, the rows, and a VG404 refusal as a structured object.

How the command runs on the Machine: the probe program's manage mode
(`volguard.remote.probe_script`), as the app user, in the app process's cwd, with the app
process's environment, because a ``fly ssh console`` session runs as root and may not see
the app's secrets. The argv travels base64-encoded inside the probe's arguments, so no
shell ever reads it. Whatever comes back from the Machine is shown with the API token
masked.
"""

from __future__ import annotations

import posixpath
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from volguard.audit_document import (
    PROBLEM_REASONS,
    REASONS,
    SHARED,
    Plan,
    Refusal,
    candidates,
    find_document,
    parse_max_missing,
)
from volguard.audit_log import AuditLog
from volguard.config import Settings
from volguard.errors import (
    ProbeError,
    RemoteCommandError,
    StepFailed,
    Unreachable,
    UsageError,
    VolguardError,
)
from volguard.findings import Severity
from volguard.fly.client import MachinesClient, Token
from volguard.fly.fleet import Fleet, load_fleet
from volguard.fly.models import Machine
from volguard.flytoml import FlyConfig
from volguard.lint import static_context
from volguard.remote.probe import (
    MANAGE_MAX_OUTPUT,
    ManageRun,
    exit_status,
    manage_arguments,
    parse_facts,
    probe_script,
)
from volguard.remote.transports import Transport, TransportOptions
from volguard.report import RAN, Report
from volguard.runs import RUNS_DIR, SKIPPED, RunLock, RunRecord, Step, finish_run
from volguard.terminal import printable

Out = Callable[[str], None]
Confirm = Callable[[str], bool]
ClientFactory = Callable[[Token], MachinesClient]

FIX, DELETE = "fix", "delete"
ACTIONS = (FIX, DELETE)
DEFAULT_MANAGE_PY = "python3 manage.py"
STEPS = ("gate", "audit", "confirm", "snapshot", "remediate", "re-audit")
#: The status --fix gives a row (the default ``failed_value`` of the model configuration).
FAILED_STATUS = "failed"
#: Where the export and the audit log go on the Machine, under the mount's destination.
STATE_DIR = ".volguard"


# -- the public entry ----------------------------------------------------------------------


@dataclass
class Outcome:
    """What a `remediate` run saw and did; ``exit_code`` is the command's."""

    app: str
    action: str | None
    exit_code: int = 0
    machine: Machine | None = None
    run: ManageRun | None = None
    plan: AuditSummary | None = None
    after: AuditSummary | None = None
    snapshots: dict[str, str] = field(default_factory=dict)
    export: str | None = None
    remote: dict[str, Any] | None = None
    record: RunRecord | None = None
    error: VolguardError | None = None

    def as_dict(self) -> dict[str, Any]:
        """The ``--json`` document."""
        machine = self.machine
        return {
            "tool": "volguard",
            "command": "remediate",
            "app": self.app,
            "action": self.action,
            "exit_code": self.exit_code,
            "machine": {"id": machine.id, "group": machine.group, "region": machine.region}
            if machine
            else None,
            "ran_as": {"user": self.run.user, "cwd": self.run.cwd, "pid": self.run.pid}
            if self.run
            else None,
            "plan": self.plan.as_dict() if self.plan else None,
            "after": self.after.as_dict() if self.after else None,
            "snapshots": self.snapshots,
            "export": self.export,
            "remote": self.remote,
            "record": self.record.path if self.record else None,
            "status": self.record.status if self.record else None,
            "error": str(self.error) if self.error else None,
        }


@dataclass
class RemediateOptions:
    """The command's options: what to do, where, and how long to wait."""

    action: str | None = None  # None: plan only; FIX or DELETE: the runbook
    fly_toml: str | None = None  # for the gate (default: the settings' fly.toml)
    machine_id: str | None = None  # --machine; default: the first started web Machine
    max_missing: str | None = None  # passed to check_missing_files (VG404's cap)
    force: bool = False  # passed to check_missing_files: override VG404
    allow_delete_receivers: bool = False  # passed: --delete may run the app's delete receivers
    timeout: float = 900.0  # seconds manage.py may run on the Machine
    samples: int = 3  # sample rows shown per reason
    snapshot_timeout: float = 300.0
    snapshot_poll: float = 1.0


@dataclass
class RemediateContext:
    """What every step reads: the inputs, the options, and the `Outcome` the steps fill."""

    settings: Settings
    config: FlyConfig
    app: str
    token: Token
    options: RemediateOptions = field(default_factory=RemediateOptions)
    confirm: Confirm | None = None  # asks the --delete question; None: --yes
    client_factory: ClientFactory = MachinesClient
    audit: AuditLog | None = None  # the change log of the snapshot step
    runs_dir: str = RUNS_DIR
    out: Out = print
    outcome: Outcome = field(init=False)

    def __post_init__(self) -> None:
        self.outcome = Outcome(app=self.app, action=self.options.action)

    @property
    def action(self) -> str:
        """The acting run's action (the steps run only for FIX or DELETE)."""
        assert self.options.action is not None
        return self.options.action

    @property
    def media_groups(self) -> tuple[str, ...]:
        return tuple(static_context(self.config, self.settings).media_groups)

    @property
    def manage_py(self) -> str:
        return self.settings.manage_py or DEFAULT_MANAGE_PY

    @property
    def machine(self) -> Machine:
        """The Machine the audit step chose."""
        assert self.outcome.machine is not None
        return self.outcome.machine

    def audit_on(self, machine: Machine) -> tuple[ManageRun, AuditSummary]:
        return audit_on(
            self.settings,
            self.app,
            machine,
            self.manage_py,
            self.token,
            self.options.timeout,
            self.options.samples,
        )


def remediate(ctx: RemediateContext) -> Outcome:
    """Plan (``action`` None) or run the remediation runbook; see the module docstring.

    Errors before a run record exists raise; a step that fails or refuses ends the run and
    comes back as ``Outcome.error`` with its exit code (2 refused, 1 could not run).
    """
    options, outcome = ctx.options, ctx.outcome
    if options.action not in (None, *ACTIONS):
        raise UsageError(f"unknown action {options.action!r} (choose from {', '.join(ACTIONS)})")
    if options.max_missing is not None:
        parse_max_missing(options.max_missing)
    if options.action is None:
        with ctx.client_factory(ctx.token) as client:
            fleet = load_fleet(client, ctx.app)
        outcome.machine = choose_machine(fleet, ctx.media_groups, options.machine_id)
        outcome.run, outcome.plan = ctx.audit_on(outcome.machine)
        outcome.exit_code = 2 if outcome.plan.problems else 0
        return outcome

    with RunLock(ctx.app, ctx.runs_dir):
        record = outcome.record = RunRecord.new(
            "remediate",
            ctx.app,
            STEPS,
            fly_toml=options.fly_toml or ctx.settings.fly_toml,
            runs_dir=ctx.runs_dir,
            options={
                "action": options.action,
                "machine": options.machine_id,
                "transport": ctx.settings.transport,
                "manage_py": ctx.manage_py,
                "max_missing": options.max_missing,
                "force": options.force,
            },
        )
        try:
            for name in STEPS:
                if record.get(name).status == SKIPPED:
                    continue  # an earlier step found nothing to do
                with record.step(name) as step:
                    STEP_FUNCTIONS[name](ctx, step)
        except VolguardError as e:
            outcome.error = e
            outcome.exit_code = e.exit_code
        finally:
            finish_run(record)
    return outcome


# -- the steps: each ends ok / changed / failed / skipped, or raises to stop the run ----------


def gate_step(ctx: RemediateContext, step: Step) -> None:
    """verify-volume must pass, with its Machine layer run: never act on an unmounted volume."""
    from volguard.verify import verify

    report = verify(
        ctx.settings, ctx.options.fly_toml, token=ctx.token, client_factory=ctx.client_factory
    )
    verdict = gate(report)
    step.detail = verdict.as_dict()
    if not verdict.passed:
        step.failed(verdict.line())
        raise StepFailed(verdict.line())
    step.ok(verdict.line())


def audit_step(ctx: RemediateContext, step: Step) -> None:
    """The plan, on the chosen Machine; nothing to do skips every later step."""
    outcome, action = ctx.outcome, ctx.action
    with ctx.client_factory(ctx.token) as client:
        fleet = load_fleet(client, ctx.app)
    machine = outcome.machine = choose_machine(fleet, ctx.media_groups, ctx.options.machine_id)
    outcome.run, plan = ctx.audit_on(machine)
    outcome.plan = plan
    step.detail = {**_where(machine, outcome.run), "plan": plan.as_dict()}
    count = plan.actionable(action)
    if not count:
        step.ok(f"nothing to {action}: {plan.headline()}")
        assert outcome.record is not None
        for name in STEPS[STEPS.index("audit") + 1 :]:
            outcome.record.get(name).skipped("nothing to do")
        return
    step.ok(f"{_rows(count)} to {_verb(action)}; {plan.headline()}")


def confirm_step(ctx: RemediateContext, step: Step) -> None:
    """``--delete`` asks, naming the app and the count; ``--fix`` asks nothing."""
    plan = ctx.outcome.plan
    assert plan is not None
    count = plan.actionable(ctx.action)
    if ctx.action == FIX:
        step.skipped("--fix asks no confirmation")
    elif ctx.confirm is None:
        step.ok("--yes")
    elif ctx.confirm(f"Delete {_rows(count)} of app {ctx.app}?"):
        step.ok("confirmed at the terminal")
    else:
        step.failed("not confirmed")
        raise VolguardError("not confirmed: nothing was changed")


def snapshot_step(ctx: RemediateContext, step: Step) -> None:
    """An on-demand snapshot of every media volume: no row changes without a backup."""
    ctx.outcome.snapshots = snapshot_first(ctx, step, "remediate", "change rows")


def snapshot_first(ctx: Any, step: Step, command: str, doing: str) -> dict[str, str]:
    """The snapshot step of a runbook that writes (remediate, migrate-media): a snapshot of
    every media volume, each waited on until `created`, logged to the local change log as
    `command`; none to take fails the step ("refusing to `doing` without a backup").
    ``ctx`` has the config, settings, app, token, audit, out, client_factory and the
    options' snapshot_timeout and snapshot_poll. Answers {volume id: snapshot id}."""
    from volguard.fly.volumes import snapshot_media_volumes

    snapshots = snapshot_media_volumes(
        ctx.config,
        ctx.settings,
        ctx.app,
        ctx.token,
        apply=True,
        audit=ctx.audit or AuditLog(command=command),
        out=ctx.out,
        timeout=ctx.options.snapshot_timeout,
        poll=ctx.options.snapshot_poll,
        client_factory=ctx.client_factory,
    )
    step.detail = {"snapshots": dict(snapshots)}
    if not snapshots:
        step.failed(f"no media volume to snapshot: refusing to {doing} without a backup")
        raise StepFailed(step.summary)
    step.changed(", ".join(f"{v}: {s}" for v, s in snapshots.items()))
    return snapshots


def remediate_step(ctx: RemediateContext, step: Step) -> None:
    """``check_missing_files --fix|--delete`` on the Machine, export and log on the volume."""
    outcome, action, machine = ctx.outcome, ctx.action, ctx.machine
    assert outcome.record is not None
    state = posixpath.join(media_destination(ctx.config, machine.group), STATE_DIR)
    assert outcome.plan is not None
    argv = remote_argv(
        action,
        export=posixpath.join(state, "exports", f"{outcome.record.id}.json"),
        audit_log=posixpath.join(state, "audit.jsonl"),
        max_missing=ctx.options.max_missing,
        force=ctx.options.force,
        plan=outcome.plan.plans.get(action),
        allow_delete_receivers=ctx.options.allow_delete_receivers,
    )
    with _transport(ctx.settings, ctx.app, ctx.options.timeout) as transport:
        run = run_manage(
            transport,
            machine,
            argv,
            manage_py=ctx.manage_py,
            app_user=ctx.settings.app_user,
            make_dirs=(state, posixpath.join(state, "exports")),
            timeout=ctx.options.timeout,
            token=ctx.token,
        )
    outcome.remote = remote_result(run, machine, ctx.token)
    step.detail = {"export": None, "argv": argv, "result": outcome.remote}
    section = remediation_section(run, ctx.token)
    outcome.remote["remediation"] = section
    outcome.export = step.detail["export"] = section.get("export")
    changed = int(section.get("changed") or 0)
    done = "marked failed" if action == FIX else "deleted"
    summary = f"{_rows(changed)} {done}"
    if section.get("already_done"):
        summary += f", {_rows(int(section['already_done']))} already failed"
    if outcome.export:
        summary += f"; exported first to {outcome.export} on {machine.id}"
    if changed:
        step.changed(summary)
    else:
        step.ok(summary)


def reaudit_step(ctx: RemediateContext, step: Step) -> None:
    """The audit again: what is left."""
    _, after = ctx.audit_on(ctx.machine)
    ctx.outcome.after = after
    step.detail = {"after": after.as_dict()}
    step.ok(after.left_line(ctx.action))


STEP_FUNCTIONS: dict[str, Callable[[RemediateContext, Step], None]] = {
    "gate": gate_step,
    "audit": audit_step,
    "confirm": confirm_step,
    "snapshot": snapshot_step,
    "remediate": remediate_step,
    "re-audit": reaudit_step,
}


# -- choosing the Machine, running manage.py there -------------------------------------------


def choose_machine(
    fleet: Fleet, media_groups: Sequence[str], machine_id: str | None = None
) -> Machine:
    """The started Machine to run on: ``machine_id`` if given, else the first of the web
    group (``app`` if it is a media group, else the first media group)."""
    started = [m for g in media_groups for m in fleet.machines_of(g) if m.state == "started"]
    if machine_id:
        chosen = next((m for m in started if m.id == machine_id), None)
        if chosen is None:
            known = ", ".join(f"{m.id} ({m.group})" for m in started) or "none"
            raise UsageError(
                f"--machine {machine_id}: not a started Machine of the media groups of "
                f"{fleet.app} (started: {known})"
            )
        return chosen
    if not media_groups:
        raise VolguardError(f"{fleet.app}: no media process group")
    web = "app" if "app" in media_groups else media_groups[0]
    candidates = [m for m in started if m.group == web]
    if not candidates:
        raise VolguardError(
            f"{fleet.app}: no started Machine in group {web} to run manage.py on "
            "(start one, or choose another with --machine)"
        )
    return candidates[0]


def run_manage(
    transport: Transport,
    machine: Machine,
    argv: Sequence[str],
    *,
    manage_py: str = DEFAULT_MANAGE_PY,
    app_user: str | None = None,
    make_dirs: tuple[str, ...] = (),
    timeout: float = 900.0,
    max_output: int = MANAGE_MAX_OUTPUT,
    token: Token | None = None,
) -> ManageRun:
    """``manage_py argv`` on ``machine`` as the app user, with the app process's environment.

    Raises RemoteCommandError (exit 1) when the Machine cannot be reached or the probe
    could not start the command; the command's own exit status is in the result.
    """
    mask = token.redact if token else _same
    arguments = manage_arguments(
        list(argv),
        manage_py=manage_py,
        group=machine.group,
        app_user=app_user,
        make_dirs=make_dirs,
        timeout=timeout,
        max_output=max_output,
    )
    where = f"Machine {machine.id} ({machine.group}, over the {transport.options.kind} transport)"
    try:
        done = transport.run(machine, probe_script(arguments))
    except Unreachable as e:
        raise RemoteCommandError(mask(f"{where} is unreachable: {e}")) from None
    except Exception as e:  # testinfra/ssh raise assorted errors for a dead host
        result = e.args[0] if e.args else None
        stderr = getattr(result, "stderr", None)
        why = _last_line(stderr) if stderr else f"{type(e).__name__}: {e}"
        raise RemoteCommandError(mask(f"{where} is unreachable: {why}")) from None
    status = exit_status(done.stdout)
    if status is None:
        why = _last_line(done.stderr) or f"no answer (exit {done.rc})"
        raise RemoteCommandError(mask(f"{where} is unreachable: {why}"))
    if status != 0:
        why = _last_line(done.stderr) or f"exit status {status}"
        raise RemoteCommandError(mask(f"the probe failed on {where}: {why}"))
    try:
        run = ManageRun.from_probe(parse_facts(done.stdout))
    except ProbeError as e:
        hint = "" if app_user else " (if the app runs as root, set volguard.app_user: root)"
        raise RemoteCommandError(mask(f"{where}: {e}{hint}")) from None
    return run


def audit_on(
    settings: Settings,
    app: str,
    machine: Machine,
    manage_py: str,
    token: Token | None = None,
    timeout: float = 900.0,
    samples: int = 3,
) -> tuple[ManageRun, AuditSummary]:
    """``check_missing_files --json`` on ``machine``, summarised."""
    with _transport(settings, app, timeout) as transport:
        run = run_manage(
            transport,
            machine,
            ["check_missing_files", "--json"],
            manage_py=manage_py,
            app_user=settings.app_user,
            timeout=timeout,
            token=token,
        )
    return run, AuditSummary.from_document(read_audit(run, token), samples=samples)


def read_audit(run: ManageRun, token: Token | None = None) -> dict[str, Any]:
    """``check_missing_files --json``'s document (exit 0 or 2); else RemoteCommandError."""
    mask = token.redact if token else _same
    if run.returncode not in (0, 2):
        raise RemoteCommandError(
            mask(f"manage.py check_missing_files failed (exit {run.returncode}, as {run.user} in "
                 f"{run.cwd}): {run.last_error_line()}")
        )  # fmt: skip
    document = find_document(run.stdout)
    if document is None:
        why = (
            f"its output was cut at {MANAGE_MAX_OUTPUT >> 20} MiB"
            if run.stdout_truncated
            else run.last_error_line()
        )
        raise RemoteCommandError(
            mask(f"manage.py check_missing_files printed no JSON document: {why}")
        )
    return document


def remediation_section(run: ManageRun, token: Token | None = None) -> dict[str, Any]:
    """The ``remediation`` section of a ``--fix``/``--delete --json`` run.

    A refusal (the document's ``refused`` object: VG404, the Django-side interlock, or
    ``plan_changed``, rows that are not the confirmed plan's) is StepFailed, exit 2.
    Anything else that did not produce the section is RemoteCommandError, exit 1.
    """
    mask = token.redact if token else _same
    document = find_document(run.stdout)
    if document is not None and isinstance(document.get("remediation"), dict):
        return document["remediation"]
    refusal = Refusal.from_document(document) if document is not None else None
    if refusal is not None:
        raise StepFailed(mask(refusal.message))
    refused = document.get("refused") if document is not None else None
    if isinstance(refused, dict) and isinstance(refused.get("message"), str):
        raise StepFailed(mask(refused["message"]))  # the plan changed since it was confirmed
    line = mask(run.last_error_line())
    raise RemoteCommandError(
        f"manage.py check_missing_files failed (exit {run.returncode}): {line}"
    )


def remote_argv(
    action: str,
    *,
    export: str,
    audit_log: str,
    max_missing: str | None = None,
    force: bool = False,
    plan: str | None = None,
    allow_delete_receivers: bool = False,
) -> list[str]:
    """The acting ``check_missing_files`` command line (an argv, never given to a shell);
    ``plan`` is the confirmed plan's ``--plan`` value (`volguard.audit_document.Plan`)."""
    argv = ["check_missing_files", f"--{action}", "--yes", "--json"]
    argv += ["--export", export, "--audit-log", audit_log]
    if max_missing is not None:
        argv += ["--max-missing", max_missing]
    if force:
        argv.append("--force")
    if allow_delete_receivers:
        argv.append("--allow-delete-receivers")
    if plan is not None:
        argv += ["--plan", plan]
    return argv


def remote_result(run: ManageRun, machine: Machine, token: Token | None = None) -> dict[str, Any]:
    """What the run record keeps of a remote run (stderr's tail, token masked)."""
    mask = token.redact if token else _same
    tail = [mask(line) for line in run.stderr.splitlines() if line.strip()][-20:]
    return {
        **_where(machine, run),
        "returncode": run.returncode,
        "stderr_tail": tail,
        "probe_errors": [mask(e) for e in run.errors],
    }


def media_destination(config: FlyConfig, group: str) -> str:
    """The mount destination fly.toml gives ``group``: the export goes beside MEDIA_ROOT."""
    mounts = config.mounts_of(group)
    if not mounts:
        raise VolguardError(
            f"{config.path} gives group {group} no [mounts]: nowhere on the volume to keep "
            "the export and the audit log"
        )
    return posixpath.normpath(mounts[0].destination)


# -- the gate --------------------------------------------------------------------------------


@dataclass(frozen=True)
class GateVerdict:
    """Whether verify-volume lets remediation act, and why not."""

    passed: bool
    finding_ids: tuple[str, ...] = ()
    reason: str = ""

    def line(self) -> str:
        if self.passed:
            return "verify-volume passed: no error finding, the Machine layer ran"
        return (
            f"remediation refused: {self.reason}; never remediate a fleet whose volume is not "
            "mounted (nothing was changed)"
        )

    def as_dict(self) -> dict[str, Any]:
        return {"passed": self.passed, "finding_ids": list(self.finding_ids), "reason": self.reason}


def gate(report: Report) -> GateVerdict:
    """Pass only with no unwaived error finding and a Machine layer that really ran."""
    failing = [f for f in report.sorted_findings() if f.counts_at(Severity.ERROR)]
    if failing:
        ids = tuple(dict.fromkeys(f.id for f in failing))
        where = ", ".join(f"{f.id} ({f.location})" for f in failing[:6])
        more = f" and {len(failing) - 6} more" if len(failing) > 6 else ""
        return GateVerdict(False, ids, f"verify-volume finds {where}{more}")
    layer = report.layers.get("machine")
    if layer is None or layer.status != RAN:
        why = f"{layer.status}: {layer.reason}" if layer else "not run"
        return GateVerdict(False, (), f"the Machine layer of verify-volume did not run ({why})")
    return GateVerdict(True)


# -- the plan --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sample:
    """One row of the plan, as shown: its model, id, stored name and reason."""

    model: str
    pk: Any
    name: str
    reason: str

    def as_dict(self) -> dict[str, Any]:
        return {"model": self.model, "id": self.pk, "name": self.name, "reason": self.reason}


@dataclass(frozen=True)
class AuditSummary:
    """``check_missing_files --json`` as a plan: totals, per reason, per owner, samples."""

    total_rows: int
    audited_rows: int
    skipped_recent: int
    problems: int
    per_reason: dict[str, int]
    per_owner: dict[str, int]
    samples: dict[str, tuple[Sample, ...]]
    fixable: int  # rows --fix acts on: missing or empty
    deletable: int  # rows --delete acts on: those, minus any whose file another row uses
    not_failed: int  # fixable rows whose status is not yet "failed"
    fields: tuple[str, ...] = ()
    #: Per action, the ``--plan`` value binding the acting run to these rows (not shown).
    plans: dict[str, str] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def from_document(cls, document: dict[str, Any], samples: int = 3) -> AuditSummary:
        rows = [r for r in document.get("rows") or () if isinstance(r, dict)]
        fixable = candidates(rows, reason=_reason, key=_key)
        deletable = candidates(rows, reason=_reason, key=_key, for_delete=True)
        owners: Counter[str] = Counter(
            _owner(r) for r in rows if r.get("reason") in PROBLEM_REASONS
        )
        picked: dict[str, list[Sample]] = {}
        for r in rows:
            reason = str(r.get("reason"))
            if len(picked.setdefault(reason, [])) < samples:
                name = r.get("name")
                picked[reason].append(
                    Sample(str(r.get("model", "")), r.get("pk"), "" if name is None else name,
                           reason)
                )  # fmt: skip
        per_reason = {str(k): int(v) for k, v in (document.get("per_reason") or {}).items()}
        return cls(
            total_rows=int(document.get("total_rows") or 0),
            audited_rows=int(document.get("audited_rows") or 0),
            skipped_recent=int(document.get("skipped_recent") or 0),
            problems=int(document.get("problem_rows") or 0),
            per_reason=per_reason,
            per_owner=dict(owners.most_common()),
            samples={k: tuple(v) for k, v in picked.items() if v},
            fixable=len(fixable),
            deletable=len(deletable),
            not_failed=sum(1 for r in fixable if r.get("status") != FAILED_STATUS),
            fields=tuple(
                f"{f.get('model')}.{f.get('field')}"
                for f in document.get("fields") or ()
                if isinstance(f, dict)
            ),
            plans={FIX: _plan(fixable), DELETE: _plan(deletable)},
        )

    def actionable(self, action: str) -> int:
        return self.deletable if action == DELETE else self.fixable

    def headline(self) -> str:
        """``3 of 7 rows without their file (missing 2, empty 1)``."""
        counts = _counts(self.per_reason, PROBLEM_REASONS)
        return f"{self.problems} of {_rows(self.audited_rows)} audited without a usable file" + (
            f" ({counts})" if counts else ""
        )

    def left_line(self, action: str) -> str:
        """What a re-audit after ``action`` says is left."""
        if action == DELETE:
            return f"{_rows(self.deletable)} left to delete; {self.headline()}"
        return (
            f"{_rows(self.fixable)} still without their file, {self.not_failed} of them not "
            f"marked failed; {self.headline()}"
        )

    def lines(self) -> list[str]:
        """The plan, for people."""
        out = [
            f"Total file records: {self.total_rows} ({self.audited_rows} audited, "
            f"{self.skipped_recent} skipped as recent uploads)",
            f"Without a usable file: {self.problems}"
            + (f" ({_counts(self.per_reason, PROBLEM_REASONS)})" if self.problems else ""),
        ]
        if self.per_reason.get(SHARED):
            out.append(f"Sharing one file with another row (VG403): {self.per_reason[SHARED]}")
        if self.per_owner:
            owners = ", ".join(f"{owner}: {n}" for owner, n in list(self.per_owner.items())[:10])
            more = f", … {len(self.per_owner) - 10} more" if len(self.per_owner) > 10 else ""
            out.append(f"Per user: {owners}{more}")
        for reason in REASONS:
            for sample in self.samples.get(reason, ()):
                out.append(f"  {reason:<12} ID {sample.pk}: {_shown(sample.name) or '(empty)'}"
                           + (f"  [{sample.model}]" if len(self.fields) > 1 else ""))  # fmt: skip
        out.append(
            f"--fix would mark {_rows(self.fixable)} failed ({self.not_failed} not yet failed); "
            f"--delete would delete {_rows(self.deletable)}"
        )
        return out

    def as_dict(self) -> dict[str, Any]:
        return {
            "total_rows": self.total_rows,
            "audited_rows": self.audited_rows,
            "skipped_recent": self.skipped_recent,
            "problems": self.problems,
            "per_reason": dict(self.per_reason),
            "per_owner": dict(self.per_owner),
            "samples": {k: [s.as_dict() for s in v] for k, v in self.samples.items()},
            "fixable": self.fixable,
            "deletable": self.deletable,
            "not_failed": self.not_failed,
            "fields": list(self.fields),
        }


# -- text ------------------------------------------------------------------------------------


def render_text(outcome: Outcome) -> str:
    """The plan, and for --fix/--delete the steps and the run record's path."""
    # Every value below came from the API, the Machine or the database: each line is escaped
    # on its own (`printable`), so a name cannot carry a control sequence or a fake new line.
    lines: list[str] = []
    machine, run = outcome.machine, outcome.run
    if machine and run:
        lines.append(
            f"app {outcome.app}: check_missing_files on Machine {machine.id} (group "
            f"{machine.group}, {machine.region}) as {run.user} in {run.cwd}"
        )
    if outcome.plan:
        lines += outcome.plan.lines()
    if outcome.record is not None:
        record = outcome.record
        lines += ["", f"remediate --{outcome.action}: {record.status}"]
        lines += record.text().splitlines()
        if outcome.snapshots:
            lines.append(
                "snapshots: " + ", ".join(f"{v} {s}" for v, s in outcome.snapshots.items())
            )
        if outcome.export and outcome.remote:
            lines.append(f"export: {outcome.export} (on Machine {outcome.remote['machine']})")
        if outcome.after:
            lines.append(f"after: {outcome.after.left_line(outcome.action or FIX)}")
        lines.append(f"run record: {record.path}")
    return "\n".join(printable(line) for line in lines) + "\n"


# -- helpers ---------------------------------------------------------------------------------


def _transport(settings: Settings, app: str, timeout: float) -> Transport:
    from volguard.verify import missing_tool

    missing = missing_tool(settings)
    if missing:
        raise VolguardError(missing)
    return Transport(
        TransportOptions(
            kind=settings.transport,
            app=app,
            user=settings.ssh_user,
            flyctl=settings.flyctl,
            host_template=settings.host_template,
            ssh_config=settings.ssh_config,
            timeout=timeout + 60,  # the probe gives up on manage.py first
        )
    )


def _where(machine: Machine, run: ManageRun) -> dict[str, Any]:
    return {
        "machine": machine.id,
        "group": machine.group,
        "user": run.user,
        "cwd": run.cwd,
        "pid": run.pid,
    }


def _plan(rows: Sequence[dict[str, Any]]) -> str:
    """The ``--plan`` value naming ``rows`` (pks as text, as the Django side names them)."""
    keys = ((str(r.get("model")), str(r.get("field")), str(r.get("pk"))) for r in rows)
    return Plan.of(keys).encode()


def _key(row: dict[str, Any]) -> tuple[Any, ...]:
    return (row.get("model"), row.get("field"), row.get("pk"))


def _reason(row: dict[str, Any]) -> Any:
    return row.get("reason")


def _owner(row: dict[str, Any]) -> str:
    owner = row.get("owner")
    return "(no owner)" if owner is None else f"user {owner}"


def _counts(counts: dict[str, int], reasons: Sequence[str]) -> str:
    return ", ".join(f"{r} {counts[r]}" for r in reasons if counts.get(r))


def _rows(count: int) -> str:
    return f"{count} row" if count == 1 else f"{count} rows"


def _verb(action: str) -> str:
    return "mark failed" if action == FIX else "delete"


def _shown(text: Any) -> str:
    text = str(text)
    return (
        text
        if text.isprintable()
        else "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
    )


def _last_line(text: str | None) -> str:
    lines = [line.strip() for line in (text or "").splitlines() if line.strip()]
    return lines[-1][:300] if lines else ""


def _same(text: str) -> str:
    return text
