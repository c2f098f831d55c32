"""The deployment as Fly sees it: one `Fleet`, fetched with O(1) list calls per app.

Listing Machines and volumes costs two calls whatever the fleet's size; then
one snapshot list per media volume, run a few at a time.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from volguard.fly.client import MachinesClient
from volguard.fly.models import GONE_MACHINE_STATES, Machine, Snapshot, Volume


@dataclass(frozen=True)
class Fleet:
    app: str
    machines: tuple[Machine, ...]
    volumes: tuple[Volume, ...]  # live ones: volumes on their way out are left out
    snapshots: dict[str, tuple[Snapshot, ...]] = field(default_factory=dict)  # by volume id
    observed_at: dt.datetime = field(default_factory=lambda: dt.datetime.now(dt.UTC))
    api_calls: int = 0

    def machines_of(self, group: str) -> list[Machine]:
        return [m for m in self.machines if m.group == group and m.state not in GONE_MACHINE_STATES]

    def volume(self, volume_id: str) -> Volume | None:
        return next((v for v in self.volumes if v.id == volume_id), None)

    def volumes_named(self, names: Iterable[str]) -> list[Volume]:
        wanted = set(names)
        return [v for v in self.volumes if v.name in wanted]

    def unattached(self, name: str, region: str | None = None) -> list[Volume]:
        """Unattached, healthy volumes called ``name``: what a new Machine would pick up."""
        return [
            v
            for v in self.volumes
            if v.name == name
            and not v.attached
            and v.host_status == "ok"
            and (region is None or v.region == region)
        ]


def load_fleet(
    client: MachinesClient,
    app: str,
    snapshot_volume_names: Iterable[str] = (),
    *,
    workers: int = 8,
) -> Fleet:
    """List Machines and volumes, then the snapshots of the volumes named in the list."""
    before = sum(client.calls.values())
    machines = client.list_machines(app)
    volumes = [v for v in client.list_volumes(app) if v.live]
    names = set(snapshot_volume_names)
    media = [v for v in volumes if v.name in names]
    snapshots: dict[str, tuple[Snapshot, ...]] = {}
    if media:
        with ThreadPoolExecutor(max_workers=min(workers, len(media))) as pool:
            lists = pool.map(lambda v: tuple(client.list_snapshots(app, v.id)), media)
            snapshots = dict(zip((v.id for v in media), lists, strict=True))
    return Fleet(
        app=app,
        machines=tuple(machines),
        volumes=tuple(volumes),
        snapshots=snapshots,
        api_calls=sum(client.calls.values()) - before,
    )
