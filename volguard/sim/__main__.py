"""`python -m volguard.sim --scenario incident --port 0`: serve a scenario until stopped.

The first stdout line is `listening on http://127.0.0.1:PORT` (flushed), so a script or
a test can start the simulator on a free port and read where it went. SIGINT and SIGTERM
stop it cleanly with exit code 0.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from collections.abc import Sequence

from volguard.sim.api import SimServer
from volguard.sim.scenario import ScenarioError, load_scenario, shipped_scenarios

DEFAULT_PORT = 4280  # the port of the API inside Fly's network (_api.internal:4280)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.list:
        for name in shipped_scenarios():
            print(f"{name}: {load_scenario(name).description.strip().splitlines()[0]}")
        return 0
    try:
        scenario = load_scenario(args.scenario)
    except ScenarioError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    with SimServer(scenario, host=args.host, port=args.port) as sim:
        print(f"listening on {sim.url}", flush=True)
        print(f"scenario {scenario.name}: app {scenario.app}", file=sys.stderr, flush=True)
        while not stop.wait(0.2):  # a timed wait keeps the main thread responsive
            pass
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m volguard.sim", description="Serve a simulated Fly Machines API."
    )
    parser.add_argument(
        "--scenario", default="healthy", help="a shipped scenario name or a scenario file"
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument(
        "--port", type=int, default=DEFAULT_PORT, help="0 picks a free port (default 4280)"
    )
    parser.add_argument("--list", action="store_true", help="list the shipped scenarios")
    return parser


if __name__ == "__main__":
    sys.exit(main())
