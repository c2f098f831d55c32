"""`volguard migrate-media`: the Fly side of the move to object storage, on a split fleet.

Real parts: the Machines API simulator, the local fleet (each Machine a namespace with its
own sshd and volume, following the API so a deploy restarts Machines with their new env),
the example Django app on every Machine as `app`, and moto's S3 server behind the strict
proxy (tests/s3_server.py). The scenario is the incident (the web app and the worker on
their own volumes) with a second worker on a third: uploads on the web app's volume,
outputs on the worker's, a name that differs between the two workers. The storage settings
are the app's secrets, as ``fly storage create`` sets them; the cutover is a fly.toml
``[env]`` change deployed with the flyctl stand-in. The merge rules are tested pure first.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import tomlkit
from recover_support import APP, MANAGE, VOLGUARD, WHY, WORKER, WORKER_B, app_python, needs_fleet
from s3_server import ACCESS_KEY, SECRET_KEY, ServerDidNotStart, StrictS3Proxy, client, moto_server

from volguard.audit_log import AuditLog
from volguard.config import Settings
from volguard.errors import RemoteCommandError
from volguard.fly.client import MachinesClient, Token
from volguard.flytoml import read_fly_toml
from volguard.media_move import (
    STEPS,
    MachineReport,
    MigrateContext,
    MigrateOptions,
    merge,
    migrate_media,
    render_text,
    set_env,
)
from volguard.sim.api import SimServer
from volguard.sim.local_fleet import LocalFleet
from volguard.sim.scenario import scenario_path

UDF = "services.UserDataFile.file"
_buckets = itertools.count()

# -- the merge, pure ---------------------------------------------------------------------------


def _report(
    machine: str, missing: list[int], conflicts: list[dict[str, Any]] = ()
) -> MachineReport:
    return MachineReport(machine, "app" if machine == "a" else "worker", 2, {
        "fields": [{"field": UDF, "rows": 3}],
        "files": {"to_copy": 3 - len(missing), "conflicts": len(conflicts)},
        "conflicts": list(conflicts),
        "missing_from_source": [{"model": UDF, "pk": pk, "name": f"n{pk}", "reason": "missing"}
                                for pk in missing],
    })  # fmt: skip


def test_a_row_is_missing_only_when_no_volume_holds_its_file() -> None:
    merged = merge([_report("a", [2, 3]), _report("b", [1, 3])])
    assert [(m["pk"], m["machines"]) for m in merged.missing] == [(3, ["a", "b"])]
    assert merged.files["to_copy"] == 2
    assert merged.files["missing_from_source"] == 1


def test_a_value_already_in_env_as_flyctl_sends_it_is_not_written_again(tmp_path: Path) -> None:
    """flyctl sends a non-string [env] value as Go's %v: 1e6 is "1e+06", true is "true"."""
    fly_toml = tmp_path / "fly.toml"
    fly_toml.write_text('app = "a"\n\n[env]\n  BIG = 1e6\n  ON = true\n  RATIO = 0.5\n')
    before = fly_toml.read_text()
    previous, written = set_env(str(fly_toml), {"BIG": "1e+06", "ON": "true", "RATIO": "0.5"})
    changed, written_again = set_env(str(fly_toml), {"BIG": "1000000"})
    assert previous == {"BIG": "1e+06", "ON": "true", "RATIO": "0.5"}
    assert not written
    assert changed == {"BIG": "1e+06"}
    assert written_again
    assert before != fly_toml.read_text()
    assert 'BIG = "1000000"' in fly_toml.read_text()


def test_a_name_that_differs_between_volumes_lists_every_copy_and_chooses_none() -> None:
    conflict = {
        "name": "x.csv",
        "model": UDF,
        "pk": 7,
        "source_size": 3,
        "source_sha256": "bb",
        "destination_size": 4,
        "destination_sha256": "aa",
    }
    merged = merge([_report("a", []), _report("b", [], [conflict]), _report("c", [], [conflict])])
    (entry,) = merged.conflicts
    assert entry["destination"] == {"size": 4, "sha256": "aa"}
    assert [c["machine"] for c in entry["copies"]] == ["b", "c"]
    assert merged.problems


# -- the split fleet ---------------------------------------------------------------------------

ROWS = {
    "web": "user_data/web.csv",  # the web app's upload, on its volume only
    "out": "user_data/out/report.csv",  # the worker's output, on the worker's volume only
    "both": "user_data/both.csv",  # on the app's volume and worker A's, the same bytes
    "c": "user_data/c.csv",  # on worker A and worker B with other bytes: a conflict
    "gone": "user_data/gone.csv",  # on no volume
}
SEED = """\
import json
from django.contrib.auth import get_user_model
from apps.services.models import UserDataFile
import datetime
from django.utils import timezone
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
FILES = {
    APP: "cd /data/media && mkdir -p user_data && printf web > user_data/web.csv && "
    "printf same > user_data/both.csv",
    WORKER: "cd /data/media && mkdir -p user_data/out && printf out > user_data/out/report.csv"
    " && printf same > user_data/both.csv && printf 'worker a' > user_data/c.csv",
    WORKER_B: "cd /data/media && mkdir -p user_data && printf 'worker b, longer' > user_data/c.csv",
}


@pytest.fixture(scope="module")
def proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StrictS3Proxy]:
    if WHY:
        pytest.skip(WHY)
    pytest.importorskip("moto.server")
    directory = tmp_path_factory.mktemp("s3")
    try:
        with moto_server(directory / "server.log") as endpoint, StrictS3Proxy(endpoint) as p:
            yield p
    except ServerDidNotStart as e:
        pytest.skip(str(e))


class Site:
    def __init__(self, sim: SimServer, fleet: LocalFleet, python: str, workdir: Path,
                 bucket: str) -> None:  # fmt: skip
        self.sim, self.fleet, self.python, self.workdir, self.bucket = (
            sim, fleet, python, workdir, bucket)  # fmt: skip
        self.pks: dict[str, int] = {}

    def sh(self, machine: str, script: str) -> str:
        done = self.fleet.exec(machine, ["sh", "-c", script], user="app", timeout=60)
        assert done.returncode == 0, done.stderr
        return done.stdout

    def manage(self, machine: str, *args: str) -> subprocess.CompletedProcess[str]:
        env = dict(self.fleet.plan(machine).env)
        return self.fleet.exec(machine, [self.python, str(MANAGE), *args], user="app",
                               env=env, timeout=120)  # fmt: skip

    def context(self, **options: Any) -> MigrateContext:
        config, problems = read_fly_toml(str(self.workdir / "fly.toml"))
        assert config is not None, problems
        settings = Settings.load(
            None,
            transport="ssh",
            ssh_config=str(self.fleet.ssh_config),
            flyctl=str(self.fleet.flyctl_dir / "flyctl"),
            volume_fstypes=["ext4", "tmpfs"],
            manage_py=f"{self.python} {MANAGE}",
        )
        return MigrateContext(
            settings,
            config,
            self.sim.scenario.app,
            Token(self.sim.token),
            MigrateOptions(
                fly_toml=str(self.workdir / "fly.toml"), to="bucket", snapshot_poll=0.05, **options
            ),
            client_factory=partial(MachinesClient, base_url=self.sim.url, backoff=0.01),
            audit=AuditLog(str(self.workdir / ".volguard" / "audit.jsonl"), command="x"),
            runs_dir=str(self.workdir / ".volguard" / "runs"),
            out=lambda line: None,
        )

    def deploy_env(self, **env: str) -> None:
        """The cutover as a fly.toml [env] change, deployed (the Machines restart)."""
        path = self.workdir / "fly.toml"
        document = tomlkit.parse(path.read_text())
        table = document.setdefault("env", tomlkit.table())
        for name, value in env.items():
            if value:
                table[name] = value
            elif name in table:
                del table[name]
        path.write_text(tomlkit.dumps(document))
        done = subprocess.run(
            [str(self.fleet.flyctl_dir / "flyctl"), "deploy", "-c", str(path), "-y"],
            cwd=self.workdir, capture_output=True, text=True, timeout=300, check=False,
            env={**os.environ, "FLY_FLAPS_BASE_URL": self.sim.url, "FLY_API_TOKEN": self.sim.token},
        )  # fmt: skip
        assert done.returncode == 0, done.stdout + done.stderr

    def objects(self) -> dict[str, bytes]:
        s3 = client(self.proxy_url)
        listed = s3.list_objects_v2(Bucket=self.bucket).get("Contents", [])
        return {o["Key"]: s3.get_object(Bucket=self.bucket, Key=o["Key"])["Body"].read()
                for o in listed}  # fmt: skip

    proxy_url = ""


@contextlib.contextmanager
def split_fleet(workdir: Path, proxy: StrictS3Proxy, **secrets: str) -> Iterator[Site]:
    python, python_env = app_python()
    bucket = f"media-{next(_buckets)}"
    client(proxy.url).create_bucket(Bucket=bucket)
    database = Path(tempfile.mkdtemp(prefix="volguard-migrate-db-", dir="/tmp"))
    try:
        env = {
            "DJANGO_SETTINGS_MODULE": "config.settings",
            "MEDIA_ROOT": "/data/media",
            "DATABASE_URL": f"sqlite:///{database}/app.sqlite3",
            "CELERY_BROKER_URL": "memory://",
            "PYTHONDONTWRITEBYTECODE": "1",
            "MIGRATE_MEDIA_BUCKET": bucket,
            "AWS_ENDPOINT_URL_S3": proxy.url,
            "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
            "AWS_REGION": "us-east-1",
            "AWS_EC2_METADATA_DISABLED": "true",
            **python_env,
            **secrets,
        }
        document = tomlkit.parse(scenario_path("incident").read_text())
        # secrets, as `fly secrets set` / `fly storage create` give them: they survive deploys
        document["secrets"] = {k: v for k, v in env.items() if v}
        extra = tomlkit.table()
        extra.update({"id": WORKER_B, "group": "worker", "region": "syd", "state": "started",
                      "volume": "vol_4w2yq9kd7m3x5z8p"})  # fmt: skip
        document["machines"].append(extra)
        volume = tomlkit.table()
        volume.update({"id": "vol_4w2yq9kd7m3x5z8p", "name": "data", "region": "syd",
                       "size_gb": 1, "used_percent": 3})  # fmt: skip
        document["volumes"].append(volume)
        scenario = workdir / "scenario.toml"
        scenario.write_text(tomlkit.dumps(document))
        with SimServer(scenario) as sim, LocalFleet(scenario) as fleet:
            fleet.follow(sim)
            (workdir / "fly.toml").write_text(sim.scenario.fly_toml)
            app_user = pwd.getpwnam("app")
            os.chown(database, app_user.pw_uid, app_user.pw_gid)
            site = Site(sim, fleet, python, workdir, bucket)
            site.proxy_url = proxy.url
            done = site.manage(APP, "migrate", "--noinput")
            assert done.returncode == 0, done.stdout + done.stderr
            done = site.manage(APP, "shell", "-c", SEED.replace("NAMES", repr(json.dumps(ROWS))))
            assert done.returncode == 0, done.stdout + done.stderr
            site.pks = json.loads(done.stdout.split("VG_PKS=", 1)[1])
            for machine, script in FILES.items():
                site.sh(machine, script)
            yield site
    finally:
        shutil.rmtree(database, ignore_errors=True)


@needs_fleet
def test_split_fleet_is_merged_snapshotted_first_copied_and_verified_after_the_cutover(
    tmp_path: Path, proxy: StrictS3Proxy
) -> None:
    with split_fleet(tmp_path, proxy) as site:
        # the plan: every Machine's, merged; nothing is written
        outcome = migrate_media(site.context())
        plan = outcome.plan
        assert plan is not None
        assert outcome.exit_code == 2
        assert sorted(plan.machines) == sorted([APP, WORKER, WORKER_B])
        assert [m["pk"] for m in plan.missing] == [site.pks["gone"]]
        assert site.objects() == {}

        outcome = migrate_media(site.context(apply=True))
        record = outcome.record
        assert record is not None, outcome.error
        assert [s.name for s in record.steps] == list(STEPS)
        snapshot, copy = record.get("snapshot"), record.get("copy")
        assert snapshot.status == "changed"
        assert copy.status == "changed", copy.summary
        assert snapshot.started <= copy.started  # the snapshot is taken first
        with MachinesClient(Token(site.sim.token), base_url=site.sim.url) as api:
            for volume, snap in outcome.snapshots.items():
                listed = {s.id: s.status for s in api.list_snapshots(site.sim.scenario.app, volume)}
                assert listed[snap] == "created"
        keys = site.objects()
        assert keys["media/user_data/web.csv"] == b"web"  # from the web app's volume
        assert keys["media/user_data/out/report.csv"] == b"out"  # from the worker's
        assert keys["media/user_data/both.csv"] == b"same"
        # c differs between the workers: the first copy stays, the other is a conflict
        after = outcome.after
        assert after is not None
        (conflict,) = after.conflicts
        assert conflict["name"] == ROWS["c"]
        # the Machines copy one at a time, by group then id: worker B's copy went first
        assert [c["machine"] for c in conflict["copies"]] == [WORKER]
        assert conflict["destination"]["size"] == len("worker b, longer")
        assert record.get("cutover").status == "skipped"
        assert outcome.exit_code == 2
        text = render_text(outcome)
        assert "volguard chooses no copy" in text
        assert SECRET_KEY not in text

        # the operator settles the conflict: worker B's copy is the right one
        site.sh(WORKER, "printf 'worker b, longer' > /data/media/user_data/c.csv")
        fly_toml = (tmp_path / "fly.toml").read_bytes()
        outcome = migrate_media(site.context(apply=True, rollback=("BUCKET_NAME=",)))
        record = outcome.record
        assert record is not None
        # without --setting the cutover is printed, not performed: the run ends there
        assert record.get("cutover").status == "skipped"
        assert "no --setting" in record.get("cutover").detail["why"]
        assert [record.get(s).status for s in ("deploy", "delta", "verify")] == ["skipped"] * 3
        assert any("volguard deploy --yes" in line for line in outcome.cutover)
        assert "Next, the cutover:" in render_text(outcome)
        assert (tmp_path / "fly.toml").read_bytes() == fly_toml
        assert outcome.exit_code == 2  # `gone` has a file on no volume, before and after

        # before the cutover the web app reads its own volume: the worker's output is missing
        before = migrate_media(site.context(verify=True))
        assert before.exit_code == 2
        assert [r["pk"] for r in before.verified["missing"]] == [site.pks["out"], site.pks["c"]]

        # the cutover: the app reads the bucket; every row that had a file anywhere is there
        site.deploy_env(BUCKET_NAME=site.bucket)
        verified = migrate_media(site.context(verify=True))
        assert verified.exit_code == 0, verified.verified
        assert verified.verified["known_missing"] == 1

        # rollback: the setting back; the volumes were never touched
        site.deploy_env(BUCKET_NAME="")
        assert site.sh(APP, "cat /data/media/user_data/web.csv") == "web"
        assert site.sh(WORKER, "cat /data/media/user_data/out/report.csv") == "out"
        rolled = migrate_media(site.context(verify=True))
        assert [r["pk"] for r in rolled.verified["missing"]] == [site.pks["out"], site.pks["c"]]


@needs_fleet
def test_a_failed_copy_resumes_from_the_copy_without_a_second_snapshot(
    tmp_path: Path, proxy: StrictS3Proxy
) -> None:
    with split_fleet(tmp_path, proxy) as site:
        site.sh(WORKER_B, "rm /data/media/user_data/c.csv")
        proxy.read_only.add(site.bucket)  # the bucket refuses writes: migrate_media exits 1
        try:
            failed = migrate_media(site.context(apply=True))
        finally:
            proxy.read_only.discard(site.bucket)
        assert failed.exit_code == 1
        assert failed.record is not None
        assert failed.record.get("copy").status == "failed"
        assert "AccessDenied" in str(failed.error)
        (first_snapshots,) = [failed.snapshots]

        resumed = migrate_media(site.context(apply=True, resume=True))
        record = resumed.record
        assert record is not None
        assert record.resumed_from == failed.record.id
        assert record.get("snapshot").carried_over
        assert resumed.snapshots == first_snapshots
        assert record.get("copy").status == "changed"
        assert "media/user_data/out/report.csv" in site.objects()


@needs_fleet
def test_a_missing_credential_is_one_clear_error_that_prints_no_secret(
    tmp_path: Path, proxy: StrictS3Proxy
) -> None:
    with split_fleet(tmp_path, proxy, AWS_ACCESS_KEY_ID="AKIAWRONGWRONGWRONG") as site:
        outcome = None
        with pytest.raises(RemoteCommandError) as raised:
            outcome = migrate_media(site.context())
        assert outcome is None
        message = str(raised.value)
        assert "InvalidAccessKeyId" in message or "credential" in message.lower()
        assert SECRET_KEY not in message
        assert "\n" not in message
        # through the CLI: exit 1, one line, no secret
        (tmp_path / "invoke.yaml").write_text(
            "volguard:\n  volume_fstypes: [ext4, tmpfs]\n"
            f"  ssh_config: {json.dumps(str(site.fleet.ssh_config))}\n"
            f"  manage_py: {json.dumps(f'{site.python} {MANAGE}')}\n"
        )
        env = {k: v for k, v in os.environ.items() if not k.startswith(("INVOKE_", "FLY_"))}
        done = subprocess.run(
            [VOLGUARD, "migrate-media", "--to", "bucket", "--transport", "ssh"],
            cwd=tmp_path, capture_output=True, text=True, timeout=600, check=False,
            env={**env, "HOME": str(tmp_path), "FLY_FLAPS_BASE_URL": site.sim.url,
                 "FLY_API_TOKEN": site.sim.token,
                 "PATH": f"{site.fleet.flyctl_dir}{os.pathsep}{os.environ['PATH']}"},
        )  # fmt: skip
        assert done.returncode == 1, done.stdout + done.stderr
        assert done.stderr.count("volguard: error:") == 1, done.stderr
        assert SECRET_KEY not in done.stdout + done.stderr
        assert site.sim.token not in done.stdout + done.stderr


MEANWHILE = "user_data/meanwhile.csv"
UPLOAD = f"""\
from django.contrib.auth import get_user_model
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from apps.services.models import UserDataFile
name = default_storage.save({MEANWHILE!r}, ContentFile(b"uploaded meanwhile"))
assert name == {MEANWHILE!r}, name
UserDataFile.objects.create(owner=get_user_model().objects.get(username="alice"), file=name,
                            processing_status="done")
"""
READ = """\
from django.core.files.storage import default_storage
for name in NAMES:
    print("VG_READ %s=%s" % (name, default_storage.open(name).read().decode()))
"""


def _settled(site: Site) -> None:
    """The fleet with no conflict and no row without a file (the runbook's): the workers hold
    the same bytes under the shared name, and the row of no file is gone."""
    site.sh(WORKER_B, FILES[WORKER_B].replace("worker b, longer", "worker a"))
    done = site.manage(
        APP, "shell", "-c",
        "from apps.services.models import UserDataFile as U; "
        f"U.objects.filter(file={ROWS['gone']!r}).delete()",
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr


def _machine_env(site: Site) -> dict[str, str | None]:
    with MachinesClient(Token(site.sim.token), base_url=site.sim.url) as api:
        machines = api.list_machines(site.sim.scenario.app)
    return {m.id: m.env.get("MEDIA_FALLBACK") for m in machines}


@needs_fleet
def test_apply_with_a_setting_performs_the_cutover_and_a_failed_deploy_resumes_to_the_end(
    tmp_path: Path, proxy: StrictS3Proxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    with split_fleet(tmp_path, proxy) as site:
        _settled(site)
        path = tmp_path / "fly.toml"
        path.write_text(path.read_text().replace("[env]\n", "[env]\n  # the app's own switch\n"))
        monkeypatch.setenv("FLY_FLAPS_BASE_URL", site.sim.url)  # for the flyctl stand-in
        monkeypatch.setenv("FLY_API_TOKEN", site.sim.token)
        monkeypatch.setenv("VOLGUARD_SIM_DEPLOY_FAIL", "1")  # the release command fails
        cutover = {"apply": True, "source": "volume", "settings": ("MEDIA_FALLBACK=1",),
                   "rollback": ("MEDIA_FALLBACK=0",)}  # fmt: skip

        failed = migrate_media(site.context(**cutover))
        record = failed.record
        assert record is not None
        assert failed.exit_code == 2
        message = str(failed.error)
        assert "release command failed" in message, message
        assert "\n" not in message
        assert record.get("cutover").status == "changed"
        assert record.get("cutover").detail["env"] == {
            "MEDIA_FALLBACK": {"before": None, "after": "1"}
        }
        assert record.get("deploy").status == "failed"
        assert record.get("delta").status == "pending"
        text = path.read_text()
        assert tomlkit.parse(text)["env"]["MEDIA_FALLBACK"] == "1"
        assert "# the app's own switch" in text
        assert "# The incident app" in text  # fly.toml's comments stay
        assert set(_machine_env(site).values()) == {None}  # nothing was deployed
        assert any(line.startswith("rollback: flyctl deploy") and "--env MEDIA_FALLBACK=0"
                   in line for line in failed.cutover)  # fmt: skip

        # an upload to the web Machine's volume after the copy, before the deploy
        done = site.manage(APP, "shell", "-c", UPLOAD)
        assert done.returncode == 0, done.stdout + done.stderr
        assert f"media/{MEANWHILE}" not in site.objects()

        monkeypatch.delenv("VOLGUARD_SIM_DEPLOY_FAIL")
        resumed = migrate_media(site.context(resume=True, **cutover))
        again = resumed.record
        assert again is not None, resumed.error
        assert resumed.exit_code == 0, render_text(resumed)
        assert again.resumed_from == record.id
        assert {s.name: s.status for s in again.steps} == {
            "plan": "ok", "snapshot": "changed", "copy": "changed", "check": "ok",
            "cutover": "changed", "deploy": "changed", "delta": "changed", "verify": "ok",
        }  # fmt: skip
        assert again.get("cutover").carried_over
        assert again.status == "succeeded"
        assert "1 file(s) copied" in again.get("delta").summary
        assert site.objects()[f"media/{MEANWHILE}"] == b"uploaded meanwhile"
        assert set(_machine_env(site).values()) == {"1"}  # the deploy carried [env]
        assert resumed.verified is not None
        assert resumed.verified["missing"] == []
        # the worker reads the web app's uploads, the one of the delta included
        done = site.manage(
            WORKER, "shell", "-c", READ.replace("NAMES", repr([ROWS["web"], MEANWHILE]))
        )
        assert done.returncode == 0, done.stdout + done.stderr
        assert f"VG_READ {ROWS['web']}=web" in done.stdout
        assert f"VG_READ {MEANWHILE}=uploaded meanwhile" in done.stdout

        # run again: everything is done, so nothing is written, snapshotted or deployed
        before = path.stat()
        runs = tmp_path / ".volguard" / "runs"
        deploys = sorted(runs.glob("deploy-*.json"))
        noop = migrate_media(site.context(**cutover))
        assert noop.record is not None, noop.error
        assert noop.exit_code == 0, render_text(noop)
        assert {s.name: s.status for s in noop.record.steps} == dict.fromkeys(STEPS, "ok")
        after = path.stat()
        assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
        assert sorted(runs.glob("deploy-*.json")) == deploys
        assert noop.snapshots == {}
