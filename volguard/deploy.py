"""`invoke deploy`: the whole runbook as one scripted, repeatable, resumable run.

lint gate → ensure volumes → ``flyctl deploy`` → wait for the media groups' Machines to
start → verify (static, platform, Machines) → missing-file audit → optional fix.

Every step ends ok / changed / failed / skipped in a run record (`volguard.runs`), saved
after each step under ``.volguard/runs/``. A failed step stops the run; ``--resume``
continues from it. `RunLock` keeps two runs of one app apart. Steps that find problems in
the deployment fail with exit code 2; volguard failing to run is exit code 1.

The steps are small functions over one `DeployContext`; each reads what it needs from it
and reports through its `Step`, so the order in `STEPS` is the whole flow.
"""

from __future__ import annotations

import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from volguard.audit_log import DEFAULT_PATH, AuditLog
from volguard.config import Settings
from volguard.fly.client import MachinesClient, Token
from volguard.fly.fleet import load_fleet
from volguard.fly.planning import plan_volumes
from volguard.flytoml import FlyConfig
from volguard.lint import static_context
from volguard.masking import Masker
from volguard.report import Report
from volguard.runs import RUNS_DIR, RunLock, RunRecord, Step
from volguard.terminal import printable

if TYPE_CHECKING:
    from volguard.remediate import AuditSummary

Out = Callable[[str], None]
Confirm = Callable[[str], bool]

#: The runbook, in order.
STEPS = ("lint", "volumes", "deploy", "wait", "verify", "audit", "fix")
#: How often the wait step lists the Machines.
WAIT_POLL_SECONDS = 1.0


@dataclass
class DeployOptions:
    fly_toml: str
    apply: bool = False  # create missing volumes
    yes: bool = False  # no confirmation prompts (CI)
    deploy: bool = True  # run `flyctl deploy` (False: --no-deploy)
    fix: bool = False  # remediate --fix when the audit finds rows
    resume: bool = False
    wait_timeout: float = 300.0
    max_missing: str | None = None
    audit: bool = True  # run the missing-file audit (False: --no-audit)

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class DeployContext:
    settings: Settings
    config: FlyConfig
    app: str
    token: Token
    options: DeployOptions
    out: Out
    confirm: Confirm | None
    client_factory: Callable[[Token], MachinesClient] = MachinesClient
    runs_dir: str = RUNS_DIR
    audit_plan: AuditSummary | None = None  # the audit step's plan, for the fix step

    @property
    def media_groups(self) -> tuple[str, ...]:
        return tuple(static_context(self.config, self.settings).media_groups)


def run_deploy(ctx: DeployContext) -> RunRecord:
    """Run (or resume) the runbook under the app's lock; the finished record."""
    mask = Masker.from_environment(ctx.token)
    # Steps quote output volguard did not write (flyctl's, a Machine's, the API's): whatever
    # they print goes out masked and with control characters escaped.
    shown = ctx.out
    ctx.out = lambda line: shown(printable(mask(line), newlines=True))
    with RunLock(ctx.app, ctx.runs_dir):
        start = RunRecord.resume if ctx.options.resume else RunRecord.new
        record = start(
            "deploy",
            ctx.app,
            STEPS,
            fly_toml=ctx.options.fly_toml,
            runs_dir=ctx.runs_dir,
            options=ctx.options.as_dict(),
            mask=mask,
        )
        if record.resumed_from:
            ctx.out(f"volguard: resuming run {record.resumed_from} as {record.id}")
        try:
            for name in STEPS:
                step = record.get(name)
                if step.carried_over:
                    ctx.out(f"[{name}] {step.status} in the earlier run: {step.summary}")
                    continue
                ctx.out(f"[{name}]")
                with record.step(name) as step:
                    STEP_FUNCTIONS[name](ctx, step)
                ctx.out(f"[{name}] {step.status}: {step.summary}")
                if step.status == "failed":
                    break
        finally:
            record.finish()
    return record


# -- the steps ----------------------------------------------------------------------------


def lint_step(ctx: DeployContext, step: Step) -> None:
    """The offline gate: fly.toml and MEDIA_ROOT (VG100–VG114)."""
    from volguard.lint import lint

    report = lint(ctx.settings, ctx.options.fly_toml)
    errors = _errors(report)
    step.detail["findings"] = [f.id for f in report.sorted_findings() if not f.waived]
    for f in errors:
        ctx.out(f"  {f.severity} {f.id} {f.location}: {f.message}")
    if errors:
        step.failed(f"{len(errors)} error(s): {', '.join(sorted({f.id for f in errors}))}")
    else:
        step.ok(f"{len(step.detail['findings'])} finding(s) below error")


def volumes_step(ctx: DeployContext, step: Step) -> None:
    """Every group with a mount has its volumes; create them only with --apply."""
    from volguard.fly.volumes import ensure_volumes

    with ctx.client_factory(ctx.token) as client:
        needs = plan_volumes(ctx.config, load_fleet(client, ctx.app))
    total = sum(n.count for n in needs)
    step.detail["planned"] = [n.describe() for n in needs]
    if not total:
        step.ok("every process group with a mount has its volumes")
        return
    for need in needs:
        ctx.out(f"  {need.describe()}")
    if not ctx.options.apply:
        step.failed(f"{total} volume(s) missing: re-run with --apply to create them")
        return
    created = ensure_volumes(
        ctx.config,
        ctx.app,
        ctx.token,
        apply=True,
        confirm=None if ctx.options.yes else ctx.confirm,
        audit=AuditLog(DEFAULT_PATH, command="deploy"),
        out=lambda line: ctx.out(f"  {line}"),
        client_factory=ctx.client_factory,
    )
    step.detail["created"] = created
    step.changed(f"created {len(created)} volume(s): {', '.join(created)}")


def deploy_step(ctx: DeployContext, step: Step) -> None:
    """``flyctl deploy --config FLY_TOML --app APP --yes`` (skipped with --no-deploy)."""
    if not ctx.options.deploy:
        step.skipped("--no-deploy")
        return
    argv = [ctx.settings.flyctl, "deploy", "--config", ctx.options.fly_toml]
    argv += ["--app", ctx.app, "--yes"]
    step.detail["command"] = argv
    # flyctl prints what it is given (a release command's environment, a failing URL): mask
    # the token and database passwords before a line reaches the screen or the record.
    mask = Masker.from_environment(ctx.token)
    try:
        returncode, stdout, stderr = _streamed(
            argv, lambda line: ctx.out(f"  {printable(mask(line))}")
        )
    except FileNotFoundError:
        step.failed(f"{ctx.settings.flyctl} is not installed or not on PATH")
        return
    if returncode != 0:
        last = (stderr.strip() or stdout.strip() or "no output").splitlines()[-1]
        step.failed(f"flyctl deploy exited {returncode}: {printable(mask(last))}")
        return
    step.changed("deployed")


def _streamed(argv: list[str], out: Callable[[str], None]) -> tuple[int, str, str]:
    """Run ``argv``, passing each stdout line to ``out`` as it comes (a deploy takes
    minutes); stderr is kept apart, for the one-line reason of a failure."""
    with subprocess.Popen(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        bufsize=1,
    ) as proc:
        stdout, stderr = proc.stdout, proc.stderr
        assert stdout is not None
        assert stderr is not None
        errors: list[str] = []
        reader = threading.Thread(target=lambda: errors.append(stderr.read()), daemon=True)
        reader.start()
        lines = []
        for line in stdout:
            line = line.rstrip("\n")
            lines.append(line)
            out(line)
        returncode = proc.wait()
        reader.join()
    return returncode, "\n".join(lines), "".join(errors)


def wait_step(ctx: DeployContext, step: Step) -> None:
    """Wait until every Machine of the media groups is started (at least one per group)."""
    deadline = time.monotonic() + ctx.options.wait_timeout
    groups = ctx.media_groups
    with ctx.client_factory(ctx.token) as client:
        while True:
            fleet = load_fleet(client, ctx.app)
            waiting = {
                m.id: m.state for g in groups for m in fleet.machines_of(g) if m.state != "started"
            }
            empty = [g for g in groups if not fleet.machines_of(g)]
            if not waiting and not empty:
                started = sum(len(fleet.machines_of(g)) for g in groups)
                step.ok(f"{started} Machine(s) of {', '.join(groups)} started")
                return
            if time.monotonic() >= deadline:
                parts = [f"{mid} {state}" for mid, state in sorted(waiting.items())]
                parts += [f"no Machine in group {g}" for g in empty]
                step.failed(f"not started after {ctx.options.wait_timeout:g} s: {', '.join(parts)}")
                return
            time.sleep(WAIT_POLL_SECONDS)


def verify_step(ctx: DeployContext, step: Step) -> None:
    """verify-volume: fly.toml, the Machines API, each Machine over the transport."""
    from volguard.verify import verify

    report = verify(
        ctx.settings, ctx.options.fly_toml, token=ctx.token, client_factory=ctx.client_factory
    )
    errors = _errors(report)
    step.detail["findings"] = [f.id for f in report.sorted_findings() if not f.waived]
    step.detail["layers"] = {
        name: (layer.status, layer.reason) for name, layer in report.layers.items()
    }
    for f in errors:
        ctx.out(f"  {f.severity} {f.id} {f.location}: {f.message}")
    skipped = [n for n, layer in report.layers.items() if layer.status == "skipped"]
    if errors:
        step.failed(f"{len(errors)} error(s): {', '.join(sorted({f.id for f in errors}))}")
    elif skipped:
        reasons = "; ".join(f"{n}: {report.layers[n].reason}" for n in skipped)
        step.failed(f"not verified: {reasons}")
    else:
        step.ok(f"all layers ran; {len(step.detail['findings'])} finding(s) below error")


def audit_step(ctx: DeployContext, step: Step) -> None:
    """``check_missing_files`` on an app Machine: which rows lost their file (read-only)."""
    if not ctx.options.audit:
        step.skipped("--no-audit")
        return
    from volguard import remediate

    outcome = remediate.remediate(
        remediate.RemediateContext(
            ctx.settings, ctx.config, ctx.app, ctx.token, client_factory=ctx.client_factory
        )
    )
    plan = outcome.plan
    assert plan is not None
    step.detail["audit"] = plan.as_dict()
    for line in plan.lines():
        ctx.out(f"  {line}")
    ctx.audit_plan = plan
    if not plan.problems:
        step.ok(f"{plan.audited_rows} rows audited, every file present")
    elif not plan.not_failed:
        step.ok(f"{plan.headline()}; all already marked failed")
    elif ctx.options.fix:
        step.ok(f"{plan.headline()}: fixing next")
    else:
        step.failed(f"{plan.headline()} (--fix marks them failed)")


def fix_step(ctx: DeployContext, step: Step) -> None:
    """``remediate --fix``: its own gate (verify), a snapshot and an export, then the fix."""
    plan = ctx.audit_plan
    if not ctx.options.fix:
        step.skipped("no --fix")
        return
    if not ctx.options.audit:
        step.skipped("--no-audit")
        return
    if plan is not None and not plan.not_failed:
        step.skipped("nothing to fix")
        return
    from volguard import remediate

    outcome = remediate.remediate(
        remediate.RemediateContext(
            ctx.settings,
            ctx.config,
            ctx.app,
            ctx.token,
            remediate.RemediateOptions(
                action=remediate.FIX,
                fly_toml=ctx.options.fly_toml,
                max_missing=ctx.options.max_missing,
            ),
            client_factory=ctx.client_factory,
            runs_dir=ctx.runs_dir,
            out=lambda line: ctx.out(f"  {line}"),
        )
    )
    step.detail["remediation"] = outcome.as_dict()
    if outcome.error is not None or outcome.exit_code not in (0, 2):
        step.failed(str(outcome.error or f"remediate exited {outcome.exit_code}"))
        return
    if outcome.record and outcome.record.status != "succeeded":
        step.failed(f"remediate {outcome.record.status}: see {outcome.record.path}")
        return
    snapshots = ", ".join(outcome.snapshots.values()) or "none"
    step.changed(
        f"marked {plan.not_failed if plan else '?'} row(s) failed; snapshots {snapshots}; "
        f"export {outcome.export or 'none'} (on the Machine)"
    )


STEP_FUNCTIONS: dict[str, Callable[[DeployContext, Step], None]] = {
    "lint": lint_step,
    "volumes": volumes_step,
    "deploy": deploy_step,
    "wait": wait_step,
    "verify": verify_step,
    "audit": audit_step,
    "fix": fix_step,
}


def _errors(report: Report) -> list[Any]:
    return [f for f in report.sorted_findings() if not f.waived and f.severity == "error"]
