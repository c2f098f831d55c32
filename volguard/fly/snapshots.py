"""On-demand snapshots, confirmed: ask for one per volume, then wait until each is listed.

The POST's body is opaque (fly-facts §3.2), so a snapshot counts as taken only
once a new id shows up in the volume's snapshot list.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor

from volguard.errors import SnapshotTimeout
from volguard.fly.client import MachinesClient
from volguard.fly.models import Volume


def snapshot_volumes(
    client: MachinesClient,
    app: str,
    volumes: Iterable[Volume],
    *,
    timeout: float = 300.0,
    poll: float = 1.0,
    on_taken: Callable[[Volume, str], None] | None = None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> dict[str, str]:
    """Snapshot each volume; return {volume id: new snapshot id}. Raises SnapshotTimeout."""
    volumes = list(volumes)

    def one(volume: Volume) -> str:
        before = {s.id for s in client.list_snapshots(app, volume.id)}
        client.create_snapshot(app, volume.id)
        deadline = clock() + timeout
        while True:
            new = [s for s in client.list_snapshots(app, volume.id) if s.id not in before]
            if new:
                taken = max(new, key=lambda s: (s.created_at is not None, s.created_at)).id
                if on_taken:
                    on_taken(volume, taken)
                return taken
            if clock() >= deadline:
                raise SnapshotTimeout(
                    f"volume {volume.id}: no new snapshot listed {timeout:.0f} s after asking "
                    "for one (it may still appear: check `fly volumes snapshots list`)"
                )
            sleep(poll)

    if not volumes:
        return {}
    with ThreadPoolExecutor(max_workers=min(8, len(volumes))) as pool:
        return dict(zip((v.id for v in volumes), pool.map(one, volumes), strict=True))
