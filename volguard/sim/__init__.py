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

**The boundary.** The simulator is a tool of the tests and the demo, not part of the
product: no product module imports it except the demos (`volguard.demo`,
`volguard.demo_migrate`; tests/test_sim_boundary.py
checks the imports). Where it reads fly.toml itself, it is one of two kinds:

- an *independent oracle* for which mounts each process group gets and the default group
  (`deployment.group_mounts`, `default_group`: written from flyctl's appconfig, not from
  volguard's `flytoml`), kept honest by a differential test against volguard's reading on
  the real fly.toml corpus and on generated files;
- *shared code* for sizes: `deployment.size_gb` calls `volguard.units.parse_size_gb`
  (flyctl's ParseSize), since a second parser had drifted from the first.
"""
