"""`invoke demo-migrate`: the incident's uploads moved to object storage, end to end, locally.

The deployment is the incident's (`volguard.demo`): the web app and the Celery worker each on
their OWN "data" volume, so a file the web app saves is not there for the worker. Instead of
folding the worker into the web Machine, this demo moves the uploads to a bucket every
Machine reaches, out of the same real parts:

- the Fly Machines API simulator and the local fleet (each Machine a namespace with its own
  sshd and volume, restarted with its new environment when a deploy changes it);
- moto's S3 server on loopback as the object store (``fly storage create`` provisions Tigris
  on Fly); its settings are the app's secrets, as ``fly secrets set`` gives them;
- the example Django app on every Machine, whose settings add the bucket as the ``bucket``
  entry of ``STORAGES`` when ``MIGRATE_MEDIA_BUCKET`` is set and make the default storage a
  ``FallbackStorage`` over the bucket and the volume when ``MEDIA_FALLBACK=1``.

It shows the split (the worker cannot open what the web app saved), then runs the runbook
(runbooks/moving-media-to-object-storage.md) with the ``volguard`` command: the plan, then
one ``--apply --setting MEDIA_FALLBACK=1`` that copies and performs the cutover
(``MEDIA_FALLBACK=1`` in fly.toml ``[env]``, the deploy runbook, the delta, the
verification), then ``--verify`` on its own; and ends with the worker opening, through
Django's ``default_storage``, the bytes the web app wrote. Every step's exit code is
checked. Like `invoke demo`, it needs Linux and root, and changes nothing outside its work
directory.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from volguard.demo import EXAMPLE, Demo, Out, demo_workdir, prerequisites, scenario_file
from volguard.errors import DemoError

if TYPE_CHECKING:
    from volguard.sim.api import SimServer
    from volguard.sim.local_fleet import LocalFleet

BUCKET = "test-blue-smoke-97-media"
#: What a user uploads on the web Machine, and the bytes the worker must read back.
UPLOAD = "user_data/user_1/2026/12/02/survey.csv"
CONTENT = "respondent,answer\n1,yes\n2,no\n"
#: The worker's own output, on its volume only: the move brings it to the bucket too.
OUTPUT = "user_data/user_1/2026/12/02/survey-report.txt"
REPORT = "2 answers\n"

SEED = """
from django.contrib.auth import get_user_model
get_user_model().objects.create(username="alice")
"""

#: On a Machine, as the app: save (web) or open (worker) through the default storage.
SAVE = """
import datetime
import sys
from django.utils import timezone
from django.contrib.auth import get_user_model
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage, storages
from apps.services.models import UserDataFile
name = default_storage.save(sys.argv[-2], ContentFile(sys.argv[-1].encode()))
row = UserDataFile.objects.create(owner=get_user_model().objects.get(username="alice"),
                                  file=name, processing_status="done")
# Dated an hour back: the missing-file audit skips uploads younger than its grace period
# (they may still be in flight), and the demo's --verify should audit these rows.
old = timezone.now() - datetime.timedelta(hours=1)
UserDataFile.objects.filter(pk=row.pk).update(created_at=old, updated_at=old)
print("saved %s (%d bytes) with %s" % (name, default_storage.size(name),
                                       type(storages["default"]).__name__))
"""
READ = """
import sys
from django.core.files.storage import default_storage, storages
try:
    with default_storage.open(sys.argv[-1]) as fh:
        data = fh.read()
except FileNotFoundError as e:
    print("FileNotFoundError: %s" % e)
else:
    print("read %d bytes with %s: %r" % (len(data), type(storages["default"]).__name__,
                                          data.decode()))
"""


def demo_prerequisites() -> str | None:
    """Why the demo cannot run here, or None."""
    why = prerequisites()
    if why:
        return why
    for module in ("moto.server", "storages", "boto3"):
        try:
            __import__(module)
        except ImportError:
            return f"the object store needs {module.split('.')[0]}: pip install -e '.[demo]'"
    return None


@contextlib.contextmanager
def s3_server(log: Path) -> Iterator[str]:
    """moto's S3 server on 127.0.0.1 and a port the OS picks; yields its URL."""
    import re
    import time

    with open(log, "wb") as out:
        # Its log goes to a file, not a pipe: it logs every request, and a full pipe blocks.
        server = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", "0"],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 30
        while True:
            found = re.search(
                r"Running on (http://127\.0\.0\.1:\d+)", log.read_text("utf-8", "replace")
            )
            if found:
                break
            if server.poll() is not None or time.monotonic() > deadline:
                raise DemoError(f"moto's S3 server did not start (its log: {log})")
            time.sleep(0.1)
        yield found.group(1)
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def run_demo_migrate(out: Out = print, workdir: Path | None = None) -> int:
    """Run the demo; 0 when the worker reads, after the cutover, what the web app wrote."""
    why = demo_prerequisites()
    if why:
        raise DemoError(f"the demo cannot run here: {why}")
    import boto3

    from volguard.sim.api import SimServer, load_scenario
    from volguard.sim.local_fleet import LocalFleet

    root, python, python_env = demo_workdir("volguard-demo-migrate-", workdir)
    out(f"volguard demo-migrate: the incident's uploads moved to object storage ({root})")
    with s3_server(root / "s3.log") as endpoint:
        # Credentials: moto accepts any; these are the demo's, never a real one.
        credentials = {"AWS_ACCESS_KEY_ID": "demo", "AWS_SECRET_ACCESS_KEY": "demo-secret"}
        boto3.client(
            "s3", endpoint_url=endpoint, region_name="us-east-1",
            aws_access_key_id=credentials["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=credentials["AWS_SECRET_ACCESS_KEY"],
        ).create_bucket(Bucket=BUCKET)  # fmt: skip
        # The app's secrets, as `fly secrets set` gives them to every Machine (and as the
        # runbook's step 2 sets them after `fly storage create`).
        secrets = {
            "DATABASE_URL": f"sqlite:///{root / 'db' / 'demo.sqlite3'}",
            "CELERY_BROKER_URL": "memory://",
            "MIGRATE_MEDIA_BUCKET": BUCKET,
            "AWS_ENDPOINT_URL_S3": endpoint,
            "AWS_REGION": "us-east-1",
            "AWS_EC2_METADATA_DISABLED": "true",
            **credentials,
            **python_env,
        }
        scenario = load_scenario(scenario_file(root, secrets))
        (root / "fly.toml").write_text(scenario.fly_toml, encoding="utf-8")
        with SimServer(scenario) as sim, LocalFleet(scenario) as fleet:
            fleet.follow(sim)
            (root / "invoke.yaml").write_text(
                "volguard:\n"
                "  volume_fstypes: [ext4, tmpfs]  # the simulated volumes are tmpfs\n"
                "  transport: ssh  # straight to each Machine's sshd\n"
                f"  ssh_config: {json.dumps(str(fleet.ssh_config))}\n"
                f"  manage_py: {json.dumps(shlex.join([python, str(EXAMPLE / 'manage.py')]))}\n",
                encoding="utf-8",
            )
            demo = Demo(root, out, _environ(sim, fleet))
            _seed(root)
            code = _story(demo, sim, fleet, python)
    out(f"(the run records and the audit log stay in {root / '.volguard'})")
    return code


def _story(demo: Demo, sim: SimServer, fleet: LocalFleet, python: str) -> int:
    demo.step("1. The split: the worker cannot open what the web app saved")
    demo.say("""
        The web Machine and the worker Machine each mount their OWN "data" volume
        (VG103). A user uploads a file on the web Machine; the worker, asked to process
        it, opens the same name through Django's default storage: its volume.
    """)
    saved = _manage(demo, sim, fleet, python, "app", SAVE, UPLOAD, CONTENT)
    _manage(demo, sim, fleet, python, "worker", SAVE, OUTPUT, REPORT)
    before = _manage(demo, sim, fleet, python, "worker", READ, UPLOAD)
    if "FileNotFoundError" not in before or "saved" not in saved:
        raise DemoError("the split fleet did not show the split: " + before.strip())
    demo.expect(2, "lint", "fly.toml")

    demo.step("2. The plan: every Machine's volume, merged (nothing is written)")
    demo.say(f"""
        The bucket {BUCKET} exists (moto's S3 server stands in for Tigris) and its
        settings are the app's secrets: the example app sees it as the `bucket` entry of
        STORAGES and still writes to the volume.
    """)
    demo.expect(0, "migrate-media", "--to", "bucket")

    demo.step("3. Copy, verified, and the cutover: fly.toml [env], deployed through the gate")
    demo.say("""
        Snapshots first, then each Machine in turn; then MEDIA_FALLBACK=1 goes into
        fly.toml [env] and the deploy runbook ships it: the default storage becomes a
        FallbackStorage (the bucket first, the volume for anything not copied yet). The
        gate judges the new state, media in object storage (VG115); then what reached a
        volume meanwhile is copied, and the audit runs against the bucket.
    """)
    demo.expect(
        0, "migrate-media", "--to", "bucket", "--from", "volume", "--apply",
        "--setting", "MEDIA_FALLBACK=1", "--rollback", "MEDIA_FALLBACK=0",
    )  # fmt: skip
    # what the run told the operator to do: volguard's own checks know media left the volumes
    settings = demo.workdir / "invoke.yaml"
    settings.write_text(settings.read_text(encoding="utf-8") + "  media_storage: object\n")

    demo.step("4. Verify, on its own: the missing-file audit, now against the bucket")
    demo.expect(0, "migrate-media", "--to", "bucket", "--verify")

    demo.step("5. The worker reads what the web app wrote")
    after = _manage(demo, sim, fleet, python, "worker", READ, UPLOAD)
    expected = f"read {len(CONTENT.encode())} bytes with FallbackStorage: {CONTENT!r}"
    if expected not in after:
        raise DemoError(f"the worker did not read the web app's upload: {after.strip()}")
    demo.out("")
    demo.out(
        "volguard demo-migrate: done. Every file from every volume is in the bucket, verified; "
        "the worker reads the web app's upload. The volumes were never touched: they are the "
        "rollback (MEDIA_FALLBACK=0) until you decide to delete them."
    )
    return 0


def _manage(
    demo: Demo, sim: SimServer, fleet: LocalFleet, python: str, group: str, code: str,
    *args: str,
) -> str:  # fmt: skip
    """``manage.py shell`` on the group's started Machine, as the app, with its environment."""
    machine = next(m.id for m in sim.scenario.machines if m.group == group and m.state == "started")
    shown = " ".join(shlex.quote(a) if len(a) < 50 else "…" for a in args)
    demo.out(f"$ [{group} Machine {machine}] python manage.py shell  # {shown}")
    script = f"import sys; sys.argv = {['shell', *args]!r}\n" + textwrap.dedent(code)
    done = fleet.exec(
        machine, [python, str(EXAMPLE / "manage.py"), "shell", "-c", script], user="app",
        env=dict(fleet.plan(machine).env), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    for line in (done.stdout + done.stderr).rstrip().splitlines():
        demo.out(f"  {line}")
    if done.returncode != 0:
        raise DemoError(f"manage.py shell on the {group} Machine exited {done.returncode}")
    return done.stdout


def _seed(root: Path) -> None:
    """The database, migrated, with the user whose uploads these are, owned by the app."""
    import pwd

    db = root / "db"
    db.mkdir(exist_ok=True)
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "config.settings",
        "DATABASE_URL": f"sqlite:///{db / 'demo.sqlite3'}",
        "MEDIA_ROOT": str(root / "unused-media"),
        "PYTHONDONTWRITEBYTECODE": "1",
    }
    for name in ("BUCKET_NAME", "MIGRATE_MEDIA_BUCKET", "MEDIA_FALLBACK"):
        env.pop(name, None)
    for args in (["migrate", "--noinput"], ["shell", "-c", SEED]):
        done = subprocess.run(
            [sys.executable, "manage.py", *args], cwd=EXAMPLE, env=env,
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        if done.returncode != 0:
            last = (done.stderr.strip().splitlines() or ["no output"])[-1]
            raise DemoError(f"seeding the example app failed: {last}")
    app = pwd.getpwnam("app")
    for path in (db, *db.iterdir()):
        os.chown(path, app.pw_uid, app.pw_gid)


def _environ(sim: SimServer, fleet: LocalFleet) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FLY_", "AWS_", "INVOKE_"))}
    env.update(
        {
            "FLY_FLAPS_BASE_URL": sim.url,
            "FLY_API_TOKEN": sim.token,
            "PATH": f"{fleet.flyctl_dir}{os.pathsep}{os.environ['PATH']}",
            "NO_COLOR": "1",
        }
    )
    env.pop("GITHUB_STEP_SUMMARY", None)
    return env
