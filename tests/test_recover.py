"""`volguard recover`: the lost uploads found on the app's other Machines and copied back.

Real parts only: the Machines API simulator, the local fleet (each Machine a namespace with
its own sshd and volume) and the example Django app running on the app Machine as `app`,
its rows seeded through the Machine. The scenario is the incident (the web app and the
worker each on their own "data" volume) with a second worker Machine on a third volume, so
that two sources can hold copies that differ. The files exist only on the workers' volumes,
written there as `app` through the fleet's exec helper.

The fleet needs root and Linux; without it these tests skip, except under CI.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import tomlkit

from volguard.audit_log import AuditLog
from volguard.config import Settings
from volguard.errors import UsageError
from volguard.fly.client import MachinesClient, Token
from volguard.flytoml import read_fly_toml
from volguard.recover import (
    STEP_FUNCTIONS,
    STEPS,
    RecoverContext,
    RecoverOptions,
    parse_sources,
    recover,
    render_text,
)
from volguard.recover_document import (
    CONFLICT,
    FOUND,
    NOT_FOUND,
    Copy,
    MissingRow,
    RecoverDocument,
    classify,
)
from volguard.remote.probe import parse_facts, probe_script
from volguard.remote.transports import Transport, TransportOptions
from volguard.sim import example_app
from volguard.sim.api import SimServer
from volguard.sim.local_fleet import LocalFleet, fleet_unavailable
from volguard.sim.scenario import scenario_path

REPO = Path(__file__).resolve().parents[1]
MANAGE = REPO / "example" / "manage.py"
VOLGUARD = str(Path(sys.executable).with_name("volguard"))

WHY = fleet_unavailable()
if WHY and os.environ.get("CI"):
    raise RuntimeError(f"CI must be able to run the local fleet, but: {WHY}")
needs_fleet = pytest.mark.skipif(WHY is not None, reason=WHY or "")

APP, WORKER, WORKER_B = "148e21ea4d3089", "e6482d84693162", "0a1b2c3d4e5f60"


# -- the pure parts ---------------------------------------------------------------------------


def _copy(source: str, sha: str, size: int = 10, mtime: float = 1.0) -> Copy:
    return Copy("machine", source, size, sha, mtime)


def test_identical_copies_are_found_and_differing_ones_a_conflict_until_preferred() -> None:
    row = MissingRow("services.UserDataFile", 1, "file", "user_data/a.csv")
    same = classify(row, [_copy("m1", "aa"), _copy("m2", "aa")])
    assert (same.status, [c.id for c in same.sources]) == (FOUND, ["m1", "m2"])
    old, new = _copy("m1", "aa", 10, 1.0), _copy("m2", "bb", 5, 2.0)
    assert classify(row, [old, new]).status == CONFLICT
    assert classify(row, [old, new]).chosen is None
    assert classify(row, [old, new], "newest").chosen == new
    assert classify(row, [old, new], "largest").chosen == old
    tie = classify(row, [old, _copy("m2", "bb", 10, 1.0)], "newest")
    assert tie.status == CONFLICT  # the same mtime: nothing to prefer
    assert classify(row, []).status == NOT_FOUND
    assert classify(row, [_copy("m1", "e3", size=0)]).status == NOT_FOUND  # 0 bytes: no copy


def test_the_document_has_exactly_the_documented_shape() -> None:
    row = MissingRow("m.M", 7, "file", "x.csv")
    document = RecoverDocument(plan=[classify(row, [_copy("m1", "aa")])], searched=["m1"])
    data = json.loads(json.dumps(document.as_dict()))
    assert set(data) == {"plan", "summary"}
    assert set(data["plan"][0]) == {"model", "pk", "field", "name", "status", "sources"}
    assert set(data["plan"][0]["sources"][0]) == {"kind", "id", "size", "sha256", "mtime"}
    assert data["summary"]["bytes_to_copy"] == 10
    assert data["summary"]["per_source"] == {"m1": 1}
    assert "row_restored" in data["summary"]["rows_note"]
    assert document.exit_code() == 0


def test_sources_not_built_yet_are_refused_when_asked_for_and_named_by_default() -> None:
    assert parse_sources("") == (("machines", "volumes", "snapshots"), False)
    assert parse_sources("machines") == (("machines",), True)
    for asked in ("volumes", "machines,snapshots"):
        with pytest.raises(UsageError, match="not available yet"):
            parse_sources(asked)
    with pytest.raises(UsageError, match="choose from"):
        parse_sources("tapes")


def test_each_step_is_one_function_in_order() -> None:
    assert tuple(STEP_FUNCTIONS) == STEPS
    assert STEPS.index("snapshot") < STEPS.index("copy") < STEPS.index("restore-rows")


def test_asking_for_volumes_on_the_command_line_is_one_line_exit_1(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("INVOKE_", "FLY_"))}
    proc = subprocess.run(
        [VOLGUARD, "recover", "--sources", "machines,volumes"],
        cwd=tmp_path,
        env={**env, "HOME": str(tmp_path)},
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert proc.stderr.strip().splitlines() == [
        "volguard: error: --sources volumes: not available yet: searching it needs temporary "
        "volumes and Machines, which this version of volguard does not create; today only "
        "machines can be searched"
    ]


# -- the simulated deployment ------------------------------------------------------------------

NAMES = {
    "w1": "user_data/w1.csv",  # only on worker A
    "w2": "user_data/deep/er/w2.bin",  # identical on both workers, in a directory the app lacks
    "c": "user_data/c.csv",  # differs between the workers: a conflict
    "nowhere": "user_data/nowhere.csv",  # no copy anywhere
    "link": "user_data/link.csv",  # on worker A a symlink to /etc/passwd: refused
    "esc": "user_data/esc/hostname",  # through a symlinked directory to /etc: refused
}
SEED = """\
import datetime, json
from django.contrib.auth import get_user_model
from django.utils import timezone
from apps.services.models import UserDataFile

owner = get_user_model().objects.create(username="alice")
pks = {}
for key, name in json.loads(NAMES).items():
    row = UserDataFile(owner=owner, processing_status="done")
    row.file.name = name
    row.save()
    pks[key] = row.pk
old = timezone.now() - datetime.timedelta(hours=1)
UserDataFile.objects.update(created_at=old, updated_at=old)
print("VG_PKS=" + json.dumps(pks))
"""
WORKER_FILES = (
    "umask 027 && mkdir -p /data/media/user_data/deep/er && cd /data/media/user_data && "
    "printf 'worker one\\n' > w1.csv && head -c 300000 /dev/urandom > deep/er/w2.bin && "
    "printf 'old copy\\n' > c.csv && touch -d '2026-01-01 00:00' c.csv && "
    "ln -s /etc/passwd link.csv && ln -s /etc esc"
)
WORKER_B_FILES = (
    "mkdir -p /data/media/user_data && cd /data/media/user_data && "
    "printf 'the newer, longer copy\\n' > c.csv && touch -d '2026-06-01 00:00' c.csv"
)


def app_python() -> tuple[str, dict[str, str]]:
    try:
        return example_app.app_python()
    except example_app.ExampleAppError as e:
        if os.environ.get("CI"):
            pytest.fail(str(e))
        pytest.skip(str(e))


def scenario_file(tmp: Path, env: dict[str, str]) -> Path:
    """The shipped `incident`, each Machine with ``env``, plus a second worker on its own
    volume (two sources that can disagree)."""
    document = tomlkit.parse(scenario_path("incident").read_text())
    machines = document["machines"]
    for machine in machines:
        machine["env"] = env
    extra = tomlkit.table()
    extra.update({"id": WORKER_B, "group": "worker", "region": "syd", "state": "started",
                  "volume": "vol_4w2yq9kd7m3x5z8p", "env": env})  # fmt: skip
    machines.append(extra)
    volume = tomlkit.table()
    volume.update({"id": "vol_4w2yq9kd7m3x5z8p", "name": "data", "region": "syd",
                   "size_gb": 1, "used_percent": 3})  # fmt: skip
    document["volumes"].append(volume)
    path = tmp / "incident-two-workers.toml"
    path.write_text(tomlkit.dumps(document))
    return path


@dataclass
class Deployment:
    sim: SimServer
    fleet: LocalFleet
    python: str
    workdir: Path
    pks: dict[str, int]

    @property
    def manage_py(self) -> str:
        return f"{self.python} {MANAGE}"

    @property
    def fly_toml(self) -> Path:
        return self.workdir / "fly.toml"

    def sh(self, machine: str, script: str, user: str = "root") -> str:
        done = self.fleet.exec(machine, ["sh", "-c", script], user=user, timeout=60)
        assert done.returncode == 0, done.stderr
        return done.stdout

    def manage(self, *args: str) -> subprocess.CompletedProcess[str]:
        env = dict(self.fleet.plan(APP).env)
        return self.fleet.exec(
            APP, [self.python, str(MANAGE), *args], user="app", env=env, timeout=120
        )

    def files(self, machine: str) -> dict[str, tuple[str, str, str, str]]:
        """Regular files under /data/media: name -> (sha256, owner, mode, mtime)."""
        listing = self.sh(
            machine,
            "cd /data/media && find . -type f -printf '%P\\t%u:%g\\t%m\\t%T@\\n' | sort",
        )
        out = {}
        for line in listing.splitlines():
            name, owner, mode, mtime = line.split("\t")
            data = self.fleet.exec(machine, ["cat", f"/data/media/{name}"], text=False).stdout
            out[name] = (hashlib.sha256(data).hexdigest(), owner, mode, mtime)
        return out

    def settings(self, transport: str = "ssh") -> Settings:
        return Settings.load(
            None,
            transport=transport,
            ssh_config=str(self.fleet.ssh_config),
            flyctl=str(self.fleet.flyctl_dir / "flyctl"),
            volume_fstypes=["ext4", "tmpfs"],
            manage_py=self.manage_py,
        )

    def context(self, **options: Any) -> RecoverContext:
        config, problems = read_fly_toml(str(self.fly_toml))
        assert config is not None, problems
        return RecoverContext(
            self.settings(),
            config,
            self.sim.scenario.app,
            Token(self.sim.token),
            RecoverOptions(fly_toml=str(self.fly_toml), **options),
            client_factory=partial(MachinesClient, base_url=self.sim.url, backoff=0.01),
            audit=AuditLog(str(self.workdir / ".volguard" / "audit.jsonl"), command="recover"),
            runs_dir=str(self.workdir / ".volguard" / "runs"),
            out=lambda line: None,
        )

    def cli(self, *args: str) -> list[str]:
        (self.workdir / "invoke.yaml").write_text(
            "volguard:\n"
            "  volume_fstypes: [ext4, tmpfs]\n"
            f"  ssh_config: {json.dumps(str(self.fleet.ssh_config))}\n"
            f"  manage_py: {json.dumps(self.manage_py)}\n"
        )
        return [VOLGUARD, "recover", *args]

    def cli_env(self) -> dict[str, str]:
        base = {k: v for k, v in os.environ.items() if not k.startswith(("INVOKE_", "FLY_"))}
        return {
            **base,
            "HOME": str(self.workdir),
            "FLY_FLAPS_BASE_URL": self.sim.url,
            "FLY_API_TOKEN": self.sim.token,
            "PATH": f"{self.fleet.flyctl_dir}{os.pathsep}{os.environ['PATH']}",
            "NO_COLOR": "1",
        }

    def run_cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.cli(*args),
            cwd=self.workdir,
            env=self.cli_env(),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )

    def log_lines(self) -> list[dict[str, Any]]:
        done = self.fleet.exec(APP, ["cat", "/data/.volguard/audit.jsonl"])
        return [json.loads(line) for line in done.stdout.splitlines() if line.strip()]


@contextlib.contextmanager
def deployment(workdir: Path, names: dict[str, str] = NAMES) -> Iterator[Deployment]:
    python, python_env = app_python()
    database_dir = Path(tempfile.mkdtemp(prefix="volguard-recover-db-", dir="/tmp"))
    try:
        env = {
            "DJANGO_SETTINGS_MODULE": "config.settings",
            "MEDIA_ROOT": "/data/media",
            "DATABASE_URL": f"sqlite:///{database_dir}/app.sqlite3",
            "CELERY_BROKER_URL": "memory://",
            "PYTHONDONTWRITEBYTECODE": "1",
            **python_env,
        }
        scenario = scenario_file(workdir, env)
        with SimServer(scenario) as sim, LocalFleet(scenario) as fleet:
            (workdir / "fly.toml").write_text(sim.scenario.fly_toml)
            app_user = pwd.getpwnam("app")
            os.chown(database_dir, app_user.pw_uid, app_user.pw_gid)
            database_dir.chmod(0o700)
            site = Deployment(sim, fleet, python, workdir, {})
            done = site.manage("migrate", "--noinput")
            assert done.returncode == 0, done.stdout + done.stderr
            done = site.manage("shell", "-c", SEED.replace("NAMES", repr(json.dumps(names))))
            assert done.returncode == 0, done.stdout + done.stderr
            site.pks = json.loads(done.stdout.split("VG_PKS=", 1)[1])
            # the app Machine keeps one file of its own, so its storage is not "empty"
            site.sh(APP, "mkdir -p /data/media/user_data && echo kept > /data/media/keep.txt",
                    user="app")  # fmt: skip
            yield site
    finally:
        shutil.rmtree(database_dir, ignore_errors=True)


@pytest.fixture(scope="module")
def incident(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    if WHY:
        pytest.skip(WHY)
    with deployment(tmp_path_factory.mktemp("recover")) as site:
        site.sh(WORKER, WORKER_FILES, user="app")
        site.sh(WORKER_B, WORKER_B_FILES, user="app")
        site.sh(WORKER_B, "cp /dev/null /tmp/x")  # (root) nothing else on worker B
        w2 = site.fleet.exec(WORKER, ["cat", "/data/media/" + NAMES["w2"]], text=False).stdout
        site.sh(WORKER_B, "mkdir -p /data/media/user_data/deep/er && chown -R app /data/media")
        site.fleet.exec(WORKER_B, ["sh", "-c", f"cat > /data/media/{NAMES['w2']}"],
                        input=w2, text=False, user="app")  # fmt: skip
        yield site


def _by_name(document: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {row["name"]: row for row in document["plan"]}


# -- the plan ----------------------------------------------------------------------------------


@needs_fleet
def test_the_plan_finds_the_workers_copies_and_lists_a_conflict(incident: Deployment) -> None:
    site = incident
    proc = site.run_cli("--format", "json", "--transport", "ssh")
    assert proc.returncode == 2, proc.stdout + proc.stderr  # a conflict and not_found remain
    document = json.loads(proc.stdout)
    assert set(document) == {"plan", "summary"}
    rows = _by_name(document)
    assert set(rows) == set(NAMES.values())
    w1 = rows[NAMES["w1"]]
    assert w1["status"] == "found"
    assert [(s["kind"], s["id"]) for s in w1["sources"]] == [("machine", WORKER)]
    assert w1["sources"][0]["sha256"] == hashlib.sha256(b"worker one\n").hexdigest()
    assert w1["sources"][0]["size"] == len(b"worker one\n")
    assert w1["pk"] == site.pks["w1"]
    assert rows[NAMES["w2"]]["status"] == "found"
    assert {s["id"] for s in rows[NAMES["w2"]]["sources"]} == {WORKER, WORKER_B}
    conflict = rows[NAMES["c"]]
    assert conflict["status"] == "conflict"
    assert {s["id"] for s in conflict["sources"]} == {WORKER, WORKER_B}
    # the symlink and the symlinked directory are refused on the worker, never followed
    for key in ("nowhere", "link", "esc"):
        assert rows[NAMES[key]]["status"] == "not_found", key
        assert rows[NAMES[key]]["sources"] == []
    summary = document["summary"]
    assert (summary["found"], summary["conflict"], summary["not_found"]) == (2, 1, 3)
    assert summary["per_source"] == {WORKER: 3, WORKER_B: 2}
    assert summary["files_to_copy"] == 2
    assert summary["bytes_to_copy"] == len(b"worker one\n") + 300000
    assert summary["sources_searched"] == [WORKER, WORKER_B]
    assert set(summary["sources_not_available"]) == {"volumes", "snapshots"}
    assert summary["target"]["machine"] == APP
    assert site.sim.token not in proc.stdout + proc.stderr


@needs_fleet
def test_prefer_newest_chooses_the_newer_copy(incident: Deployment) -> None:
    outcome = recover(incident.context(prefer="newest"))
    document = outcome.as_dict()
    conflict = _by_name(document)[NAMES["c"]]
    assert conflict["status"] == "found"
    assert conflict["sources"][0]["id"] == WORKER_B  # the newer one comes first: chosen
    assert document["summary"]["conflicts_resolved"] == 1
    assert outcome.exit_code == 2  # three rows have no copy anywhere
    assert "conflicts settled by --prefer newest: 1" in render_text(outcome)


@needs_fleet
def test_names_that_escape_media_root_are_refused_by_the_probe(incident: Deployment) -> None:
    names = ["../../etc/passwd", "/etc/passwd", "user_data/./w1.csv", "user_data/link.csv",
             "user_data/esc/hostname", ".volguard/audit.jsonl", "user_data/w1.csv"]  # fmt: skip
    options = TransportOptions(
        kind="ssh", app=incident.sim.scenario.app, ssh_config=str(incident.fleet.ssh_config)
    )
    with Transport(options) as transport:
        machine = next(m for m in _fleet(incident).machines if m.id == WORKER)
        done = transport.run(machine, probe_script({"locate": {"names": names, "group": "worker"}}))
    files = parse_facts(done.stdout)["files"]
    assert [files[n]["status"] for n in names] == ["refused"] * 6 + ["found"]


def _fleet(site: Deployment) -> Any:
    from volguard.fly.fleet import load_fleet

    with MachinesClient(Token(site.sim.token), base_url=site.sim.url) as client:
        return load_fleet(client, site.sim.scenario.app)


# -- acting ------------------------------------------------------------------------------------


@needs_fleet
def test_apply_copies_verified_files_without_replacing_one_uploaded_meanwhile(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sessions: dict[str, int] = {}
    run, stream = Transport.run, Transport.stream

    def counted_run(self: Transport, machine: Any, command: str) -> Any:
        sessions[machine.id] = sessions.get(machine.id, 0) + 1
        return run(self, machine, command)

    def counted_stream(self: Transport, machine: Any, command: str, **kw: Any) -> Any:
        sessions[machine.id] = sessions.get(machine.id, 0) + 1
        return stream(self, machine, command, **kw)

    monkeypatch.setattr(Transport, "run", counted_run)
    monkeypatch.setattr(Transport, "stream", counted_stream)
    with deployment(tmp_path) as site:
        site.sh(WORKER, WORKER_FILES, user="app")
        site.sh(WORKER_B, WORKER_B_FILES, user="app")
        before = {m: site.files(m) for m in (WORKER, WORKER_B)}
        # a user uploads w1.csv again on the app while the run is between search and copy
        copy_step = STEP_FUNCTIONS["copy"]

        def upload_then_copy(ctx: RecoverContext, step: Any) -> None:
            site.sh(APP, f"printf 'uploaded again\\n' > /data/media/{NAMES['w1']}", user="app")
            copy_step(ctx, step)

        monkeypatch.setitem(STEP_FUNCTIONS, "copy", upload_then_copy)
        outcome = recover(site.context(apply=True, prefer="newest"))
        after = {m: site.files(m) for m in (WORKER, WORKER_B)}
        target = site.files(APP)
        log = site.log_lines()
        snapshots = [a for a in site.sim.app.state.actions if a["action"] == "create_snapshot"]
        temps = site.sh(APP, "find /data/media -name '.volguard-recover-*'")
    assert outcome.error is None, outcome.error
    record = outcome.record
    assert record is not None
    steps = {s.name: s for s in record.steps}
    assert {n: s.status for n, s in steps.items()} == {
        "gate": "ok", "audit": "ok", "search": "ok", "confirm": "ok", "snapshot": "changed",
        "copy": "changed", "restore-rows": "skipped", "re-audit": "ok",
    }  # fmt: skip
    # the file uploaded meanwhile is reported and kept; the others restored and verified
    assert steps["copy"].detail["problems"] == {NAMES["w1"]: {"status": "target_exists"}}
    assert target[NAMES["w1"]][0] == hashlib.sha256(b"uploaded again\n").hexdigest()
    for key, source in (("w2", WORKER), ("c", WORKER_B)):
        sha, owner, mode, _ = target[NAMES[key]]
        assert sha == before[source][NAMES[key]][0], key
        assert owner == "app:app", key
        assert mode == before[source][NAMES[key]][2], key  # the mode the app gave it there
    assert before[WORKER][NAMES["w2"]][2] == "640"  # written with umask 027 on the worker
    # the sources are byte-for-byte (and mtime) unchanged
    assert after == before
    # one snapshot of the target's volume, before the copy
    assert [s["volume"] for s in snapshots] == ["vol_668we58kuhntaa1u"]
    # one change-log line per restored file, on the target's volume
    restored = [e for e in log if e["action"] == "restore_file"]
    assert sorted(e["target"] for e in restored) == sorted([NAMES["w2"], NAMES["c"]])
    assert temps == ""
    applied = outcome.as_dict()["applied"]
    assert sorted(a["name"] for a in applied) == sorted([NAMES["w2"], NAMES["c"]])
    assert all(a["row_restored"] is False for a in applied)
    # the re-audit: what no copy could bring back, and what to do next
    still = {r["name"] for r in outcome.after_missing or ()}
    assert still == {NAMES[k] for k in ("nowhere", "link", "esc")}
    assert outcome.exit_code == 2
    assert "remediate --fix" in outcome.as_dict()["summary"]["next"]
    # one session to search and one to send, per source Machine, whatever the file count
    assert sessions[WORKER] <= 3, sessions
    assert sessions[WORKER_B] <= 3, sessions


SLOW_DRIVER = """\
import sys, time
import volguard.recover as recover
send = recover.Receiver.send

def slow(self, header, chunks):
    send(self, header, chunks)
    time.sleep(0.15)

recover.Receiver.send = slow
from volguard.cli import main
sys.argv = ["volguard", *sys.argv[1:]]
main()
"""


@needs_fleet
def test_a_run_killed_during_the_copy_resumes_and_restores_each_file_once(
    tmp_path: Path,
) -> None:
    names = {f"f{i}": f"user_data/big/f{i:02d}.bin" for i in range(24)}
    with deployment(tmp_path, names) as site:
        site.sh(WORKER, "mkdir -p /data/media/user_data/big && cd /data/media/user_data/big && "
                "for i in $(seq -w 0 23); do head -c 200000 /dev/urandom > f$i.bin; done",
                user="app")  # fmt: skip
        source = site.files(WORKER)
        # the real command, slowed to one file per 0.15 s so that the kill lands mid-copy
        args = site.cli("--apply", "--yes", "--transport", "ssh", "--format", "json")[1:]
        proc = subprocess.Popen(
            [sys.executable, "-c", SLOW_DRIVER, *args],
            cwd=site.workdir,
            env=site.cli_env(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and proc.poll() is None:
            copied = site.fleet.exec(APP, ["ls", "/data/media/user_data/big"]).stdout.split()
            if len([n for n in copied if n.endswith(".bin")]) >= 3:
                break
            time.sleep(0.05)
        assert proc.poll() is None, "the run ended before it could be killed"
        proc.send_signal(signal.SIGKILL)
        first_out, first_err = proc.communicate()
        partial_count = len(
            [n for n in site.fleet.exec(APP, ["ls", "/data/media/user_data/big"]).stdout.split()]
        )
        time.sleep(1)  # the orphaned sessions see their pipes close and end
        resumed = site.run_cli("--apply", "--yes", "--resume", "--transport", "ssh",
                               "--format", "json")  # fmt: skip
        target = site.files(APP)
        log = site.log_lines()
        temps = site.sh(APP, "find /data/media -name '.volguard-recover-*'")
        after = site.files(WORKER)
    assert 0 < partial_count < 24
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    document = json.loads(resumed.stdout)
    assert len(document["applied"]) == 24
    for name in names.values():
        assert target[name][0] == source[name][0], name
    restored = [e["target"] for e in log if e["action"] == "restore_file"]
    assert sorted(restored) == sorted(names.values())  # each file logged exactly once
    assert temps == ""
    assert after == source
    runs = sorted((site.workdir / ".volguard" / "runs").glob("recover-*.json"))
    second = json.loads(runs[-1].read_text())
    copy = next(s for s in second["steps"] if s["name"] == "copy")
    assert copy["detail"]["carried"] >= 1  # verified before the kill: not sent again
    statuses = [r["status"] for r in copy["detail"]["results"].values()]
    assert (
        statuses.count("restored") + copy["detail"]["carried"] + statuses.count("present_identical")
        == 24
    )
    token = site.sim.token
    assert token not in first_out.decode() + first_err.decode()
    assert token not in resumed.stdout + resumed.stderr
    for path in runs:
        assert token not in path.read_text()
