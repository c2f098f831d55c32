"""The simulated deployment `volguard recover`'s tests share (tests/test_recover.py,
tests/test_recover_sources.py): the API simulator, the local fleet following it (so a
fork, a restore and a temporary Machine exist on both), and the example Django app on the
app Machine as `app`, its rows seeded through the Machine.

The default scenario is the incident (the web app and the worker each on their own "data"
volume) with a second worker Machine on a third volume; `scenario_file` takes another
shipped scenario by name.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import tomlkit

from volguard.audit_log import AuditLog
from volguard.config import Settings
from volguard.fly.client import MachinesClient, Token
from volguard.flytoml import read_fly_toml
from volguard.recover import RecoverContext, RecoverOptions
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


def scenario_file(tmp: Path, env: dict[str, str], name: str = "incident") -> Path:
    """The shipped scenario `name`, each Machine with ``env``; the `incident` gets a second
    worker on its own volume (two sources that can disagree)."""
    document = tomlkit.parse(scenario_path(name).read_text())
    machines = document["machines"]
    for machine in machines:
        machine["env"] = env
    if name == "incident":
        extra = tomlkit.table()
        extra.update({"id": WORKER_B, "group": "worker", "region": "syd", "state": "started",
                      "volume": "vol_4w2yq9kd7m3x5z8p", "env": env})  # fmt: skip
        machines.append(extra)
        volume = tomlkit.table()
        volume.update({"id": "vol_4w2yq9kd7m3x5z8p", "name": "data", "region": "syd",
                       "size_gb": 1, "used_percent": 3})  # fmt: skip
        document["volumes"].append(volume)
    path = tmp / f"{name}-recover.toml"
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

    def start(self, driver: str, *args: str, text: bool = True) -> subprocess.Popen[Any]:
        """`driver` (python -c: volguard's CLI with a part of it patched) started with
        `args` in the deployment's directory and environment, its output piped."""
        return subprocess.Popen(
            [sys.executable, "-c", driver, *args],
            cwd=self.workdir,
            env=self.cli_env(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=text,
        )

    def log_lines(self) -> list[dict[str, Any]]:
        done = self.fleet.exec(APP, ["cat", "/data/.volguard/audit.jsonl"])
        return [json.loads(line) for line in done.stdout.splitlines() if line.strip()]


@contextlib.contextmanager
def deployment(
    workdir: Path, names: dict[str, str] = NAMES, scenario_name: str = "incident"
) -> Iterator[Deployment]:
    """The scenario running (API simulator and local fleet, the fleet following the API so
    that forks, restores and temporary Machines exist on both), the example app migrated
    and its rows seeded: `names` maps a key to the file name of one row."""
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
        scenario = scenario_file(workdir, env, scenario_name)
        with SimServer(scenario) as sim, LocalFleet(scenario) as fleet:
            fleet.follow(sim)
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


#: The real command, each file's relay followed by 0.15 s, so that a session dies mid-copy.
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

#: The real command, recording the name and the bytes of every frame relayed to the target.
COUNTING_DRIVER = """\
import json, sys
import volguard.recover as recover
send, sent = recover.Receiver.send, []

def counted(self, header, chunks):
    def counting():
        for chunk in chunks:
            sent[-1][1] += len(chunk)
            yield chunk
    sent.append([header["name"], 0])
    send(self, header, counting())

recover.Receiver.send = counted
from volguard.cli import main
out, sys.argv = sys.argv[1], ["volguard", *sys.argv[2:]]
try:
    main()
finally:
    with open(out, "w") as fh:
        json.dump(sent, fh)
"""
