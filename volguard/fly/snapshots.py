"""On-demand snapshots, confirmed: ask for one per volume, then wait until it is `created`.

The POST's body is opaque (fly-facts §3.2). A snapshot being taken is listed at once,
with no id, no creation time and size 0, as `waiting` then `running` (flyctl prints
"(pending)" for it: FLYCTL internal/command/volumes/snapshots/list.go @ad0172fa); it
gets its id when it is `created`. So a snapshot counts as taken only once a new id with
status `created` shows up in the volume's list; until then each change of status is
reported as progress, and the wait ends in `SnapshotTimeout` when it never completes,
so no later step (a remediation, say) runs without its backup.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor

from volguard.errors import SnapshotTimeout
from volguard.fly.client import MachinesClient
from volguard.fly.models import Snapshot, Volume

#: Besides each change of status, a progress line at most this often (seconds).
PROGRESS_EVERY = 15.0


def snapshot_volumes(
    client: MachinesClient,
    app: str,
    volumes: Iterable[Volume],
    *,
    timeout: float = 300.0,
    poll: float = 1.0,
    on_taken: Callable[[Volume, str], None] | None = None,
    progress: Callable[[str], None] | None = None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> dict[str, str]:
    """Snapshot each volume and wait until each new snapshot is `created`; return
    {volume id: new snapshot id}. Raises SnapshotTimeout naming what it last saw."""
    volumes = list(volumes)
    report = progress or (lambda line: None)

    def one(volume: Volume) -> str:
        before = {s.id for s in client.list_snapshots(app, volume.id) if s.id}
        client.create_snapshot(app, volume.id)
        started = clock()
        deadline = started + timeout
        seen, said_at = "", started
        while True:
            listed = client.list_snapshots(app, volume.id)
            done = [s for s in listed if s.completed and s.id not in before]
            if done:
                taken = max(done, key=lambda s: s.created_at).id
                if on_taken:
                    on_taken(volume, taken)
                return taken
            status = _in_progress(listed)
            now = clock()
            if status != seen or now - said_at >= PROGRESS_EVERY:
                report(f"{volume.id}: snapshot {status} ({now - started:.0f} s)")
                seen, said_at = status, now
            if now >= deadline:
                raise SnapshotTimeout(
                    f"volume {volume.id}: the snapshot was not created within {timeout:g} s "
                    f"(last seen: {status}); nothing after it ran. Check `fly volumes "
                    f"snapshots list {volume.id}`, then run again"
                )
            sleep(poll)

    if not volumes:
        return {}
    with ThreadPoolExecutor(max_workers=min(8, len(volumes))) as pool:
        return dict(zip((v.id for v in volumes), pool.map(one, volumes), strict=True))


def _in_progress(listed: list[Snapshot]) -> str:
    """The status of the newest snapshot being taken, as a word for the progress line."""
    pending = [s for s in listed if s.pending]
    if not pending:
        return "not listed yet"
    return pending[-1].status or "pending"
