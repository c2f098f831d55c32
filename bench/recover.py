"""`volguard recover` against `scp -r` and `tar c | ssh tar x` over a slow link (issue #10).

The incident on the local fleet (`LocalFleet`, each Machine a namespace with a real sshd,
following the API simulator: a fork holds its source's files, a temporary Machine runs):
the web app's Machine and the worker's Machine on volumes of their own, and an unattached
"data" volume of the app that no Machine has (left by an earlier Machine). The example
Django app runs on the app Machine with `--files` rows whose uploads (a realistic size mix,
`--megabytes` in all) exist only elsewhere: two users in five on the worker's volume, three
in five on the unattached volume. Every ssh connection goes through a proxy process on
127.0.0.1 that holds each chunk 25 ms each way (50 ms round trip, as in
bench/machine_layer.py, whose ssh_config writer this reuses) and caps throughput with a
token bucket per direction shared by every connection (`--mbps`, default 20 MB/s: one
full-duplex link), and counts the TCP connections per Machine. A Machine made during a run
(a temporary one) is reached through the same proxy: its ProxyCommand names it to the
proxy's router.

In one run, each to the app Machine's volume, through the proxy:

- `tar c | ssh tar x`: `ssh worker tar c … | ssh app tar x …`, then the same from a
  temporary Machine holding a fork of the unattached volume, as a person does it (the fork
  and the Machine are made before the clock starts) — into a scratch directory;
- `scp -r`: `scp -3 -r worker:… app:…`, then from that temporary Machine (through this
  host, as volguard relays);
- volguard: `volguard recover --apply --yes --transport ssh --format json` (the gate, the
  audit, the search — the worker, then a fork of the volume on a temporary Machine for the
  names not found —, a snapshot, the copy — the worker's send session, then the volume's,
  on the temporary Machine the search made —, the re-audit), its copy step's seconds from
  the run record. It runs with each temporary Machine's set-up (fork and start: the
  simulator's hydrate and start delays) and removal timed (TIMING_DRIVER), reported apart;
- volguard killed: the same command SIGKILLed once half the files are restored (counted in
  the change log on the target: inside the volume's stream), then `--resume`: every file
  must be restored exactly once (one `restore_file` line each, none in both runs), and no
  temporary Machine or fork may be left.

Per source: the files and bytes of the plan, the ssh connections to the worker and to each
temporary Machine, the temporary Machines' set-up, time held and removal. Figures (the
goals of #10): the copy step's wall time, whole (any temporary Machine it had to make
included), <= 1.3x the transfer floor (file bytes / the cap, plus one round trip per
session: the two send sessions and the target's receive session); at most 3 ssh
connections to each source
Machine (the worker, each temporary Machine) per run; zero files restored or sent twice
after the kill, zero temporary resources left; peak RSS <= 300 MB (of volguard and its
children: the largest single process, from wait4's rusage, and the sum over the process
tree sampled from /proc every 0.1 s).

    .venv/bin/python bench/recover.py [--quick] [--files N] [--megabytes M] [--mbps R]
        [--one-way-ms 25] [--json]

`--quick` is 1,000 files and 30 MB. Needs what the local fleet needs (root, namespaces,
openssh-server). Exit 0 when every goal passes, 1 otherwise, 2 when it cannot run here.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import multiprocessing
import os
import pwd
import random
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine_layer import write_bench_ssh  # bench/ is not a package

REPO = Path(__file__).resolve().parent.parent
MANAGE = REPO / "example" / "manage.py"
APP, WORKER = "148e21ea4d3089", "e6482d84693162"  # the incident's web and worker Machines
#: An unattached "data" volume of the app, left by an earlier Machine: no Machine has it.
VOLUME = "vol_5d8q2w7k1m9x3z4p"
#: The files of 3 users in 5 are on the unattached volume, the rest on the worker's (whole
#: user directories, as an earlier Machine would have written them); so the kill at 50%
#: lands in the volume's stream, after its fork and temporary Machine are up.
VOLUME_USERS = (2, 3, 4)
ROUTER = "router"  # the proxy's listener for Machines made during a run
PREFIX = "user_data/bench"
MAX_WALL_RATIO = 1.3
MAX_SOURCE_CONNECTIONS = 3
MAX_RSS_MB = 300
BURST = 256 * 1024  # the token bucket's depth, bytes

# --- the proxy: delay and a throughput cap (its own process) --------------------------------


class Bucket:
    """A token bucket: ``rate`` bytes/s, shared by every connection in one direction."""

    def __init__(self, rate: float) -> None:
        self.rate, self.tokens, self.last = rate, float(BURST), time.monotonic()
        self.lock = asyncio.Lock()

    async def take(self, n: int) -> None:
        async with self.lock:  # first come, first served
            while True:
                now = time.monotonic()
                self.tokens = min(BURST, self.tokens + (now - self.last) * self.rate)
                self.last = now
                if self.tokens >= n or (n > BURST and self.tokens >= BURST):
                    self.tokens -= n
                    return
                await asyncio.sleep((min(n, BURST) - self.tokens) / self.rate)


def _proxy_process(
    conn: Any, upstreams: dict[str, tuple[str, int]], delay: float, rate: float
) -> None:
    asyncio.run(_proxy_serve(conn, upstreams, delay, rate))


async def _proxy_serve(
    conn: Any, upstreams: dict[str, tuple[str, int]], delay: float, rate: float
) -> None:
    loop = asyncio.get_running_loop()
    counts = dict.fromkeys(upstreams, 0)
    moved = {"up": 0, "down": 0}
    buckets = {"up": Bucket(rate), "down": Bucket(rate)}

    async def relay(
        machine_id: str,
        upstream: tuple[str, int],
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        counts[machine_id] = counts.get(machine_id, 0) + 1
        try:
            up_reader, up_writer = await asyncio.open_connection(*upstream)
        except OSError:
            writer.close()
            return
        both = (writer, up_writer)
        try:
            await asyncio.gather(
                _pipe(reader, up_writer, delay, buckets["up"], moved, "up", both),
                _pipe(up_reader, writer, delay, buckets["down"], moved, "down", both),
            )
        except asyncio.CancelledError:
            pass
        finally:
            for w in both:
                with contextlib.suppress(OSError):
                    w.close()

    def handler(machine_id: str) -> Any:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await relay(machine_id, upstreams[machine_id], reader, writer)

        return handle

    async def route(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """A Machine made during the run (a temporary one): its ProxyCommand names it and
        its sshd first, on one line of its own, then the connection is relayed the same."""
        try:
            machine_id, host, port = (await asyncio.wait_for(reader.readline(), 10)).split()
            upstream = (host.decode(), int(port))
        except (TimeoutError, OSError, ValueError):
            writer.close()
            return
        await relay(machine_id.decode(), upstream, reader, writer)

    servers = {m: await asyncio.start_server(handler(m), "127.0.0.1", 0) for m in upstreams}
    servers[ROUTER] = await asyncio.start_server(route, "127.0.0.1", 0)
    conn.send({m: s.sockets[0].getsockname()[1] for m, s in servers.items()})
    while True:
        try:
            message = await loop.run_in_executor(None, conn.recv)
        except (EOFError, OSError):
            break
        if message == "counts":
            conn.send({"connections": dict(counts), "bytes": dict(moved)})
        elif message == "reset":
            counts.clear()
            counts.update(dict.fromkeys(upstreams, 0))
            moved.update(up=0, down=0)
            conn.send(True)
        else:
            break
    for server in servers.values():
        server.close()


async def _pipe(
    src: asyncio.StreamReader,
    dst: asyncio.StreamWriter,
    delay: float,
    bucket: Bucket,
    moved: dict[str, int],
    direction: str,
    both: tuple[asyncio.StreamWriter, ...],
) -> None:
    """src to dst: each chunk leaves ``delay`` s after it arrived, once the link has room.
    The queue is bounded, so a sender outrunning the cap is held back by TCP, as on a link."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue(maxsize=64)

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
            await bucket.take(len(data))
            moved[direction] += len(data)
            dst.write(data)
            await dst.drain()

    sender = asyncio.create_task(send())
    try:
        while True:
            data = await src.read(65536)
            await queue.put((loop.time() + delay, data))
            if not data:
                break
    except OSError:
        await queue.put((loop.time() + delay, b""))
    try:
        await sender
    except OSError:
        for w in both:
            with contextlib.suppress(OSError):
                w.close()


class LinkProxies:
    """The proxy process: one listener per Machine, all sharing one capped, delayed link."""

    def __init__(self, upstreams: dict[str, tuple[str, int]], delay: float, rate: float) -> None:
        context = multiprocessing.get_context("spawn")
        self._conn, child = context.Pipe()
        self._process = context.Process(
            target=_proxy_process, args=(child, upstreams, delay, rate), daemon=True
        )
        self._process.start()
        child.close()
        if not self._conn.poll(30):
            self.close()
            raise RuntimeError("the proxy did not start")
        self.ports: dict[str, int] = self._conn.recv()
        self.router = self.ports.pop(ROUTER)

    def counts(self) -> dict[str, Any]:
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


#: A ProxyCommand: the connection of a Machine made during the run, through the proxy's
#: router (argv: Machine id, its sshd's address and port, the router's port).
CONNECT = """\
import os, socket, sys, threading
machine, host, port, router = sys.argv[1:5]
link = socket.create_connection(("127.0.0.1", int(router)))
link.sendall(f"{machine} {host} {port}\\n".encode())

def up():
    while data := os.read(0, 65536):
        link.sendall(data)
    link.shutdown(socket.SHUT_WR)

threading.Thread(target=up, daemon=True).start()
while data := link.recv(65536):
    os.write(1, data)
"""


def write_ssh_config(fleet: Any, proxies: LinkProxies, directory: Path) -> Path:
    """bench/machine_layer.py's ssh_config (each Machine through its own listener), and
    for any other host (a temporary Machine, which exists only during a run) the fleet's
    own entry, reached through the proxy's router: the same delayed, capped link."""
    from volguard.sim.local_machine import config_path

    config = write_bench_ssh(fleet, proxies.ports, directory)
    lines = []
    for line in config.read_text().splitlines():
        lines.append(line)
        if line.startswith("Host "):
            lines.append("  ProxyCommand none")
    connect = directory / "connect.py"
    connect.write_text(CONNECT)
    command = " ".join(shlex.quote(str(p)) for p in (sys.executable, connect))
    lines += [
        "Host *",
        f"  ProxyCommand {command} %n %h %p {proxies.router}",
        f"Include {config_path(fleet.ssh_config)}",
    ]
    config.write_text("\n".join(lines) + "\n")
    return config


# --- the files: a realistic mix ---------------------------------------------------------------

#: (share of files, smallest, largest bytes): avatars and CSVs, photos, scans, a few videos
MIX = ((0.55, 2_000, 16_000), (0.30, 16_000, 64_000), (0.13, 64_000, 400_000),
       (0.02, 400_000, 4_000_000))  # fmt: skip


def file_sizes(count: int, total: int, seed: int = 10) -> list[int]:
    """``count`` sizes drawn from MIX (log-uniform within a band), scaled to ``total``."""
    rng = random.Random(seed)
    sizes = []
    for i in range(count):
        x, acc, band = (i + 0.5) / count, 0.0, MIX[-1]
        for entry in MIX:
            acc += entry[0]
            if x <= acc:
                band = entry
                break
        low, high = band[1], band[2]
        sizes.append(int(low * (high / low) ** rng.random()))
    scale = total / sum(sizes)
    sizes = [max(1, int(s * scale)) for s in sizes]
    sizes[-1] += total - sum(sizes)
    rng.shuffle(sizes)
    return sizes


def on_volume(index: int) -> bool:
    """Whether file ``index`` (of `file_names`) is on the unattached volume."""
    return (index // 50) % 5 in VOLUME_USERS


def file_names(count: int) -> list[str]:
    # as Django's upload_to would spread them: a directory per user and day
    return [f"{PREFIX}/user_{i // 50:04d}/2026/11/{i % 28 + 1:02d}/upload_{i:05d}.bin"
            for i in range(count)]  # fmt: skip


WRITE_FILES = """\
import json, os, sys
for name, size in json.load(sys.stdin):
    path = os.path.join("/data/media", name)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as fh:
        fh.write(os.urandom(size))
"""


class VolumeFiles(Mapping[str, bytes]):
    """The unattached volume's files (its path -> bytes), made when read, one at a time,
    and their sha256 noted as they are: `LocalFleet.seed_volume` takes a mapping."""

    def __init__(self, files: list[tuple[str, int]], sums: dict[str, str]) -> None:
        self.files, self.sums = dict(files), sums

    def __getitem__(self, path: str) -> bytes:
        data = os.urandom(self.files[path])
        self.sums[path.removeprefix("media/")] = hashlib.sha256(data).hexdigest()
        return data

    def __iter__(self) -> Iterator[str]:
        return iter(self.files)

    def __len__(self) -> int:
        return len(self.files)


SUMS = """\
import hashlib, json, os, sys
out = {}
for n in json.load(sys.stdin):
    p = os.path.join(sys.argv[1], n)
    out[n] = hashlib.sha256(open(p, "rb").read()).hexdigest() if os.path.exists(p) else None
print(json.dumps(out))
"""

SEED_ROWS = """\
import datetime, sys, json
from django.contrib.auth import get_user_model
from django.utils import timezone
from apps.services.models import UserDataFile

owner = get_user_model().objects.create(username="bench")
names = json.loads(sys.stdin.read())
rows = []
for name in names:
    row = UserDataFile(owner=owner, processing_status="done")
    row.file.name = name
    rows.append(row)
UserDataFile.objects.bulk_create(rows, batch_size=1000)
old = timezone.now() - datetime.timedelta(hours=1)
UserDataFile.objects.update(created_at=old, updated_at=old)
print("seeded", len(names))
"""


#: volguard, with the set-up and removal of each temporary Machine timed (the fork and the
#: start are the simulator's hydrate and start delays, not transfer): one stderr line each.
TIMING_DRIVER = """\
import contextlib, json, sys, time
import volguard.recover as recover
made = recover.temporary_machine

@contextlib.contextmanager
def timed(*args, **kwargs):
    times, machine = {"start": time.time()}, None
    try:
        with made(*args, **kwargs) as tmp:
            machine, times["up"] = tmp.machine.id, time.time()
            try:
                yield tmp
            finally:
                times["done"] = time.time()
    finally:
        times["gone"] = time.time()
        line = json.dumps({"machine": machine, **times})
        print(f"VG_BENCH_TEMPORARY {line}", file=sys.stderr, flush=True)

recover.temporary_machine = timed
from volguard.cli import main
sys.argv = ["volguard", *sys.argv[1:]]
main()
"""


# --- measuring a process tree -----------------------------------------------------------------


def _tree_rss_kb(root: int) -> int:
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            text = Path(f"/proc/{entry}/status").read_text()
        except OSError:
            continue
        fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
        pid = int(entry)
        children.setdefault(int(fields.get("PPid", "0").strip()), []).append(pid)
        rss[pid] = int(fields.get("VmRSS", "0 kB").split()[0])
    total, todo = 0, [root]
    while todo:
        pid = todo.pop()
        total += rss.get(pid, 0)
        todo += children.get(pid, [])
    return total


def run_measured(
    argv: list[str], cwd: Path, env: dict[str, str], kill_when: Any = None, group: bool = False
) -> dict[str, Any]:
    """Run argv; wall time, wait4's rusage (largest process of the tree) and the sampled sum
    of the tree's RSS. ``kill_when()`` true: SIGKILL it (with ``group``, its whole process
    group, then waited for until it is gone: nothing of it may run on)."""
    out_path, err_path = cwd / "stdout.bench", cwd / "stderr.bench"
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        start = time.perf_counter()
        proc = subprocess.Popen(argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                                stdout=out, stderr=err, start_new_session=group)  # fmt: skip
        peak, done, killed = [0], threading.Event(), [False]

        def sample() -> None:
            while not done.wait(0.1):
                peak[0] = max(peak[0], _tree_rss_kb(proc.pid))
                if kill_when is not None and not killed[0] and kill_when():
                    if group:
                        os.killpg(proc.pid, signal.SIGKILL)
                    else:
                        proc.send_signal(signal.SIGKILL)
                    killed[0] = True

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        done.set()
        sampler.join()
        while group and killed[0]:  # the group's other processes, until none is left
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                break
            time.sleep(0.1)
    return {
        "wall_s": wall,
        "returncode": proc.returncode,
        "killed": killed[0],
        "maxrss_mb": usage.ru_maxrss / 1024,
        "tree_rss_mb": peak[0] / 1024,
        "stdout": out_path.read_text(errors="replace"),
        "stderr": err_path.read_text(errors="replace")[-4000:],
        "temporary": [
            json.loads(line.split(" ", 1)[1])
            for line in err_path.read_text(errors="replace").splitlines()
            if line.startswith("VG_BENCH_TEMPORARY ")
        ],
    }


# --- the run ----------------------------------------------------------------------------------


class Bench:
    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        self.args, self.workdir = args, workdir
        self.cap = args.mbps * 1_000_000
        self.rtt = 2 * args.one_way_ms / 1000

    def setup(self, stack: contextlib.ExitStack) -> None:
        import tomlkit

        from volguard.sim import example_app, local_machine
        from volguard.sim.api import SimServer
        from volguard.sim.local_fleet import LocalFleet
        from volguard.sim.scenario import scenario_path

        # the fleet's volumes are 64 MB tmpfs for tests; these files need more
        local_machine.TMPFS_SIZE = f"{max(256, 3 * self.args.megabytes + 64)}m"
        python, python_env = example_app.app_python()
        self.python = python
        database_dir = Path(tempfile.mkdtemp(prefix="volguard-bench-db-", dir="/tmp"))
        stack.callback(shutil.rmtree, database_dir, True)
        env = {
            "DJANGO_SETTINGS_MODULE": "config.settings",
            "MEDIA_ROOT": "/data/media",
            "DATABASE_URL": f"sqlite:///{database_dir}/app.sqlite3",
            "CELERY_BROKER_URL": "memory://",
            "PYTHONDONTWRITEBYTECODE": "1",
            **python_env,
        }
        document = tomlkit.parse(scenario_path("incident").read_text())
        for machine in document["machines"]:
            machine["env"] = env
        volume = tomlkit.table()  # unattached: no Machine names it
        volume.update({"id": VOLUME, "name": "data", "region": "syd", "size_gb": 1,
                       "used_percent": 60, "ever_attached": True, "age_days": 30})  # fmt: skip
        document["volumes"].append(volume)
        scenario = self.workdir / "incident.toml"
        scenario.write_text(tomlkit.dumps(document))
        self.sim = stack.enter_context(SimServer(scenario))
        self.fleet = stack.enter_context(LocalFleet(scenario, workdir=self.workdir / "fleet"))
        self.fleet.follow(self.sim)  # a fork holds its source's files; a temporary Machine runs
        (self.workdir / "fly.toml").write_text(self.sim.scenario.fly_toml)
        app_user = pwd.getpwnam("app")
        os.chown(database_dir, app_user.pw_uid, app_user.pw_gid)
        database_dir.chmod(0o700)
        self.proxies = LinkProxies(
            {m: self.fleet.address(m) for m in self.fleet.machines},
            self.args.one_way_ms / 1000,
            self.cap,
        )
        stack.callback(self.proxies.close)
        self.ssh_config = write_ssh_config(self.fleet, self.proxies, self.workdir)
        (self.workdir / "invoke.yaml").write_text(
            "volguard:\n"
            "  volume_fstypes: [ext4, tmpfs]\n"
            f"  ssh_config: {json.dumps(str(self.ssh_config))}\n"
            '  host_template: "{id}"\n'
            f"  manage_py: {json.dumps(f'{python} {MANAGE}')}\n"
        )
        # the rows on the app; their files on the worker's volume or the unattached one
        self.names = file_names(self.args.files)
        self.sizes = file_sizes(self.args.files, self.args.megabytes * 1_000_000)
        self.total = sum(self.sizes)
        files = list(zip(self.names, self.sizes, strict=True))
        worker = [f for i, f in enumerate(files) if not on_volume(i)]
        stranded = [(f"media/{n}", size) for i, (n, size) in enumerate(files) if on_volume(i)]
        self.split = {
            "worker": {"files": len(worker), "bytes": sum(size for _, size in worker)},
            "volume": {"files": len(stranded), "bytes": sum(size for _, size in stranded)},
        }
        self._manage("migrate", "--noinput")
        self._exec(APP, [python, str(MANAGE), "shell", "-c", SEED_ROWS], "app",
                   json.dumps(self.names), django=True)  # fmt: skip
        self._exec(APP, ["sh", "-c", "echo kept > /data/media/keep.txt"], "app")
        self._exec(WORKER, [python, "-c", WRITE_FILES], "app", json.dumps(worker))
        self.expected: dict[str, str] = json.loads(
            self._exec(WORKER, [python, "-c", SUMS, "/data/media"], "root",
                       json.dumps([n for n, _ in worker]))
        )  # fmt: skip
        self.fleet.seed_volume(VOLUME, VolumeFiles(stranded, self.expected))

    def _exec(
        self, machine: str, argv: list[str], user: str = "root", data: str | None = None,
        django: bool = False,
    ) -> str:  # fmt: skip
        env = dict(self.fleet.plan(APP).env) if django else None
        kwargs: dict[str, Any] = {"env": env} if env else {}
        done = self.fleet.exec(machine, argv, user=user, input=data, timeout=900, **kwargs)
        if done.returncode != 0:
            raise RuntimeError(f"{argv[:3]} on {machine}: {done.stdout}{done.stderr}")
        return done.stdout

    def _manage(self, *args: str) -> str:
        return self._exec(APP, [self.python, str(MANAGE), *args], "app", django=True)

    def env(self) -> dict[str, str]:
        base = {k: v for k, v in os.environ.items() if not k.startswith(("INVOKE_", "FLY_"))}
        return {**base, "HOME": str(self.workdir), "FLY_FLAPS_BASE_URL": self.sim.url,
                "FLY_API_TOKEN": self.sim.token, "NO_COLOR": "1",
                "PATH": f"{self.fleet.flyctl_dir}{os.pathsep}{os.environ['PATH']}"}  # fmt: skip

    def floor(self, sessions: int = 2) -> float:
        return self.total / self.cap + sessions * self.rtt

    def clean_target(self) -> None:
        """The app Machine as before any copy: no restored files, no change log, no runs."""
        self._exec(APP, ["sh", "-c", "rm -rf /data/media/user_data /data/.volguard "
                         "/data/bench-copy"])  # fmt: skip
        shutil.rmtree(self.workdir / ".volguard", ignore_errors=True)

    def _check_copy(self, where: str) -> bool:
        """The copy under ``where`` on the app Machine holds every file, byte for byte."""
        sums = json.loads(
            self._exec(APP, [self.python, "-c", SUMS, where], "root", json.dumps(self.names))
        )
        return sums == {n: self.expected.get(n) for n in self.names}

    @contextlib.contextmanager
    def stranded_on_a_machine(self) -> Iterator[str]:
        """For the baselines: the unattached volume's files where ssh reaches them, as a
        person does it (a fork on a temporary Machine, made and destroyed by
        volguard.fly.temporary, outside the time measured); the Machine's id."""
        from volguard.fly.client import MachinesClient, Token
        from volguard.fly.temporary import Ledger, temporary_machine

        app = self.sim.scenario.app
        with MachinesClient(Token(self.sim.token), base_url=self.sim.url) as client:
            volume = next(v for v in client.list_volumes(app) if v.id == VOLUME)
            with temporary_machine(client, app, volume, ledger=Ledger.in_memory(),
                                   mount_path="/data", timeout=600) as tmp:  # fmt: skip
                yield tmp.machine.id

    def baseline(self, kind: str, stranded: str) -> dict[str, Any]:
        """``kind`` (tar or scp) from the worker, then from the Machine holding the fork of
        the unattached volume (``stranded``), into one scratch directory on the app."""
        self.clean_target()
        self._exec(APP, ["mkdir", "-p", f"/data/bench-copy/{os.path.dirname(PREFIX)}"])
        cfg = str(self.ssh_config)
        lines = []
        for source in (WORKER, stranded):
            if kind == "tar":
                lines.append(f"ssh -F {cfg} {source} tar c -C /data/media {PREFIX} | "
                             f"ssh -F {cfg} {APP} tar x -C /data/bench-copy")  # fmt: skip
            else:  # into the existing parent: the second merges with the first
                lines.append(f"scp -q -3 -r -F {cfg} {source}:/data/media/{PREFIX} "
                             f"{APP}:/data/bench-copy/{os.path.dirname(PREFIX)}/")  # fmt: skip
        line = " && ".join(f"( {one} )" for one in lines)
        self.proxies.reset()
        deadline = time.monotonic() + self.args.baseline_seconds
        result = run_measured(["sh", "-c", line], self.workdir, self.env(),
                              lambda: time.monotonic() > deadline, group=True)  # fmt: skip
        result.update(self.proxies.counts())
        result["complete"] = self._check_copy("/data/bench-copy")
        if result["killed"]:  # stopped at its time limit: how far it got, and the pace
            copied = self._exec(APP, ["sh", "-c", "find /data/bench-copy -type f | wc -l"])
            result["files_done"] = int(copied.strip())
            done = max(1, result["files_done"])
            result["projected_s"] = result["wall_s"] * len(self.names) / done
        for key in ("stdout",):
            result.pop(key)
        return result

    def volguard(self, kill_at: float | None = None, resume: bool = False) -> dict[str, Any]:
        again = ("--resume",) if resume else ()
        argv = [sys.executable, "-c", TIMING_DRIVER, "recover", "--apply", "--yes", *again,
                "--transport", "ssh", "--format", "json"]  # fmt: skip
        kill_when = None
        if kill_at is not None:
            want = int(len(self.names) * kill_at)

            def kill_when() -> bool:  # the change log on the target, as the receiver writes it
                done = self.fleet.exec(APP, ["sh", "-c", "cat /data/.volguard/audit.jsonl "
                                             "2>/dev/null | grep -c restore_file"])  # fmt: skip
                return int(done.stdout.strip() or 0) >= want

        self.proxies.reset()
        result = run_measured(argv, self.workdir, self.env(), kill_when)
        result.update(self.proxies.counts())
        result["steps_s"] = self._step_seconds()
        result["copy_s"] = result["steps_s"].get("copy")
        result.update(self._temporaries(result))
        return result

    def resume(self) -> dict[str, Any]:
        return self.volguard(resume=True)

    def _temporaries(self, result: dict[str, Any]) -> dict[str, Any]:
        """The temporary Machines of the latest run, by step: each one's set-up (fork and
        start), the time its send or search session had it, its removal, its connections."""
        runs = sorted((self.workdir / ".volguard" / "runs").glob("recover-*.json"))
        steps = json.loads(runs[-1].read_text())["steps"] if runs else []
        timed = {t["machine"]: t for t in result["temporary"] if t.get("machine")}
        out: dict[str, Any] = {}
        for step in steps:
            if step["name"] not in ("search", "copy"):
                continue
            ids = [e["id"] for e in step.get("detail", {}).get("temporary", ())
                   if e.get("kind") == "machine" and e.get("id")]  # fmt: skip
            times = [timed[i] for i in ids if i in timed and "up" in timed[i]]
            out[f"{step['name']}_temporary"] = {
                "machines": len(ids),
                "setup_s": sum(t["up"] - t["start"] for t in times),
                "held_s": sum(t["done"] - t["up"] for t in times),
                "teardown_s": sum(t["gone"] - t["done"] for t in times),
                "connections": {i: result["connections"].get(i, 0) for i in ids},
            }
        return out

    def _step_seconds(self) -> dict[str, float]:
        """Each step's seconds in the latest run record (those that ran in that run)."""
        runs = sorted((self.workdir / ".volguard" / "runs").glob("recover-*.json"))
        if not runs:
            return {}
        record = json.loads(runs[-1].read_text())
        return {s["name"]: s["seconds"] for s in record["steps"]
                if s.get("seconds") is not None and not s.get("carried_over")}  # fmt: skip

    def copy_detail(self) -> dict[str, Any]:
        """The latest run record's copy step detail (what it had verified, saved as it went)."""
        runs = sorted((self.workdir / ".volguard" / "runs").glob("recover-*.json"))
        if not runs:
            return {}
        steps = json.loads(runs[-1].read_text())["steps"]
        return next((s.get("detail") or {} for s in steps if s["name"] == "copy"), {})

    def temporary_left(self) -> list[str]:
        """Temporary Machines and volumes (forks) the API still lists as live."""
        from volguard.fly.temporary import GROUP

        state = self.sim.state.to_json()
        machines = [m["id"] for m in state["machines"]
                    if m["state"] != "destroyed" and GROUP in json.dumps(m)]  # fmt: skip
        volumes = [v["id"] for v in state["volumes"] if str(v.get("name")).startswith("vg_tmp_")
                   and v["state"] not in ("pending_destroy", "destroyed")]  # fmt: skip
        return machines + volumes

    def change_log(self) -> list[dict[str, Any]]:
        text = self._exec(APP, ["sh", "-c", "cat /data/.volguard/audit.jsonl 2>/dev/null; true"])
        return [json.loads(line) for line in text.splitlines() if line.strip()]


def measure(args: argparse.Namespace) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="volguard-bench-recover-"))
    os.chmod(workdir, 0o755)
    out: dict[str, Any] = {}
    try:
        with contextlib.ExitStack() as stack:
            bench = Bench(args, workdir)
            t0 = time.perf_counter()
            bench.setup(stack)
            out["setup_s"] = time.perf_counter() - t0
            out["files"], out["bytes"] = len(bench.names), bench.total
            # one send session per source (the worker, the fork's temporary Machine) and
            # the target's receive session
            out["floor_s"] = bench.floor(sessions=3)
            out["split"] = bench.split
            with bench.stranded_on_a_machine() as stranded:
                for kind in ("tar", "scp"):
                    print(f"baseline {kind} ...", file=sys.stderr)
                    out[kind] = bench.baseline(kind, stranded)
                    out[kind]["connections_volume"] = out[kind]["connections"].get(stranded, 0)
                    _progress(kind, out[kind])
            print("volguard recover --apply ...", file=sys.stderr)
            bench.clean_target()
            out["volguard"] = bench.volguard()
            document = _json(out["volguard"]["stdout"])
            out["volguard"]["applied"] = len(document.get("applied") or ())
            out["volguard"]["per_source"] = per_source(document)
            out["volguard"]["exit_code"] = out["volguard"]["returncode"]
            out["volguard"]["complete"] = bench._check_copy("/data/media")
            out["volguard"].pop("stdout")
            _progress("volguard", out["volguard"])
            print("volguard recover --apply, SIGKILL at 50%, --resume ...", file=sys.stderr)
            bench.clean_target()
            killed = bench.volguard(kill_at=0.5)
            killed.pop("stdout")
            _progress("killed", killed)
            first_log = bench.change_log()
            at_kill = bench.copy_detail()
            time.sleep(1)  # the orphaned sessions see their pipes close
            resumed = bench.resume()
            document = _json(resumed.pop("stdout"))
            _progress("resumed", resumed)
            log = bench.change_log()
            restored = [e for e in log if e.get("action") == "restore_file"]
            by_name: dict[str, list[str]] = {}
            for entry in restored:
                by_name.setdefault(entry["target"], []).append(entry.get("run"))
            runs = sorted((workdir / ".volguard" / "runs").glob("recover-*.json"))
            copy = next(s for s in json.loads(runs[-1].read_text())["steps"]
                        if s["name"] == "copy")  # fmt: skip
            statuses = [r.get("status") for r in copy["detail"].get("results", {}).values()]
            out["kill"] = {
                "killed": killed,
                "resumed": resumed,
                "restored_before_kill": sum(
                    1 for e in first_log if e.get("action") == "restore_file"
                ),
                "restored_lines": len(restored),
                "files_restored_twice": sum(1 for v in by_name.values() if len(v) > 1),
                "files_never_restored": len(set(bench.names) - set(by_name)),
                "verified_in_record_at_kill": len(at_kill.get("verified") or {}),
                "results_in_record_at_kill": len(at_kill.get("results") or {}),
                "carried": copy["detail"].get("carried"),
                "found_in_place": statuses.count("present_identical"),
                # every file the resume sent that it did not restore was sent a second time
                "files_sent_twice": copy["detail"].get("sent", {}).get("files", 0)
                - statuses.count("restored"),
                "applied": len(document.get("applied") or ()),
                "complete": bench._check_copy("/data/media"),
                "temporary_left": bench.temporary_left(),
            }
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return out


def _progress(label: str, result: dict[str, Any]) -> None:
    shown = {k: v for k, v in result.items() if k not in ("stdout", "stderr")}
    print(f"  {label}: {json.dumps(shown)}", file=sys.stderr)
    if result.get("returncode"):
        print(f"  {label} stderr: {result.get('stderr', '')[-1500:]}", file=sys.stderr)


def per_source(document: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Files and bytes of the plan's found rows by the kind of their copy (machine, volume)."""
    out: dict[str, dict[str, Any]] = {}
    for row in document.get("plan") or ():
        if row.get("status") == "found" and row.get("sources"):
            copy = row["sources"][0]
            entry = out.setdefault(copy["kind"], {"ids": [], "files": 0, "bytes": 0})
            if copy["id"] not in entry["ids"]:
                entry["ids"].append(copy["id"])
            entry["files"] += 1
            entry["bytes"] += int(copy["size"])
    return out


def _json(text: str) -> dict[str, Any]:
    try:
        return json.loads(text)
    except ValueError:
        return {}


def transfer_s(run: dict[str, Any]) -> float:
    """The copy step less the set-up and removal of its temporary Machine (not transfer)."""
    tmp = run.get("copy_temporary") or {}
    if run.get("copy_s") is None:
        return float("inf")
    return float(run["copy_s"]) - tmp.get("setup_s", 0.0) - tmp.get("teardown_s", 0.0)


def most_connections(run: dict[str, Any]) -> dict[str, int]:
    """The most ssh connections to one source Machine in a run: the worker, and the
    busiest temporary Machine (of the search or of the copy)."""
    temporary = [n for step in ("search_temporary", "copy_temporary")
                 for n in (run.get(step) or {}).get("connections", {}).values()]  # fmt: skip
    return {"worker": run["connections"].get(WORKER, 0), "volume": max(temporary, default=0)}


def verdicts(r: dict[str, Any]) -> list[dict[str, Any]]:
    v = r["volguard"]
    k = r["kill"]
    ratio = (v["copy_s"] if v.get("copy_s") is not None else float("inf")) / r["floor_s"]
    runs = (v, k["killed"], k["resumed"])
    source = max(n for run in runs for n in most_connections(run).values())
    rss = max(v["maxrss_mb"], v["tree_rss_mb"], k["resumed"]["tree_rss_mb"])
    both = set(v.get("per_source", {})) == {"machine", "volume"}
    ok_run = v["returncode"] == 0 and v["complete"] and v["applied"] == r["files"] and both
    return [
        {"goal": f"copy step <= {MAX_WALL_RATIO}x floor (both sources, any temporary "
                 "Machine's set-up included)", "value": f"{ratio:.2f}x",
         "verdict": "PASS" if ratio <= MAX_WALL_RATIO and ok_run else "FAIL"},
        {"goal": f"ssh connections to each source Machine <= {MAX_SOURCE_CONNECTIONS} per run",
         "value": str(source),
         "verdict": "PASS" if source <= MAX_SOURCE_CONNECTIONS else "FAIL"},
        {"goal": "SIGKILL at 50% + --resume: no file restored or sent twice, no temporary "
                 "resource left",
         "value": f"{k['files_restored_twice']} restored twice, {k['files_sent_twice']} sent "
                  f"twice, {k['files_never_restored']} never, "
                  f"{len(k['temporary_left'])} temporary left",
         "verdict": "PASS" if k["files_restored_twice"] == 0 and k["files_never_restored"] == 0
         and k["files_sent_twice"] == 0 and not k["temporary_left"]
         and k["complete"] and k["killed"]["killed"] else "FAIL"},
        {"goal": f"peak RSS <= {MAX_RSS_MB} MB", "value": f"{rss:.0f} MB",
         "verdict": "PASS" if rss <= MAX_RSS_MB else "FAIL"},
    ]  # fmt: skip


def print_table(r: dict[str, Any], args: argparse.Namespace, goals: list[dict[str, Any]]) -> None:
    mb = r["bytes"] / 1e6
    split = r["split"]
    print(f"{r['files']} files, {mb:.1f} MB -> app Machine: {split['worker']['files']} files "
          f"({split['worker']['bytes'] / 1e6:.1f} MB) on the worker's volume, "
          f"{split['volume']['files']} ({split['volume']['bytes'] / 1e6:.1f} MB) on the "
          f"unattached volume {VOLUME}; link {args.mbps} MB/s each way, "
          f"{2 * args.one_way_ms:.0f} ms round trip; floor {r['floor_s']:.2f} s "
          f"(bytes / cap + 3 round trips: 2 send sessions, 1 receive)")  # fmt: skip
    print(
        f"setup {r['setup_s']:.0f} s; the baselines read the unattached volume's files from "
        "a fork on a temporary Machine made before their clock starts"
    )
    print()
    print(f"{'':30} {'wall s':>8} {'x floor':>8} {'MB/s':>6} {'conn wkr':>8} {'conn vol':>8} "
          f"{'conn tgt':>8} {'maxrss MB':>9} {'tree MB':>8} ok")  # fmt: skip
    v, k = r["volguard"], r["kill"]
    rows = [("tar c | ssh tar x", r["tar"], r["tar"]["wall_s"]),
            ("scp -3 -r", r["scp"], r["scp"]["wall_s"]),
            ("volguard recover (command)", v, v["wall_s"]),
            ("volguard recover (copy step)", v, v["copy_s"] or 0),
            ("  less temporary set-up", v, transfer_s(v)),
            ("killed at 50% (command)", k["killed"], k["killed"]["wall_s"]),
            ("--resume (command)", k["resumed"], k["resumed"]["wall_s"]),
            ("--resume (copy step)", k["resumed"], k["resumed"]["copy_s"] or 0)]  # fmt: skip
    for label, row, wall in rows:
        c = row["connections"]
        volume = row.get("connections_volume")
        if volume is None:
            volume = most_connections(row)["volume"]
        ok = row.get("complete", "")
        if "projected_s" in row:
            label = f"{label} (projected)"
            wall = row["projected_s"]
            ok = f"stopped at {row['wall_s']:.0f} s, {row['files_done']} files"
        print(f"{label:30} {wall:8.2f} {wall / r['floor_s']:8.2f} {mb / wall if wall else 0:6.1f} "
              f"{c.get(WORKER, 0):8} {volume:8} {c.get(APP, 0):8} {row['maxrss_mb']:9.0f} "
              f"{row['tree_rss_mb']:8.0f} {ok}")  # fmt: skip
    print()
    steps = ", ".join(f"{name} {s:.2f}" for name, s in (v.get("steps_s") or {}).items())
    print(f"volguard's steps (s, from its run record): {steps}")
    for kind, entry in sorted(v.get("per_source", {}).items()):
        print(
            f"source {kind} {', '.join(entry['ids'])}: {entry['files']} files, "
            f"{entry['bytes'] / 1e6:.1f} MB"
        )
    for step in ("search", "copy"):
        tmp = v.get(f"{step}_temporary") or {}
        if tmp.get("machines"):
            conns = ", ".join(f"{m}: {n}" for m, n in tmp["connections"].items())
            print(
                f"{step} step: {tmp['machines']} temporary Machine(s), set-up (fork, start) "
                f"{tmp['setup_s']:.2f} s, held {tmp['held_s']:.2f} s, removal "
                f"{tmp['teardown_s']:.2f} s; ssh connections {conns}"
            )
    print()
    print(
        f"kill: {k['restored_before_kill']} restored before SIGKILL; after --resume "
        f"{k['restored_lines']} restore_file lines, {k['files_restored_twice']} files twice, "
        f"{k['files_never_restored']} never; the killed run's record held "
        f"{k['verified_in_record_at_kill']} verified, {k['carried']} carried from it, "
        f"{k['found_in_place']} found in place, {k['files_sent_twice']} sent twice; "
        f"temporary resources left {k['temporary_left'] or 'none'}; complete {k['complete']}"
    )
    print()
    for g in goals:
        print(f"{g['verdict']:4}  {g['goal']}: {g['value']}")
    print(f"1-min load average after the run: {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1,000 files, 30 MB")
    parser.add_argument("--files", type=int, default=10_000)
    parser.add_argument("--megabytes", type=int, default=320)
    parser.add_argument("--mbps", type=float, default=20.0, help="the link's cap, MB/s each way")
    parser.add_argument("--one-way-ms", type=float, default=25.0)
    parser.add_argument(
        "--baseline-seconds", type=float, default=180.0,
        help="stop a baseline after this long and project its time from the files it copied",
    )  # fmt: skip
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.files, args.megabytes = 1000, 30
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so that cleanup runs

    from volguard.sim.local_fleet import fleet_unavailable

    why = fleet_unavailable()
    if why is not None:
        print(f"cannot run: {why}", file=sys.stderr)
        return 2
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(REPO / "volguard")], check=True)
    load_before = os.getloadavg()[0]
    results = measure(args)
    results["load_before"] = load_before
    goals = verdicts(results)
    if args.json:
        print(json.dumps({"args": vars(args), "results": results, "goals": goals}))
    else:
        print(f"1-min load average before the run: {load_before:.2f}")
        print_table(results, args, goals)
    return 0 if all(g["verdict"] == "PASS" for g in goals) else 1


if __name__ == "__main__":
    sys.exit(main())
