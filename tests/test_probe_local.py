"""Real runs of the probe program on this machine, through the `local` transport.

The probe runs as root on a Machine, and so do these tests (CI is root): they build a
MEDIA_ROOT in a fresh directory under /tmp, run the probe (directly and through
check_machines), and look at what it did to the filesystem. Elsewhere they skip.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import django
import pytest

if os.geteuid() != 0 and not os.environ.get("CI"):
    pytest.skip(
        "the probe runs as root on a Machine: these tests need root (they run in CI)",
        allow_module_level=True,
    )

from volguard.findings import Finding
from volguard.fly.models import Machine
from volguard.flytoml import parse_fly_toml
from volguard.remote.layer import check_machines
from volguard.remote.probe import MachineFacts, exit_status, parse_facts, probe_script
from volguard.remote.transports import Transport, TransportOptions
from volguard.rules.machine import MachineContext, Observation, run_machine_rules

PREFIX = ".volguard-probe-"
NOBODY = pwd.getpwnam("nobody")
WEB = Machine(id="web1", state="started", region="syd", group="app")
WORKER = Machine(id="work1", state="started", region="syd", group="worker")


# -- fixtures and helpers ----------------------------------------------------------------


@pytest.fixture
def base() -> Iterator[Path]:
    """A fresh directory under /tmp that `nobody` can traverse (pytest's tmp_path is 0700)."""
    path = Path(tempfile.mkdtemp(prefix="volguard-probe-test-", dir="/tmp"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def media(base: Path) -> Path:
    """MEDIA_ROOT owned by `nobody`, the app user of these tests."""
    path = base / "media"
    path.mkdir()
    os.chown(path, NOBODY.pw_uid, NOBODY.pw_gid)
    path.chmod(0o755)
    return path


def run_probe(machine: Machine = WEB, **arguments: Any) -> dict[str, Any]:
    """Run the probe once over the local transport; its raw JSON answer."""
    args = {
        "run_id": uuid.uuid4().hex[:12],
        "machine": machine.id,
        "group": machine.group,
        "ttl": 2,
        **arguments,
    }
    with Transport(TransportOptions(kind="local")) as transport:
        done = transport.run(machine, probe_script(args))
    assert exit_status(done.stdout) == 0, done.stderr
    return parse_facts(done.stdout)


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.startswith(PREFIX))


def on_root_filesystem(path: Path) -> bool:
    return os.stat(path).st_dev == os.stat("/").st_dev


def config_for(destination: Path):
    text = f"""\
app = "probe-local"
primary_region = "syd"

[processes]
  app = "gunicorn config.wsgi:application"
  worker = "celery -A config worker"

[[mounts]]
  source = "data"
  destination = "{destination}"
  processes = ["app", "worker"]
"""
    config, problems = parse_fly_toml(text)
    assert config is not None, problems
    return config


def check_local(base: Path, media: Path, **kwargs: Any):
    return check_machines(
        config_for(base),
        [WEB, WORKER],
        TransportOptions(kind="local"),
        MachineContext(app_user="nobody"),
        media_root=str(media),
        ttl=2,
        **kwargs,
    )


def ids_on(findings: list[Finding], machine: str) -> set[str]:
    return {f.id for f in findings if f.location.machine == machine}


# -- the write test ----------------------------------------------------------------------


def test_write_test_passes_as_the_app_user(base: Path, media: Path) -> None:
    data = run_probe(destination=str(base), media_root=str(media), app_user="nobody")
    assert data["errors"] == []
    assert data["write_test"] == {"ok": True, "user": "nobody", "error": None}
    assert data["media_root"] == str(media)
    assert data["media_root_source"] == "configuration"
    assert data["media_root_owner"] == "nobody"
    assert data["media_root_mode"] == "0755"
    assert leftovers(media) == []


def test_write_test_fails_when_only_root_can_write(base: Path, media: Path) -> None:
    os.chown(media, 0, 0)
    media.chmod(0o755)
    data = run_probe(destination=str(base), media_root=str(media), app_user="nobody")
    test = data["write_test"]
    assert test["ok"] is False
    assert test["user"] == "nobody"
    assert "Permission" in test["error"]
    facts = MachineFacts.from_probe(data)
    found = run_machine_rules([Observation(WEB, str(base), facts)], MachineContext())
    assert "VG304" in {f.id for f in found}
    assert leftovers(media) == []


def test_check_machines_with_a_writable_media_root(base: Path, media: Path) -> None:
    result = check_local(base, media)
    assert result.checked == ["web1", "work1"]
    for machine in ("web1", "work1"):
        found = ids_on(result.findings, machine)
        assert "VG300" not in found
        assert "VG304" not in found
        assert "VG307" not in found
        assert "VG303" not in found
        # /tmp is a directory on the root filesystem here, not a volume
        assert ("VG301" in found) == on_root_filesystem(base)
    # both "Machines" are this host: the web probe is visible to the worker
    assert "VG306" not in {f.id for f in result.findings}
    # two sessions each: the writer (probe, cleanup), the other group's Machine (probe, look)
    assert result.sessions == {"web1": 2, "work1": 2}
    assert leftovers(media) == []


def test_check_machines_with_a_root_owned_media_root(base: Path, media: Path) -> None:
    os.chown(media, 0, 0)
    media.chmod(0o755)
    result = check_local(base, media)
    assert result.checked == ["web1", "work1"]
    for machine in ("web1", "work1"):
        found = ids_on(result.findings, machine)
        assert "VG304" in found
        assert "VG307" in found
    vg304 = [f for f in result.findings if f.id == "VG304"]
    assert all(f.evidence["user"] == "nobody" for f in vg304)
    assert leftovers(media) == []


def test_check_machines_with_a_missing_media_root(base: Path) -> None:
    # MEDIA_ROOT that does not exist: facts still come back, nothing is created there
    missing = base / "no-such-media"
    result = check_local(base, missing)
    assert result.checked == ["web1", "work1"]
    assert "VG300" not in {f.id for f in result.findings}
    assert {"VG304"} <= ids_on(result.findings, "web1")
    assert not missing.exists()


# -- probe files: never follow a symlink, never outlive their ttl ------------------------


def test_a_planted_symlink_named_like_a_probe_is_not_followed(base: Path, media: Path) -> None:
    outside = base / "precious.txt"
    outside.write_text("user data\n")
    os.chown(outside, NOBODY.pw_uid, NOBODY.pw_gid)  # writable by the app user, if followed
    run_id = "plantedrun01"
    planted = media / f"{PREFIX}{run_id}-v-{WEB.id}"  # the name the visibility probe will use
    planted.symlink_to(outside)

    data = run_probe(
        destination=str(base),
        media_root=str(media),
        app_user="nobody",
        run_id=run_id,
        write_visibility_probe=True,
    )
    assert data.get("visibility_probe") is None
    assert any("visibility probe" in e for e in data["errors"])
    assert data["write_test"]["ok"] is True

    result = check_local(base, media, run_id=run_id)
    assert result.checked == ["web1", "work1"]

    time.sleep(3)  # past the ttl: a watchdog, had one started, would have acted by now
    assert outside.read_text() == "user data\n"
    assert planted.is_symlink()
    assert os.readlink(planted) == str(outside)
    assert leftovers(media) == [planted.name]


def test_the_visibility_probe_removes_itself_after_its_ttl(base: Path, media: Path) -> None:
    ttl = 2
    run_id = uuid.uuid4().hex[:12]
    started = time.monotonic()
    data = run_probe(
        destination=str(base),
        media_root=str(media),
        app_user="nobody",
        run_id=run_id,
        ttl=ttl,
        write_visibility_probe=True,
    )
    name = data["visibility_probe"]
    assert name == f"{PREFIX}{run_id}-v-{WEB.id}"
    probe = media / name
    # the run returned at once (the watchdog is detached) and left the probe for the workers
    assert probe.exists(), "the probe was gone before anyone could look for it"
    assert time.monotonic() - started < ttl
    assert probe.stat().st_uid == NOBODY.pw_uid  # written by the app user, not root
    assert probe.read_text() == run_id
    # no cleanup step runs: the watchdog alone must remove it
    deadline = started + ttl + 3
    while probe.exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not probe.exists()
    assert leftovers(media) == []


def test_the_watchdog_leaves_a_user_file_alone(base: Path, media: Path) -> None:
    data = run_probe(
        destination=str(base),
        media_root=str(media),
        app_user="nobody",
        ttl=2,
        write_visibility_probe=True,
    )
    probe = media / data["visibility_probe"]
    probe.unlink()  # cleaned up; then someone else's file takes the name
    probe.write_text("not volguard's\n")
    time.sleep(3.5)
    assert probe.read_text() == "not volguard's\n"


def test_cleanup_removes_the_probe_and_nothing_else(base: Path, media: Path) -> None:
    data = run_probe(
        destination=str(base),
        media_root=str(media),
        app_user="nobody",
        ttl=10,
        write_visibility_probe=True,
    )
    name = data["visibility_probe"]
    (media / "upload.jpg").write_text("jpeg")
    (base / "precious.txt").write_text("user data\n")
    cleaned = run_probe(
        destination=str(base),
        media_root=str(media),
        cleanup_only=True,
        remove=[name, "upload.jpg", "../precious.txt"],
    )
    assert cleaned["errors"] == []
    assert not (media / name).exists()
    assert (media / "upload.jpg").read_text() == "jpeg"
    assert (base / "precious.txt").read_text() == "user data\n"


def test_a_worker_sees_the_probe_and_says_so(base: Path, media: Path) -> None:
    data = run_probe(
        destination=str(base),
        media_root=str(media),
        app_user="nobody",
        ttl=10,
        write_visibility_probe=True,
    )
    name = data["visibility_probe"]
    try:
        seen = run_probe(
            WORKER,
            destination=str(base),
            media_root=str(media),
            app_user="nobody",
            look_for=[name, f"{PREFIX}never-written"],
        )
        assert seen["visible"] == {name: True, f"{PREFIX}never-written": False}
    finally:
        (media / name).unlink(missing_ok=True)


# -- the filesystem facts ----------------------------------------------------------------


def test_a_directory_on_the_root_filesystem_is_not_separate() -> None:
    data = run_probe(destination="/etc")
    assert data["destination_exists"] is True
    assert data["destination_is_mountpoint"] is False
    assert data["destination_device"] == data["root_device"]
    assert not MachineFacts.from_probe(data).separate_filesystem


def test_proc_is_a_separate_filesystem() -> None:
    data = run_probe(destination="/proc")
    assert data["destination_is_mountpoint"] is True
    assert data["mount"]["mount_point"] == "/proc"
    assert data["mount"]["fstype"] == "proc"
    assert MachineFacts.from_probe(data).separate_filesystem


def test_a_missing_destination(base: Path) -> None:
    data = run_probe(destination=str(base / "data"))
    facts = MachineFacts.from_probe(data)
    assert facts.destination_exists is False
    assert not facts.separate_filesystem
    found = run_machine_rules([Observation(WEB, str(base / "data"), facts)], MachineContext())
    vg301 = [f for f in found if f.id == "VG301"]
    assert len(vg301) == 1
    assert "does not exist" in vg301[0].message


def test_arguments_survive_the_shell(base: Path) -> None:
    odd = base / 'it\'s $(touch pwned) `id` "q" \\ end'
    odd.mkdir()
    data = run_probe(destination=str(odd))
    assert data["destination"] == str(odd)
    assert data["destination_exists"] is True
    assert not (base / "pwned").exists()
    assert not Path("pwned").exists()


# -- the app's processes -----------------------------------------------------------------


@contextlib.contextmanager
def running_as_nobody(cwd: Path, media_root: str) -> Iterator[subprocess.Popen[bytes]]:
    """`sleep 30` as nobody, with the environment of a Fly app process."""
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "MEDIA_ROOT": media_root,
        "FLY_PROCESS_GROUP": "app",
    }
    proc = subprocess.Popen(
        ["setpriv", "--reuid", "nobody", "--regid", "nogroup", "--clear-groups", "sleep", "30"],
        env=env,
        cwd=cwd,
    )
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:  # until setpriv has become `sleep`
            try:
                if Path(f"/proc/{proc.pid}/cmdline").read_bytes().startswith(b"sleep"):
                    break
            except OSError:
                pass
            time.sleep(0.05)
        else:
            pytest.fail("the app process did not start")
        yield proc
    finally:
        proc.kill()
        proc.wait()


@pytest.fixture
def app_process(base: Path, media: Path) -> Iterator[subprocess.Popen[bytes]]:
    with running_as_nobody(base, str(media)) as proc:
        yield proc


def test_the_app_process_is_found_by_its_user(
    base: Path, media: Path, app_process: subprocess.Popen[bytes]
) -> None:
    data = run_probe(destination=str(base), app_user="nobody")
    mine = [p for p in data["processes"] if p["pid"] == app_process.pid]
    assert len(mine) == 1, data["processes"]
    assert mine[0]["user"] == "nobody"
    assert mine[0]["cwd"] == str(base)
    assert mine[0]["group"] == "app"
    assert mine[0]["media_root"] == str(media)
    assert "sleep 30" in mine[0]["command"]
    # MEDIA_ROOT as the running app sees it, not from configuration
    assert data["media_root"] == str(media)
    assert data["media_root_source"] == "process environment"
    assert data["write_test"]["ok"] is True
    assert data["write_test"]["user"] == "nobody"
    assert leftovers(media) == []


def test_a_relative_media_root_is_resolved_against_the_apps_cwd(base: Path, media: Path) -> None:
    with running_as_nobody(base, "media") as proc:
        data = run_probe(destination=str(base), app_user="nobody")
    mine = [p for p in data["processes"] if p["pid"] == proc.pid]
    assert len(mine) == 1
    assert mine[0]["media_root"] == str(media)


def test_the_app_process_is_found_without_an_app_user(
    base: Path, media: Path, app_process: subprocess.Popen[bytes]
) -> None:
    data = run_probe(destination=str(base))
    mine = [p for p in data["processes"] if p["pid"] == app_process.pid]
    assert len(mine) == 1
    assert mine[0]["user"] == "nobody"
    assert all(p["uid"] != 0 for p in data["processes"])


def test_another_groups_process_is_not_this_groups_app(
    base: Path, media: Path, app_process: subprocess.Popen[bytes]
) -> None:
    data = run_probe(WORKER, destination=str(base), app_user="nobody")
    assert app_process.pid not in [p["pid"] for p in data["processes"]]


def test_probe_output_is_one_json_object(base: Path) -> None:
    with Transport(TransportOptions(kind="local")) as transport:
        done = transport.run(
            WEB, probe_script({"destination": str(base), "run_id": "x", "machine": WEB.id})
        )
    body = done.stdout.split("__VOLGUARD_FACTS_BEGIN__", 1)[1].split("__VOLGUARD_FACTS_END__")[0]
    assert isinstance(json.loads(body), dict)
    assert exit_status(done.stdout) == 0


# -- MEDIA_ROOT from Django itself (manage_py) ---------------------------------------------


#: The venv's python lives under /root (0700), which `nobody` cannot enter; the system
#: python3 of the same version can import Django from the venv's site-packages.
SITE_PACKAGES = str(Path(django.__file__).resolve().parent.parent)


@pytest.mark.skipif(not Path("/usr/bin/python3").exists(), reason="no system python3")
def test_media_root_is_asked_of_django_when_manage_py_is_configured(base: Path) -> None:
    """settings.py computes MEDIA_ROOT (no env var): the probe asks Django, as the app user."""
    project = base / "project"
    project.mkdir()
    (project / "mysite_settings.py").write_text(
        "from pathlib import Path\n"
        "SECRET_KEY = 'x'\n"
        "INSTALLED_APPS = []\n"
        "MEDIA_ROOT = Path(__file__).resolve().parent / 'media-from-settings'\n"
    )
    (project / "manage.py").write_text(
        "import os, sys\n"
        "sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))\n"
        f"sys.path.append({SITE_PACKAGES!r})  # Django, for the system python3 the app user runs\n"
        "os.environ.setdefault('DJANGO_SETTINGS_MODULE', 'mysite_settings')\n"
        "from django.core.management import execute_from_command_line\n"
        "execute_from_command_line(sys.argv)\n"
    )
    for path in (project, *project.iterdir()):
        path.chmod(0o755)
    with running_as_nobody(project, "/somewhere/else"):
        data = run_probe(
            destination=str(base),
            app_user="nobody",
            manage_py=f"/usr/bin/python3 {project / 'manage.py'}",
        )
    assert data["media_root"] == str(project / "media-from-settings"), data["errors"]
    assert data["media_root_source"] == "Django settings (manage.py)"


def test_a_failing_manage_py_falls_back_to_the_environment(base: Path, media: Path) -> None:
    with running_as_nobody(base, str(media)):
        data = run_probe(destination=str(base), app_user="nobody", manage_py="/bin/false")
    assert data["media_root"] == str(media)
    assert data["media_root_source"] == "process environment"
    assert any(e.startswith("manage.py:") for e in data["errors"])


# -- directories made as root for the app user (manage mode's make_dirs) --------------------


def _manage_with_dirs(base: Path, marker: Path, *dirs: Path) -> dict[str, Any]:
    """manage mode making ``dirs`` first, then running ``touch marker`` as the app user."""
    return run_probe(
        manage={
            "app_user": "nobody",
            "manage_py": "/usr/bin/touch",
            "argv": [str(marker)],
            "make_dirs": [str(d) for d in dirs],
        }
    )


def test_missing_directories_are_made_for_the_app_user_owner_only(
    base: Path, media: Path, app_process: subprocess.Popen[bytes]
) -> None:
    state = base / ".volguard"
    data = _manage_with_dirs(base, media / "ran", state, state / "exports")
    assert data["errors"] == []
    for made in (state, state / "exports"):
        st = made.lstat()
        assert (st.st_uid, oct(st.st_mode & 0o777)) == (NOBODY.pw_uid, "0o700")
    assert (media / "ran").exists()


@pytest.mark.parametrize("where", ["last", "parent"])
def test_a_symlink_on_the_way_is_refused_and_stops_the_step(
    base: Path, media: Path, app_process: subprocess.Popen[bytes], where: str
) -> None:
    outside = base / "outside"
    outside.mkdir()
    state = base / ".volguard"
    state.symlink_to(outside)
    target = state if where == "last" else state / "exports"
    data = _manage_with_dirs(base, media / "ran", target)
    assert any("refusing to use" in e and str(state) in e for e in data["errors"]), data
    assert "manage" not in data  # the command never ran
    assert not (media / "ran").exists()
    assert list(outside.iterdir()) == []  # nothing made through the link
