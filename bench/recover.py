"""`volguard recover` against `scp -r` and `tar c | ssh tar x` over a slow link (issue #10).

The incident on the local fleet (`LocalFleet`, each Machine a namespace with a real sshd):
the web app's Machine and the worker's Machine on volumes of their own. The example Django
app runs on the app Machine with `--files` rows whose uploads exist only on the worker's
volume (a realistic size mix, `--megabytes` in all). Every ssh connection goes through a
proxy process on 127.0.0.1 that holds each chunk 25 ms each way (50 ms round trip, as in
bench/machine_layer.py, whose ssh_config writer this reuses) and caps throughput with a
token bucket per direction shared by every connection (`--mbps`, default 20 MB/s: one
full-duplex link), and counts the TCP connections per Machine.

In one run, each from the worker's volume to the app Machine's volume, through the proxy:

- `tar c | ssh tar x`: `ssh worker tar c … | ssh app tar x …` (into a scratch directory);
- `scp -r`: `scp -3 -r worker:… app:…` (through this host, as volguard relays);
- volguard: `volguard recover --apply --yes --transport ssh --format json` (the gate, the
  audit, the search, a snapshot, the copy, the re-audit), its copy step's seconds from the
  run record;
- volguard killed: the same command SIGKILLed once half the files are restored (counted in
  the change log on the target), then `--resume`: every file must be restored exactly once
  (one `restore_file` line each, none in both runs).

Figures (the goals of #10): the copy step's wall time <= 1.3x the transfer floor (file
bytes / the cap, plus one round trip per session: one source and one target); at most 3
ssh connections to the source Machine; zero files restored twice after the kill; peak RSS
<= 300 MB (of volguard and its children: the largest single process, from wait4's
rusage, and the sum over the process tree sampled from /proc every 0.1 s).

    .venv/bin/python bench/recover.py [--quick] [--files N] [--megabytes M] [--mbps R]
        [--one-way-ms 25] [--json]

`--quick` is 1,000 files and 30 MB. Needs what the local fleet needs (root, namespaces,
openssh-server). Exit 0 when every goal passes, 1 otherwise, 2 when it cannot run here.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing
import os
import pwd
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine_layer import write_bench_ssh  # bench/ is not a package

REPO = Path(__file__).resolve().parent.parent
MANAGE = REPO / "example" / "manage.py"
VOLGUARD = str(Path(sys.executable).with_name("volguard"))
APP, WORKER = "148e21ea4d3089", "e6482d84693162"  # the incident's web and worker Machines
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
                    _pipe(reader, up_writer, delay, buckets["up"], moved, "up", both),
                    _pipe(up_reader, writer, delay, buckets["down"], moved, "down", both),
                )
            except asyncio.CancelledError:
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
        except (EOFError, OSError):
            break
        if message == "counts":
            conn.send({"connections": dict(counts), "bytes": dict(moved)})
        elif message == "reset":
            counts.update(dict.fromkeys(counts, 0))
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
        scenario = self.workdir / "incident.toml"
        scenario.write_text(tomlkit.dumps(document))
        self.sim = stack.enter_context(SimServer(scenario))
        self.fleet = stack.enter_context(LocalFleet(scenario, workdir=self.workdir / "fleet"))
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
        self.ssh_config = write_bench_ssh(self.fleet, self.proxies.ports, self.workdir)
        (self.workdir / "invoke.yaml").write_text(
            "volguard:\n"
            "  volume_fstypes: [ext4, tmpfs]\n"
            f"  ssh_config: {json.dumps(str(self.ssh_config))}\n"
            '  host_template: "{id}"\n'
            f"  manage_py: {json.dumps(f'{python} {MANAGE}')}\n"
        )
        # the rows on the app, their files on the worker only
        self.names = file_names(self.args.files)
        self.sizes = file_sizes(self.args.files, self.args.megabytes * 1_000_000)
        self.total = sum(self.sizes)
        self._manage("migrate", "--noinput")
        self._exec(APP, [python, str(MANAGE), "shell", "-c", SEED_ROWS], "app",
                   json.dumps(self.names), django=True)  # fmt: skip
        self._exec(APP, ["sh", "-c", "echo kept > /data/media/keep.txt"], "app")
        self._exec(WORKER, [python, "-c", WRITE_FILES], "app",
                   json.dumps(list(zip(self.names, self.sizes, strict=True))))  # fmt: skip

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
        script = (
            "import hashlib, json, os, sys\n"
            "out = {}\n"
            "for n in json.load(sys.stdin):\n"
            "    p = os.path.join(sys.argv[1], n)\n"
            "    out[n] = hashlib.sha256(open(p, 'rb').read()).hexdigest() "
            "if os.path.exists(p) else None\n"
            "print(json.dumps(out))\n"
        )
        sums = {}
        for machine, root in ((WORKER, "/data/media"), (APP, where)):
            sums[machine] = json.loads(
                self._exec(
                    machine, [self.python, "-c", script, root], "root", json.dumps(self.names)
                )
            )
        return sums[WORKER] == sums[APP]

    def baseline(self, kind: str) -> dict[str, Any]:
        self.clean_target()
        self._exec(APP, ["mkdir", "-p", "/data/bench-copy"])
        cfg = str(self.ssh_config)
        if kind == "tar":
            line = (f"ssh -F {cfg} {WORKER} tar c -C /data/media {PREFIX} | "
                    f"ssh -F {cfg} {APP} tar x -C /data/bench-copy")  # fmt: skip
        else:
            line = (f"scp -q -3 -r -F {cfg} {WORKER}:/data/media/{PREFIX} "
                    f"{APP}:/data/bench-copy/{PREFIX}")  # fmt: skip
            self._exec(APP, ["mkdir", "-p", f"/data/bench-copy/{os.path.dirname(PREFIX)}"])
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

    def volguard(self, kill_at: float | None = None) -> dict[str, Any]:
        argv = [VOLGUARD, "recover", "--apply", "--yes", "--transport", "ssh", "--format", "json"]
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
        result["copy_s"] = self._copy_seconds()
        return result

    def resume(self) -> dict[str, Any]:
        argv = [VOLGUARD, "recover", "--apply", "--yes", "--resume", "--transport", "ssh",
                "--format", "json"]  # fmt: skip
        self.proxies.reset()
        result = run_measured(argv, self.workdir, self.env())
        result.update(self.proxies.counts())
        result["copy_s"] = self._copy_seconds()
        return result

    def _copy_seconds(self) -> float | None:
        runs = sorted((self.workdir / ".volguard" / "runs").glob("recover-*.json"))
        if not runs:
            return None
        record = json.loads(runs[-1].read_text())
        step = next((s for s in record["steps"] if s["name"] == "copy"), None)
        return step.get("seconds") if step else None

    def copy_detail(self) -> dict[str, Any]:
        """The latest run record's copy step detail (what it had verified, saved as it went)."""
        runs = sorted((self.workdir / ".volguard" / "runs").glob("recover-*.json"))
        if not runs:
            return {}
        steps = json.loads(runs[-1].read_text())["steps"]
        return next((s.get("detail") or {} for s in steps if s["name"] == "copy"), {})

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
            out["floor_s"] = bench.floor()
            help_text = subprocess.run(
                [VOLGUARD, "recover", "--help"], capture_output=True, text=True, check=False
            ).stdout
            out["volumes"] = (
                "not measured: not available in this version (volguard recover --help)"
                if "today only machines" in " ".join(help_text.split())
                else "available, but not measured by this version of the bench"
            )
            for kind in ("tar", "scp"):
                print(f"baseline {kind} ...", file=sys.stderr)
                out[kind] = bench.baseline(kind)
                _progress(kind, out[kind])
            print("volguard recover --apply ...", file=sys.stderr)
            bench.clean_target()
            out["volguard"] = bench.volguard()
            document = _json(out["volguard"]["stdout"])
            out["volguard"]["applied"] = len(document.get("applied") or ())
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
            }
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return out


def _progress(label: str, result: dict[str, Any]) -> None:
    shown = {k: v for k, v in result.items() if k not in ("stdout", "stderr")}
    print(f"  {label}: {json.dumps(shown)}", file=sys.stderr)
    if result.get("returncode"):
        print(f"  {label} stderr: {result.get('stderr', '')[-1500:]}", file=sys.stderr)


def _json(text: str) -> dict[str, Any]:
    try:
        return json.loads(text)
    except ValueError:
        return {}


def verdicts(r: dict[str, Any]) -> list[dict[str, Any]]:
    v = r["volguard"]
    k = r["kill"]
    ratio = (v["copy_s"] or float("inf")) / r["floor_s"]
    source = max(v["connections"].get(WORKER, 0), k["killed"]["connections"].get(WORKER, 0),
                 k["resumed"]["connections"].get(WORKER, 0))  # fmt: skip
    rss = max(v["maxrss_mb"], v["tree_rss_mb"], k["resumed"]["tree_rss_mb"])
    ok_run = v["returncode"] == 0 and v["complete"] and v["applied"] == r["files"]
    return [
        {"goal": f"copy step <= {MAX_WALL_RATIO}x floor", "value": f"{ratio:.2f}x",
         "verdict": "PASS" if ratio <= MAX_WALL_RATIO and ok_run else "FAIL"},
        {"goal": f"ssh connections to the source <= {MAX_SOURCE_CONNECTIONS} per run",
         "value": str(source),
         "verdict": "PASS" if source <= MAX_SOURCE_CONNECTIONS else "FAIL"},
        {"goal": "SIGKILL at 50% + --resume: no file restored or sent twice",
         "value": f"{k['files_restored_twice']} restored twice, {k['files_sent_twice']} sent "
                  f"twice, {k['files_never_restored']} never",
         "verdict": "PASS" if k["files_restored_twice"] == 0 and k["files_never_restored"] == 0
         and k["files_sent_twice"] == 0
         and k["complete"] and k["killed"]["killed"] else "FAIL"},
        {"goal": f"peak RSS <= {MAX_RSS_MB} MB", "value": f"{rss:.0f} MB",
         "verdict": "PASS" if rss <= MAX_RSS_MB else "FAIL"},
    ]  # fmt: skip


def print_table(r: dict[str, Any], args: argparse.Namespace, goals: list[dict[str, Any]]) -> None:
    mb = r["bytes"] / 1e6
    print(f"{r['files']} files, {mb:.1f} MB, worker -> app Machine; link {args.mbps} MB/s each "
          f"way, {2 * args.one_way_ms:.0f} ms round trip; floor {r['floor_s']:.2f} s "
          f"(bytes / cap + 2 round trips)")  # fmt: skip
    print(f"setup {r['setup_s']:.0f} s; volumes source: {r['volumes']}")
    print()
    print(f"{'':28} {'wall s':>8} {'x floor':>8} {'MB/s':>6} {'conn src':>8} {'conn tgt':>8} "
          f"{'maxrss MB':>9} {'tree MB':>8} ok")  # fmt: skip
    rows = [("tar c | ssh tar x", r["tar"], r["tar"]["wall_s"]),
            ("scp -3 -r", r["scp"], r["scp"]["wall_s"]),
            ("volguard recover (command)", r["volguard"], r["volguard"]["wall_s"]),
            ("volguard recover (copy step)", r["volguard"], r["volguard"]["copy_s"] or 0),
            ("killed at 50% (command)", r["kill"]["killed"], r["kill"]["killed"]["wall_s"]),
            ("--resume (command)", r["kill"]["resumed"], r["kill"]["resumed"]["wall_s"]),
            ("--resume (copy step)", r["kill"]["resumed"],
             r["kill"]["resumed"]["copy_s"] or 0)]  # fmt: skip
    for label, row, wall in rows:
        c = row["connections"]
        ok = row.get("complete", "")
        if "projected_s" in row:
            label = f"{label} (projected)"
            wall = row["projected_s"]
            ok = f"stopped at {row['wall_s']:.0f} s, {row['files_done']} files"
        print(f"{label:28} {wall:8.2f} {wall / r['floor_s']:8.2f} {mb / wall if wall else 0:6.1f} "
              f"{c.get(WORKER, 0):8} {c.get(APP, 0):8} {row['maxrss_mb']:9.0f} "
              f"{row['tree_rss_mb']:8.0f} {ok}")  # fmt: skip
    k = r["kill"]
    print()
    print(
        f"kill: {k['restored_before_kill']} restored before SIGKILL; after --resume "
        f"{k['restored_lines']} restore_file lines, {k['files_restored_twice']} files twice, "
        f"{k['files_never_restored']} never; the killed run's record held "
        f"{k['verified_in_record_at_kill']} verified, {k['carried']} carried from it, "
        f"{k['found_in_place']} found in place, {k['files_sent_twice']} sent twice; "
        f"complete {k['complete']}"
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
