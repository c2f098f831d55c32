"""``manage.py migrate_media`` on the example app, against a real S3-compatible server.

The server is moto's, behind `s3_server.StrictS3Proxy` over HTTPS: a real HTTP hop that
refuses ``aws-chunked`` uploads and versioning as Tigris does, accepts only the test access
key, can refuse writes to a bucket, and counts every object write (PUT) per key, which is
how these tests prove what was and was not uploaded. Each test gets its own volume
(MEDIA_ROOT), SQLite database and bucket; the command runs as it would on a Machine, in a
``manage.py`` subprocess with the example's settings (``MIGRATE_MEDIA_BUCKET`` adds the
``bucket`` alias to ``STORAGES``).
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import os
import random
import shutil
import signal
import sqlite3
import stat
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from conftest import IN_CI, manage_example, require
from s3_server import ACCESS_KEY, SECRET_KEY, ServerDidNotStart, StrictS3Proxy, moto_server

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "example"
LOCATION = "media"
UDF = "services.UserDataFile.file"
TABLE = "services_userdatafile"
_buckets = itertools.count()


@pytest.fixture(scope="module")
def proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StrictS3Proxy]:
    for module in ("django", "celery", "storages", "boto3", "moto.server", "cryptography"):
        require(module)
    directory = tmp_path_factory.mktemp("s3")
    try:
        with (
            moto_server(directory / "server.log") as endpoint,
            StrictS3Proxy(endpoint, tls=True, directory=directory) as strict,
        ):
            yield strict
    except ServerDidNotStart as e:
        if IN_CI:
            pytest.fail(str(e))
        pytest.skip(str(e))


def base_env(root: Path, proxy: StrictS3Proxy, bucket: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    return env | {
        "DJANGO_SETTINGS_MODULE": "config.settings",
        "PYTHONPATH": str(REPO),
        "DATABASE_URL": f"sqlite:///{root / 'db.sqlite3'}",
        "MEDIA_ROOT": str(root / "media"),
        "CELERY_BROKER_URL": "memory://",
        "PYTHONIOENCODING": "utf-8",
        "PYTHONDONTWRITEBYTECODE": "1",
        "MIGRATE_MEDIA_BUCKET": bucket,
        "MEDIA_LOCATION": LOCATION,
        "AWS_ENDPOINT_URL_S3": proxy.url,
        "AWS_CA_BUNDLE": str(proxy.ca_bundle),
        "AWS_ACCESS_KEY_ID": ACCESS_KEY,
        "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
        "AWS_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",
        # No credentials from this machine's files, ever.
        "AWS_SHARED_CREDENTIALS_FILE": str(root / "no-credentials"),
        "AWS_CONFIG_FILE": str(root / "no-config"),
    }


@pytest.fixture(scope="module")
def template_db(tmp_path_factory: pytest.TempPathFactory, proxy: StrictS3Proxy) -> Path:
    """A migrated database with one user: each test copies it rather than migrating."""
    root = tmp_path_factory.mktemp("template")
    env = base_env(root, proxy, "unused")
    proc = manage_example(env, "migrate", "--noinput")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    create = (
        "from django.contrib.auth import get_user_model; "
        "get_user_model().objects.create(username='u')"
    )
    proc = manage_example(env, "shell", "-c", create)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return root / "db.sqlite3"


@dataclass
class Site:
    root: Path
    proxy: StrictS3Proxy
    bucket: str
    env: dict[str, str] = field(default_factory=dict)

    @property
    def media(self) -> Path:
        return self.root / "media"

    @property
    def manifest(self) -> Path:
        # Where the command puts it by default: under the media root here, unless the
        # temporary directory is a mount of its own (then at that mount).
        from volguard.django.media_migration import default_manifest_path

        return default_manifest_path(str(self.media), "bucket")

    def s3(self) -> Any:
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3",
            endpoint_url=f"http://{self.proxy.upstream.netloc}",  # moto itself: not counted
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY,
            region_name="us-east-1",
            config=Config(request_checksum_calculation="when_required"),
        )

    def file(self, name: str, data: bytes) -> Path:
        path = self.media / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        return path

    def rows(self, names: list[str]) -> dict[str, int]:
        """One row per name (no file written), straight into the database."""
        with sqlite3.connect(self.root / "db.sqlite3") as db:
            for name in names:
                db.execute(
                    f"INSERT INTO {TABLE} (owner_id, file, processing_status, processing_log, "  # noqa: S608
                    "created_at, updated_at) VALUES (1, ?, 'pending', '', "
                    "'2026-01-01 00:00:00', '2026-01-01 00:00:00')",
                    (name,),
                )
            placeholders = ",".join("?" * len(names))
            query = f"SELECT file, id FROM {TABLE} WHERE file IN ({placeholders})"  # noqa: S608
            found = db.execute(query, names)
            return dict(found.fetchall())

    def seed(self, files: dict[str, bytes]) -> dict[str, int]:
        for name, data in files.items():
            self.file(name, data)
        return self.rows(list(files))

    def manage(self, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
        return manage_example(self.env | env, *args, timeout=600)

    def migrate(self, *args: str, code: int = 0, **env: str) -> dict[str, Any]:
        proc = self.manage("migrate_media", "--to", "bucket", "--json", *args, **env)
        assert proc.returncode == code, proc.stdout + proc.stderr
        return json.loads(proc.stdout)

    def popen_migrate(self, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [sys.executable, "manage.py", "migrate_media", "--to", "bucket", "--apply", *args],
            cwd=EXAMPLE,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def key(self, name: str) -> str:
        return f"{LOCATION}/{name}"

    def object(self, name: str) -> dict[str, Any]:
        found = self.s3().get_object(Bucket=self.bucket, Key=self.key(name))
        return {
            "body": found["Body"].read(),
            "type": found["ContentType"],
            "sha256": found["Metadata"].get("sha256"),
        }

    def verified_names(self) -> set[str]:
        names = set()
        if self.manifest.exists():
            for line in self.manifest.read_text("utf-8").splitlines():
                try:
                    entry = json.loads(line)
                except ValueError:
                    continue
                if entry.get("state") == "verified":
                    names.add(entry["name"])
        return names


@pytest.fixture
def site(tmp_path: Path, proxy: StrictS3Proxy, template_db: Path) -> Iterator[Site]:
    bucket = f"vg-migrate-{next(_buckets)}"
    (tmp_path / "media").mkdir()
    shutil.copy(template_db, tmp_path / "db.sqlite3")
    site = Site(tmp_path, proxy, bucket, base_env(tmp_path, proxy, bucket))
    site.s3().create_bucket(Bucket=bucket)
    proxy.reset_counts()
    yield site
    proxy.on_put = None
    proxy.read_only.clear()


def _content(i: int, size: int) -> bytes:
    block = hashlib.sha256(str(i).encode()).digest()
    return (block * (size // len(block) + 1))[:size]


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# -- copy and verify ------------------------------------------------------------------------


def test_a_volumes_files_are_copied_verified_and_keep_their_names_and_types(site: Site) -> None:
    files = {
        f"user_data/user_1/2026/01/0{i % 9 + 1}/report {i}.{ext}": _content(i, size)
        for i, (ext, size) in enumerate(
            [("csv", 10), ("json", 3000), ("png", 70_000), ("pdf", 1), ("txt", 0)] * 4
        )
    }
    site.seed(files)
    site.file("unreferenced/cache.bin", b"not a row's")

    plan = site.migrate()
    assert plan["applied"] is False
    assert plan["files"]["to_copy"] == len(files)
    assert plan["bytes"]["to_copy"] == sum(map(len, files.values()))
    assert plan["fields"] == [{"field": UDF, "rows": len(files)}]
    assert sum(site.proxy.puts.values()) == 0
    assert not site.manifest.exists()  # a plan writes nothing

    done = site.migrate("--apply", "--workers", "3")
    assert done["exit_code"] == 0
    assert done["files"]["copied"] == done["files"]["verified"] == len(files)
    assert done["bytes"]["verified"] == sum(map(len, files.values()))
    assert done["conflicts"] == done["missing_from_source"] == done["changing"] == []
    assert site.proxy.refused == {}  # no aws-chunked body, over HTTPS
    assert sum(site.proxy.puts.values()) == len(files)
    for name, data in files.items():
        found = site.object(name)
        assert found["body"] == data
        assert found["sha256"] == _sha(data)
    report = site.object("user_data/user_1/2026/01/01/report 0.csv")
    assert report["type"] == "text/csv"
    assert site.object("user_data/user_1/2026/01/03/report 2.png")["type"] == "image/png"
    # Only what a row references, without --all-files.
    assert site.proxy.puts[site.key("unreferenced/cache.bin")] == 0
    assert stat.S_IMODE(site.manifest.stat().st_mode) == 0o600
    assert site.verified_names() == set(files)

    site.proxy.reset_counts()
    again = site.migrate("--apply")
    assert again["files"]["skipped"] == again["files"]["verified"] == len(files)
    assert again["files"]["copied"] == 0
    assert sum(site.proxy.puts.values()) == 0

    everything = site.migrate("--apply", "--all-files")
    assert everything["files"]["copied"] == 1
    assert site.object("unreferenced/cache.bin")["body"] == b"not a row's"
    assert site.proxy.puts[site.key(".volguard/migrate-media/bucket.jsonl")] == 0


def test_rows_whose_file_is_missing_are_named_and_exit_2(site: Site) -> None:
    pks = site.seed({"a/present.csv": b"here"})
    pks |= site.rows(["a/gone.csv", "../escape.csv"])

    proc = site.manage("migrate_media", "--to", "bucket", "--apply")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert f"MISSING {UDF} pk {pks['a/gone.csv']}: a/gone.csv" in proc.stdout

    document = site.migrate("--apply", code=2)
    assert document["files"]["verified"] == 1
    assert document["files"]["missing_from_source"] == 2
    missing = {
        (m["model"], m["pk"], m["name"], m["reason"]) for m in document["missing_from_source"]
    }
    assert missing == {
        (UDF, pks["a/gone.csv"], "a/gone.csv", "missing"),
        (UDF, pks["../escape.csv"], "../escape.csv", "invalid_name"),
    }


def test_an_object_with_other_bytes_is_a_conflict_and_is_never_overwritten(site: Site) -> None:
    pks = site.seed({"c/theirs.csv": b"ours", "c/same.csv": b"same bytes", "c/new.csv": b"new"})
    s3 = site.s3()
    s3.put_object(Bucket=site.bucket, Key=site.key("c/theirs.csv"), Body=b"someone else's")
    s3.put_object(Bucket=site.bucket, Key=site.key("c/same.csv"), Body=b"same bytes")
    site.proxy.reset_counts()

    plan = site.migrate(code=2)
    assert [c["name"] for c in plan["conflicts"]] == ["c/theirs.csv"]
    assert plan["files"]["to_copy"] == 1

    document = site.migrate("--apply", code=2)
    assert document["conflicts"] == [
        {
            "name": "c/theirs.csv",
            "model": UDF,
            "pk": pks["c/theirs.csv"],
            "source_size": 4,
            "source_sha256": _sha(b"ours"),
            "destination_size": len(b"someone else's"),
            "destination_sha256": None,  # other sizes: no need to read it back
        }
    ]
    assert document["files"]["identical"] == 1  # recorded verified without an upload
    assert document["files"]["copied"] == 1
    assert site.proxy.puts == {site.key("c/new.csv"): 1}
    assert site.object("c/theirs.csv")["body"] == b"someone else's"
    assert site.verified_names() == {"c/same.csv", "c/new.csv"}


def test_an_object_written_by_someone_else_during_the_upload_is_not_replaced(
    site: Site,
) -> None:
    """Between the check and the upload another writer creates the object: the upload is
    conditional (``If-None-Match: *``), the store refuses it, and it is a conflict."""
    site.seed({"r/race.csv": b"ours"})
    s3 = site.s3()

    fired: list[str] = []

    def another_writer(key: str) -> None:
        if key == site.key("r/race.csv") and not fired:
            fired.append(key)
            s3.put_object(Bucket=site.bucket, Key=key, Body=b"theirs, meanwhile")

    site.proxy.on_put = another_writer
    document = site.migrate("--apply", code=2)
    assert [c["name"] for c in document["conflicts"]] == ["r/race.csv"]
    assert document["conflicts"][0]["destination_size"] == len(b"theirs, meanwhile")
    assert site.object("r/race.csv")["body"] == b"theirs, meanwhile"
    assert site.verified_names() == set()


def test_a_body_damaged_on_the_way_is_caught_and_uploaded_again(site: Site) -> None:
    """Read-back: the store kept damaged bytes, the read-back sees it, the object is
    replaced. ``--verify checksum``: the store refuses the damaged body (BadDigest)."""
    site.seed({"b/read.bin": b"r" * 5000, "b/md5.bin": b"m" * 5000})
    site.proxy.corrupt[site.key("b/read.bin")] = 1
    document = site.migrate("--apply")
    assert document["verify"] == "read-back"
    assert document["files"]["verified"] == 2
    assert site.proxy.puts[site.key("b/read.bin")] == 2
    assert site.object("b/read.bin")["body"] == b"r" * 5000

    site.file("b/md5.bin", b"M" * 5000)  # changed: copied again, as volguard's own
    site.proxy.reset_counts()
    site.proxy.corrupt[site.key("b/md5.bin")] = 1
    document = site.migrate("--apply", "--verify", "checksum")
    assert document["verify"] == "content-md5"
    assert document["files"]["copied"] == 1
    assert site.proxy.refused == {"BadDigest": 1}
    assert site.proxy.puts[site.key("b/md5.bin")] == 2
    assert site.object("b/md5.bin")["body"] == b"M" * 5000

    # Damaged every time: exit 1, one line, and nothing recorded as verified.
    site.file("b/read.bin", b"R" * 5000)
    site.proxy.corrupt[site.key("b/read.bin")] = 5
    error = _one_line_error(site.manage("migrate_media", "--to", "bucket", "--apply"))
    assert "'b/read.bin' read back from the destination differs from the source twice" in error


def test_files_written_during_the_copy_are_picked_up_by_the_delta_pass(site: Site) -> None:
    files = {f"d/{i:02d}.bin": _content(i, 1000) for i in range(10)}
    site.seed(files)
    site.file("d/late.bin", b"written during the copy")
    db = site.root / "db.sqlite3"

    fired = []

    def during_the_copy(key: str) -> None:
        if key == site.key("d/03.bin") and not fired:
            fired.append(key)
            # A new upload lands (file, then row), and a file already read is rewritten.
            with sqlite3.connect(db) as conn:
                conn.execute(
                    f"INSERT INTO {TABLE} (owner_id, file, processing_status, processing_log, "  # noqa: S608
                    "created_at, updated_at) VALUES (1, 'd/late.bin', 'pending', '', "
                    "'2026-01-01', '2026-01-01')"
                )
            with open(site.media / "d/03.bin", "ab") as f:
                f.write(b" and more")

    site.proxy.on_put = during_the_copy
    document = site.migrate("--apply", "--workers", "1")
    assert document["exit_code"] == 0, document
    assert document["files"]["delta"] == 2
    assert document["changing"] == []
    assert site.object("d/late.bin")["body"] == b"written during the copy"
    assert site.object("d/03.bin")["body"] == files["d/03.bin"] + b" and more"
    assert site.object("d/03.bin")["sha256"] == _sha(files["d/03.bin"] + b" and more")

    # A file rewritten at every upload is still changing at the end: named, exit 2.
    site.rows(["d/busy.log"])
    busy = site.file("d/busy.log", b"0")

    def always(key: str) -> None:
        if key == site.key("d/busy.log"):
            busy.write_bytes(busy.read_bytes() + b"1")

    site.proxy.on_put = always
    document = site.migrate("--apply", code=2)
    assert document["changing"] == ["d/busy.log"]
    assert document["conflicts"] == []


def test_a_killed_run_resumes_without_re_uploading_verified_objects(site: Site) -> None:
    files = {f"k/{i:03d}.dat": _content(i, 20_000 + i) for i in range(150)}
    site.seed(files)
    seed = random.randrange(1 << 30)  # noqa: S311 (kill points, not secrets)
    rng = random.Random(seed)  # noqa: S311
    for point in sorted(rng.sample(range(5, 140), 3)):
        verified_before = site.verified_names()
        site.proxy.reset_counts()
        proc = site.popen_migrate("--workers", "4")

        def kill_at(
            key: str, done: int = point - len(verified_before), proc: subprocess.Popen = proc
        ) -> None:
            if sum(site.proxy.puts.values()) >= done:
                os.kill(proc.pid, signal.SIGKILL)

        site.proxy.on_put = kill_at
        proc.communicate(timeout=300)
        site.proxy.on_put = None
        assert proc.returncode in (-signal.SIGKILL, 0), (seed, proc.returncode)
        again = {k for k, n in site.proxy.puts.items() if n} & {
            site.key(n) for n in verified_before
        }
        assert not again, f"seed {seed}: re-uploaded verified objects {sorted(again)[:5]}"

    verified_before = site.verified_names()
    assert verified_before, seed
    site.proxy.reset_counts()
    document = site.migrate("--apply")
    assert document["exit_code"] == 0
    uploaded = {k for k, n in site.proxy.puts.items() if n}
    assert not uploaded & {site.key(n) for n in verified_before}, seed
    assert document["files"]["verified"] == len(files)
    assert document["files"]["skipped"] >= len(verified_before)
    for name, data in files.items():
        assert site.object(name)["body"] == data


def test_progress_goes_to_stderr_only_when_it_is_a_terminal(site: Site) -> None:
    import pty

    site.seed({f"p/{i}.txt": b"p" * i for i in range(1, 6)})
    proc = site.manage("migrate_media", "--to", "bucket")
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""  # a pipe: no progress lines

    controller, terminal = pty.openpty()
    with os.fdopen(controller, "rb", buffering=0) as reader:
        run = subprocess.Popen(
            [sys.executable, "manage.py", "migrate_media", "--to", "bucket", "--apply"],
            cwd=EXAMPLE,
            env=site.env,
            stdout=subprocess.PIPE,
            stderr=terminal,
        )
        os.close(terminal)
        run.communicate(timeout=300)
        seen = b""
        with contextlib.suppress(OSError):  # EIO once the child's end is closed
            while chunk := reader.read(4096):
                seen += chunk
    assert run.returncode == 0
    assert b"migrate_media: 5 copied" in seen


def test_the_manifest_goes_on_the_volume_that_holds_the_files(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from volguard.django.media_migration import default_manifest_path

    mounts = {"/", "/data"}
    monkeypatch.setattr(os.path, "ismount", lambda path: str(path) in mounts)
    assert default_manifest_path("/data/media", "bucket") == Path(
        "/data/.volguard/migrate-media/bucket.jsonl"
    )
    # MEDIA_ROOT on the root filesystem (no volume): under the media root itself.
    assert default_manifest_path("/srv/app/media", "tigris") == Path(
        "/srv/app/media/.volguard/migrate-media/tigris.jsonl"
    )


# -- could not run: one line, exit 1 ------------------------------------------------------


def _one_line_error(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert proc.stderr.count("\n") == 1, proc.stderr
    assert proc.stderr.startswith("CommandError: ")
    assert "Traceback" not in proc.stderr
    return proc.stderr


def test_a_bucket_that_refuses_writes_is_one_clear_error(site: Site) -> None:
    site.seed({"w/a.csv": b"a"})
    site.proxy.read_only.add(site.bucket)
    assert site.migrate()["files"]["to_copy"] == 1  # the plan only reads
    error = _one_line_error(site.manage("migrate_media", "--to", "bucket", "--apply"))
    assert "cannot upload 'w/a.csv': AccessDenied" in error
    assert site.verified_names() == set()


@pytest.mark.parametrize("credential", ["wrong", "missing"])
def test_a_missing_or_wrong_credential_is_one_clear_error_never_printed(
    site: Site, credential: str
) -> None:
    site.seed({"x/a.csv": b"a"})
    secret = "vg-secret-never-printed-7f3a"
    if credential == "wrong":
        env = {"AWS_ACCESS_KEY_ID": "AKIAWRONGWRONGWRONG", "AWS_SECRET_ACCESS_KEY": secret}
    else:
        env = {"AWS_ACCESS_KEY_ID": "", "AWS_SECRET_ACCESS_KEY": ""}
    proc = site.manage("migrate_media", "--to", "bucket", "--apply", **env)
    error = _one_line_error(proc)
    assert f"cannot reach the bucket '{site.bucket}'" in error
    if credential == "wrong":
        assert "credentials refused" in error
    else:
        assert "no credentials found" in error
    assert secret not in proc.stdout + proc.stderr
    assert SECRET_KEY not in error.replace("testing", "")  # nothing of the real one either
    assert sum(site.proxy.puts.values()) == 0


def test_an_unknown_alias_is_one_clear_error(site: Site) -> None:
    error = _one_line_error(site.manage("migrate_media", "--to", "nowhere"))
    assert "no storage 'nowhere' in settings.STORAGES (there are: bucket, default" in error
    error = _one_line_error(site.manage("migrate_media", "--to", "bucket", "--from", "bucket"))
    assert "the same storage" in error
    error = _one_line_error(site.manage("migrate_media", "--to", "bucket", "--workers", "x"))
    assert "--workers" in error


def test_the_strict_server_refuses_what_tigris_refuses(site: Site, tmp_path: Path) -> None:
    """The test's own oracle: botocore's default upload (aws-chunked over HTTPS) and
    versioning are refused; the client configured as migrate_media configures it is not."""
    import boto3
    from botocore.config import Config
    from botocore.exceptions import ClientError

    def client(**config: Any) -> Any:
        return boto3.client(
            "s3",
            endpoint_url=site.proxy.url,
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY,
            region_name="us-east-1",
            verify=str(site.proxy.ca_bundle),
            config=Config(**config),
        )

    body = tmp_path / "body.bin"
    body.write_bytes(b"x" * 1000)
    with pytest.raises(ClientError, match="aws-chunked"), open(body, "rb") as f:
        client().put_object(Bucket=site.bucket, Key="k", Body=f)
    with pytest.raises(ClientError, match="NotImplemented"):
        client().put_bucket_versioning(
            Bucket=site.bucket, VersioningConfiguration={"Status": "Enabled"}
        )
    with open(body, "rb") as f:
        client(request_checksum_calculation="when_required").put_object(
            Bucket=site.bucket, Key="k", Body=f
        )
    assert site.proxy.puts == {"k": 1}
