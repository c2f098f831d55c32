"""`volguard.django.storage.FallbackStorage` during a cutover, on the example app.

The example's settings with ``MIGRATE_MEDIA_BUCKET`` and ``MEDIA_FALLBACK=1`` make the default
storage a FallbackStorage over the bucket (primary: S3 through django-storages, behind the
strict HTTPS proxy of `s3_server`) and the volume (fallback: MEDIA_ROOT). The app's own code
runs in a ``manage.py shell`` subprocess, as a Machine that has switched would run it.
"""

from __future__ import annotations

import json

import test_migrate_media as shared
from test_migrate_media import UDF, Site

# The S3 server, the template database and the per-test site are test_migrate_media's.
proxy, template_db, site = shared.proxy, shared.template_db, shared.site

APP_CODE = """\
import json
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage, storages
from apps.services.models import UserDataFile

out = {}
row = UserDataFile.objects.get(file="v/only-on-volume.csv")
with row.file.open("rb") as f:
    out["volume_read"] = f.read().decode()
out["volume_exists"] = default_storage.exists(row.file.name)
out["volume_size"] = row.file.size
out["volume_url"] = row.file.url

both = UserDataFile.objects.get(file="v/on-both.csv")
with both.file.open("rb") as f:
    out["both_read"] = f.read().decode()
out["both_url"] = both.file.url

new = UserDataFile.objects.create(owner_id=1, file=ContentFile(b"uploaded after", name="new.csv"))
out["new_name"] = new.file.name
out["new_on_bucket"] = storages["bucket"].exists(new.file.name)
out["new_on_volume"] = storages["volume"].exists(new.file.name)

# A new upload never shadows a file not yet copied: the name is free on neither storage.
out["clash_name"] = default_storage.save("v/only-on-volume.csv", ContentFile(b"other"))

default_storage.delete("v/on-both.csv")
out["deleted_from_bucket"] = not storages["bucket"].exists("v/on-both.csv")
out["kept_on_volume"] = storages["volume"].exists("v/on-both.csv")
out["missing_exists"] = default_storage.exists("v/nowhere.csv")
print("VG_OUT=" + json.dumps(out))
"""


def test_a_mixed_fleet_reads_either_storage_and_writes_to_the_object_store(site: Site) -> None:
    site.seed({"v/only-on-volume.csv": b"from the volume", "v/on-both.csv": b"volume copy"})
    site.s3().put_object(Bucket=site.bucket, Key=site.key("v/on-both.csv"), Body=b"bucket copy")

    proc = site.manage("shell", "-c", APP_CODE, MEDIA_FALLBACK="1")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    line = next(x for x in proc.stdout.splitlines() if x.startswith("VG_OUT="))
    out = json.loads(line.removeprefix("VG_OUT="))

    # A row whose file is only on the volume is served from the fallback, URL included.
    assert out["volume_read"] == "from the volume"
    assert out["volume_exists"] is True
    assert out["volume_size"] == len(b"from the volume")
    assert out["volume_url"] == "/media/v/only-on-volume.csv"
    # Where both have it, the primary wins.
    assert out["both_read"] == "bucket copy"
    assert out["both_url"].startswith(f"{site.proxy.url}/{site.bucket}/media/v/on-both.csv?")
    # A new upload goes to the primary only.
    assert out["new_on_bucket"] is True
    assert out["new_on_volume"] is False
    assert site.object(out["new_name"])["body"] == b"uploaded after"
    assert not (site.media / out["new_name"]).exists()
    assert out["clash_name"] != "v/only-on-volume.csv"
    assert out["clash_name"].startswith("v/only-on-volume_")
    # delete() reaches the primary only: volguard never deletes from the volume.
    assert out["deleted_from_bucket"] is True
    assert out["kept_on_volume"] is True
    assert out["missing_exists"] is False


def test_migrating_under_the_fallback_then_every_row_reads_from_the_object_store(
    site: Site,
) -> None:
    files = {f"m/{i}.txt": f"file {i}".encode() for i in range(5)}
    site.seed(files)
    document = site.migrate("--apply", "--from", "volume", MEDIA_FALLBACK="1")
    assert document["exit_code"] == 0
    assert document["fields"] == [{"field": UDF, "rows": len(files)}]
    assert document["files"]["copied"] == len(files)
    for name, data in files.items():
        assert site.object(name)["body"] == data
