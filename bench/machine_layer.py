"""The Machine layer over SSH with 50 ms round trip, against plain testinfra (issue #4).

Starts a local fleet (`LocalFleet`, each Machine a namespace with a real sshd) of
`make_fleet_scenario(machines=N, groups=("app",))` and puts a small TCP delay proxy
on 127.0.0.1 in front of each Machine's sshd: every chunk forwarded is held 25 ms in
each direction, order preserved (50 ms round trip; `tc netem` is not available here).
The proxy runs in its own process, as a network would, and counts the TCP
connections it accepts per Machine. A bench ssh_config points `Host <machine id>` at
the Machine's proxy, with the fleet's key and the Machines' real host keys
(`HostKeyAlias <id>`, `StrictHostKeyChecking yes`: host-key checking stays on).

Per round, for each N:

- volguard ssh: `volguard.remote.layer.check_machines` with the `ssh` transport
  (testinfra's SSH backend, ControlMaster reuse) over all N Machines: one batched
  probe per Machine, the visibility probe written on the first one and removed after,
  then the check modules of checks/;
- baseline: plain testinfra over its `ssh` backend WITHOUT reuse (controlpersist=0:
  one ssh connection per command), the same facts as separate testinfra calls
  (mount point, devices, df, the app process and its environment, owner and mode,
  a write as the app user), one Machine after the other, as `pytest --hosts` would
  without -n. A fresh testinfra Host per round (its cache is cleared), as in a new
  pytest run. The cross-Machine visibility check is skipped there (one group);
- volguard fly (extra): the `fly` transport through the fleet's flyctl stand-in.
  The stand-in reads the fleet's own ssh_config, so it goes straight to sshd,
  bypassing the proxy: no added delay, and its connections are not counted;
  its sessions per Machine come from check_machines' result.

Goals: volguard ssh uses <= 2 connections per Machine; baseline wall / volguard
wall >= 5x; volguard wall at N=8 <= 1.5x that at N=1 (medians over --rounds, after
--warmup rounds that are discarded). Each volguard run is also split into phases
(the probe round over every Machine at once, the look and clean-up rounds when
there are several groups, then the check modules and closing the transport).
Exit status 0 when every goal passes, 1 otherwise, 2 when no fleet can run here.

    .venv/bin/python bench/machine_layer.py [--machines 1 8] [--rounds 3] [--warmup 1]
        [--one-way-ms 25] [--no-fly] [--json]

Needs what the local fleet needs (root, namespaces, openssh-server).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing
import os
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
ONE_WAY_DELAY = 0.025  # seconds, each direction: 50 ms round trip
MAX_CONNECTIONS = 2  # per Machine, volguard ssh, whole run
MIN_SPEEDUP = 5.0  # baseline wall / volguard wall
MAX_SCALING = 1.5  # volguard wall(N=8) / volguard wall(N=1)
FSTYPES = ("ext4", "tmpfs")


# --- the delay proxy (its own process) -----------------------------------------------------


def _proxy_process(conn: Any, upstreams: dict[str, tuple[str, int]], delay: float) -> None:
    asyncio.run(_proxy_serve(conn, upstreams, delay))


async def _proxy_serve(conn: Any, upstreams: dict[str, tuple[str, int]], delay: float) -> None:
    """One listener per Machine; answers "counts", "reset" and "stop" over `conn`."""
    loop = asyncio.get_running_loop()
    counts = dict.fromkeys(upstreams, 0)

    def handler(machine_id: str) -> Any:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            counts[machine_id] += 1
            try:
                up_reader, up_writer = await asyncio.open_connection(*upstreams[machine_id])
            except OSError:
                writer.close()
                return
            both = (writer, up_writer)
            try:
                await asyncio.gather(
                    _pipe(reader, up_writer, delay, both), _pipe(up_reader, writer, delay, both)
                )
            except asyncio.CancelledError:  # the proxy stops: end quietly
                pass
            finally:
                for w in both:
                    with contextlib.suppress(OSError):
                        w.close()

        return handle

    servers = {m: await asyncio.start_server(handler(m), "127.0.0.1", 0) for m in upstreams}
    conn.send({m: s.sockets[0].getsockname()[1] for m, s in servers.items()})
    while True:
        try:
            message = await loop.run_in_executor(None, conn.recv)
        except (EOFError, OSError):  # the bench died: so does the proxy
            break
        if message == "counts":
            conn.send(dict(counts))
        elif message == "reset":
            counts.update(dict.fromkeys(counts, 0))
            conn.send(True)
        else:
            break
    for server in servers.values():
        server.close()


async def _pipe(
    src: asyncio.StreamReader,
    dst: asyncio.StreamWriter,
    delay: float,
    both: tuple[asyncio.StreamWriter, ...],
) -> None:
    """Forward src to dst, each chunk `delay` seconds after it was read, in order."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

    async def send() -> None:
        while True:
            due, data = await queue.get()
            wait = due - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            if not data:
                if dst.can_write_eof():
                    dst.write_eof()
                return
            dst.write(data)
            await dst.drain()

    sender = asyncio.create_task(send())
    try:
        while True:
            data = await src.read(65536)
            queue.put_nowait((loop.time() + delay, data))
            if not data:
                break
    except OSError:
        queue.put_nowait((loop.time() + delay, b""))
    try:
        await sender
    except OSError:  # the far end went away: end both directions
        for w in both:
            with contextlib.suppress(OSError):
                w.close()


class DelayProxies:
    """The proxy process: one delayed listener per Machine on 127.0.0.1."""

    def __init__(self, upstreams: dict[str, tuple[str, int]], delay: float) -> None:
        context = multiprocessing.get_context("spawn")  # no fork of a process with a fleet
        self._conn, child = context.Pipe()
        self._process = context.Process(
            target=_proxy_process, args=(child, upstreams, delay), daemon=True
        )
        self._process.start()
        child.close()
        if not self._conn.poll(30):
            self.close()
            raise RuntimeError("the delay proxy did not start")
        self.ports: dict[str, int] = self._conn.recv()

    def counts(self) -> dict[str, int]:
        self._conn.send("counts")
        return self._conn.recv()

    def reset(self) -> None:
        self._conn.send("reset")
        self._conn.recv()

    def close(self) -> None:
        with contextlib.suppress(OSError, BrokenPipeError):
            self._conn.send("stop")
        self._process.join(5)
        if self._process.is_alive():
            self._process.terminate()
            self._process.join(5)
        self._conn.close()


def write_bench_ssh(fleet: Any, ports: dict[str, int], directory: Path) -> Path:
    """ssh_config and known_hosts reaching each Machine through its proxy, keys checked."""
    from volguard.sim.local_machine import config_path

    real_keys = {}
    for line in fleet.known_hosts.read_text().splitlines():
        if line.strip():
            address, key = line.split(None, 1)
            real_keys[address] = key
    known_hosts = directory / "known_hosts"
    config = directory / "ssh_config"
    lines, out = [], ["# volguard bench: each Machine through its 50 ms delay proxy"]
    for machine_id, port in ports.items():
        address, sshd_port = fleet.address(machine_id)
        lines.append(f"{machine_id} {real_keys[f'[{address}]:{sshd_port}']}")
        out += [
            f"Host {machine_id}",
            "  HostName 127.0.0.1",
            f"  Port {port}",
            f"  HostKeyAlias {machine_id}",
            "  User root",
            f"  IdentityFile {config_path(fleet.identity)}",
            "  IdentitiesOnly yes",
            f"  UserKnownHostsFile {config_path(known_hosts)}",
            "  GlobalKnownHostsFile /dev/null",
            "  StrictHostKeyChecking yes",
            "  UpdateHostKeys no",
            "  CheckHostIP no",
            "  BatchMode yes",
            "  ConnectTimeout 10",
            "  LogLevel ERROR",
        ]
    known_hosts.write_text("".join(f"{line}\n" for line in lines))
    config.write_text("\n".join(out) + "\n")
    return config


# --- the two ways ----------------------------------------------------------------------------


#: Transport.close() races ssh: after `ssh -O exit` the master removes its own socket,
#: which can happen between close()'s listdir and its unlink (FileNotFoundError, and the
#: run's result is lost). The bench tolerates it, and counts it, rather than crash.
CLOSE_RACES = {"count": 0}


@contextlib.contextmanager
def instrumented_transport(events: list[tuple[str, float, float]]) -> Any:
    """Record when each Transport.run starts and ends (for the phases); tolerate the
    close() race above."""
    from volguard.remote.transports import Transport

    original_run, original_close = Transport.run, Transport.close

    def run(self: Any, machine: Any, command: str) -> Any:
        start = time.perf_counter()
        try:
            return original_run(self, machine, command)
        finally:
            events.append((machine.id, start, time.perf_counter()))

    def close(self: Any) -> None:
        try:
            original_close(self)
        except FileNotFoundError:
            CLOSE_RACES["count"] += 1
            shutil.rmtree(self._control_dir, ignore_errors=True)

    Transport.run, Transport.close = run, close
    try:
        yield
    finally:
        Transport.run, Transport.close = original_run, original_close


def run_volguard(setup: dict[str, Any], kind: str) -> dict[str, Any]:
    from volguard.remote.layer import check_machines
    from volguard.remote.transports import TransportOptions
    from volguard.rules.machine import MachineContext

    if kind == "ssh":
        options = TransportOptions(
            kind="ssh", ssh_config=str(setup["ssh_config"]), host_template="{id}"
        )
    else:
        options = TransportOptions(kind="fly", app=setup["app"])
    races = CLOSE_RACES["count"]
    events: list[tuple[str, float, float]] = []
    with instrumented_transport(events):
        start = time.perf_counter()
        result = check_machines(
            setup["config"],
            setup["machines"],
            options,
            MachineContext(fstypes=FSTYPES),
            media_root=setup["media_root"],
            ttl=60.0,
        )
        end = time.perf_counter()
    return {
        "wall_s": end - start,
        "phases": phases(events, start, end),
        "close_races": CLOSE_RACES["count"] - races,
        "checked": len(result.checked),
        "findings": [f"{f.id} {f.message}" for f in result.findings],
        "sessions": dict(result.sessions),
    }


def phases(events: list[tuple[str, float, float]], start: float, end: float) -> dict[str, float]:
    """check_machines' phases, in s: the first round (every Machine's probe, in parallel),
    the later rounds (the other groups' look for the visibility probe, then the writer's
    clean-up; none with a single group), then the rest (check modules, close)."""
    events = sorted(events, key=lambda e: e[1])
    first: dict[str, tuple[str, float, float]] = {}
    later = []
    for event in events:
        if event[0] in first:
            later.append(event)
        else:
            first[event[0]] = event
    round_end = max(e[2] for e in first.values())
    last = max(e[2] for e in events)
    return {
        "probe_round": round_end - start,
        "later_rounds": (max(e[2] for e in later) - round_end) if later else 0.0,
        "checks_and_close": end - last,
    }


def baseline_machine(machine_id: str, ssh_config: str, dest: str, media_root: str) -> list[str]:
    """Plain testinfra, one ssh connection per command: the facts the probe gathers.
    Returns the checks that failed (none on a healthy fleet)."""
    import testinfra

    host = testinfra.get_host(f"ssh://{machine_id}", ssh_config=ssh_config, controlpersist=0)
    failed = []

    def check(name: str, ok: bool) -> None:
        if not ok:
            failed.append(f"{machine_id}: {name}")

    mount = host.mount_point(dest)  # one `cat /proc/mounts`, cached by the instance
    check("mounted", mount.exists)
    check("filesystem type", mount.exists and mount.filesystem in FSTYPES)
    check("read-write", mount.exists and "rw" in mount.options)
    check("destination exists", host.file(dest).exists)
    root_dev = host.run("stat -c %d /").stdout.strip()
    dest_dev = host.run("stat -c %d " + shlex.quote(dest)).stdout.strip()
    check("separate filesystem", bool(dest_dev) and dest_dev != root_dev)
    space = host.run("df -P " + shlex.quote(dest)).stdout.splitlines()[-1].split()
    check("free space", int(space[3]) * 10 >= int(space[1]))  # >= 10% free
    inodes = host.run("df -Pi " + shlex.quote(dest)).stdout.splitlines()[-1].split()
    check("free inodes", inodes[1] == "0" or int(inodes[3]) * 10 >= int(inodes[1]))
    processes = host.process.filter(user="app")
    check("app process", bool(processes))
    app_root = media_root
    if processes:
        environ = host.run(f"cat /proc/{processes[0].pid}/environ").stdout
        env = dict(item.split("=", 1) for item in environ.split("\0") if "=" in item)
        app_root = env.get("MEDIA_ROOT", media_root)
    check("MEDIA_ROOT as configured", app_root == media_root)
    real = host.run("readlink -f " + shlex.quote(app_root)).stdout.strip()
    check("MEDIA_ROOT on the volume", real.startswith(dest.rstrip("/") + "/"))
    check(
        "MEDIA_ROOT device", host.run("stat -c %d " + shlex.quote(real)).stdout.strip() == dest_dev
    )
    media = host.file(real)
    check("MEDIA_ROOT owner", media.user == "app")
    check("MEDIA_ROOT group", media.group == "app")
    check("MEDIA_ROOT mode", media.mode & 0o700 == 0o700)
    probe = f"{real}/.bench-probe-{uuid.uuid4().hex[:8]}"
    script = f'f={shlex.quote(probe)} && echo x > "$f" && sync "$f" && cat "$f" && rm -f "$f"'
    write = host.run("runuser -u app -- sh -c " + shlex.quote(script))
    check("writable by the app user", write.rc == 0 and write.stdout.strip() == "x")
    return failed


def run_baseline(setup: dict[str, Any]) -> dict[str, Any]:
    import testinfra.host

    testinfra.host.Host._host_cache.clear()  # a new pytest run: no cached system_info
    start = time.perf_counter()
    failed = []
    for machine in setup["machines"]:
        failed += baseline_machine(
            machine.id, str(setup["ssh_config"]), setup["destination"], setup["media_root"]
        )
    return {"wall_s": time.perf_counter() - start, "findings": failed}


# --- one fleet, several rounds ---------------------------------------------------------------


def measure(
    machines: int, rounds: int, warmup: int, with_fly: bool, delay: float
) -> dict[str, Any]:
    from volguard.fly.models import Machine
    from volguard.flytoml import parse_fly_toml
    from volguard.sim.local_fleet import LocalFleet
    from volguard.sim.scenario import make_fleet_scenario

    scenario = make_fleet_scenario(machines=machines, groups=("app",))
    config, problems = parse_fly_toml(scenario.fly_toml)
    if config is None or problems:
        raise SystemExit(f"the fleet scenario's fly.toml does not lint clean: {problems}")
    bench_dir = Path(tempfile.mkdtemp(prefix="volguard-bench-"))
    proxies = None
    try:
        started = time.perf_counter()
        with LocalFleet(scenario, workdir=bench_dir / "fleet") as fleet:
            fleet_start = time.perf_counter() - started
            proxies = DelayProxies({m: fleet.address(m) for m in fleet.machines}, delay)
            state = json.loads(fleet.state_file.read_text())
            targets = [
                Machine.from_api(m["api"]) for m in state["machines"] if m["state"] == "started"
            ]
            setup = {
                "app": scenario.app,
                "config": config,
                "machines": targets,
                "media_root": config.env["MEDIA_ROOT"],
                "destination": (config.mounts_of("app") or config.mounts)[0].destination,
                "ssh_config": write_bench_ssh(fleet, proxies.ports, bench_dir),
            }
            modes: dict[str, list[dict[str, Any]]] = {"volguard_ssh": [], "baseline": []}
            if with_fly:
                modes["volguard_fly"] = []
            for n in range(warmup + rounds):
                for mode in modes:
                    proxies.reset()
                    if mode == "baseline":
                        outcome = run_baseline(setup)
                    elif mode == "volguard_ssh":
                        outcome = run_volguard(setup, "ssh")
                    else:
                        path = os.environ["PATH"]
                        os.environ["PATH"] = f"{fleet.flyctl_dir}{os.pathsep}{path}"
                        try:
                            outcome = run_volguard(setup, "fly")
                        finally:
                            os.environ["PATH"] = path
                    outcome["connections"] = proxies.counts()
                    print(
                        f"N={machines} round {n + 1 - warmup if n >= warmup else 'warm-up'} "
                        f"{mode}: {outcome['wall_s'] * 1000:.0f} ms, "
                        f"{sum(outcome['connections'].values())} connections",
                        file=sys.stderr,
                    )
                    if outcome["findings"]:
                        print(f"warning: {mode} found {outcome['findings']}", file=sys.stderr)
                    if n >= warmup:
                        modes[mode].append(outcome)
    finally:
        if proxies is not None:
            proxies.close()
        shutil.rmtree(bench_dir, ignore_errors=True)
    return {"fleet_start_s": fleet_start, "modes": {m: summary(r) for m, r in modes.items()}}


def summary(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    walls = [r["wall_s"] for r in rounds]
    out: dict[str, Any] = {
        "wall_ms_median": statistics.median(walls) * 1000,
        "wall_ms_min": min(walls) * 1000,
        "wall_ms_max": max(walls) * 1000,
        "connections_per_machine_max": max(max(r["connections"].values()) for r in rounds),
        "connections_total_median": statistics.median(
            sum(r["connections"].values()) for r in rounds
        ),
        "findings_max": max(len(r["findings"]) for r in rounds),
    }
    if "sessions" in rounds[0]:
        out["sessions_per_machine_max"] = max(max(r["sessions"].values()) for r in rounds)
        out["sessions_total_median"] = statistics.median(
            sum(r["sessions"].values()) for r in rounds
        )
        out["checked_min"] = min(r["checked"] for r in rounds)
        out["close_races"] = sum(r["close_races"] for r in rounds)
        out["phases_ms_median"] = {
            k: statistics.median(r["phases"][k] for r in rounds) * 1000 for k in rounds[0]["phases"]
        }
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--machines", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1, help="rounds run first and discarded")
    parser.add_argument("--no-fly", action="store_true", help="skip the fly transport (extra)")
    parser.add_argument(
        "--one-way-ms",
        type=float,
        default=ONE_WAY_DELAY * 1000,
        help="delay each way (default 25: 50 ms round trip; the goals are set for that)",
    )
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so that cleanup runs

    from volguard.sim.local_fleet import fleet_unavailable

    why = fleet_unavailable()
    if why is not None:
        print(f"cannot run: {why}", file=sys.stderr)
        return 2
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(REPO / "volguard")], check=True)

    delay = args.one_way_ms / 1000
    results = {
        n: measure(n, args.rounds, args.warmup, not args.no_fly, delay) for n in args.machines
    }
    goals = verdicts(results)
    if args.json:
        print(
            json.dumps(
                {
                    "one_way_delay_ms": args.one_way_ms,
                    "rounds": args.rounds,
                    "warmup": args.warmup,
                    "nproc": os.cpu_count(),
                    "results": results,
                    "goals": goals,
                    "transport_close_races": CLOSE_RACES["count"],
                }
            )
        )
    else:
        print_table(results, args, goals)
    return 0 if all(g["verdict"] == "PASS" for g in goals) else 1


def verdicts(results: dict[int, dict[str, Any]]) -> list[dict[str, Any]]:
    goals = []
    worst = max(r["modes"]["volguard_ssh"]["connections_per_machine_max"] for r in results.values())
    goals.append(
        {
            "goal": f"volguard ssh connections per Machine <= {MAX_CONNECTIONS}",
            "value": worst,
            "verdict": "PASS" if worst <= MAX_CONNECTIONS else "FAIL",
        }
    )
    for n, r in results.items():
        ratio = (
            r["modes"]["baseline"]["wall_ms_median"] / r["modes"]["volguard_ssh"]["wall_ms_median"]
        )
        r["speedup"] = ratio
        goals.append(
            {
                "goal": f"N={n}: baseline wall / volguard ssh wall >= {MIN_SPEEDUP:g}x",
                "value": round(ratio, 2),
                "verdict": "PASS" if ratio >= MIN_SPEEDUP else "FAIL",
            }
        )
    if 1 in results and 8 in results:
        scaling = (
            results[8]["modes"]["volguard_ssh"]["wall_ms_median"]
            / results[1]["modes"]["volguard_ssh"]["wall_ms_median"]
        )
        goals.append(
            {
                "goal": f"volguard ssh wall N=8 / N=1 <= {MAX_SCALING:g}x",
                "value": round(scaling, 2),
                "verdict": "PASS" if scaling <= MAX_SCALING else "FAIL",
            }
        )
    return goals


def print_table(results: dict[int, dict[str, Any]], args: argparse.Namespace, goals: list) -> None:
    print(
        f"{args.one_way_ms * 2:g} ms round trip per Machine (delay proxy, "
        f"{args.one_way_ms:g} ms each way); "
        f"{args.rounds} rounds after {args.warmup} warm-up, medians; "
        f"nproc {os.cpu_count()}; volguard bytecode precompiled"
    )
    print(
        f"{'N':>2} {'mode':<15} {'wall ms':>9} {'min':>8} {'max':>8} "
        f"{'conn/M max':>10} {'conn total':>10} {'sessions/M':>10} {'findings':>8}"
    )
    names = {
        "volguard_ssh": "volguard ssh",
        "baseline": "baseline",
        "volguard_fly": "volguard fly*",
    }
    for n, r in results.items():
        for mode, s in r["modes"].items():
            fly = mode == "volguard_fly"
            print(
                f"{n:>2} {names[mode]:<15} {s['wall_ms_median']:>9.0f} {s['wall_ms_min']:>8.0f} "
                f"{s['wall_ms_max']:>8.0f} {'-' if fly else s['connections_per_machine_max']:>10} "
                f"{'-' if fly else round(s['connections_total_median']):>10} "
                f"{s.get('sessions_per_machine_max', '-'):>10} {s['findings_max']:>8}"
            )
        print(
            f"   fleet start {r['fleet_start_s']:.1f} s; "
            f"baseline / volguard ssh: {r['speedup']:.1f}x"
        )
        for mode in ("volguard_ssh", "volguard_fly"):
            if mode in r["modes"]:
                ph = r["modes"][mode]["phases_ms_median"]
                print(
                    f"   {names[mode]} phases ms: probe round {ph['probe_round']:.0f}, "
                    f"look + clean-up rounds {ph['later_rounds']:.0f}, "
                    f"checks+close {ph['checks_and_close']:.0f}"
                )
    if any("volguard_fly" in r["modes"] for r in results.values()):
        print(
            "* fly transport via the flyctl stand-in, which reads the fleet's own ssh_config:\n"
            "  straight to sshd, NOT through the proxy: no added delay, no connection count;\n"
            "  sessions/M is check_machines' own count (one flyctl session per command)."
        )
    for g in goals:
        print(f"{g['goal']}: {g['value']} {g['verdict']}")
    if CLOSE_RACES["count"]:
        print(
            f"volguard Transport.close() raced ssh's ControlMaster exit {CLOSE_RACES['count']} "
            "time(s) (FileNotFoundError on a control socket; tolerated by the bench)"
        )
    print(f"1-min load average after the run: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    sys.exit(main())
