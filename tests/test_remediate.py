"""`volguard remediate`: the missing-file audit on a Machine, and --fix/--delete behind the gate.

Real parts only: the Machines API simulator (`SimServer`), the local fleet (`LocalFleet`:
each Machine a namespace with its own sshd, the flyctl stand-in), and the example Django
app (example/) running ON the simulated Machine, as its `app` user, against a SQLite
database in a directory only that user can write. The database is named by DATABASE_URL
in the app process's environment only: an SSH session (root) does not see it, so a run
that finds the seeded rows proves it ran with the app's environment. Rows and files are
seeded through the Machine (files under /data/media, rows with ``manage.py shell`` as
`app`), rows an hour old so that the audit's grace period does not skip them.

The fleet needs root and Linux; without it these tests skip, except under CI.
"""

from __future__ import annotations

import contextlib
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

from volguard.audit_document import Refusal, parse_max_missing
from volguard.config import Settings
from volguard.errors import RemoteCommandError, StepFailed, UsageError
from volguard.findings import Finding, Location, Severity
from volguard.fly.client import MachinesClient, Token
from volguard.fly.fleet import Fleet
from volguard.fly.models import Machine
from volguard.flytoml import read_fly_toml
from volguard.remediate import (
    STEP_FUNCTIONS,
    STEPS,
    AuditSummary,
    Outcome,
    RemediateContext,
    choose_machine,
    gate,
    remediate,
    remediation_section,
    remote_argv,
    render_text,
)
from volguard.remote.probe import ManageRun, ProbeError
from volguard.report import Report
from volguard.sim import example_app
from volguard.sim.api import SimServer
from volguard.sim.local_fleet import LocalFleet, fleet_unavailable
from volguard.sim.scenario import scenario_path

REPO = Path(__file__).resolve().parents[1]
MANAGE = REPO / "example" / "manage.py"
VOLGUARD = str(Path(sys.executable).with_name("volguard"))
MESSAGE = "File missing from storage. Please re-upload your file."

WHY = fleet_unavailable()
if WHY and os.environ.get("CI"):
    raise RuntimeError(f"CI must be able to run the local fleet, but: {WHY}")
needs_fleet = pytest.mark.skipif(WHY is not None, reason=WHY or "")


# -- the pure parts ---------------------------------------------------------------------------

DOCUMENT = {
    "total_rows": 9,
    "audited_rows": 8,
    "skipped_recent": 1,
    "problem_rows": 5,
    "per_reason": {"missing": 3, "empty": 1, "invalid_name": 1, "shared": 2},
    "fields": [{"model": "services.UserDataFile", "field": "file"}],
    "rows": [
        {"model": "m", "field": "f", "pk": 1, "name": "a.csv", "reason": "missing", "owner": 7,
         "status": "done"},
        {"model": "m", "field": "f", "pk": 2, "name": "b.csv", "reason": "missing", "owner": 7,
         "status": "failed"},
        {"model": "m", "field": "f", "pk": 3, "name": "s.csv", "reason": "missing", "owner": 8,
         "status": "done"},
        {"model": "m", "field": "f", "pk": 3, "name": "s.csv", "reason": "shared", "owner": 8},
        {"model": "m", "field": "f", "pk": 4, "name": "s.csv", "reason": "shared", "owner": 8},
        {"model": "m", "field": "f", "pk": 5, "name": "", "reason": "empty", "owner": None,
         "status": "pending"},
        {"model": "m", "field": "f", "pk": 6, "name": "../x", "reason": "invalid_name",
         "owner": 8},
    ],
}  # fmt: skip


def test_the_plan_counts_reasons_users_and_samples() -> None:
    plan = AuditSummary.from_document(DOCUMENT, samples=2)
    assert plan.problems == 5
    assert plan.per_reason["missing"] == 3
    assert plan.per_owner == {"user 7": 2, "user 8": 2, "(no owner)": 1}
    assert [s.pk for s in plan.samples["missing"]] == [1, 2]  # two per reason
    assert plan.fixable == 4  # missing and empty; never invalid names
    assert plan.deletable == 3  # not row 3: its (missing) file name is shared
    assert plan.not_failed == 3
    assert plan.actionable("fix") == 4
    assert plan.actionable("delete") == 3
    text = "\n".join(plan.lines())
    assert "Per user: user 7: 2, user 8: 2, (no owner): 1" in text
    assert "missing      ID 1: a.csv" in text
    assert "empty        ID 5: (empty)" in text
    assert json.loads(json.dumps(plan.as_dict()))["samples"]["missing"][0]["name"] == "a.csv"


def test_the_text_plan_escapes_what_the_machine_and_the_database_said() -> None:
    machine = Machine(id="148e21ea4d3089", state="started", region="syd\x1b]0;x\x07", group="app")
    run = ManageRun(returncode=0, stdout="", stderr="", user="app\u202e", cwd="/a\x1b[31m", pid=1)

    def text(name: str) -> str:
        rows = [{**DOCUMENT["rows"][0], "name": name}]
        plan = AuditSummary.from_document({**DOCUMENT, "rows": rows}, samples=2)
        return render_text(Outcome(app="shop", action=None, machine=machine, run=run, plan=plan))

    shown = text("a\x1b[2J\nb.csv")
    assert "\x1b" not in shown
    assert "\x07" not in shown
    assert "\u202e" not in shown
    # a newline in a file name makes no line of its own
    assert len(shown.splitlines()) == len(text("ab.csv").splitlines())


def _report(*findings: Finding, machine: str | None = "ran") -> Report:
    report = Report()
    report.ran("static")
    if machine == "ran":
        report.ran("machine")
    elif machine:
        report.skipped("machine", machine)
    report.extend(list(findings))
    return report


def test_the_gate_passes_only_a_clean_verify_whose_machine_layer_ran() -> None:
    vg301 = Finding("VG301", Severity.ERROR, "not mounted", location=Location(machine="m1"))
    warning = Finding("VG110", Severity.WARNING, "retention")
    waived = Finding("VG103", Severity.ERROR, "split", waived=True, waiver_reason="ok")

    assert gate(_report(warning, waived)).passed
    refused = gate(_report(vg301, warning))
    assert not refused.passed
    assert refused.finding_ids == ("VG301",)
    assert "VG301 (machine m1)" in refused.line()
    assert "never remediate a fleet whose volume is not mounted" in refused.line()
    skipped = gate(_report(machine="flyctl not found on PATH (transport fly)"))
    assert not skipped.passed
    assert "Machine layer of verify-volume did not run" in skipped.line()
    assert "flyctl not found" in skipped.line()


def test_the_web_machine_is_chosen_unless_one_is_named() -> None:
    def machine(mid: str, group: str, state: str = "started") -> Machine:
        return Machine(id=mid, state=state, region="syd", group=group)

    fleet = Fleet(
        app="a",
        machines=(
            machine("w1", "worker"),
            machine("a0", "app", "stopped"),
            machine("a1", "app"),
            machine("a2", "app"),
        ),
        volumes=(),
    )
    assert choose_machine(fleet, ("app", "worker")).id == "a1"
    assert choose_machine(fleet, ("worker",)).id == "w1"
    assert choose_machine(fleet, ("app", "worker"), "w1").id == "w1"
    with pytest.raises(UsageError, match="a0"):
        choose_machine(fleet, ("app", "worker"), "a0")  # stopped


def test_the_acting_command_line() -> None:
    assert remote_argv("fix", export="/data/.volguard/exports/r.json", audit_log="/l") == [
        "check_missing_files", "--fix", "--yes", "--json",
        "--export", "/data/.volguard/exports/r.json", "--audit-log", "/l",
    ]  # fmt: skip
    argv = remote_argv("delete", export="/e", audit_log="/l", max_missing="50%", force=True)
    assert argv[1] == "--delete"
    assert argv[-3:] == ["--max-missing", "50%", "--force"]
    argv = remote_argv("delete", export="/e", audit_log="/l", allow_delete_receivers=True)
    assert argv[-1] == "--allow-delete-receivers"
    assert "--allow-delete-receivers" not in remote_argv("delete", export="/e", audit_log="/l")
    assert parse_max_missing(" 10% ").text == "10%"
    for bad in ("10x", "150%", "1.5", "-3"):
        with pytest.raises(UsageError):
            parse_max_missing(bad)


def test_a_probe_answer_without_a_result_is_an_error() -> None:
    with pytest.raises(ProbeError, match="no app process"):
        ManageRun.from_probe({"errors": ["no app process found on this Machine"]})
    run = ManageRun.from_probe(
        {"errors": [], "manage": {"returncode": 1, "stderr": "Traceback\nCommandError: boom\n",
                                  "user": "app", "cwd": "/app", "pid": 4}}
    )  # fmt: skip
    assert run.last_error_line() == "CommandError: boom"


def test_the_fly_side_reads_the_document_without_django() -> None:
    code = (
        "import sys, volguard.remediate, volguard.audit_document; "
        "assert 'django' not in sys.modules, sorted(m for m in sys.modules if 'django' in m)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_each_step_of_the_runbook_is_one_function_in_order() -> None:
    assert tuple(STEP_FUNCTIONS) == STEPS
    assert STEPS == ("gate", "audit", "confirm", "snapshot", "remediate", "re-audit")


def test_a_refusal_is_read_from_the_document_not_from_stderr() -> None:
    refusal = Refusal(("the storage root /data/media holds no files (volume not mounted?)",))
    document = {**DOCUMENT, **refusal_document(refusal)}
    run = ManageRun(2, json.dumps(document), "warning: unrelated\n", "app", "/app", 4)
    with pytest.raises(StepFailed, match=r"VG404 remediation refused: .* holds no files") as e:
        remediation_section(run)
    assert e.value.exit_code == 2
    # stderr naming VG404 without the structured refusal is not one: volguard could not work
    run = ManageRun(2, "", "CommandError: VG404 in a project's own message\n", "app", "/", 4)
    with pytest.raises(RemoteCommandError):
        remediation_section(run)


def refusal_document(refusal: Refusal) -> dict[str, Any]:
    return {"refused": refusal.as_dict()}


@pytest.mark.parametrize(
    ("args", "mentions"),
    [
        (["--fix", "--delete"], "exclude each other"),
        (["--timeout", "abc"], "--timeout"),
        (["--samples", "-1"], "--samples"),
        (["--fix", "--max-missing", "5x"], "--max-missing"),
        (["--yes"], "--yes needs --fix or --delete"),
    ],
)
def test_bad_flags_exit_1_with_one_line(tmp_path: Path, args: list[str], mentions: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("INVOKE_", "FLY_"))}
    proc = subprocess.run(
        [VOLGUARD, "remediate", *args],
        cwd=tmp_path,
        env={**env, "HOME": str(tmp_path)},
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert mentions in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "Traceback" not in proc.stderr


# -- the simulated deployment ------------------------------------------------------------------

# Run on the Machine by `manage.py shell -c`, as the app user: two users, rows an hour old.
SEED = """\
import datetime, json
from django.contrib.auth import get_user_model
from django.utils import timezone
from apps.services.models import UserDataFile

User = get_user_model()
users = {n: User.objects.create(username=n) for n in ("alice", "bob")}
pks = {f"user:{n}": u.pk for n, u in users.items()}
for key, owner, name, status in [
    ("ok1", "alice", "user_data/ok1.csv", "done"),
    ("ok2", "bob", "user_data/ok2.csv", "done"),
    ("s1", "bob", "user_data/same.csv", "done"),
    ("s2", "bob", "user_data/same.csv", "done"),
    ("gone1", "alice", "user_data/gone-1.csv", "done"),
    ("gone2", "alice", "user_data/gone-2.csv", "pending"),
    ("gone3", "bob", "user_data/gone-3.csv", "processing"),
    ("empty", "bob", "", "pending"),
]:
    row = UserDataFile(owner=users[owner], processing_status=status)
    row.file.name = name
    row.save()
    pks[key] = row.pk
old = timezone.now() - datetime.timedelta(hours=1)
UserDataFile.objects.update(created_at=old, updated_at=old)
print("VG_PKS=" + json.dumps(pks))
"""
DUMP = """\
import json
from apps.services.models import UserDataFile
rows = list(UserDataFile.objects.order_by("pk").values("id", "processing_status", "processing_log"))
print("VG_ROWS=" + json.dumps(rows))
"""
MISSING_KEYS = ("gone1", "gone2", "gone3", "empty")


def app_python() -> tuple[str, dict[str, str]]:
    """`volguard.sim.example_app.app_python`, skipping (failing under CI) when it cannot."""
    try:
        return example_app.app_python()
    except example_app.ExampleAppError as e:
        if os.environ.get("CI"):
            pytest.fail(str(e))
        pytest.skip(str(e))


def scenario_file(tmp: Path, env: dict[str, str], *, mounted: bool = True) -> Path:
    """The shipped `healthy` scenario, its app Machine with ``env`` (and maybe unmounted)."""
    document = tomlkit.parse(scenario_path("healthy").read_text())
    machine = document["machines"][0]
    machine["env"] = env
    if not mounted:
        machine["mounted"] = False
    path = tmp / ("healthy-app.toml" if mounted else "not-mounted-app.toml")
    path.write_text(tomlkit.dumps(document))
    return path


@dataclass
class Deployment:
    """A running simulated app: API, fleet, its app Machine, and the paths around them."""

    sim: SimServer
    fleet: LocalFleet
    machine: str
    python: str
    workdir: Path
    pks: dict[str, int]

    @property
    def manage_py(self) -> str:
        return f"{self.python} {MANAGE}"

    @property
    def fly_toml(self) -> Path:
        return self.workdir / "fly.toml"

    def manage(self, *args: str) -> subprocess.CompletedProcess[str]:
        """manage.py on the Machine as `app`, with the app's environment (for the test)."""
        env = dict(self.fleet.plan(self.machine).env)
        return self.fleet.exec(
            self.machine, [self.python, str(MANAGE), *args], user="app", env=env, timeout=120
        )

    def rows(self) -> dict[int, dict[str, Any]]:
        done = self.manage("shell", "-c", DUMP)
        assert done.returncode == 0, done.stderr
        return {r["id"]: r for r in json.loads(done.stdout.split("VG_ROWS=", 1)[1])}

    def snapshots_taken(self) -> list[dict[str, Any]]:
        return [a for a in self.sim.app.state.actions if a["action"] == "create_snapshot"]

    def settings(self, transport: str, **more: Any) -> Settings:
        return Settings.load(
            None,
            transport=transport,
            ssh_config=str(self.fleet.ssh_config),
            flyctl=str(self.fleet.flyctl_dir / "flyctl"),
            volume_fstypes=["ext4", "tmpfs"],  # the simulated volumes are tmpfs
            manage_py=self.manage_py,
            **more,
        )

    def cli(self, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        (self.workdir / "invoke.yaml").write_text(
            "volguard:\n"
            "  volume_fstypes: [ext4, tmpfs]\n"
            f"  ssh_config: {json.dumps(str(self.fleet.ssh_config))}\n"
            f"  manage_py: {json.dumps(self.manage_py)}\n"
        )
        base = {k: v for k, v in os.environ.items() if not k.startswith(("INVOKE_", "FLY_"))}
        return subprocess.run(
            [VOLGUARD, "remediate", *args],
            cwd=self.workdir,
            env={
                **base,
                "HOME": str(self.workdir),
                "FLY_FLAPS_BASE_URL": self.sim.url,
                "FLY_API_TOKEN": self.sim.token,
                "PATH": f"{self.fleet.flyctl_dir}{os.pathsep}{os.environ['PATH']}",
                "NO_COLOR": "1",
                **(env or {}),
            },
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )


@contextlib.contextmanager
def deployment(workdir: Path, *, mounted: bool = True) -> Iterator[Deployment]:
    """The healthy app (or its volume not mounted) with the example app seeded on it."""
    python, python_env = app_python()
    database_dir = Path(tempfile.mkdtemp(prefix="volguard-remediate-db-", dir="/tmp"))
    try:
        env = {
            "DJANGO_SETTINGS_MODULE": "config.settings",
            "MEDIA_ROOT": "/data/media",
            "DATABASE_URL": f"sqlite:///{database_dir}/app.sqlite3",
            "CELERY_BROKER_URL": "memory://",
            "PYTHONDONTWRITEBYTECODE": "1",
            **python_env,
        }
        scenario = scenario_file(workdir, env, mounted=mounted)
        with SimServer(scenario) as sim, LocalFleet(scenario) as fleet:
            (workdir / "fly.toml").write_text(sim.scenario.fly_toml)
            machine = next(m.id for m in sim.scenario.machines if m.group == "app")
            app_user = pwd.getpwnam("app")
            os.chown(database_dir, app_user.pw_uid, app_user.pw_gid)
            database_dir.chmod(0o700)
            site = Deployment(sim, fleet, machine, python, workdir, {})
            for args in (["migrate", "--noinput"], ["shell", "-c", SEED]):
                done = site.manage(*args)
                assert done.returncode == 0, done.stdout + done.stderr
            site.pks = json.loads(done.stdout.split("VG_PKS=", 1)[1])
            files = "mkdir -p /data/media/user_data && cd /data/media/user_data && " + " && ".join(
                f"printf 'data {n}' > {n}" for n in ("ok1.csv", "ok2.csv", "same.csv")
            )
            done = fleet.exec(machine, ["sh", "-c", files], user="app")
            assert done.returncode == 0, done.stderr
            yield site
    finally:
        shutil.rmtree(database_dir, ignore_errors=True)


@pytest.fixture(scope="module")
def healthy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    """One healthy deployment for the tests that change nothing."""
    if WHY:
        pytest.skip(WHY)
    with deployment(tmp_path_factory.mktemp("healthy")) as site:
        yield site


def _client(site: Deployment) -> Any:
    return partial(MachinesClient, base_url=site.sim.url, backoff=0.01)


def _config(site: Deployment) -> Any:
    config, problems = read_fly_toml(str(site.fly_toml))
    assert config is not None, problems
    return config


def _record(site: Deployment, path: str) -> dict[str, Any]:
    return json.loads((site.workdir / path).read_text())


# -- the plan ----------------------------------------------------------------------------------


@needs_fleet
@pytest.mark.parametrize("transport", ["ssh", "fly"])
def test_the_plan_runs_as_the_app_user_with_the_apps_environment(
    healthy: Deployment, transport: str
) -> None:
    site = healthy
    before = site.rows()
    outcome = remediate(
        RemediateContext(
            site.settings(transport),
            _config(site),
            site.sim.scenario.app,
            Token(site.sim.token),
            client_factory=_client(site),
        )
    )
    assert outcome.exit_code == 2  # rows are missing
    assert outcome.record is None  # a plan changes nothing and records nothing
    run, plan = outcome.run, outcome.plan
    assert run is not None
    assert plan is not None
    assert outcome.machine is not None
    assert outcome.machine.id == site.machine
    # as the app user (not root), in the app's directory
    assert (run.user, run.cwd) == ("app", "/app")
    assert run.pid > 1
    # DATABASE_URL is in the app process's environment only: a root session does not see
    # it, and without it Django would have opened another (empty) database
    root_env = subprocess.run(
        ["ssh", "-F", str(site.fleet.ssh_config), site.machine, "env"],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout
    assert "DATABASE_URL" not in root_env
    assert (plan.total_rows, plan.audited_rows) == (8, 8)
    assert plan.problems == 4
    assert plan.per_reason == {
        "missing": 3,
        "empty": 1,
        "empty_file": 0,
        "invalid_name": 0,
        "shared": 2,
    }
    alice, bob = site.pks["user:alice"], site.pks["user:bob"]
    assert plan.per_owner == {f"user {alice}": 2, f"user {bob}": 2}
    assert [s.name for s in plan.samples["missing"]] == [
        "user_data/gone-1.csv",
        "user_data/gone-2.csv",
        "user_data/gone-3.csv",
    ]
    assert [s.pk for s in plan.samples["empty"]] == [site.pks["empty"]]
    assert (plan.fixable, plan.deletable) == (4, 4)
    text = render_text(outcome)
    assert f"on Machine {site.machine} (group app, syd) as app in /app" in text
    assert f"ID {site.pks['gone1']}: user_data/gone-1.csv" in text
    assert site.rows() == before
    assert site.snapshots_taken() == []


@needs_fleet
def test_the_plan_from_the_command_line_as_json(healthy: Deployment) -> None:
    site = healthy
    proc = site.cli("--json", "--transport", "fly", "--samples", "1")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    document = json.loads(proc.stdout)
    assert document["ran_as"]["user"] == "app"
    assert document["machine"]["id"] == site.machine
    assert document["plan"]["per_reason"]["missing"] == 3
    assert len(document["plan"]["samples"]["missing"]) == 1
    assert document["record"] is None
    assert site.sim.token not in proc.stdout + proc.stderr


@needs_fleet
def test_delete_without_yes_and_without_a_terminal_refuses(healthy: Deployment) -> None:
    site = healthy
    before = site.rows()
    proc = site.cli("--delete", "--max-missing", "100%", "--transport", "ssh")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "Delete 4 rows of app test-blue-smoke-97?" in proc.stderr
    assert "stdin is not a terminal; pass --yes" in proc.stderr
    assert site.rows() == before
    assert site.snapshots_taken() == []
    record = _record(site, proc.stdout.split("run record: ", 1)[1].strip())
    steps = {s["name"]: s["status"] for s in record["steps"]}
    assert steps["gate"] == steps["audit"] == "ok"
    assert steps["confirm"] == "failed"
    assert steps["snapshot"] == "pending"
    assert site.sim.token not in proc.stdout + proc.stderr


@needs_fleet
def test_a_failing_manage_py_is_exit_1_with_its_last_stderr_line(healthy: Deployment) -> None:
    site = healthy
    broken = f"env DJANGO_SETTINGS_MODULE=no_such_settings {site.manage_py}"
    proc = site.cli("--transport", "ssh", "--manage-py", broken)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert proc.stderr.strip().splitlines() == [
        "volguard: error: manage.py check_missing_files failed (exit 1, as app in /app): "
        "ModuleNotFoundError: No module named 'no_such_settings'"
    ]


# -- acting ------------------------------------------------------------------------------------


@needs_fleet
def test_fix_is_refused_while_the_volume_is_not_mounted(tmp_path: Path) -> None:
    with deployment(tmp_path, mounted=False) as site:
        before = site.rows()
        proc = site.cli("--fix", "--max-missing", "100%", "--transport", "ssh")
        after = site.rows()
        snapshots = site.snapshots_taken()
    assert proc.returncode == 2, proc.stdout + proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("volguard: error")]
    assert len(errors) == 1, proc.stderr
    assert "VG301" in errors[0]
    assert "never remediate a fleet whose volume is not mounted" in errors[0]
    assert after == before
    assert snapshots == []
    record = _record(site, proc.stdout.split("run record: ", 1)[1].strip())
    assert record["status"] == "failed"
    assert record["steps"][0]["name"] == "gate"
    assert record["steps"][0]["status"] == "failed"
    assert record["steps"][0]["detail"]["finding_ids"] == ["VG301"]
    assert site.sim.token not in proc.stdout + proc.stderr


@needs_fleet
def test_fix_then_delete_on_a_healthy_fleet(tmp_path: Path) -> None:
    summary = tmp_path / "step-summary.md"
    with deployment(tmp_path) as site:
        before = site.rows()
        missing = {site.pks[k] for k in MISSING_KEYS}

        # The Django-side interlock (VG404: 4 of 8 rows missing, above 10%) refuses: exit 2
        refused = site.cli("--fix", "--transport", "fly")
        assert refused.returncode == 2, refused.stdout + refused.stderr
        assert "VG404" in refused.stderr
        assert site.rows() == before

        # --max-missing goes through: the rows are marked failed
        fixed = site.cli(
            "--fix", "--max-missing", "100%", "--transport", "fly",
            env={"GITHUB_STEP_SUMMARY": str(summary)},
        )  # fmt: skip
        assert fixed.returncode == 0, fixed.stdout + fixed.stderr
        rows = site.rows()
        for pk in missing:
            assert rows[pk]["processing_status"] == "failed"
            assert rows[pk]["processing_log"].endswith(MESSAGE)
        for pk in set(before) - missing:
            assert rows[pk] == before[pk]
        record_path = fixed.stdout.split("run record: ", 1)[1].strip()
        record = _record(site, record_path)
        steps = {s["name"]: s for s in record["steps"]}
        assert [s["name"] for s in record["steps"]] == [
            "gate", "audit", "confirm", "snapshot", "remediate", "re-audit",
        ]  # fmt: skip
        assert record["status"] == "succeeded"
        assert {n: s["status"] for n, s in steps.items()} == {
            "gate": "ok", "audit": "ok", "confirm": "skipped", "snapshot": "changed",
            "remediate": "changed", "re-audit": "ok",
        }  # fmt: skip
        assert steps["audit"]["detail"]["plan"]["fixable"] == 4
        assert steps["audit"]["detail"]["user"] == "app"
        snapshot_ids = steps["snapshot"]["detail"]["snapshots"]
        taken = site.snapshots_taken()
        assert len(taken) == 2  # the refused run took one too: a snapshot comes first
        assert snapshot_ids == {taken[-1]["volume"]: taken[-1]["id"]}
        export = steps["remediate"]["detail"]["export"]
        assert export == f"/data/.volguard/exports/{record['id']}.json"
        assert steps["remediate"]["detail"]["result"]["remediation"]["changed"] == 4
        assert steps["remediate"]["detail"]["result"]["user"] == "app"
        assert steps["re-audit"]["detail"]["after"]["not_failed"] == 0
        # the export is on the Machine's volume, outside MEDIA_ROOT, the app user's own
        owner = site.fleet.exec(site.machine, ["stat", "-c", "%U %a", export])
        assert owner.stdout.split() == ["app", "600"], owner.stderr
        exported = json.loads(site.fleet.exec(site.machine, ["cat", export]).stdout)
        assert {o["pk"] for o in exported} == missing
        log = site.fleet.exec(site.machine, ["cat", "/data/.volguard/audit.jsonl"]).stdout
        assert len(log.splitlines()) == 4
        assert f"### volguard remediate: {site.sim.scenario.app} — succeeded" in summary.read_text()
        assert f"snapshots: {taken[-1]['volume']} {taken[-1]['id']}" in fixed.stdout

        # Again: the rows are already failed, the fix changes nothing
        again = site.cli("--fix", "--max-missing", "100%", "--transport", "ssh", "--json")
        assert again.returncode == 0, again.stdout + again.stderr
        document = json.loads(again.stdout)
        assert document["remote"]["remediation"]["changed"] == 0
        assert document["remote"]["remediation"]["already_done"] == 4
        assert site.rows() == rows

        # --delete --yes: exported first, then deleted; then nothing is left to do
        deleted = site.cli("--delete", "--yes", "--max-missing", "100%", "--transport", "ssh")
        assert deleted.returncode == 0, deleted.stdout + deleted.stderr
        assert set(site.rows()) == set(before) - missing
        nothing = site.cli("--delete", "--yes", "--transport", "ssh")
        assert nothing.returncode == 0, nothing.stdout + nothing.stderr
        assert "nothing to do" in nothing.stdout
        snapshots_at_end = len(site.snapshots_taken())
    assert snapshots_at_end == 4  # none for the run that had nothing to do
    for proc in (refused, fixed, again, deleted, nothing):
        assert site.sim.token not in proc.stdout + proc.stderr
    for record_file in (tmp_path / ".volguard" / "runs").glob("*.json"):
        assert site.sim.token not in record_file.read_text()


# -- the confirmed plan is the plan executed (#8 item 6) --------------------------------------


def test_the_acting_run_carries_the_rows_the_plan_showed() -> None:
    from volguard.audit_document import Plan

    plan = AuditSummary.from_document(DOCUMENT)
    fix, delete = Plan.decode(plan.plans["fix"]), Plan.decode(plan.plans["delete"])
    assert fix.keys == {("m", "f", "1"), ("m", "f", "2"), ("m", "f", "3"), ("m", "f", "5")}
    assert delete.keys == {("m", "f", "1"), ("m", "f", "2"), ("m", "f", "5")}  # 3 is shared
    assert "plans" not in plan.as_dict()  # the run record keeps the counts, not the keys

    argv = remote_argv("fix", export="/e", audit_log="/l", plan=plan.plans["fix"])
    assert argv[-2:] == ["--plan", plan.plans["fix"]]


def test_a_plan_that_changed_is_refused_naming_the_rows_that_appeared_and_went() -> None:
    from volguard.audit_document import Plan

    confirmed = Plan.of([("m", "f", "1"), ("m", "f", "2")])
    assert confirmed.change([("m", "f", "2"), ("m", "f", "1")]) is None
    why = confirmed.change([("m", "f", "1"), ("m", "f", "9")])
    assert why == "1 row appeared (m.f#pk=9); 1 row went (m.f#pk=2)"
    # What travels is what was confirmed, listed or (too large to list) as a digest.
    assert Plan.decode(confirmed.encode()).keys == confirmed.keys
    digest = Plan.decode(confirmed.encode(max_chars=10))
    assert (digest.keys, digest.count) == (None, 2)
    assert digest.change([("m", "f", "1"), ("m", "f", "2")]) is None
    assert digest.change([("m", "f", "1")]) == (
        "2 rows confirmed, 1 row found now (the rows differ: the plan was too large to list, "
        "only its digest was kept)"
    )


@pytest.mark.parametrize(
    "text",
    [
        "",
        "rows:",
        "rows:!!!",
        "sha256:abc:1",
        "sha256:" + "0" * 64 + ":x",
        "rows:eJzLSM3JyQcABiwCFQ==",
    ],
)
def test_a_malformed_plan_is_a_usage_error(text: str) -> None:
    from volguard.audit_document import Plan

    with pytest.raises(UsageError, match="bad --plan"):
        Plan.decode(text)


def test_a_plan_that_inflates_past_16_mib_is_refused() -> None:
    import base64
    import zlib

    from volguard.audit_document import Plan

    bomb = base64.urlsafe_b64encode(zlib.compress(b"[" + b" " * (1 << 25), 9)).decode()
    with pytest.raises(UsageError, match="more than 16 MiB"):
        Plan.decode("rows:" + bomb)


def test_a_changed_plan_refusal_is_read_from_the_document() -> None:
    from volguard.audit_document import plan_refusal

    document = {**DOCUMENT, "refused": plan_refusal("1 row appeared (m.f#pk=9)")}
    run = ManageRun(2, json.dumps(document), "", "app", "/app", 4)
    with pytest.raises(StepFailed, match=r"rows changed since the plan was confirmed: 1 row") as e:
        remediation_section(run)
    assert e.value.exit_code == 2
