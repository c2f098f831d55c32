"""The Machine layer: probe every started Machine of the media groups, then judge.

Rounds over every Machine at once, so eight Machines take about as long as one,
and no Machine gets more than two sessions: first every Machine reports its
facts, and one app Machine also leaves a visibility probe in MEDIA_ROOT; then
the other groups' Machines look for that probe; then the writer removes it
(VG306). With a single media group there is only the first round.
An unreachable Machine is one VG300 after one timeout, not a timeout per check.
"""

from __future__ import annotations

import contextlib
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any

from volguard.catalogue import finding
from volguard.findings import Finding, Location
from volguard.fly.fleet import Fleet
from volguard.fly.models import Machine
from volguard.flytoml import FlyConfig
from volguard.remote.probe import MachineFacts, ProbeError, exit_status, parse_facts, probe_script
from volguard.remote.transports import Transport, TransportOptions, Unreachable
from volguard.rules.machine import MachineContext, Observation

DEFAULT_DESTINATION = "/data"


@dataclass
class MachineLayerResult:
    findings: list[Finding] = field(default_factory=list)
    checked: list[str] = field(default_factory=list)
    sessions: dict[str, int] = field(default_factory=dict)


def targets_of(
    fleet: Fleet,
    media_groups: tuple[str, ...],
    machine_ids: tuple[str, ...] = (),
    groups: tuple[str, ...] = (),
) -> list[Machine]:
    """Started Machines of the media groups, narrowed by --machine / --group."""
    chosen = [m for g in media_groups for m in fleet.machines_of(g) if m.state == "started"]
    if groups:
        chosen = [m for m in chosen if m.group in groups]
    if machine_ids:
        chosen = [m for m in chosen if m.id in machine_ids]
    return chosen


def check_machines(
    config: FlyConfig,
    targets: list[Machine],
    options: TransportOptions,
    context: MachineContext,
    *,
    media_root: str | None = None,
    ttl: float = 300.0,
    parallel: int = 8,
    run_id: str | None = None,
    checks_dirs: tuple[str, ...] = (),
    manage_py: str | None = None,
) -> MachineLayerResult:
    result = MachineLayerResult()
    if not targets:
        return result
    run_id = run_id or uuid.uuid4().hex[:12]
    writer = next((m for m in targets if m.group == "app"), targets[0])
    # VG306 needs a reader in another group; with one group there is nothing to compare
    cross_group = any(m.group != writer.group for m in targets)

    def arguments(machine: Machine, **more: Any) -> dict[str, Any]:
        return {
            "destination": _destination(config, machine.group),
            "run_id": run_id,
            "machine": machine.id,
            "media_root": media_root,
            "app_user": context.app_user,
            "group": machine.group,
            "ttl": ttl,
            "manage_py": manage_py,
            **more,
        }

    workers = max(1, min(parallel, len(targets)))
    with Transport(options) as transport, ThreadPoolExecutor(max_workers=workers) as pool:
        # 1: every Machine at once; the writer also leaves a visibility probe in MEDIA_ROOT
        outcomes = list(
            pool.map(
                lambda m: _observe(
                    transport,
                    m,
                    arguments(m, write_visibility_probe=cross_group and m is writer),
                ),
                targets,
            )
        )
        by_id = {m.id: o for m, o in zip(targets, outcomes, strict=True)}
        first = by_id[writer.id]
        probe = first.facts.visibility_probe if isinstance(first, Observation) else None
        # 2: the other groups look for it, all at once; 3: then the writer removes it (not
        # at the same time: where storage IS shared, an early removal would fake a VG306)
        if probe:
            readers = [
                m
                for m in targets
                if m.group != writer.group and isinstance(by_id[m.id], Observation)
            ]
            looks = [
                (m, arguments(m, look_only=True, look_for=[probe],
                              media_root=by_id[m.id].facts.media_root))
                for m in readers
            ]  # fmt: skip
            answers = list(pool.map(lambda job: _try_run(transport, *job), looks))
            for (machine, _), answer in zip(looks, answers, strict=True):
                seen = (answer or {}).get("visible")
                if seen is not None:
                    o = by_id[machine.id]
                    by_id[machine.id] = replace(o, facts=replace(o.facts, visible=seen))
            _try_run(
                transport,
                writer,
                arguments(
                    writer, cleanup_only=True, remove=[probe], media_root=first.facts.media_root
                ),
            )
        observations = []
        for machine in targets:
            outcome = by_id[machine.id]
            if isinstance(outcome, Observation):
                observations.append(outcome)
                result.checked.append(machine.id)
            else:
                result.findings.append(outcome)
        result.sessions = dict(transport.sessions)
        if observations:
            from volguard.remote.checks_runner import run_checks

            result.findings += run_checks(observations, context, transport, checks_dirs)
    return result


def _try_run(transport: Transport, machine: Machine, args: dict[str, Any]) -> dict[str, Any] | None:
    """A follow-up session; if it fails, the probe's watchdog still removes the file."""
    with contextlib.suppress(Unreachable, ProbeError):
        return _run(transport, machine, args)
    return None


def _destination(config: FlyConfig, group: str) -> str:
    mounts = config.mounts_of(group) or list(config.mounts)
    return mounts[0].destination if mounts else DEFAULT_DESTINATION


def _observe(transport: Transport, machine: Machine, args: dict[str, Any]) -> Observation | Finding:
    try:
        facts = MachineFacts.from_probe(_run(transport, machine, args))
    except Unreachable as e:
        return _unreachable(machine, str(e), transport.options.kind)
    except ProbeError as e:
        return _unreachable(machine, f"the probe failed: {e}", transport.options.kind)
    return Observation(machine=machine, destination=args["destination"], facts=facts)


def _run(transport: Transport, machine: Machine, args: dict[str, Any]) -> dict[str, Any]:
    try:
        done = transport.run(machine, probe_script(args))
    except Unreachable:
        raise
    except Exception as e:  # testinfra/ssh raise assorted errors for a dead host
        result = e.args[0] if e.args else None  # testinfra's ssh raises with the CommandResult
        stderr = getattr(result, "stderr", None)
        raise Unreachable(_first_line(stderr) if stderr else f"{type(e).__name__}: {e}") from None
    status = exit_status(done.stdout)
    if status is None:
        raise Unreachable(_first_line(done.stderr) or f"no answer (exit {done.rc})")
    if status != 0:
        raise ProbeError(_first_line(done.stderr) or f"exit status {status}")
    return parse_facts(done.stdout)


def _unreachable(machine: Machine, why: str, kind: str) -> Finding:
    return finding(
        "VG300",
        f"Machine {machine.id} (group {machine.group}, {machine.region}) could not be checked "
        f"over the {kind} transport: {why}",
        Location(machine=machine.id),
        evidence={"machine": machine.id, "group": machine.group, "transport": kind},
    )


def _first_line(text: str) -> str:
    lines = [line.strip() for line in (text or "").splitlines() if line.strip()]
    errors = [line for line in lines if "rror" in line or "refused" in line or "denied" in line]
    return (errors or lines or [""])[-1][:300]
