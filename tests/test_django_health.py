"""volguard.django.health: the media health check, on real filesystems.

Django is configured in-process as in the other Django-side tests (conftest); each test
narrows the settings it needs with ``override_settings`` (this module as ROOT_URLCONF,
MEDIA_ROOT, VOLGUARD_EXPECT_MOUNT). Nothing of ``os`` is mocked: a read-only or a full
filesystem is a real tmpfs mounted for the test, which needs root (tests that need one
skip without it, and unmount in a ``finally``). The write probe's name is random, so the
one test that plants a symlink at that name fixes the random part, not the filesystem.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

django = pytest.importorskip("django")

from conftest import EXAMPLE, configure_django_in_process, manage_example, require  # noqa: E402

configure_django_in_process()

from django.test import Client, override_settings  # noqa: E402
from django.urls import include, path  # noqa: E402

from volguard.django import filesystem, health  # noqa: E402
from volguard.django.health import PROBE_PREFIX, check_media, media_health  # noqa: E402

try:
    from health_check.views import HealthCheckView
except ImportError:  # the tests that need it skip (fail under CI) through require()
    HealthCheckView = None

urlpatterns = [
    path("healthz/", include("volguard.django.urls")),
    path("healthz/other", media_health, {"storage": "other"}),
]
if HealthCheckView is not None:
    urlpatterns.append(
        path(
            "ht/",
            HealthCheckView.as_view(checks=["volguard.django.health.MediaVolumeHealthCheck"]),
        )
    )

CHECKS = ["exists", "mount", "write", "space"]
WEB = {
    "ROOT_URLCONF": __name__,
    "ALLOWED_HOSTS": ["testserver"],
    "MIDDLEWARE": [
        "django.middleware.security.SecurityMiddleware",
        "django.middleware.common.CommonMiddleware",
        "django.middleware.csrf.CsrfViewMiddleware",
    ],
}


# -- helpers ------------------------------------------------------------------------------


def get(
    media_root: Path | str, expect: Any = False, *, method: str = "get", url: str = "/healthz/media"
) -> Any:
    """Request the view with MEDIA_ROOT and VOLGUARD_EXPECT_MOUNT set; CSRF enforced."""
    client = Client(enforce_csrf_checks=True)
    with override_settings(**WEB, MEDIA_ROOT=str(media_root), VOLGUARD_EXPECT_MOUNT=expect):
        return getattr(client, method)(url)


def body(response: Any) -> dict[str, Any]:
    assert response["Content-Type"] == "application/json"
    return json.loads(response.content)


def listing(directory: Path) -> list[str]:
    return sorted(os.listdir(directory))


def assert_no_probe_left(*directories: Path) -> None:
    for directory in directories:
        if directory.is_dir():
            assert not [n for n in os.listdir(directory) if n.startswith(PROBE_PREFIX)]


def need_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")


@contextlib.contextmanager
def tmpfs(directory: Path, options: str = "size=1m") -> Iterator[Path]:
    """A tmpfs mounted at ``directory`` (created) for the block; root only."""
    need_root()
    directory.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(directory)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield directory
    finally:
        subprocess.run(["umount", str(directory)], check=True)


def fill(directory: Path, leave_bytes: int) -> Path:
    """Fill the filesystem of ``directory`` with one file, leaving about ``leave_bytes``."""
    vfs = os.statvfs(directory)
    size = max(vfs.f_bavail * vfs.f_frsize - leave_bytes, 0)
    filler = directory / "filler.bin"
    with open(filler, "wb") as fh:
        with contextlib.suppress(OSError):  # ENOSPC: as full as it gets
            fh.write(b"\0" * size)
        with contextlib.suppress(OSError):
            fh.flush()
    return filler


@pytest.fixture
def media(tmp_path: Path) -> Path:
    directory = tmp_path / "media"
    directory.mkdir()
    (directory / "upload.txt").write_text("an upload")
    return directory


# -- the view: status codes and the JSON shape --------------------------------------------


def test_a_writable_directory_without_expectation_is_ok(media: Path) -> None:
    before = listing(media)
    response = get(media, expect=False)

    assert response.status_code == 200
    data = body(response)
    assert set(data) == {"status", "media_root", "checks"}
    assert data["status"] == "ok"
    assert data["media_root"] == str(media)
    assert list(data["checks"]) == CHECKS
    for check in data["checks"].values():
        assert check["status"] == "ok"
        assert isinstance(check["ms"], float)
        assert check["ms"] >= 0
    assert data["checks"]["exists"]["path"] == str(media)
    assert data["checks"]["mount"]["expected"] is False
    assert 0 < data["checks"]["space"]["free_percent"] <= 100
    assert listing(media) == before  # the probe was removed


def test_the_response_is_never_cached(media: Path) -> None:
    response = get(media)
    cache_control = response["Cache-Control"]
    for directive in ("no-cache", "no-store", "must-revalidate", "max-age=0"):
        assert directive in cache_control


def test_a_missing_directory_is_503(tmp_path: Path) -> None:
    response = get(tmp_path / "media")

    assert response.status_code == 503
    data = body(response)
    assert data["status"] == "fail"
    exists = data["checks"]["exists"]
    assert exists["status"] == "fail"
    assert exists["error"] == f"{tmp_path / 'media'} does not exist"
    assert data["checks"]["write"]["status"] == "skipped"
    assert data["checks"]["space"]["status"] == "skipped"
    assert not (tmp_path / "media").exists()  # a health check never creates the root


def test_a_file_where_the_directory_should_be_is_503(tmp_path: Path) -> None:
    (tmp_path / "media").write_text("not a directory")
    data = body(get(tmp_path / "media"))
    assert data["status"] == "fail"
    assert data["checks"]["exists"]["error"].endswith("is not a directory")


def test_an_empty_media_root_is_503(tmp_path: Path) -> None:
    response = get("")
    assert response.status_code == 503
    assert "MEDIA_ROOT is empty" in body(response)["checks"]["exists"]["error"]


def test_head_answers_like_get_without_a_body(media: Path, tmp_path: Path) -> None:
    ok = get(media, method="head")
    assert ok.status_code == 200
    assert ok.content == b""
    assert "no-store" in ok["Cache-Control"]
    assert get(tmp_path / "missing", method="head").status_code == 503
    assert_no_probe_left(media)


@pytest.mark.parametrize("method", ["post", "put", "delete"])
def test_other_methods_are_405_not_a_csrf_403(media: Path, method: str) -> None:
    before = listing(media)
    response = get(media, method=method)
    assert response.status_code == 405
    assert set(response["Allow"].replace(" ", "").split(",")) == {"GET", "HEAD"}
    assert listing(media) == before


def test_a_bad_setting_is_a_503_not_an_exception(media: Path) -> None:
    response = get(media, expect=3)
    assert response.status_code == 503
    data = body(response)
    assert data["status"] == "fail"
    assert data["checks"]["config"]["status"] == "fail"
    assert "VOLGUARD_EXPECT_MOUNT must be" in data["checks"]["config"]["error"]
    assert listing(media) == ["upload.txt"]


def test_error_messages_are_one_line(tmp_path: Path) -> None:
    odd = tmp_path / "new\nline"
    data = body(get(odd))
    error = data["checks"]["exists"]["error"]
    assert "\n" not in error
    assert error.endswith("does not exist")


def test_a_storage_alias_checks_that_storages_directory(tmp_path: Path, media: Path) -> None:
    other = tmp_path / "other"
    other.mkdir()
    storages = {
        "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
        "other": {
            "BACKEND": "django.core.files.storage.FileSystemStorage",
            "OPTIONS": {"location": str(other)},
        },
    }
    with override_settings(STORAGES=storages):
        response = get(media, url="/healthz/other")
    assert response.status_code == 200
    assert body(response)["media_root"] == str(other)
    assert listing(other) == []

    storages["other"] = {"BACKEND": "django.core.files.storage.InMemoryStorage"}
    with override_settings(STORAGES=storages):
        response = get(media, url="/healthz/other")
    assert response.status_code == 503
    error = body(response)["checks"]["config"]["error"]
    assert error == "storage 'other' (InMemoryStorage) has no local directory to check"


def test_an_unknown_storage_alias_is_a_503(media: Path) -> None:
    with override_settings(STORAGES={"default": {}}):
        response = get(media, url="/healthz/other")
    assert response.status_code == 503
    config = body(response)["checks"]["config"]
    assert config["status"] == "fail"
    assert "'other'" in config["error"]


# -- not writable, full, low on space (real filesystems, root) ----------------------------


def test_a_read_only_filesystem_is_503(tmp_path: Path) -> None:
    with tmpfs(tmp_path / "ro", "ro,size=1m") as ro:
        response = get(ro)
        assert response.status_code == 503
        data = body(response)
        assert data["checks"]["exists"]["status"] == "ok"
        write = data["checks"]["write"]
        assert write["status"] == "fail"
        assert write["error"] == f"cannot write in {ro}: [Errno 30] Read-only file system"
        assert listing(ro) == []


def test_a_full_filesystem_is_503_and_the_probe_is_removed(tmp_path: Path) -> None:
    # Creating the probe succeeds (an inode), writing it fails (no page): the probe that
    # was created must still be unlinked.
    with tmpfs(tmp_path / "full", "size=256k") as full:
        fill(full, leave_bytes=0)
        before = listing(full)
        data = body(get(full))
        assert data["status"] == "fail"
        assert data["checks"]["write"]["error"].endswith("[Errno 28] No space left on device")
        assert data["checks"]["space"]["status"] == "warn"
        assert listing(full) == before == ["filler.bin"]


def test_low_space_is_a_warning_not_a_failure(tmp_path: Path) -> None:
    with tmpfs(tmp_path / "low", "size=1m") as low:
        fill(low, leave_bytes=8 * 4096)
        response = get(low)
        assert response.status_code == 200
        data = body(response)
        assert data["status"] == "ok"
        space = data["checks"]["space"]
        assert space["status"] == "warn"
        assert space["free_percent"] < 5
        assert "is nearly full" in space["message"]
        assert data["checks"]["write"]["status"] == "ok"
        assert listing(low) == ["filler.bin"]


NOBODY = 65534


def check_as(uid: int, directory: Path) -> dict[str, Any]:
    """`check_media` run in a forked child that has become ``uid`` (as the app user is)."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never return into pytest
        status = 1
        try:
            os.close(read)
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)
            os.write(write, json.dumps(check_media(str(directory), False).as_dict()).encode())
            status = 0
        finally:
            os._exit(status)
    os.close(write)
    with os.fdopen(read, "rb") as pipe:
        data = pipe.read()
    _, status = os.waitpid(pid, 0)
    assert status == 0
    return json.loads(data)


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory another user can reach (tmp_path is root's own, mode 0700)."""
    directory = Path(tempfile.mkdtemp(prefix="volguard-health-"))
    directory.chmod(0o755)
    try:
        yield directory
    finally:
        shutil.rmtree(directory)


def test_a_directory_the_app_user_cannot_write_is_503(shared_dir: Path) -> None:
    # Root bypasses permission bits, so the check runs as an unprivileged user, as an app
    # does: a root-owned 0755 MEDIA_ROOT is the classic "volume mounted, owned by root".
    need_root()
    media = shared_dir / "media"
    media.mkdir(mode=0o755)
    data = check_as(NOBODY, media)
    assert data["status"] == "fail"
    error = data["checks"]["write"]["error"]
    assert error == f"cannot write in {media}: [Errno 13] Permission denied"
    assert listing(media) == []

    # Write and search permission is all the probe needs: no read permission on the directory.
    os.chown(media, NOBODY, NOBODY)
    media.chmod(0o300)
    data = check_as(NOBODY, media)
    assert data["status"] == "ok", data
    assert listing(media) == []


# -- the mount expectation ----------------------------------------------------------------


def test_expectation_true_on_the_root_filesystem_is_503(media: Path) -> None:
    if filesystem.placement(str(media)).separate:
        pytest.skip("the temporary directory is not on the root filesystem here")
    response = get(media, expect=True)
    assert response.status_code == 503
    mount = body(response)["checks"]["mount"]
    assert mount["status"] == "fail"
    assert mount["error"] == (
        f"{media} is on the root filesystem, not on a volume (volume not mounted?)"
    )
    assert mount["separate_filesystem"] is False
    assert_no_probe_left(media)


def test_expectation_true_on_a_mounted_filesystem_is_200(tmp_path: Path) -> None:
    with tmpfs(tmp_path / "volume") as volume:
        (volume / "media").mkdir()
        response = get(volume / "media", expect=True)
        assert response.status_code == 200
        mount = body(response)["checks"]["mount"]
        assert mount == {
            "status": "ok",
            "ms": mount["ms"],
            "expected": True,
            "mount_point": str(volume),
            "separate_filesystem": True,
        }
        assert listing(volume / "media") == []


def test_fly_sets_the_expectation_by_default(media: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if filesystem.placement(str(media)).separate:
        pytest.skip("the temporary directory is not on the root filesystem here")
    monkeypatch.setenv("FLY_MACHINE_ID", "148e21ea4d3089")
    assert get(media, expect=None).status_code == 503
    monkeypatch.delenv("FLY_MACHINE_ID")
    assert get(media, expect=None).status_code == 200


def test_an_expected_mount_point_that_is_not_mounted_is_503(tmp_path: Path, media: Path) -> None:
    response = get(media, expect=str(tmp_path))
    assert response.status_code == 503
    assert body(response)["checks"]["mount"]["error"] == (
        f"{tmp_path} is not a mount point (volume not mounted?)"
    )


def test_an_expected_mount_point_that_is_mounted_is_200(tmp_path: Path, media: Path) -> None:
    with tmpfs(tmp_path / "data") as data:
        (data / "media").mkdir()
        assert get(data / "media", expect=str(data)).status_code == 200
        outside = body(get(media, expect=str(data)))
        assert outside["checks"]["mount"]["error"] == (
            f"{media} is not under the volume's mount point {data}"
        )
        assert listing(data / "media") == []


# -- symlinks -----------------------------------------------------------------------------


def test_a_symlinked_media_root_is_resolved(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir()
    link = tmp_path / "media"
    link.symlink_to(real)

    data = body(get(link))
    assert data["status"] == "ok"
    assert data["media_root"] == str(link)
    assert data["checks"]["exists"]["path"] == str(real)
    assert link.is_symlink()
    assert listing(real) == []


def test_a_symlink_into_a_volume_is_judged_by_its_target(tmp_path: Path) -> None:
    with tmpfs(tmp_path / "volume") as volume:
        (volume / "media").mkdir()
        link = tmp_path / "media"
        link.symlink_to(volume / "media")
        data = body(get(link, expect=True))
        assert data["status"] == "ok"
        assert data["checks"]["mount"]["mount_point"] == str(volume)
        assert listing(volume / "media") == []


def test_a_dangling_symlink_is_503(tmp_path: Path) -> None:
    link = tmp_path / "media"
    link.symlink_to(tmp_path / "gone")
    data = body(get(link))
    assert data["status"] == "fail"
    assert data["checks"]["exists"]["error"] == f"{link} does not exist (a dangling symlink)"
    assert not (tmp_path / "gone").exists()


def test_a_symlink_at_the_probe_name_is_neither_followed_nor_removed(
    tmp_path: Path, media: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The name is random: fix the random part so a symlink can be planted exactly there.
    monkeypatch.setattr(health.secrets, "token_hex", lambda n: "0" * (2 * n))
    target = tmp_path / "precious.txt"
    target.write_text("keep me")
    planted = media / f"{PROBE_PREFIX}{'0' * 16}"
    planted.symlink_to(target)

    report = check_media(str(media), False)

    assert not report.ok
    assert report.checks["write"].message == f"cannot write in {media}: [Errno 17] File exists"
    assert target.read_text() == "keep me"
    assert planted.is_symlink()  # not ours: left alone
    assert sorted(os.listdir(media)) == sorted([planted.name, "upload.txt"])


# -- check_media, the function ------------------------------------------------------------


def test_check_media_returns_problems_and_timings(tmp_path: Path, media: Path) -> None:
    report = check_media(str(media), str(tmp_path))
    assert [(p.check, p.warning) for p in report.problems] == [("mount", False)]
    assert str(report.failures[0]) == f"{tmp_path} is not a mount point (volume not mounted?)"
    assert report.status == "fail"
    assert report.ms == pytest.approx(sum(r.ms for r in report.checks.values()))
    assert all(r.ms >= 0 for r in report.checks.values())

    ok = check_media(str(media), False)
    assert ok.ok
    assert ok.problems == []
    assert ok.as_dict()["status"] == "ok"


def test_check_media_leaves_nothing_behind_over_many_runs(media: Path) -> None:
    for _ in range(50):
        assert check_media(str(media), False).ok
    assert listing(media) == ["upload.txt"]


# -- django-health-check ------------------------------------------------------------------


def run_backend(**options: Any) -> Any:
    backend_class = health.MediaVolumeHealthCheck
    return asyncio.run(backend_class(**options).get_result())


def test_the_health_check_backend_passes_and_fails(tmp_path: Path, media: Path) -> None:
    require("health_check")
    from health_check.exceptions import ServiceUnavailable

    with override_settings(MEDIA_ROOT=str(media), VOLGUARD_EXPECT_MOUNT=False):
        assert run_backend().error is None
    with override_settings(MEDIA_ROOT=str(tmp_path / "gone"), VOLGUARD_EXPECT_MOUNT=False):
        result = run_backend()
    assert isinstance(result.error, ServiceUnavailable)
    assert str(result.error) == f"Unavailable: exists: {tmp_path / 'gone'} does not exist"
    assert listing(media) == ["upload.txt"]


def test_the_health_check_backend_warns_without_failing_on_low_space(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    require("health_check")
    with tmpfs(tmp_path / "low") as low:
        fill(low, leave_bytes=8 * 4096)
        with override_settings(MEDIA_ROOT=str(low), VOLGUARD_EXPECT_MOUNT=False):
            assert run_backend().error is None
    assert "is nearly full" in caplog.text


def test_the_health_check_view_runs_the_backend(tmp_path: Path, media: Path) -> None:
    require("health_check")
    ok = get(media, url="/ht/?format=json")
    assert ok.status_code == 200
    assert json.loads(ok.content) == {"MediaVolumeHealthCheck(storage=None)": "OK"}

    failing = get(media, expect=True, url="/ht/?format=json")
    if filesystem.placement(str(media)).separate:
        pytest.skip("the temporary directory is not on the root filesystem here")
    assert failing.status_code == 500
    [message] = json.loads(failing.content).values()
    assert message.startswith("Unavailable: mount: ")
    assert_no_probe_left(media)


def test_importing_the_module_does_not_need_django_health_check() -> None:
    code = (
        "import sys; sys.modules['health_check'] = None\n"
        "import volguard.django.health as h\n"
        "try:\n"
        "    h.MediaVolumeHealthCheck\n"
        "except ImportError as e:\n"
        "    print('ImportError:', e)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert done.stdout.strip() == (
        "ImportError: volguard.django.health.MediaVolumeHealthCheck needs django-health-check "
        "(pip install django-health-check)"
    )


# -- the example app ----------------------------------------------------------------------

_EXAMPLE_GET = (
    "import json; from django.test import Client\n"
    "r = Client().get('/healthz/media')\n"
    "print(json.dumps({'code': r.status_code, 'body': json.loads(r.content)}))\n"
)


def example_health(media_root: Path, **env: str) -> dict[str, Any]:
    require("celery")
    environ = {k: v for k, v in os.environ.items() if k != "FLY_MACHINE_ID"}
    environ.update(MEDIA_ROOT=str(media_root), ALLOWED_HOSTS="testserver", **env)
    done = manage_example(environ, "shell", "-c", _EXAMPLE_GET, timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_the_example_app_serves_the_health_check(media: Path) -> None:
    assert (EXAMPLE / "config" / "urls.py").is_file()
    result = example_health(media)
    assert result["code"] == 200
    assert result["body"]["media_root"] == str(media)
    assert listing(media) == ["upload.txt"]

    if not filesystem.placement(str(media)).separate:
        # On Fly (FLY_MACHINE_ID set) with the volume not mounted: the incident, caught.
        on_fly = example_health(media, FLY_MACHINE_ID="148e21ea4d3089")
        assert on_fly["code"] == 503
        assert on_fly["body"]["checks"]["mount"]["status"] == "fail"
