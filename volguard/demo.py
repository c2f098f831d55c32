"""`invoke demo`: the missing-uploads incident, end to end, in a local simulation.

It builds the deployment the common advice gives — the web app and the Celery worker each on
their OWN "data" volume (``[mounts] processes = ["app", "worker"]``), so uploads the web
app saved are not where the worker looks, and some files are simply gone — out of the
real parts volguard is tested against:

- the Fly Machines API simulator (`volguard.sim.api.SimServer`) on loopback;
- the local fleet (`volguard.sim.local_fleet.LocalFleet`): each Machine a Linux namespace with
  its own sshd and a tmpfs volume, reached through the ``flyctl`` stand-in;
- the example Django app (example/), its database a SQLite file the app user owns, its
  uploads on the app Machine's volume.

Then it runs the runbook with the ``volguard`` command, as a user would, and shows each
command and its output: the lint gate, the diagnosis (verify-volume), the damage
(remediate), the interlock refusing to fix a split fleet, the fixed fly.toml deployed
with ``volguard deploy`` (flyctl deploy, verify), ``volguard recover`` bringing the lost
uploads back from the worker's old volume (unattached after the deploy: forked onto a
temporary Machine), ``remediate --fix`` marking failed only the rows with no copy
anywhere, and a clean re-verify.
It needs Linux, root and the packages ``.ci/system-packages`` installs (openssh-server, util-linux,
iproute2); it says so in one line when they are missing. Nothing outside its work
directory (a temporary one unless ``--workdir``) is changed, and the simulation is torn
down at the end.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import tomlkit

from volguard.errors import DemoError

if TYPE_CHECKING:
    from volguard.sim.api import SimServer
    from volguard.sim.local_fleet import LocalFleet
    from volguard.sim.scenario import Scenario

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "example"
SCENARIO = "incident"
Out = Callable[[str], None]

#: The uploads: per user, file names; names in LOST were never on the app's volume.
UPLOADS = {
    "alice": ["survey-2026-q3.csv", "survey-2026-q4.csv", "panel données.csv", "notes.txt"],
    "bob": ["inventory.csv", "inventory-old.csv", "prices.xlsx"],
    "carol": ["trial-1.csv", "trial-2.csv", "trial-3.csv", "summary.pdf"],
}
LOST = {"survey-2026-q4.csv", "inventory-old.csv", "trial-2.csv", "trial-3.csv"}
#: The lost uploads the worker wrote on its own volume (recover brings them back); the
#: other lost ones have no copy anywhere.
STRANDED = {"survey-2026-q4.csv", "inventory-old.csv"}
UPLOAD_DAY = "2026/11/20"

#: The fix: one media group. The worker runs beside gunicorn in the app Machine (honcho and
#: a Procfile), so both see the one volume; the worker group and its Machine go away.
FIXED_PROCESSES = {"app": "honcho start -f Procfile.fly"}

SEED = """
import datetime, json, os
from django.contrib.auth import get_user_model
from django.utils import timezone
from apps.services.models import UserDataFile

spec = json.loads(os.environ["VG_DEMO_UPLOADS"])
User = get_user_model()
for username, names in spec.items():
    user = User.objects.create(username=username)
    for name in names:
        path = "user_data/user_%d/%s/%s" % (user.pk, os.environ["VG_DEMO_DAY"], name)
        UserDataFile.objects.create(owner=user, file=path, processing_status="done")
old = timezone.now() - datetime.timedelta(hours=3)
UserDataFile.objects.update(created_at=old, updated_at=old)
print("seeded", UserDataFile.objects.count())
"""


@dataclass
class Demo:
    workdir: Path
    out: Out
    env: dict[str, str]
    app_machine: str = ""
    worker_machine: str = ""

    def step(self, title: str) -> None:
        self.out("")
        self.out(f"== {title}")

    def say(self, text: str) -> None:
        for line in textwrap.dedent(text).strip().splitlines():
            self.out(f"   {line}")

    def expect(self, code: int, *args: str) -> None:
        """Run ``volguard ARGS``; a different exit code than ``code`` stops the demo."""
        got = self.volguard(*args)
        if got != code:
            raise DemoError(f"`volguard {shlex.join(args)}` exited {got}, not {code}")

    def volguard(self, *args: str) -> int:
        """Run ``volguard ARGS`` in the project directory and show it like a terminal."""
        self.out(f"$ volguard {shlex.join(args)}")
        done = subprocess.run(
            [str(Path(sys.executable).with_name("volguard")), *args],
            cwd=self.workdir,
            env=self.env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            check=False,
        )
        for line in (done.stdout + done.stderr).rstrip().splitlines():
            self.out(f"  {line}")
        self.out(f"  (exit {done.returncode})")
        return done.returncode


def prerequisites() -> str | None:
    """Why the demo cannot run here, or None."""
    from volguard.sim.local_fleet import fleet_unavailable

    why = fleet_unavailable()
    if why:
        return f"{why} (it needs Linux, root, and: apt-get install openssh-server iproute2)"
    for module in ("django", "celery"):
        try:
            __import__(module)
        except ImportError:
            return f"the example app needs {module}: pip install -e '.[demo]'"
    return None


def scenario_file(workdir: Path, app_env: dict[str, str]) -> Path:
    """The incident scenario with the example app's secrets (``app_env``) set."""
    from volguard.sim.scenario import scenario_path

    document = tomlkit.parse(scenario_path(SCENARIO).read_text(encoding="utf-8"))
    document["secrets"] = dict(app_env)
    path = workdir / "scenario.toml"
    path.write_text(tomlkit.dumps(document), encoding="utf-8")
    return path


def fixed_fly_toml(text: str) -> str:
    """The incident's fly.toml with one media group: what `volguard deploy` ships."""
    fly = tomlkit.parse(text)
    processes = tomlkit.table()
    for name, command in FIXED_PROCESSES.items():
        processes[name] = command
    fly["processes"] = processes
    mounts = fly["mounts"]
    if "processes" in mounts:
        del mounts["processes"]
    mounts["processes"] = ["app"]
    header = (
        "# Fixed by the volguard demo: ONE media group. The Celery worker runs beside\n"
        "# gunicorn in the app Machine (honcho, Procfile.fly), so both use the one volume.\n"
    )
    body = tomlkit.dumps(fly)
    return header + body.split("\n\n", 1)[-1] if body.startswith("#") else header + body


def demo_workdir(prefix: str, workdir: Path | None) -> tuple[Path, str, dict[str, str]]:
    """The demo's directory (`workdir`, else a new one named `prefix`…), which the
    Machines' app user can enter, and the example app's Python and its environment."""
    from volguard.sim.example_app import ExampleAppError, app_python, world_can

    root = Path(tempfile.mkdtemp(prefix=prefix)) if workdir is None else workdir
    if not world_can(root.parent, execute=True):
        raise DemoError(
            f"--workdir {root}: the Machines' app user cannot enter it; pick one under /tmp"
        )
    root.mkdir(parents=True, exist_ok=True)
    root.chmod(0o755)  # the app user reaches its database in here
    try:
        python, python_env = app_python()
    except ExampleAppError as e:
        raise DemoError(f"the demo cannot run here: {e}") from None
    return root, python, python_env


def run_demo(out: Out = print, workdir: Path | None = None) -> int:
    """Run the demo; 0 when it ends with a clean verify, else 1."""
    why = prerequisites()
    if why:
        raise DemoError(f"the demo cannot run here: {why}")
    from volguard.sim.api import SimServer, load_scenario
    from volguard.sim.local_fleet import LocalFleet

    root, python, python_env = demo_workdir("volguard-demo-", workdir)
    # The app's secrets, as `fly secrets set` would give them to every Machine.
    secrets = {"DATABASE_URL": f"sqlite:///{root / 'db' / 'demo.sqlite3'}", **python_env}
    scenario = load_scenario(scenario_file(root, secrets))
    (root / "fly.toml").write_text(scenario.fly_toml, encoding="utf-8")
    (root / "invoke.yaml").write_text(
        "volguard:\n"
        "  volume_fstypes: [ext4, tmpfs]  # the simulated volumes are tmpfs\n"
        f"  manage_py: {shlex.join([python, str(EXAMPLE / 'manage.py')])!r}\n",
        encoding="utf-8",
    )
    out(f"volguard demo: uploads missing for the worker, in a local simulation ({root})")
    with SimServer(scenario) as sim, LocalFleet(scenario) as fleet:
        fleet.follow(sim)  # forks, restores and temporary Machines (recover) exist on both
        demo = Demo(root, out, _environ(sim, fleet))
        demo.app_machine = _machine_of(scenario, "app")
        demo.worker_machine = _machine_of(scenario, "worker")
        _seed(demo, fleet)
        code = _story(demo)
    out(f"(the run records and the audit log stay in {root / '.volguard'})")
    return code


def _story(demo: Demo) -> int:
    lost = sum(1 for names in UPLOADS.values() for n in names if n in LOST)
    total = sum(len(names) for names in UPLOADS.values())
    demo.step("1. The pre-deploy gate: lint fly.toml (offline)")
    demo.say("""
        The fly.toml mounts "data" for processes ["app", "worker"]: each Machine gets its
        OWN volume. volguard lint catches it before any deploy (VG103).
    """)
    demo.expect(2, "lint", "fly.toml")

    demo.step("2. Diagnosis: verify-volume (fly.toml, the Machines API, every Machine)")
    demo.say("""
        The API shows the two groups on two volumes (VG205); on the Machines, a file the
        web app writes is not there for the worker (VG306).
    """)
    demo.expect(2, "verify-volume")

    demo.step(f"3. The damage: which rows lost their file ({lost} of {total} uploads)")
    demo.expect(2, "remediate")

    demo.step("4. The interlock: no fix while the fleet is split")
    demo.expect(2, "remediate", "--fix", "--yes")

    demo.step("5. The fix: one media group, deployed")
    fixed = fixed_fly_toml((demo.workdir / "fly.toml").read_text(encoding="utf-8"))
    (demo.workdir / "fly.toml").write_text(fixed, encoding="utf-8")
    demo.say("""
        fly.toml now has one media group ([mounts] processes = ["app"]); the worker runs
        in the app Machine. Deploy it first: while the fleet is split, every new upload
        the worker needs still goes astray. `volguard deploy` lints, checks the volumes,
        runs flyctl deploy, waits for the Machines and verifies them. No --fix yet, and
        no audit: the lost files are not gone. flyctl keeps the worker's old volume,
        now unattached, and that is where recover looks next.
    """)
    demo.expect(0, "deploy", "--yes", "--no-audit")

    demo.step("6. Recover: bring the lost uploads back from where the incident left them")
    demo.say(f"""
        The worker's old volume holds the files the worker wrote there. recover never
        touches it: it forks it, starts a temporary Machine with the fork mounted,
        searches it (and the snapshots, for what is still missing), then destroys both.
        Recovering after the deploy means the app Machine no longer changes under the
        copy. The plan first (it changes nothing), then --apply: a snapshot of the app's
        volume, each file copied as the app user and verified. Of the {lost} lost
        uploads, {len(STRANDED)} are on that volume; the others have no copy anywhere.
    """)
    demo.expect(2, "recover")
    demo.expect(2, "recover", "--apply", "--yes")

    demo.step("7. Only the rows with no copy anywhere are marked failed")
    demo.say(f"""
        {lost - len(STRANDED)} of {total} rows still have no file: more than the VG404
        interlock's default 10% (a failed mount looks the same). verify proves the
        volume is mounted, so the limit is raised on purpose; the run record says so.
    """)
    demo.expect(0, "remediate", "--fix", "--yes", "--max-missing", "20%")

    demo.step("8. Clean re-verify")
    demo.say("""
        VG204 (a warning) still points at the worker's old, unattached volume: recover
        copied what it held, so it can be destroyed once you are satisfied.
    """)
    demo.expect(0, "verify-volume")
    demo.expect(2, "remediate")
    demo.out("")
    demo.out(
        f"volguard demo: done. The fleet verifies clean; {len(STRANDED)} lost uploads are "
        f"back from the worker's old volume, and the {lost - len(STRANDED)} with no copy "
        "anywhere are marked failed, so their owners are asked to upload them again."
    )
    return 0


def _seed(demo: Demo, fleet: LocalFleet) -> None:
    """The database (owned by the app user) and the uploads on the Machines' volumes."""
    import pwd

    db = demo.workdir / "db"
    db.mkdir(exist_ok=True)
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "config.settings",
        "DATABASE_URL": f"sqlite:///{db / 'demo.sqlite3'}",
        "MEDIA_ROOT": str(demo.workdir / "unused-media"),
        "VG_DEMO_UPLOADS": json.dumps(UPLOADS),
        "VG_DEMO_DAY": UPLOAD_DAY,
        "PYTHONDONTWRITEBYTECODE": "1",
    }
    for args in (["migrate", "--noinput"], ["shell", "-c", SEED]):
        done = subprocess.run(
            [sys.executable, "manage.py", *args],
            cwd=EXAMPLE,
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            last = (done.stderr.strip().splitlines() or ["no output"])[-1]
            raise DemoError(f"seeding the example app failed: {last}")
    app = pwd.getpwnam("app")
    for path in (db, *db.iterdir()):
        os.chown(path, app.pw_uid, app.pw_gid)
    # The uploads: present ones on the app Machine's volume; the lost ones exist only on
    # the worker's volume (it wrote its outputs there), which the web app never sees.
    users = {name: i + 1 for i, name in enumerate(UPLOADS)}
    present, elsewhere = [], []
    for user, names in UPLOADS.items():
        for name in names:
            rel = f"user_data/user_{users[user]}/{UPLOAD_DAY}/{name}"
            (elsewhere if name in LOST else present).append(rel)
    _write_files(fleet, demo.app_machine, present)
    _write_files(fleet, demo.worker_machine, [r for r in elsewhere if r.split("/")[-1] in STRANDED])


def _write_files(fleet: LocalFleet, machine: str, names: list[str]) -> None:
    code = textwrap.dedent("""
        import json, os, pwd, sys
        app = pwd.getpwnam("app")
        for rel in json.loads(sys.argv[1]):
            path = os.path.join("/data/media", rel)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "w") as fh:
                fh.write("uploaded by the demo\\n")
        for top, dirs, files in os.walk("/data/media"):
            for n in dirs + files:
                os.chown(os.path.join(top, n), app.pw_uid, app.pw_gid)
    """)
    done = fleet.exec(machine, ["python3", "-c", code, json.dumps(names)])
    if done.returncode != 0:
        raise DemoError(f"writing the uploads on {machine} failed: {done.stderr!r}")


def _machine_of(scenario: Scenario, group: str) -> str:
    for machine in scenario.machines:
        if machine.group == group and machine.state == "started":
            return machine.id
    raise DemoError(f"the {SCENARIO} scenario has no started {group} Machine")


def _environ(sim: SimServer, fleet: LocalFleet) -> dict[str, str]:
    env = {
        **os.environ,
        "FLY_FLAPS_BASE_URL": sim.url,
        "FLY_API_TOKEN": sim.token,
        "PATH": f"{fleet.flyctl_dir}{os.pathsep}{os.environ['PATH']}",
        "NO_COLOR": "1",
    }
    env.pop("GITHUB_STEP_SUMMARY", None)
    return env
