"""A local Fly.io Machines API simulator, for volguard's tests, benchmarks and demo.

volguard's platform checks are only as true as the API they are tested against, so the
simulator copies the real platform's shapes *and its traps* (fly-facts §2, §3, §5): one
volume per Machine, release-command Machines in the list, `null` attachments, blocks that
are 0 on never-attached volumes, FlyV1 versus Bearer auth, per-path rate limits,
snapshots that show up late. A scenario (scenarios/*.toml) describes the app; faults
(latency, 5xx, dropped connections, malformed bodies, 429s) are injected on demand.

Run it: ``python -m volguard.sim --scenario incident --port 0``. From Python:
``with SimServer(load_scenario("incident")) as sim: ...`` (see `volguard.sim.api`).

Deploys are simulated too (`volguard.sim.deployment`): the simulator-only POST /__sim/deploy
applies a fly.toml as `fly deploy` would, the flyctl stand-in's `flyctl deploy` calls it,
and the local fleet (`volguard.sim.local_fleet`) restarts its Machines to match, volumes kept.
"""
