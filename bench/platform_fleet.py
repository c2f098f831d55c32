"""The platform layer on a 50-Machine fleet, against the time the API needs (issue #3).

Starts the Fly API simulator with `make_fleet_scenario(50)` (every Machine on its
own "data" volume with a recent snapshot; Fly's rate limits on), then runs
volguard's platform layer (`volguard.verify.check_platform`) several times and
compares, per round:

- wall: the layer's wall time (list Machines, list volumes, one snapshot list per
  media volume, the rules);
- api: the simulator's own time answering those calls (the sum over requests of
  `service_ms` in its request log: from reading a request to writing its answer).
  The simulator runs in a separate process, as the real API would, so that it does
  not compete with volguard for the interpreter lock.

Budget: wall <= 1.5x api. The simulator can add latency per request (`--latency-ms`,
default 20, the order of a real API call), because with none the "API time" is a
fraction of a millisecond per call and the ratio measures only Python's overhead;
both are worth seeing, so `--latency-ms 0` is reported too by default. A baseline
column makes the same GETs with a bare httpx client, sequentially and without parsing:
the floor of a Python client talking to a Python server.

    .venv/bin/python bench/platform_fleet.py [--machines 50] [--rounds 5] [--json]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import statistics
import subprocess
import sys
import time
from functools import partial
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BUDGET = 1.5


def _serve(scenario, latency_ms: float, ready) -> None:
    """Run the simulator in its own process, so it does not share volguard's GIL."""
    from volguard.sim.api import SimServer

    with SimServer(scenario) as sim:
        sim.inject(latency_ms=latency_ms)
        ready.put(sim.url)
        while True:
            time.sleep(3600)


def _raw_calls(url: str, scenario, paths: list[str]) -> float:
    """Baseline: the same GETs with a bare httpx client, one after the other, no parsing."""
    import httpx

    with httpx.Client(
        base_url=url, headers={"Authorization": f"FlyV1 {scenario.tokens[0]}"}, verify=False
    ) as client:
        start = time.perf_counter()
        for path in paths:
            client.get(path).raise_for_status()
        return time.perf_counter() - start


def one_round(machines: int, latency_ms: float) -> dict[str, float]:
    import httpx

    from volguard.config import Settings
    from volguard.fly.client import MachinesClient, Token
    from volguard.flytoml import parse_fly_toml
    from volguard.report import Report
    from volguard.sim.scenario import make_fleet_scenario
    from volguard.verify import check_platform

    scenario = make_fleet_scenario(machines)
    config, problems = parse_fly_toml(scenario.fly_toml)
    if config is None or problems:
        raise SystemExit(f"the fleet scenario's fly.toml does not lint clean: {problems}")
    ready = multiprocessing.Queue()
    server = multiprocessing.Process(target=_serve, args=(scenario, latency_ms, ready), daemon=True)
    server.start()
    try:
        url = ready.get(timeout=30)
        report = Report()
        start = time.perf_counter()
        findings, _ = check_platform(
            config,
            Settings.load(None, media_groups="app,worker"),
            Token(scenario.tokens[0]),
            partial(MachinesClient, base_url=url),
            report,
        )
        wall = time.perf_counter() - start
        log = httpx.get(f"{url}/__sim/requests").json()
        raw = _raw_calls(url, scenario, [r["path"] for r in log])
    finally:
        server.terminate()
        server.join()
    if report.layers["platform"].status != "ran":
        raise SystemExit(f"platform layer did not run: {report.layers['platform'].reason}")
    api = sum(r["service_ms"] for r in log) / 1000
    return {
        "raw_s": raw,
        "wall_s": wall,
        "api_s": api,
        "ratio": wall / api if api else float("inf"),
        "calls": len(log),
        "findings": len(findings),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--machines", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--latency-ms", type=float, action="append", default=None)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    latencies = args.latency_ms or [20.0, 0.0]

    subprocess.run([sys.executable, "-m", "compileall", "-q", str(REPO / "volguard")], check=True)
    sys.path.insert(0, str(REPO))

    results = {}
    for latency in latencies:
        rounds = [one_round(args.machines, latency) for _ in range(args.rounds)]
        results[latency] = {
            "calls": rounds[0]["calls"],
            "findings": rounds[0]["findings"],
            "wall_ms_median": statistics.median(r["wall_s"] for r in rounds) * 1000,
            "raw_httpx_ms_median": statistics.median(r["raw_s"] for r in rounds) * 1000,
            "api_ms_median": statistics.median(r["api_s"] for r in rounds) * 1000,
            "ratio_median": statistics.median(r["ratio"] for r in rounds),
            "ratio_worst": max(r["ratio"] for r in rounds),
        }
    gated = results[latencies[0]]
    verdict = "PASS" if gated["ratio_median"] <= BUDGET else "FAIL"
    if args.json:
        print(json.dumps({"machines": args.machines, "results": results, "verdict": verdict}))
    else:
        print(f"{args.machines} Machines, {args.rounds} rounds each; volguard bytecode precompiled")
        print(
            f"{'latency/call':>12} {'calls':>6} {'wall ms':>9} {'api ms':>9} {'ratio':>6} "
            f"{'worst':>6} {'raw httpx ms':>13}"
        )
        for latency, r in results.items():
            print(
                f"{latency:>10.0f}ms {r['calls']:>6} {r['wall_ms_median']:>9.1f} "
                f"{r['api_ms_median']:>9.1f} {r['ratio_median']:>6.2f} {r['ratio_worst']:>6.2f} "
                f"{r['raw_httpx_ms_median']:>13.1f}"
            )
        print(f"budget: wall <= {BUDGET}x api at {latencies[0]:.0f} ms/call: {verdict}")
    return 0 if verdict == "PASS" else 1


if __name__ == "__main__":
    sys.exit(main())
