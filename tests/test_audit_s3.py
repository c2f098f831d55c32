"""The missing-file audit on S3: django-storages' S3Storage against a real S3 server.

The server is moto's standalone one (``python -m moto.server``, from ``moto[server]`` in
the dev extra), started by this module on loopback on a free port; the example project
talks to it over HTTP through django-storages and boto3, as it would to S3 or Tigris. The
database is SQLite (the database side is covered on PostgreSQL too by test_missing_files.py).

Without moto or django-storages the module skips, except under CI, where they must be
installed.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from conftest import IN_CI, manage_example, require
from s3_server import ServerDidNotStart, moto_server

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "example"
UDF = "services.UserDataFile.file"
BUCKET = "volguard-media"
LOCATION = "media"
BIG = "user_data/user_1"
#: More than one list page (1,000 keys) under one prefix, so listings paginate.
BIG_COUNT = 1500


def s3_environment(endpoint: str, bucket: str = BUCKET) -> dict[str, str]:
    """The example app on S3 through its own settings, as `fly storage create` sets them."""
    return {
        "BUCKET_NAME": bucket,
        "MEDIA_LOCATION": LOCATION,
        "AWS_ENDPOINT_URL_S3": endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",
    }


SEED = """\
import datetime, json, os
from django.contrib.auth import get_user_model
from django.utils import timezone
from apps.services.models import UserDataFile

spec = json.loads(open(os.environ["VG_SEED"]).read())
User = get_user_model()
out = {}
for username, names in spec.items():
    user = User.objects.create(username=username)
    out[f"user:{username}"] = user.pk
    UserDataFile.objects.bulk_create(
        [UserDataFile(owner=user, file=n) for n in names], batch_size=500
    )
old = timezone.now() - datetime.timedelta(hours=1)
UserDataFile.objects.update(created_at=old, updated_at=old)
out["pks"] = dict(UserDataFile.objects.values_list("file", "pk"))
print("VG_PKS=" + json.dumps(out))
"""


# -- the S3 server ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def s3_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """moto's S3 server on 127.0.0.1 and a free port, stopped after the module."""
    require("django")
    require("celery")
    require("storages")
    require("boto3")
    require("moto.server")
    try:
        with moto_server(tmp_path_factory.mktemp("moto") / "server.log") as endpoint:
            yield endpoint
    except ServerDidNotStart as e:
        if IN_CI:
            pytest.fail(str(e))
        pytest.skip(str(e))


# -- the site: a bucket with objects, a database with rows --------------------------------


@dataclass
class S3Site:
    endpoint: str
    env: dict[str, str]
    pks: dict[str, Any]

    def check(self, *args: str) -> subprocess.CompletedProcess[str]:
        return _manage(self.env, "check_missing_files", *args)

    def check_json(self, *args: str, code: int = 2) -> dict:
        proc = self.check("--json", "--older-than", "0", *args)
        assert proc.returncode == code, proc.stdout + proc.stderr
        return json.loads(proc.stdout)

    def user(self, name: str) -> str:
        return str(self.pks[f"user:{name}"])


#: Each user's rows; names ending in "gone" have no object.
ROWS = {
    "bulk": [f"{BIG}/f{i:04d}.csv" for i in range(BIG_COUNT)]
    + [f"{BIG}/gone{i}.csv" for i in range(5)],
    # A narrow prefix of its own: one list request covers it.
    "few": ["user_data/user_few/a.csv", "user_data/user_few/b.csv", "user_data/user_few/gone.csv"],
    # Two rows whose common prefix is the big one: listing it costs more than two HEADs.
    "wide": [f"{BIG}/a_wide.csv", f"{BIG}/z_gone.csv"],
}
OBJECTS = [n for names in ROWS.values() for n in names if "gone" not in n]
MISSING = {n for names in ROWS.values() for n in names if "gone" in n}


@pytest.fixture(scope="module")
def s3site(s3_endpoint: str, tmp_path_factory: pytest.TempPathFactory) -> S3Site:
    import boto3

    root = tmp_path_factory.mktemp("s3project")
    client = boto3.client(
        "s3",
        endpoint_url=s3_endpoint,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        region_name="us-east-1",
    )
    client.create_bucket(Bucket=BUCKET)
    # An unrelated prefix that no row points into.
    keys = [f"{LOCATION}/{n}" for n in OBJECTS] + [f"{LOCATION}/cache/{i}.bin" for i in range(50)]
    with ThreadPoolExecutor(max_workers=16) as pool:
        list(pool.map(lambda key: client.put_object(Bucket=BUCKET, Key=key, Body=b"x"), keys))

    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "config.settings",
        "PYTHONPATH": str(REPO),
        "DATABASE_URL": f"sqlite:///{root / 'db.sqlite3'}",
        "MEDIA_ROOT": str(root / "unused-media"),
        "CELERY_BROKER_URL": "memory://",
        "PYTHONIOENCODING": "utf-8",
        "PYTHONDONTWRITEBYTECODE": "1",
        **s3_environment(s3_endpoint),
    }
    proc = _manage(env, "migrate", "--noinput")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    seed = root / "seed.json"
    seed.write_text(json.dumps(ROWS))
    proc = _manage({**env, "VG_SEED": str(seed)}, "shell", "-c", SEED)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    line = next(x for x in proc.stdout.splitlines() if x.startswith("VG_PKS="))
    out = json.loads(line.removeprefix("VG_PKS="))
    return S3Site(s3_endpoint, env, {**out.pop("pks"), **out})


def _manage(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return manage_example(env, *args, timeout=600)


def _rows(document: dict) -> list[tuple]:
    return sorted((r["pk"], r["reason"], r["name"], r["path"]) for r in document["rows"])


def _missing(document: dict) -> set[str]:
    return {r["name"] for r in document["rows"] if r["reason"] == "missing"}


# -- tests --------------------------------------------------------------------------------


def test_the_whole_table_is_one_paginated_listing(s3site: S3Site) -> None:
    document = s3site.check_json()
    field = document["fields"][0]
    assert field["storage"] == f"S3Storage ({BUCKET}/{LOCATION})"
    assert field["strategy"] == "s3-list"
    assert field["audited_rows"] == len(MISSING) + len(OBJECTS)
    # 1,503 keys under the rows' common prefix ("user_data/user_"): two list requests
    # (1,000 keys each at most), instead of 1,510 HEADs; the unrelated prefix is not listed.
    assert document["storage_requests"] == 2
    assert field["strategy_detail"] == (
        f"prefix '{LOCATION}/user_data/user_': {len(OBJECTS)} keys in 2 list requests"
    )
    assert _missing(document) == MISSING
    assert document["per_reason"] == {
        "missing": len(MISSING),
        "empty": 0,
        "empty_file": 0,
        "invalid_name": 0,
        "shared": 0,
    }

    proc = s3site.check("--older-than", "0")
    assert proc.returncode == 2
    pk = s3site.pks[f"{BIG}/gone0.csv"]
    assert f"  ID {pk}: {BIG}/gone0.csv (status=pending, reason=missing)" in proc.stdout
    assert f"    Path: s3://{BUCKET}/{LOCATION}/{BIG}/gone0.csv" in proc.stdout


def test_per_row_checks_agree_with_the_listing(s3site: S3Site) -> None:
    listed = s3site.check_json("--strategy", "list")
    per_row = s3site.check_json("--strategy", "exists")
    assert per_row["strategy"] == {UDF: "exists"}
    assert per_row["storage_requests"] == len(MISSING) + len(OBJECTS)  # one HEAD per row
    assert _rows(listed) == _rows(per_row)


def test_a_narrow_prefix_is_listed_in_one_request(s3site: S3Site) -> None:
    document = s3site.check_json("--user-id", s3site.user("few"))
    assert document["strategy"] == {UDF: "s3-list"}
    assert document["storage_requests"] == 1
    assert _missing(document) == {"user_data/user_few/gone.csv"}


def test_an_empty_object_is_reported_empty_file_from_the_listings_sizes(s3site: S3Site) -> None:
    import boto3

    client = boto3.client(
        "s3",
        endpoint_url=s3site.endpoint,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        region_name="us-east-1",
    )
    key = f"{LOCATION}/user_data/user_few/a.csv"
    client.put_object(Bucket=BUCKET, Key=key, Body=b"")  # a truncated upload
    try:
        document = s3site.check_json("--user-id", s3site.user("few"))
    finally:
        client.put_object(Bucket=BUCKET, Key=key, Body=b"x")
    assert document["strategy"] == {UDF: "s3-list"}
    assert document["storage_requests"] == 1  # the sizes come with the one listing
    empty = [r for r in document["rows"] if r["reason"] == "empty_file"]
    assert [r["name"] for r in empty] == ["user_data/user_few/a.csv"]
    assert empty[0]["path"].endswith(f"/{key}")
    assert _missing(document) == {"user_data/user_few/gone.csv"}


def test_a_few_rows_under_a_wide_prefix_are_checked_per_row(s3site: S3Site) -> None:
    document = s3site.check_json("--user-id", s3site.user("wide"))
    field = document["fields"][0]
    assert field["strategy"] == "exists"
    # The listing stopped once it cost as much as the HEADs would (one page for two
    # rows), then one HEAD per row: never the 1,500-key prefix in full.
    assert document["storage_requests"] == 1 + 2
    assert field["strategy_detail"].startswith(
        f"listing of prefix '{LOCATION}/{BIG}/' abandoned after 1 requests"
    )
    assert _missing(document) == {f"{BIG}/z_gone.csv"}

    listed = s3site.check_json("--user-id", s3site.user("wide"), "--strategy", "list")
    assert listed["storage_requests"] == 2
    assert _rows(listed) == _rows(document)


def test_a_single_row_is_one_head_request(s3site: S3Site) -> None:
    pk = s3site.pks[f"{BIG}/f0007.csv"]
    document = s3site.check_json("--filter", f"pk={pk}", code=0)
    assert document["strategy"] == {UDF: "exists"}
    assert document["storage_requests"] == 1
    assert document["rows"] == []


# -- the VG404 interlock on S3 ------------------------------------------------------------


def _other_bucket(s3site: S3Site, bucket: str) -> dict[str, str]:
    return {**s3site.env, **s3_environment(s3site.endpoint, bucket)}


def test_fix_refuses_when_the_bucket_holds_nothing_or_is_missing(
    s3site: S3Site, tmp_path: Path
) -> None:
    """A wrong bucket looks like "every file is gone": VG404, nothing changed or logged."""
    import boto3

    boto3.client(
        "s3",
        endpoint_url=s3site.endpoint,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        region_name="us-east-1",
    ).create_bucket(Bucket="volguard-empty")
    log = tmp_path / "audit.jsonl"
    pk = s3site.pks["user_data/user_few/a.csv"]  # present in the real bucket
    fix = ["check_missing_files", "--fix", "--filter", f"pk={pk}", "--older-than", "0"]
    fix += ["--max-missing", "100%", "--audit-log", str(log)]

    proc = _manage(_other_bucket(s3site, "volguard-empty"), *fix)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "VG404" in proc.stderr
    assert "the bucket 'volguard-empty' holds no objects under 'media/'" in proc.stderr

    proc = _manage(_other_bucket(s3site, "volguard-nonexistent"), *fix)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "cannot list the bucket 'volguard-nonexistent'" in proc.stderr
    assert "NoSuchBucket" in proc.stderr
    assert proc.stderr.count("\n") == 1, proc.stderr
    assert not log.exists()
    # The row is untouched: the real bucket's audit still finds its file.
    assert s3site.check_json("--filter", f"pk={pk}", code=0)["rows"] == []
