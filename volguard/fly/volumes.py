"""The volume commands' I/O: plan from the live fleet, print the plan, act only when told.

Safety rules (docs/architecture.md): the plan is printed in both cases; `--apply` acts;
the confirmation names the app and the count; every volume or snapshot made
goes to the audit log; running twice changes nothing the second time.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

from volguard.audit_log import AuditLog
from volguard.config import Settings
from volguard.errors import VolguardError
from volguard.fly.client import FlyUnavailable, MachinesClient, Token
from volguard.fly.fleet import load_fleet
from volguard.fly.planning import VolumeNeed, plan_volumes
from volguard.fly.snapshots import snapshot_volumes
from volguard.flytoml import FlyConfig
from volguard.lint import static_context

Out = Callable[[str], None]
Confirm = Callable[[str], bool]

#: A create that failed ambiguously (a 5xx or a lost connection after sending) may have
#: happened; re-listing and re-planning decides. This bounds how often.
MAX_PLAN_ROUNDS = 3


def ensure_volumes(
    config: FlyConfig,
    app: str,
    token: Token,
    *,
    apply: bool,
    confirm: Confirm | None,
    audit: AuditLog,
    out: Out,
    count: int | None = None,
    size_gb: int | None = None,
    groups: tuple[str, ...] | None = None,
    require_unique_zone: bool = True,
    client_factory: Callable[[Token], MachinesClient] = MachinesClient,
) -> list[str]:
    """Create the volumes the plan calls for; return the ids created (empty on a dry run)."""

    def plan(client: MachinesClient) -> list[VolumeNeed]:
        fleet = load_fleet(client, app)
        return plan_volumes(
            config,
            fleet,
            count=count,
            size_gb=size_gb,
            groups=groups,
            require_unique_zone=require_unique_zone,
        )

    created: list[str] = []
    with client_factory(token) as client:
        needs = plan(client)
        if not needs:
            out(f"app {app}: every process group with a mount has its volumes; nothing to create")
            return created
        total = sum(n.count for n in needs)
        out(f"app {app}: {total} volume(s) to create")
        for need in needs:
            out(need.describe())
        if not apply:
            out("dry run: pass --apply to create them")
            return created
        if confirm is not None and not confirm(f"Create {total} volume(s) for app {app}?"):
            raise VolguardError("not confirmed: nothing was created")
        for round_ in range(1, MAX_PLAN_ROUNDS + 1):
            try:
                for need in needs:
                    for _ in range(need.count):
                        volume = client.create_volume(app, need.request())
                        created.append(volume.id)
                        audit.record(
                            "create_volume",
                            volume.id,
                            before=None,
                            after={
                                "name": volume.name,
                                "region": volume.region,
                                "size_gb": volume.size_gb,
                                "group": need.group,
                            },
                            app=app,
                        )
                        out(
                            f'created {volume.id} "{volume.name}" in {volume.region} '
                            f"({volume.size_gb} GB, for group {need.group})"
                        )
                break
            except FlyUnavailable as e:
                if round_ == MAX_PLAN_ROUNDS:
                    raise
                out(f"volguard: {e}; re-reading the volumes before going on")
                needs = plan(client)
                if not needs:
                    break
        out(f"created {len(created)} volume(s)")
    return created


def snapshot_media_volumes(
    config: FlyConfig,
    settings: Settings,
    app: str,
    token: Token,
    *,
    apply: bool,
    audit: AuditLog,
    out: Out,
    timeout: float = 300.0,
    poll: float = 1.0,
    progress: Out | None = None,
    client_factory: Callable[[Token], MachinesClient] = MachinesClient,
) -> dict[str, str]:
    """Snapshot every live volume named like a media group's mount; wait until each is
    `created`, with progress on stderr (or ``progress``)."""
    groups = static_context(config, settings).media_groups
    names = {m.source for g in groups for m in config.mounts_of(g)}
    with client_factory(token) as client:
        volumes = load_fleet(client, app).volumes_named(names)
        if not volumes:
            out(f"app {app}: no media volumes ({', '.join(sorted(names)) or 'no mounts'})")
            return {}
        for volume in volumes:
            where = f"attached to {volume.attached_to}" if volume.attached else "unattached"
            out(f'snapshot {volume.id} "{volume.name}" in {volume.region} ({where})')
        if not apply:
            out("dry run: pass --apply to take the snapshots")
            return {}

        def taken(volume, snapshot_id: str) -> None:
            audit.record("create_snapshot", volume.id, after={"snapshot": snapshot_id}, app=app)
            out(f"{volume.id}: snapshot {snapshot_id} created")

        return snapshot_volumes(
            client,
            app,
            volumes,
            timeout=timeout,
            poll=poll,
            on_taken=taken,
            progress=progress or _stderr,
        )


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)
