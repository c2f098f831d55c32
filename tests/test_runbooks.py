"""Every command in the runbooks is exercised here, for real, and what they show is real output.

The commands are the lines of the ```sh blocks in runbooks/*.md and the ``run:`` lines of
.github/workflows/volguard.yml. `TABLE` says, for each one, how it is exercised:

- `Run`: executed as written (placeholders such as ``<worker machine id>`` filled in) in a
  *world*: a simulated deployment (the Machines API simulator `SimServer`, the local fleet
  `LocalFleet` with the `flyctl` stand-in first on PATH, and, where the runbook needs rows,
  the example Django app running ON the simulated Machines), the example app alone on
  SQLite (``python manage.py …``), the example app served over HTTP (``curl``), or a
  throw-away virtualenv (``pip install .``). The commands of one world run in `TABLE`
  order, so a runbook's steps build on each other as they do for a person.
- `Same`: a workflow line that is also a runbook's command, exercised once, by that row.
- `NotRun`: only commands that need the real Fly.io or GitHub, each with the reason.

Checks: every extracted command has a row and every row a command (no drift either way);
each `Run` ends with its exit code and its ``expect`` snippets, which must also be written
in the runbook; and every ```text block of a runbook — what "You should see" shows — is
matched, line by line in order, against the real output of the command above it
(``…`` stands for any text, and ids, timings, addresses and run-record names are
normalised on both sides). The workflow is parsed and checked job by job, the runbook
must show it verbatim, and actionlint checks it.

The worlds run side by side (`Worlds`), each once per session, whichever test asks first.
The simulated ones need the local fleet (root, Linux): without it they skip, except under
CI, where they must run. ``VOLGUARD_RUNBOOKS_SHOW=1 pytest -s`` prints every command's
output: what to copy into a runbook.
"""

from __future__ import annotations

import contextlib
import http.server
import json
import os
import pwd
import re
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import tomlkit
from invoke.vendor import yaml

from volguard.sim import example_app
from volguard.sim.api import SimServer, load_scenario
from volguard.sim.local_fleet import LocalFleet, fleet_unavailable
from volguard.sim.scenario import DEFAULT_TOKENS, scenario_path

REPO = Path(__file__).resolve().parents[1]
RUNBOOKS = REPO / "runbooks"
WORKFLOW = REPO / ".github" / "workflows" / "volguard.yml"
EXAMPLE = REPO / "example"
MANAGE = EXAMPLE / "manage.py"
VENV_BIN = Path(sys.executable).parent
WORKFLOW_SOURCE = "volguard.yml"
IN_CI = bool(os.environ.get("CI"))

WHY = fleet_unavailable()
if WHY and IN_CI:
    raise RuntimeError(f"CI must be able to run the local fleet, but: {WHY}")


# == what the runbooks say =====================================================================


@dataclass(frozen=True)
class Block:
    lang: str
    body: str
    line: int  # 1-based line of the opening fence
    section: int  # index of the heading section it is in


def blocks(text: str) -> list[Block]:
    """The fenced blocks of a Markdown file, also those indented in a list item."""
    found: list[Block] = []
    section, lang, start, indent, body = 0, None, 0, 0, []
    for number, line in enumerate(text.splitlines(), start=1):
        if lang is None:
            if line.lstrip().startswith("```"):
                lang, start, body = line.strip()[3:].strip(), number, []
                indent = len(line) - len(line.lstrip())
            elif line.startswith("#"):
                section += 1
        elif line.strip() == "```":
            found.append(Block(lang, "\n".join(body), start, section))
            lang = None
        else:
            body.append(line[indent:] if not line[:indent].strip() else line.lstrip())
    assert lang is None, f"unclosed ``` block at line {start}"
    return found


def shell_lines(script: str) -> list[str]:
    """The commands of a shell snippet: continuation lines joined, comments dropped."""
    commands, pending = [], ""
    for raw in script.splitlines():
        line = raw.strip() if not pending else " " + raw.strip()
        if line.endswith("\\"):
            pending += line[:-1].rstrip()
            continue
        line, pending = (pending + line).strip(), ""
        line = strip_comment(line)
        if line:
            commands.append(line)
    return commands


def strip_comment(line: str) -> str:
    """``line`` without a trailing ``# comment`` (a ``#`` after a blank, outside quotes)."""
    quote = None
    for i, ch in enumerate(line):
        if quote:
            if ch == quote:
                quote = None
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i].rstrip()
    return line.rstrip()


def runbook_commands(path: Path) -> list[str]:
    return [c for b in blocks(path.read_text()) if b.lang == "sh" for c in shell_lines(b.body)]


def load_workflow() -> dict[str, Any]:
    document = yaml.safe_load(WORKFLOW.read_text())
    if True in document:  # YAML 1.1 reads the key `on` as true
        document["on"] = document.pop(True)
    return document


def workflow_commands() -> list[str]:
    jobs = load_workflow()["jobs"]
    return [
        c for job in jobs.values() for step in job["steps"] if "run" in step
        for c in shell_lines(step["run"])
    ]  # fmt: skip


def all_commands() -> set[tuple[str, str]]:
    found = {(p.name, c) for p in sorted(RUNBOOKS.glob("*.md")) for c in runbook_commands(p)}
    return found | {(WORKFLOW_SOURCE, c) for c in workflow_commands()}


# == how each command is exercised =============================================================


@dataclass(frozen=True)
class Run:
    """Run the command as written in ``world``; it must exit ``code`` and print ``expect``."""

    world: str
    code: int
    expect: tuple[str, ...] = ()
    stdin: str | None = None
    env: dict[str, str | None] = field(default_factory=dict)  # None: unset it
    before: Callable[[World], None] | None = None
    after: Callable[[World, str], str | None] | None = None  # checks; may add to the output
    doc: str | None = None  # where ``expect`` is written (default: the command's runbook)


@dataclass(frozen=True)
class NotRun:
    why: str


@dataclass(frozen=True)
class Same:
    """The same command, in the same world, as that runbook's row(s): exercised once, there."""

    source: str


INCIDENT = "incident-missing-files.md"
SETUP = "setting-up-a-media-volume.md"
GATE = "pre-deploy-gate.md"
MONITORING = "monitoring.md"
TROUBLE = "troubleshooting.md"


def _fix_fly_toml(world: World) -> None:
    """incident-missing-files.md step 4b: one media group (its toml and Procfile blocks)."""
    document = tomlkit.parse((world.cwd / "fly.toml").read_text())
    processes = tomlkit.table()
    processes["app"] = "honcho start -f Procfile.fly"
    document["processes"] = processes
    del document["mounts"]["processes"]
    text = tomlkit.dumps(document)
    for shown in _block(INCIDENT, "toml", 0).splitlines():
        assert shown.split("#")[0].strip() in text, shown
    (world.cwd / "fly.toml").write_text(text)
    (world.cwd / "Procfile.fly").write_text(_block(INCIDENT, "procfile", 0) + "\n")


def _app_file_restored(world: World, output: str) -> None:
    done = world.fleet_exec("app", ["stat", "-c", "%U", f"/data/media/{WORKER_FILE}"])
    assert done.stdout.strip() == "app", (done.stdout, done.stderr)


def _media_owned_by_app(world: World, output: str) -> None:
    done = world.fleet_exec("app", ["stat", "-c", "%U", "/data/media"])
    assert done.stdout.strip() == "app", (done.stdout, done.stderr)


def _sarif_written(world: World, output: str) -> None:
    report = json.loads((world.cwd / "volguard.sarif").read_text())
    assert report["version"] == "2.1.0"
    assert [r["ruleId"] for r in report["runs"][0]["results"]] == ["VG103"]


def _webhook_got_the_report(world: World, output: str) -> None:
    assert world.webhook is not None
    assert len(world.webhook) == 1, world.webhook
    report = json.loads(world.webhook[0])
    assert report["problem_rows"] == 3
    assert {r["reason"] for r in report["rows"]} == {"missing"}


def _installed(world: World, output: str) -> None:
    site = Path(world.subst["<venv>"]) / "lib"
    assert list(site.glob("python3*/site-packages/volguard/sim/scenarios/incident.toml"))
    assert (Path(world.subst["<venv>"]) / "bin" / "volguard").exists()


MIGRATE = "moving-media-to-object-storage.md"
#: uploaded on the web Machine after the copy, before the cutover's deploy: step 5 copies it
MEANWHILE = "user_data/meanwhile.csv"


def _set_env(world: World, **env: str) -> None:
    path = world.cwd / "fly.toml"
    document = tomlkit.parse(path.read_text())
    document["env"].update(env)
    path.write_text(tomlkit.dumps(document))


def _set_media_storage(world: World, value: str) -> None:
    path = world.cwd / "invoke.yaml"
    lines = [line for line in path.read_text().splitlines() if "media_storage:" not in line]
    path.write_text("\n".join([*lines, f"  media_storage: {value}"]) + "\n")


def _manage_on(world: World, group: str, code: str) -> str:
    """``manage.py shell -c code`` on the group's started Machine, as the app, with its env."""
    assert world.sim
    machine = next(
        m.id for m in world.sim.scenario.machines if m.group == group and m.state == "started"
    )
    done = world.site.manage(machine, "shell", "-c", code)  # type: ignore[attr-defined]
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def _upload_meanwhile(world: World) -> None:
    """Between steps 4 and 5 a user uploads a file on the web Machine (to its volume): step
    5's migrate-media copies it before the cutover it performs."""
    _manage_on(
        world, "app",
        "from django.core.files.base import ContentFile\n"
        "from django.core.files.storage import default_storage\n"
        "from django.contrib.auth import get_user_model\n"
        "from apps.services.models import UserDataFile\n"
        f"name = default_storage.save({MEANWHILE!r}, ContentFile(b'uploaded meanwhile'))\n"
        f"assert name == {MEANWHILE!r}, name\n"
        "UserDataFile.objects.create(owner=get_user_model().objects.get(username='alice'),\n"
        "                            file=name, processing_status='done')\n",
    )  # fmt: skip


def _cutover_performed(world: World, output: str) -> None:
    """Step 5 after its command: fly.toml [env] holds its toml block (written by the
    command, comments kept), and invoke.yaml gets the yaml block, as the run reminds."""
    shown = tomlkit.parse(_block(MIGRATE, "toml", 0))
    text = (world.cwd / "fly.toml").read_text()
    assert all(tomlkit.parse(text)["env"].get(k) == v for k, v in shown["env"].items()), text
    assert "# The incident app" in text
    settings = yaml.safe_load(_block(MIGRATE, "yaml", 0))["volguard"]
    _set_media_storage(world, settings["media_storage"])


def _worker_reads_the_web_upload(world: World, output: str) -> None:
    """After the cutover the worker reads, through Django's storage, what the web app wrote."""
    read = _manage_on(
        world, "worker",
        "from django.core.files.storage import default_storage\n"
        f"print('VG_READ=' + default_storage.open({MEANWHILE!r}).read().decode())",
    )  # fmt: skip
    assert "VG_READ=uploaded meanwhile" in read, read


def _rollback(world: World) -> None:
    """Step 6: the setting back (as its text says), and volguard told so."""
    assert 'MEDIA_FALLBACK = "0"' in (RUNBOOKS / MIGRATE).read_text()
    _set_env(world, MEDIA_FALLBACK="0")
    _set_media_storage(world, "volume")


def _volumes_untouched(world: World, output: str) -> None:
    """Rolled back: the worker reads its own volume again, where its files still are."""
    assert world.fleet_exec("app", ["cat", f"/data/media/{MEANWHILE}"]).stdout == (
        "uploaded meanwhile"
    )
    assert world.fleet_exec("worker", ["cat", "/data/media/user_data/out/report.csv"]).stdout == (
        "out"
    )


WHY_TOKEN = (
    "flyctl itself: a real Fly organisation issues the token (every simulated world sets the "
    "simulator's token in FLY_API_TOKEN instead)"
)
SPLIT_ERRORS = "fly.toml, test-blue-smoke-97: 3 errors - FAIL: 3 at or above --fail-on=error"
CLEAN = "fly.toml, test-blue-smoke-97: no findings - ok"

# fmt: off
#: The table: (where, command, how). The rows of one world run in this order.
TABLE: tuple[tuple[str, str, Run | NotRun | Same], ...] = (
    # -- incident-missing-files.md: the incident, end to end ------------------------------------
    (INCIDENT, 'export FLY_API_TOKEN="$(flyctl tokens create deploy -a test-blue-smoke-97)"',
     NotRun(WHY_TOKEN)),
    (INCIDENT, "volguard verify-volume", Run("incident", 2, (SPLIT_ERRORS,))),
    (INCIDENT, "flyctl machines list", Run("incident", 0, ("PROCESS GROUP",))),
    (INCIDENT, "volguard remediate",
     Run("incident", 2, ("--fix would mark 3 rows failed (3 not yet failed)",))),
    (INCIDENT, "flyctl ssh console --process-group app --user app",
     Run("incident", 0, ("complete",), stdin="id -un\n")),
    (INCIDENT, "volguard lint", Run("incident", 0, ("fly.toml: no findings - ok",),
                                    before=_fix_fly_toml)),
    (INCIDENT, "volguard deploy --yes --no-audit",
     Run("incident", 0, ('destroy 1 "worker" machine', "deploy succeeded: test-blue-smoke-97",
                         ))),
    # step 4d: the worker's file comes back from a fork of its now unattached volume
    (INCIDENT, "volguard recover",
     Run("incident", 2, ("found 1, conflict 0, not found 2 of 3 rows",))),
    (INCIDENT, "volguard recover --apply --yes",
     Run("incident", 2, ("1 file restored and verified",), after=_app_file_restored)),
    (INCIDENT, "volguard verify-volume", Run("incident", 0, ("1 warning - ok",))),
    # step 6 starts where step 5 ends: one app Machine, 2 of the 10 uploads gone for good
    (INCIDENT, "volguard remediate --fix", Run("repair", 2, ("more than --max-missing 10%",))),
    (INCIDENT, "volguard remediate --fix --max-missing 20%",
     Run("repair", 0, ("remediate --fix: succeeded", "2 rows marked failed"))),
    (INCIDENT, "volguard remediate --delete --yes --max-missing 20%",
     Run("repair", 0, ("2 rows deleted",))),
    (INCIDENT, "volguard verify-volume --verbose",
     Run("split", 2, ("volguard: machine: 2 Machines checked in 4 sessions",))),
    (INCIDENT, "volguard verify-volume --group worker",
     Run("split", 2, ("fly.toml, test-blue-smoke-97: 2 errors",))),
    # --resume after a deploy that failed at `flyctl deploy` (its release command failed)
    (INCIDENT, "volguard deploy --yes --no-audit",
     Run("resume", 2, ("deploy failed: test-blue-smoke-97",),
         env={"VOLGUARD_SIM_DEPLOY_FAIL": "1"})),
    (INCIDENT, "volguard deploy --resume --yes --no-audit",
     Run("resume", 0, ("[lint] ok in the earlier run",))),
    # the manual path: manage.py in the app Machine's shell (here: the example app on SQLite)
    (INCIDENT, "python manage.py check_missing_files", Run("rows", 2, ("✗ Found 3 missing",))),
    (INCIDENT, "python manage.py check_missing_files --user-id 2",
     Run("rows", 2, ("User: bob (ID: 2)",))),
    (INCIDENT, "volguard snapshot-volumes --apply", Run("healthy", 0, ("created",))),
    (INCIDENT,
     "python manage.py check_missing_files --fix --export /data/volguard/rows-before-fix.json",
     Run("rows", 2, ("VG404 remediation refused",))),
    (INCIDENT,
     "python manage.py check_missing_files --fix --max-missing 30% "
     "--export /data/volguard/rows-before-fix.json",
     Run("rows", 2, ("Marked failed: 3 rows",))),
    (INCIDENT,
     "python manage.py check_missing_files --delete --yes --max-missing 30% "
     "--export /data/volguard/rows-before-delete.json",
     Run("rows", 2, ("Deleted: 3 rows",))),
    (INCIDENT, "python manage.py loaddata /data/volguard/rows-before-delete.json",
     Run("rows", 0, ("Installed 3 object(s) from 1 fixture(s)",))),
    (INCIDENT, "python manage.py check_missing_files --filter processing_status=done",
     Run("rows", 0, ("✓ All 7 files are present in storage.",))),
    # -- setting-up-a-media-volume.md: a new app, from its fly.toml to a snapshot ----------------
    (SETUP, "volguard lint", Run("mysite", 0, ("fly.toml: no findings - ok",))),
    (SETUP, 'export FLY_API_TOKEN="$(flyctl tokens create deploy -a mysite)"', NotRun(WHY_TOKEN)),
    (SETUP, "volguard create-volume", Run("mysite", 0, ("dry run: pass --apply to create them",))),
    (SETUP, "volguard create-volume --apply",
     Run("mysite", 1, ("stdin is not a terminal; pass --yes to proceed",))),
    (SETUP, "volguard create-volume --apply --yes", Run("mysite", 0, ("created 1 volume(s)",))),
    (SETUP, "flyctl deploy", Run("mysite", 0, ('create 1 "app" machine',))),
    (SETUP, "volguard verify-volume", Run("mysite", 0, ("fly.toml, mysite: 1 warning - ok",))),
    (SETUP, "volguard snapshot-volumes",
     Run("mysite", 0, ("dry run: pass --apply to take the snapshots",))),
    (SETUP, "volguard snapshot-volumes --apply", Run("mysite", 0, ("created",))),
    (SETUP, "volguard verify-volume", Run("mysite", 0, ("fly.toml, mysite: no findings - ok",))),
    (SETUP, "curl -fsS https://mysite.fly.dev/healthz/media",
     Run("health", 0, ('"status": "ok"',))),
    # -- pre-deploy-gate.md -----------------------------------------------------------------------
    (GATE, "volguard lint fly.toml", Run("healthy", 0, ("fly.toml: no findings - ok",))),
    (GATE, "volguard lint fly.toml", Run("split", 2, ("fly.toml: 1 error - FAIL",))),
    (GATE, "volguard lint fly.toml --format github --output sarif:volguard.sarif",
     Run("split", 2, ("::error title=VG103",), after=_sarif_written)),
    (GATE, "flyctl tokens create deploy -a test-blue-smoke-97 | gh secret set FLY_API_TOKEN",
     NotRun("flyctl and the GitHub CLI themselves: a real Fly organisation and repository")),
    (GATE, "volguard deploy --yes", Run("ci", 0, ("deploy succeeded: test-blue-smoke-97",))),
    # -- monitoring.md ----------------------------------------------------------------------------
    (MONITORING, "volguard verify-volume --format github --fail-on warning",
     Run("monitor", 0, ("### volguard: passed",),
         env={"GITHUB_STEP_SUMMARY": "summary.md"}, after=lambda w, o: _summary(w))),
    (MONITORING, "volguard verify-volume --format github --fail-on warning",
     Run("split", 2, ("::error title=VG205",))),
    (MONITORING, "volguard remediate", Run("monitor", 2, ("Without a usable file: 3",))),
    (MONITORING,
     "python manage.py check_missing_files --json > /tmp/missing-files.json || curl -fsS "
     '-H "Content-Type: application/json" --data-binary @/tmp/missing-files.json '
     '"$ALERT_WEBHOOK_URL"', Run("cron", 0, after=_webhook_got_the_report)),
    # -- troubleshooting.md -----------------------------------------------------------------------
    (TROUBLE, "volguard verify-volume", Run("not-mounted", 2, ("VG301",))),
    (TROUBLE, "volguard verify-volume", Run("no-volume", 2, ("VG201", "VG204"))),
    (TROUBLE, "volguard create-volume",
     Run("no-volume", 0, ("every process group with a mount has its volumes; nothing to create",
                          ))),
    (TROUBLE, "flyctl deploy", Run("no-volume", 0, ("update succeeded",))),
    (TROUBLE, "volguard verify-volume", Run("no-volume", 0, ("1 warning - ok",))),
    (TROUBLE, "volguard verify-volume", Run("read-only", 2, ("VG302",))),
    (TROUBLE, "volguard verify-volume", Run("root-owned", 2, ("VG304", "VG307"))),
    (TROUBLE, 'flyctl ssh console -C "chown -R app:app /data/media"',
     Run("root-owned", 0, ("complete",), after=_media_owned_by_app)),
    (TROUBLE, "volguard verify-volume", Run("root-owned", 0, (CLEAN,))),
    (TROUBLE, "volguard lint", Run("worker-without-mount", 2, ("VG102",))),
    (TROUBLE, "volguard verify-volume", Run("media-root", 2, ("VG303",))),
    (TROUBLE, "volguard verify-volume", Run("split", 2, ("VG306",))),
    (TROUBLE, "volguard verify-volume --fail-on warning", Run("full", 2, ("VG208", "VG305"))),
    (TROUBLE, "flyctl volumes extend <volume id> -s 2",
     NotRun("flyctl itself: the flyctl stand-in has no `volumes extend`; volguard's VG208 and "
            "VG305 above are what prove the fix")),
    (TROUBLE, "volguard verify-volume --verbose",
     Run("split", 2, ("platform: skipped (no FLY_API_TOKEN)",), env={"FLY_API_TOKEN": None})),
    (TROUBLE, "volguard verify-volume", Run("unreachable", 2, ("VG300",))),
    # -- moving-media-to-object-storage.md: the split fleet, to the bucket and back --------------
    (MIGRATE, "volguard lint", Run("migrate", 2, ("fly.toml: 1 error - FAIL",))),
    (MIGRATE, "fly storage create --name test-blue-smoke-97-media",
     NotRun("flyctl itself: Tigris provisions the bucket (the world creates it in moto's S3 "
            "server and sets its settings as the app's secrets)")),
    (MIGRATE, "fly secrets set --app test-blue-smoke-97 "
     "MIGRATE_MEDIA_BUCKET=test-blue-smoke-97-media "
     "AWS_ENDPOINT_URL_S3=https://fly.storage.tigris.dev AWS_REGION=auto "
     "AWS_ACCESS_KEY_ID=<access key id> AWS_SECRET_ACCESS_KEY=<secret access key>",
     NotRun("flyctl itself: the stand-in has no `secrets`; the world's scenario carries these "
            "secrets from the start, pointing at the S3 server")),
    (MIGRATE, "volguard migrate-media --to bucket",
     Run("migrate", 0, ("plan only: pass --apply to snapshot the volumes and copy",))),
    (MIGRATE, "volguard migrate-media --to bucket --apply",
     Run("migrate", 0, ("migrate-media --apply: succeeded", "4 file(s) copied from 3 Machine(s)"))),
    (MIGRATE, "volguard migrate-media --to bucket --from volume --apply "
     "--setting MEDIA_FALLBACK=1 --rollback MEDIA_FALLBACK=0",
     Run("migrate", 0, ("deploy succeeded: test-blue-smoke-97", "migrate-media --apply: succeeded"),
         before=_upload_meanwhile, after=_cutover_performed)),
    (MIGRATE, "volguard migrate-media --to bucket --verify",
     Run("migrate", 0, ("verified: no row that had a file on a volume is missing",),
         after=_worker_reads_the_web_upload)),
    (MIGRATE, "flyctl deploy",
     Run("migrate", 0, ("Finished deploying",), before=_rollback, after=_volumes_untouched)),
    # -- .github/workflows/volguard.yml: the run: lines of its three jobs -------------------------
    (WORKFLOW_SOURCE, "pip install .", Run("install", 0, after=_installed)),
    (WORKFLOW_SOURCE, "volguard deploy --yes", Same(GATE)),
    (WORKFLOW_SOURCE, "volguard verify-volume --format github",
     Run("ci", 0, ("### volguard: passed",), env={"GITHUB_STEP_SUMMARY": "summary.md"},
         after=lambda w, o: _summary(w))),
    (WORKFLOW_SOURCE, "volguard verify-volume --format github --fail-on warning",
     Same(MONITORING)),
    (WORKFLOW_SOURCE, "volguard remediate", Same(MONITORING)),
)
# fmt: on


def _summary(world: World) -> str:
    """The Markdown step summary, checked with the output: GitHub shows it on the run."""
    summary = world.cwd / "summary.md"
    text = summary.read_text() if summary.exists() else ""
    summary.unlink(missing_ok=True)
    return text


def _block(runbook: str, lang: str, index: int) -> str:
    return [b for b in blocks((RUNBOOKS / runbook).read_text()) if b.lang == lang][index].body


# == worlds ====================================================================================

WORKER_FILE = "user_data/user_3/2026/11/20/trial-2.csv"
#: The example app's uploads: per user, file names; LOST ones are in no storage the app
#: Machine sees (trial-2.csv is on the worker's volume, where incident step 4d finds it).
UPLOADS = {
    "alice": ["survey-2026-q3.csv", "survey-2026-q4.csv", "notes.txt"],
    "bob": ["inventory.csv", "inventory-old.csv", "prices.xlsx"],
    "carol": ["trial-1.csv", "trial-2.csv", "summary.pdf", "trial-3.csv"],
}
LOST = frozenset({"survey-2026-q4.csv", "inventory-old.csv", "trial-2.csv"})
DAY = "2026/11/20"
SEED = """\
import datetime, json, os
from django.contrib.auth import get_user_model
from django.utils import timezone
from apps.services.models import UserDataFile

User = get_user_model()
for username, names in json.loads(os.environ["VG_UPLOADS"]).items():
    user = User.objects.create(username=username)
    for name in names:
        path = "user_data/user_%d/%s/%s" % (user.pk, os.environ["VG_DAY"], name)
        UserDataFile.objects.create(owner=user, file=path, processing_status="done")
old = timezone.now() - datetime.timedelta(hours=3)
UserDataFile.objects.update(created_at=old, updated_at=old)
"""


def upload_paths(*, lost: frozenset[str] = frozenset()) -> list[str]:
    """The stored names of the uploads but ``lost``."""
    return [
        f"user_data/user_{n}/{DAY}/{name}"
        for n, names in enumerate(UPLOADS.values(), start=1)
        for name in names
        if name not in lost
    ]


@dataclass
class World:
    """One place where commands run: its directory, environment, and what runs there."""

    name: str
    cwd: Path
    env: dict[str, str]
    subst: dict[str, str] = field(default_factory=dict)  # command text -> what runs
    unsubst: dict[str, str] = field(default_factory=dict)  # output text -> runbook text
    fleet: LocalFleet | None = None
    sim: SimServer | None = None
    webhook: list[bytes] | None = None

    def fleet_exec(self, group: str, argv: list[str]) -> subprocess.CompletedProcess[str]:
        assert self.fleet
        assert self.sim
        machine = next(
            m.id for m in self.sim.scenario.machines if m.group == group and m.state == "started"
        )
        return self.fleet.exec(machine, argv, text=True, capture_output=True, timeout=60)

    def run(self, command: str, how: Run) -> tuple[int, str]:
        if how.before:
            how.before(self)
        text = command
        for placeholder, value in self.subst.items():
            text = text.replace(placeholder, value)
        env = {**self.env}
        for name, value in how.env.items():
            if value is None:
                env.pop(name, None)
            else:
                env[name] = value
        done = subprocess.run(
            ["bash", "-c", text],
            cwd=self.cwd,
            env=env,
            input=how.stdin if how.stdin is not None else "",
            capture_output=True,
            text=True,
            encoding="utf-8",
            errors="replace",
            timeout=240,
            check=False,
        )
        output = done.stdout + ("\n" if done.stdout and not done.stdout.endswith("\n") else "")
        output += done.stderr
        if how.after:
            output += how.after(self, output) or ""
        for actual, shown in self.unsubst.items():
            output = output.replace(actual, shown)
        return done.returncode, output


def _base_env(cwd: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("INVOKE_", "FLY_"))}
    for name in ("GITHUB_STEP_SUMMARY", "VOLGUARD_SIM_DEPLOY_FAIL", "DATABASE_URL", "MEDIA_ROOT"):
        env.pop(name, None)
    env.update(
        {
            "HOME": str(cwd),
            "NO_COLOR": "1",
            "PATH": f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}",
            "PYTHONDONTWRITEBYTECODE": "1",
            "PYTHONIOENCODING": "utf-8",
        }
    )
    return env


@dataclass(frozen=True)
class SimWorld:
    """A simulated deployment: a scenario (shipped, or built by a function) and its fly.toml,
    maybe with the example app ON its Machines (rows in a database the app user owns, the
    uploads on the app Machine's volume but those named in ``example_app``)."""

    scenario: str | Callable[[Path], Path]
    fly_toml: Callable[[str], str] | None = None
    example_app: frozenset[str] | None = None  # the uploads NOT on the app Machine
    setup: Callable[[World], None] | None = None


@dataclass(frozen=True)
class DjangoWorld:
    """The example app on SQLite (seeded, the `LOST` files absent); ``/data`` is a directory."""

    webhook: bool = False


@dataclass(frozen=True)
class WebWorld:
    """The example app served over HTTP (runserver) at the runbook's https://mysite.fly.dev."""


@dataclass(frozen=True)
class InstallWorld:
    """A checkout of this repository and a throw-away virtualenv to install it into."""


@dataclass(frozen=True)
class MigrateWorld:
    """moving-media-to-object-storage.md: the incident's split fleet (web app and two
    workers, each on its own volume, the example app on every Machine) and moto's S3 server
    behind the strict proxy, the bucket's secrets set as `fly storage create` and the
    runbook's `fly secrets set` give them. The fleet is tests/test_migrate_media_fly.py's."""


MIGRATE_BUCKET = "test-blue-smoke-97-media"


@contextlib.contextmanager
def migrate_world(name: str, spec: MigrateWorld, root: Path) -> Iterator[World]:
    if WHY:
        pytest.skip(WHY)
    pytest.importorskip("moto.server")
    from s3_server import ServerDidNotStart, StrictS3Proxy, client, moto_server
    from test_migrate_media_fly import APP, FILES, WORKER_B, split_fleet

    cwd = root / name
    cwd.mkdir(parents=True)
    try:
        with contextlib.ExitStack() as stack:
            endpoint = stack.enter_context(moto_server(cwd / "s3.log"))
            proxy = stack.enter_context(StrictS3Proxy(endpoint))
            client(proxy.url).create_bucket(Bucket=MIGRATE_BUCKET)
            site = stack.enter_context(split_fleet(cwd, proxy, MIGRATE_MEDIA_BUCKET=MIGRATE_BUCKET))
            # The runbook's fleet has no conflict and no row without a file: the two workers
            # hold the same bytes under the shared name, and the row of no file is gone.
            site.sh(WORKER_B, FILES[WORKER_B].replace("worker b, longer", "worker a"))
            done = site.manage(
                APP, "shell", "-c",
                "from apps.services.models import UserDataFile as U; "
                "U.objects.filter(file='user_data/gone.csv').delete()",
            )  # fmt: skip
            assert done.returncode == 0, done.stdout + done.stderr
            (cwd / "invoke.yaml").write_text(
                "volguard:\n"
                "  volume_fstypes: [ext4, tmpfs]  # the simulated volumes are tmpfs\n"
                "  transport: ssh\n"
                f"  ssh_config: {json.dumps(str(site.fleet.ssh_config))}\n"
                f"  manage_py: {json.dumps(f'{site.python} {MANAGE}')}\n"
            )
            env = _base_env(cwd)
            env.update(
                {
                    "FLY_API_TOKEN": site.sim.token,
                    "FLY_FLAPS_BASE_URL": site.sim.url,
                    "PATH": f"{site.fleet.flyctl_dir}{os.pathsep}{env['PATH']}",
                }
            )
            world = World(name, cwd, env, fleet=site.fleet, sim=site.sim)
            world.site = site  # type: ignore[attr-defined]
            yield world
    except ServerDidNotStart as e:
        pytest.skip(str(e))


def _mysite(root: Path) -> Path:
    """setting-up-a-media-volume.md: an app that exists, its fly.toml step 0's, no Machines."""
    document = tomlkit.document()
    document["description"] = "mysite: created with fly apps create, nothing deployed yet"
    document["app"] = "mysite"
    document["primary_region"] = "syd"
    document["tokens"] = list(DEFAULT_TOKENS)
    document["fly_toml"] = tomlkit.string(_block(SETUP, "toml", 0) + "\n", multiline=True)
    path = root / "mysite.toml"
    path.write_text(tomlkit.dumps(document))
    return path


def _full(root: Path) -> Path:
    """The healthy app, its volume 95% full as the Machines API reports it."""
    text = scenario_path("healthy").read_text()
    assert "used_percent = 12" in text
    path = root / "full.toml"
    path.write_text(text.replace("used_percent = 12", "used_percent = 95"))
    return path


def _fill_volume(world: World) -> None:
    """...and as the Machine sees it: 60 of the simulated volume's 64 MB used."""
    done = world.fleet_exec("app", ["fallocate", "-l", "60M", "/data/filler"])
    assert done.returncode == 0, done.stderr


def _worker_without_mount(text: str) -> str:
    assert 'processes = ["app", "worker"]' in text
    return text.replace('processes = ["app", "worker"]', 'processes = ["app"]')


def _worker_file(world: World) -> None:
    """The file the worker wrote on its own volume: the web Machine never sees it."""
    _write_on(world, "worker", WORKER_FILE)


#: The worlds, the longest first: they run side by side, `Worlds.PARALLEL` at a time.
WORLDS: dict[str, MigrateWorld | SimWorld | DjangoWorld | WebWorld | InstallWorld] = {
    # the split fleet moved to object storage (moto's S3 server), its runbook end to end
    "migrate": MigrateWorld(),
    # the incident, with the example app on the web and worker Machines
    "incident": SimWorld("incident", example_app=LOST, setup=_worker_file),
    # ...after its step 5: one media group; the worker's file is back, two are gone for good
    "repair": SimWorld("healthy", example_app=LOST - {"trial-2.csv"}),
    "split": SimWorld("incident"),  # the incident again, for the commands that only read
    "ci": SimWorld("healthy", example_app=frozenset()),
    "mysite": SimWorld(_mysite),
    "monitor": SimWorld("healthy", example_app=LOST),
    "no-volume": SimWorld("missing-volume"),
    "root-owned": SimWorld("root-owned-media"),
    "rows": DjangoWorld(),
    "resume": SimWorld("healthy"),
    "media-root": SimWorld("worker-media-root-wrong"),
    "cron": DjangoWorld(webhook=True),
    "install": InstallWorld(),
    "not-mounted": SimWorld("machine-not-mounted"),
    "read-only": SimWorld("machine-read-only"),
    "full": SimWorld(_full, setup=_fill_volume),
    "healthy": SimWorld("healthy"),
    "unreachable": SimWorld("machine-unreachable"),
    "health": WebWorld(),
    "worker-without-mount": SimWorld("incident", fly_toml=_worker_without_mount),
}


def app_python() -> tuple[str, dict[str, str]]:
    """`volguard.sim.example_app.app_python`, skipping (failing under CI) when it cannot."""
    try:
        return example_app.app_python()
    except example_app.ExampleAppError as e:
        if IN_CI:
            pytest.fail(str(e))
        pytest.skip(str(e))


def _django_env(cwd: Path, database: Path, media: Path) -> dict[str, str]:
    return {
        **_base_env(cwd),
        "DJANGO_SETTINGS_MODULE": "config.settings",
        "DATABASE_URL": f"sqlite:///{database}",
        "MEDIA_ROOT": str(media),
        "CELERY_BROKER_URL": "memory://",
    }


_SEEDED: list[Path] = []
_SEEDING = threading.Lock()


def _seed_database(database: Path) -> None:
    """The example app's database with `UPLOADS`' rows: migrated and seeded once, then copied."""
    with _SEEDING:
        if not _SEEDED:
            template = Path(tempfile.mkdtemp(prefix="volguard-runbooks-seed-")) / "seed.sqlite3"
            env = _django_env(template.parent, template, template.parent / "unused-media")
            env.update({"VG_UPLOADS": json.dumps(UPLOADS), "VG_DAY": DAY})
            for args in (["migrate", "--noinput"], ["shell", "-c", SEED]):
                done = subprocess.run(
                    [sys.executable, str(MANAGE), *args],
                    env=env,
                    capture_output=True,
                    text=True,
                    timeout=120,
                    check=False,
                )
                assert done.returncode == 0, done.stdout + done.stderr
            _SEEDED.append(template)
    shutil.copyfile(_SEEDED[0], database)


def _write_on(world: World, group: str, rel: str) -> None:
    """An upload on a Machine's volume, owned by the app user as if the app had saved it."""
    script = (
        "import os, pwd, sys\n"
        "app = pwd.getpwnam('app')\n"
        "path, parts = '/data/media', sys.argv[1].split('/')\n"
        "for i, part in enumerate(parts):\n"
        "    path = os.path.join(path, part)\n"
        "    if i == len(parts) - 1:\n"
        "        open(path, 'w').write('uploaded\\n')\n"
        "    else:\n"
        "        os.makedirs(path, exist_ok=True)\n"
        "    os.chown(path, app.pw_uid, app.pw_gid)\n"
    )
    done = world.fleet_exec(group, ["python3", "-c", script, rel])
    assert done.returncode == 0, done.stderr


@contextlib.contextmanager
def sim_world(name: str, spec: SimWorld, root: Path) -> Iterator[World]:
    if WHY:
        pytest.skip(WHY)
    cwd = root / name
    cwd.mkdir(parents=True)
    scenario = load_scenario(spec.scenario(root) if callable(spec.scenario) else spec.scenario)
    fly_toml = spec.fly_toml(scenario.fly_toml) if spec.fly_toml else scenario.fly_toml
    (cwd / "fly.toml").write_text(fly_toml)
    settings = ["volguard:", "  volume_fstypes: [ext4, tmpfs]  # the simulated volumes are tmpfs"]
    database_dir = None
    try:
        if spec.example_app is not None:
            python, python_env = app_python()
            # under /tmp: the app user must reach it (pytest's own tmp is root's alone)
            database_dir = Path(tempfile.mkdtemp(prefix="volguard-runbooks-db-", dir="/tmp"))
            database = database_dir / "app.sqlite3"
            _seed_database(database)
            manage = ["/usr/bin/env", f"DATABASE_URL=sqlite:///{database}"]
            manage += [f"{k}={v}" for k, v in python_env.items()] + [python, str(MANAGE)]
            settings.append(f"  manage_py: {json.dumps(shlex.join(manage))}")
        (cwd / "invoke.yaml").write_text("\n".join(settings) + "\n")
        with SimServer(scenario) as sim, LocalFleet(scenario) as fleet:
            fleet.follow(sim)  # forks, restores and temporary Machines (volguard recover)
            env = _base_env(cwd)
            env.update(
                {
                    "FLY_API_TOKEN": sim.token,
                    "FLY_FLAPS_BASE_URL": sim.url,
                    "PATH": f"{fleet.flyctl_dir}{os.pathsep}{env['PATH']}",
                }
            )
            started: dict[str, str] = {}
            for m in scenario.machines:
                if m.state == "started":
                    started.setdefault(m.group, m.id)
            subst = {f"<{group} machine id>": mid for group, mid in started.items()}
            world = World(name, cwd, env, subst=subst, fleet=fleet, sim=sim)
            if database_dir is not None:
                app = pwd.getpwnam("app")  # the fleet made it
                for path in (database_dir, *database_dir.iterdir()):
                    os.chown(path, app.pw_uid, app.pw_gid)
                database_dir.chmod(0o700)
                for rel in upload_paths(lost=spec.example_app):
                    _write_on(world, "app", rel)
            if spec.setup:
                spec.setup(world)
            yield world
    finally:
        if database_dir is not None:
            shutil.rmtree(database_dir, ignore_errors=True)


class _Webhook(http.server.BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        self.server.received.append(self.rfile.read(length))  # type: ignore[attr-defined]
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@contextlib.contextmanager
def django_world(name: str, spec: DjangoWorld, root: Path) -> Iterator[World]:
    """``python manage.py`` is the example app's; the runbook's ``/data/`` a directory here."""
    cwd = root / name
    data = cwd / "data"
    media = data / "media"
    media.mkdir(parents=True)
    (data / "volguard").mkdir()
    for rel in upload_paths(lost=LOST):
        (media / rel).parent.mkdir(parents=True, exist_ok=True)
        (media / rel).write_text("uploaded\n")
    database = cwd / "app.sqlite3"
    _seed_database(database)
    env = _django_env(cwd, database, media)
    manage = f"{shlex.quote(sys.executable)} {shlex.quote(str(MANAGE))}"
    subst = {
        "python manage.py": manage,
        "/data/": f"{data}/",
        "/tmp/missing-files.json": str(cwd / "missing-files.json"),
    }
    world = World(name, cwd, env, subst=subst, unsubst={str(data): "/data"})
    if not spec.webhook:
        yield world
        return
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Webhook)
    server.received = []  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        world.env["ALERT_WEBHOOK_URL"] = f"http://127.0.0.1:{server.server_address[1]}/alert"
        world.webhook = server.received  # type: ignore[attr-defined]
        yield world
    finally:
        server.shutdown()
        server.server_close()


@contextlib.contextmanager
def web_world(name: str, spec: WebWorld, root: Path) -> Iterator[World]:
    cwd = root / name
    media = cwd / "data" / "media"
    media.mkdir(parents=True)
    env = _django_env(cwd, cwd / "unused.sqlite3", media)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen(
        [sys.executable, str(MANAGE), "runserver", f"127.0.0.1:{port}", "--noreload"],
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
                break
            assert server.poll() is None, "runserver exited"
            assert time.monotonic() < deadline, "runserver did not start in 30 s"
            time.sleep(0.1)
        subst = {"https://mysite.fly.dev": f"http://127.0.0.1:{port}"}
        yield World(name, cwd, env, subst=subst, unsubst={str(media): "/data/media"})
    finally:
        server.terminate()
        server.wait(timeout=30)


@contextlib.contextmanager
def install_world(name: str, spec: InstallWorld, root: Path) -> Iterator[World]:
    """`pip install .` in the checkout, into a new virtualenv: this one's pip, --no-deps (the
    dependencies are this virtualenv's; in CI pip resolves them from PyPI as .ci/run does)."""
    venv = root / name / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    pip = (
        f"{shlex.quote(str(VENV_BIN / 'pip'))} --python {shlex.quote(str(venv / 'bin' / 'python'))}"
    )
    subst = {"pip install .": f"{pip} install --no-deps --quiet .", "<venv>": str(venv)}
    yield World(name, REPO, _base_env(root / name), subst=subst)


_CONTEXTS: dict[type, Callable[..., contextlib.AbstractContextManager[World]]] = {
    MigrateWorld: migrate_world,
    SimWorld: sim_world,
    DjangoWorld: django_world,
    WebWorld: web_world,
    InstallWorld: install_world,
}


# == running the worlds, once each, side by side ===============================================


@dataclass
class Outcome:
    code: int
    output: str
    seconds: float = 0.0


class Worlds:
    """Runs every world's rows once, in `TABLE` order within a world, worlds in parallel."""

    PARALLEL = 4

    def __init__(self, root: Path) -> None:
        self.root = root
        self.outcomes: dict[int, Outcome] = {}
        self.failures: dict[str, BaseException] = {}
        self._started = False
        self._lock = threading.Lock()

    @staticmethod
    def rows(world: str) -> list[tuple[int, str, str, Run]]:
        return [
            (i, source, command, how)
            for i, (source, command, how) in enumerate(TABLE)
            if isinstance(how, Run) and how.world == world
        ]

    def outcome(self, index: int) -> Outcome:
        how = TABLE[index][2]
        assert isinstance(how, Run)
        self.run_all()
        if how.world in self.failures:
            raise self.failures[how.world]
        return self.outcomes[index]

    def run_all(self) -> None:
        with self._lock:
            if self._started:
                return
            self._started = True
            with ThreadPoolExecutor(self.PARALLEL, thread_name_prefix="world") as pool:
                list(pool.map(self._run_world, WORLDS))

    def _run_world(self, name: str) -> None:
        spec = WORLDS[name]
        try:
            with _CONTEXTS[type(spec)](name, spec, self.root) as world:
                for index, _source, command, how in self.rows(name):
                    started = time.monotonic()
                    code, output = world.run(command, how)
                    self.outcomes[index] = Outcome(code, output, time.monotonic() - started)
                    if os.environ.get("VOLGUARD_RUNBOOKS_SHOW"):  # while writing a runbook
                        print(f"\n== {name}: {command} (exit {code})\n{output}", flush=True)
        except BaseException as e:  # pytest's skip and fail too: raised again by outcome()
            self.failures[name] = e


@pytest.fixture(scope="module")
def worlds(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Worlds]:
    yield Worlds(tmp_path_factory.mktemp("runbooks"))
    for template in _SEEDED:
        shutil.rmtree(template.parent, ignore_errors=True)
    _SEEDED.clear()


# == normalising and matching output ===========================================================

_VOLATILE = [
    (re.compile(r"vol_[0-9a-z]{16}"), "vol_•"),
    (re.compile(r"vs_[0-9A-Za-z]{10,}"), "vs_•"),
    (re.compile(r"\b[0-9a-f]{14}\b"), "•machine"),
    (re.compile(r"\b(deploy|remediate|migrate-media)-[\w.-]+?-\d{8}T\d+-\d+\b"), r"\1-•run"),
    (re.compile(r"\b\d{8}T\d{6,}Z?\b"), "•time"),
    # a duration and the padding before it: a slow step (10.6s) takes one column more
    (re.compile(r" *\b\d+\.\ds\b"), " •s"),
    (re.compile(r"\.volguard-probe-[\w-]+"), ".volguard-probe-•"),
    (re.compile(r"device \d+:\d+"), "device •"),
    (re.compile(r"\b127\.\d+\.\d+\.\d+\b"), "•address"),
]


def normalise(text: str) -> str:
    for pattern, replacement in _VOLATILE:
        text = pattern.sub(replacement, text)
    return text


def line_pattern(expected: str) -> re.Pattern[str]:
    return re.compile(".*".join(re.escape(part) for part in normalise(expected).split("…")))


def unmatched(expected_block: str, output: str) -> str | None:
    """None when each line of the block matches an output line, in order; else the line."""
    lines = [line.rstrip() for line in normalise(output).splitlines()]
    position = 0
    for expected in expected_block.splitlines():
        if not expected.strip():
            continue
        pattern = line_pattern(expected.rstrip())
        while position < len(lines) and not pattern.fullmatch(lines[position]):
            position += 1
        if position == len(lines):
            return expected
        position += 1
    return None


# == the tests =================================================================================


def test_every_command_has_a_row_and_every_row_a_command() -> None:
    listed = {(source, command) for source, command, _ in TABLE}
    for source, command, how in TABLE:
        if isinstance(how, Same):
            assert (how.source, command) in listed, (source, command, how)
            assert isinstance(_how(how.source, command), Run), (source, command)
    extracted = all_commands()
    untested = sorted(extracted - listed)
    stale = sorted(listed - extracted)
    assert not untested, "commands without a row in TABLE:\n" + "\n".join(map(str, untested))
    assert not stale, "rows in TABLE for commands no runbook has:\n" + "\n".join(map(str, stale))


def test_commands_not_run_are_few_and_say_why() -> None:
    not_run = [(s, c, how.why) for s, c, how in TABLE if isinstance(how, NotRun)]
    assert len(not_run) <= 6, not_run
    assert all(len(why) > 20 for _, _, why in not_run)
    # the stand-in runs `flyctl ssh console`, `machines list` and `deploy`: so do we
    for source, command, why in not_run:
        for supported in ("flyctl ssh console", "flyctl machines list", "flyctl deploy"):
            assert not command.startswith(supported), (source, command, why)


def _how(source: str, command: str) -> Run | NotRun | Same:
    return next(how for s, c, how in TABLE if (s, c) == (source, command))


def _world_ids() -> list[str]:
    return sorted({how.world for _, _, how in TABLE if isinstance(how, Run)})


@pytest.mark.parametrize("world", _world_ids())
def test_the_commands_of_a_world_do_what_the_runbook_says(world: str, worlds: Worlds) -> None:
    problems = []
    for index, source, command, how in worlds.rows(world):
        outcome = worlds.outcome(index)
        doc = (
            (RUNBOOKS / (how.doc or source)).read_text()
            if (how.doc or source).endswith(".md")
            else ""
        )
        if outcome.code != how.code:
            problems.append(f"{command!r} exited {outcome.code}, not {how.code}")
        for snippet in how.expect:
            if normalise(snippet) not in normalise(outcome.output):
                problems.append(f"{command!r} did not print {snippet!r}")
            if doc and snippet not in doc:
                problems.append(f"{how.doc or source} does not say {snippet!r} ({command!r})")
        if problems and problems[-1].startswith(repr(command)):
            problems.append(f"--- output of {command!r}:\n{outcome.output}")
    assert not problems, "\n".join(problems)


def _output_blocks() -> list[tuple[str, Block, list[str]]]:
    """Each ```text block with the commands of the ```sh block above it (same section)."""
    found = []
    for path in sorted(RUNBOOKS.glob("*.md")):
        last_sh: Block | None = None
        for block in blocks(path.read_text()):
            if block.lang == "sh":
                last_sh = block
            elif block.lang == "text":
                same_step = last_sh is not None and last_sh.section == block.section
                found.append((path.name, block, shell_lines(last_sh.body) if same_step else []))
    return found


@pytest.mark.parametrize(
    ("runbook", "block", "commands"),
    _output_blocks(),
    ids=[f"{name}:{block.line}" for name, block, _ in _output_blocks()],
)
def test_what_you_should_see_is_real_output(
    runbook: str, block: Block, commands: list[str], worlds: Worlds
) -> None:
    candidates = [
        i for i, (source, command, how) in enumerate(TABLE)
        if source == runbook and command in commands and isinstance(how, Run)
    ]  # fmt: skip
    assert commands, (
        f"{runbook}:{block.line}: a ```text block shows output, so it follows the ```sh block "
        "of its command in the same section (other text: another fence, e.g. ```procfile)"
    )
    assert candidates, f"{runbook}:{block.line}: no command above it is run"
    misses = []
    for index in candidates:
        outcome = worlds.outcome(index)
        miss = unmatched(block.body, outcome.output)
        if miss is None:
            return
        misses.append(f"{TABLE[index][1]!r}: no line matches {miss!r} in:\n{outcome.output}")
    pytest.fail(f"{runbook}:{block.line}: not real output:\n" + "\n".join(misses))


# -- the workflow ----------------------------------------------------------------------------------


def _steps(job: dict[str, Any]) -> tuple[list[str], list[str]]:
    """A job's actions (``uses``, without the version) and its commands (``run``)."""
    uses = [step["uses"].split("@")[0] for step in job["steps"] if "uses" in step]
    runs = [step["run"].strip() for step in job["steps"] if "run" in step]
    return uses, runs


def test_the_workflow_has_the_jobs_the_runbooks_describe() -> None:
    workflow = load_workflow()
    assert set(workflow["on"]) == {"pull_request", "push", "schedule", "workflow_dispatch"}
    assert workflow["on"]["push"] == {"branches": ["main"]}
    assert workflow["permissions"] == {"contents": "read"}  # the least, raised per job
    app = tomlkit.parse((REPO / "fly.toml").read_text())["app"]
    jobs = workflow["jobs"]
    assert set(jobs) == {"lint", "deploy", "monitor"}

    lint = jobs["lint"]
    assert lint["if"] == "github.event_name == 'pull_request'"
    assert lint["permissions"]["security-events"] == "write"
    # the repository's own action (action.yml, tested in tests/test_integrations.py)
    assert _steps(lint) == (["actions/checkout", "./"], [])
    assert lint["steps"][-1]["with"]["fly-toml"] == "fly.toml"

    deploy = jobs["deploy"]
    assert "github.event_name == 'push'" in deploy["if"]
    assert "refs/heads/main" in deploy["if"]
    assert deploy["concurrency"] == {"group": f"fly-deploy-{app}", "cancel-in-progress": False}
    assert deploy["env"]["FLY_API_TOKEN"] == "${{ secrets.FLY_API_TOKEN }}"
    uses, runs = _steps(deploy)
    assert "superfly/flyctl-actions/setup-flyctl" in uses
    order = [step.get("uses", "").split("@")[0] or step["run"] for step in deploy["steps"]]
    assert order.index("superfly/flyctl-actions/setup-flyctl") < order.index(
        "volguard deploy --yes"
    )
    assert runs == [
        "pip install .",
        "volguard deploy --yes",
        "volguard verify-volume --format github",
    ]

    monitor = jobs["monitor"]
    assert "schedule" in monitor["if"]
    assert app in monitor["concurrency"]["group"]
    uses, runs = _steps(monitor)
    assert "superfly/flyctl-actions/setup-flyctl" in uses
    assert runs[1:] == ["volguard verify-volume --format github --fail-on warning",
                        "volguard remediate"]  # fmt: skip
    for job in jobs.values():  # an alert, never a repair: nothing in CI passes --fix/--delete
        assert not any(flag in r for r in _steps(job)[1] for flag in ("--fix", "--delete"))


def test_the_runbook_shows_the_workflow_verbatim() -> None:
    shown = [b.body for b in blocks((RUNBOOKS / GATE).read_text()) if b.lang == "yaml"]
    assert WORKFLOW.read_text().rstrip("\n") in shown


def test_actionlint_accepts_the_workflow() -> None:
    actionlint = shutil.which("actionlint", path=f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}")
    if actionlint is None:
        # Not a dependency: the only wheel that installs from PyPI here ships a personal
        # fork's binary. The workflow's shape is checked above; this runs where it exists.
        pytest.skip("actionlint is not on PATH")
    done = subprocess.run(
        [actionlint, "-no-color", str(WORKFLOW.relative_to(REPO))],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_index_lists_every_runbook_and_their_links_resolve() -> None:
    index = (RUNBOOKS / "README.md").read_text()
    for path in RUNBOOKS.glob("*.md"):
        if path.name != "README.md":
            assert f"]({path.name})" in index, path.name
    for path in RUNBOOKS.glob("*.md"):
        for target in re.findall(r"\]\(([^)#\s]+\.(?:md|yml|toml))(?:#[^)]*)?\)", path.read_text()):
            assert (path.parent / target).resolve().exists(), f"{path.name}: {target}"


def test_the_matcher_itself() -> None:
    assert unmatched("a\n  b … d", "x\na\n  b c d\n") is None
    assert unmatched("b\na", "a\nb\n") == "a"  # order matters
    assert unmatched("vol_aaaaaaaaaaaaaaaa ok", "vol_0123456789abcdef ok") is None
    assert strip_comment('echo "a # b"  # c') == 'echo "a # b"'
    assert shell_lines("# x\nvolguard a \\\n  --b   # c\n\nflyctl d") == [
        "volguard a --b",
        "flyctl d",
    ]
