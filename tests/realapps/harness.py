"""Drive a real-app test project (tests/realapps/<app>/) the way an operator would.

Each project is a minimal Django project around an app installed from PyPI. Every step runs
its ``manage.py`` in a subprocess (Django reads settings once per process, and other test
modules configure Django in the pytest process), with its own ``DATABASE_URL`` and a
``MEDIA_ROOT`` under the test's temporary directory.

`Audit` is the one place that reads the ``check_missing_files --json`` document (its keys are
volguard.audit_document's, documented in docs/remediate.md): a key renamed there is a
one-line change here.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from volguard.audit_document import find_document

REALAPPS = Path(__file__).resolve().parent
REPO = REALAPPS.parents[1]
RESULT_MARK = "VG_RESULT="

# -- the JSON document: every key the tests read ------------------------------------------------
ROWS, MODEL, PK, REASON = "rows", "model", "pk", "reason"
TOTAL_ROWS, PROBLEM_ROWS = "total_rows", "problem_rows"
REMEDIATION, CHANGED, EXPORT, REFUSED = "remediation", "changed", "export", "refused"


@dataclass
class Audit:
    """One ``check_missing_files … --json`` run: its exit code, output and document."""

    proc: subprocess.CompletedProcess[str]
    doc: dict[str, Any] | None

    @property
    def returncode(self) -> int:
        return self.proc.returncode

    @property
    def output(self) -> str:
        return self.proc.stdout + self.proc.stderr

    def pks(self, reason: str | None = None, model: str | None = None) -> set[Any]:
        """Primary keys of the reported rows, of one reason and model (``app.Model``)."""
        assert self.doc is not None, self.output
        return {
            row[PK]
            for row in self.doc[ROWS]
            if (reason is None or row[REASON] == reason) and (model is None or row[MODEL] == model)
        }

    def reasons(self, model: str) -> dict[Any, set[str]]:
        """``{pk: reasons}`` of the reported rows of one model (``app.Model``)."""
        assert self.doc is not None, self.output
        found: dict[Any, set[str]] = {}
        for row in self.doc[ROWS]:
            if row[MODEL] == model:
                found.setdefault(row[PK], set()).add(row[REASON])
        return found

    @property
    def total_rows(self) -> int:
        assert self.doc is not None, self.output
        return self.doc[TOTAL_ROWS]

    @property
    def problem_rows(self) -> int:
        assert self.doc is not None, self.output
        return self.doc[PROBLEM_ROWS]

    @property
    def changed(self) -> int:
        """Rows the ``--fix``/``--delete`` changed (0 when it did not act)."""
        if self.doc is None or REMEDIATION not in self.doc:
            return 0
        return self.doc[REMEDIATION][CHANGED]

    @property
    def export(self) -> str | None:
        if self.doc is None or REMEDIATION not in self.doc:
            return None
        return self.doc[REMEDIATION][EXPORT]

    @property
    def refused(self) -> dict[str, Any] | None:
        return None if self.doc is None else self.doc.get(REFUSED)


@dataclass
class Site:
    """One project on one database and one media root."""

    app: str  # the project's directory under tests/realapps/
    settings: str  # its settings module
    database_url: str
    media: Path
    env_extra: dict[str, str] = field(default_factory=dict)

    @property
    def project(self) -> Path:
        return REALAPPS / self.app

    @property
    def vendor(self) -> str:
        return "postgresql" if self.database_url.startswith("postgres") else "sqlite"

    def env(self, **extra: str) -> dict[str, str]:
        return {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": self.settings,
            "PYTHONPATH": os.pathsep.join([str(self.project), str(REALAPPS / "shared"), str(REPO)]),
            "DATABASE_URL": self.database_url,
            "MEDIA_ROOT": str(self.media),
            "PYTHONIOENCODING": "utf-8",
            "PYTHONDONTWRITEBYTECODE": "1",
            **self.env_extra,
            **extra,
        }

    def command(self, *args: str) -> list[str]:
        return [sys.executable, str(self.project / "manage.py"), *args]

    def manage(
        self, *args: str, timeout: float = 120, cwd: Path | None = None, **extra: str
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.command(*args),
            cwd=cwd or self.media.parent,  # where .volguard/ goes by default
            env=self.env(**extra),
            capture_output=True,
            text=True,
            encoding="utf-8",
            timeout=timeout,
            check=False,
        )

    def popen(self, *args: str, cwd: Path, **extra: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            self.command(*args),
            cwd=cwd,
            env=self.env(**extra),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            encoding="utf-8",
        )

    def migrate(self) -> None:
        self.media.mkdir(parents=True, exist_ok=True)
        proc = self.manage("migrate", "--noinput")
        assert proc.returncode == 0, proc.stdout + proc.stderr

    def shell(self, code: str, **extra: str) -> Any:
        """Run ``code`` with ``manage.py shell -c``; it sets ``result``, returned as JSON."""
        script = (
            f"{code}\nimport json as _j\nprint({RESULT_MARK!r} + _j.dumps(result, default=str))"
        )
        proc = self.manage("shell", "-c", script, **extra)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        line = next(x for x in proc.stdout.splitlines() if x.startswith(RESULT_MARK))
        return json.loads(line.removeprefix(RESULT_MARK))

    def audit(self, *args: str, cwd: Path | None = None, **extra: str) -> Audit:
        """``check_missing_files --json --older-than 0 ARGS``."""
        proc = self.manage(
            "check_missing_files", "--json", "--older-than", "0", *args, cwd=cwd, **extra
        )
        return Audit(proc, find_document(proc.stdout))


def audit_of(proc: subprocess.CompletedProcess[str]) -> Audit:
    return Audit(proc, find_document(proc.stdout))


# -- the media root: what is there, and known damage ------------------------------------------


def files(root: Path) -> dict[str, int]:
    """Every file under ``root``: its relative path and size."""
    return {
        str(p.relative_to(root)): p.stat().st_size for p in sorted(root.rglob("*")) if p.is_file()
    }


def delete_files(root: Path, names: Iterable[str]) -> None:
    for name in names:
        (root / name).unlink()


def truncate_files(root: Path, names: Iterable[str]) -> None:
    for name in names:
        (root / name).write_bytes(b"")


def move_files(root: Path, names: Iterable[str], volume: Path) -> None:
    """Move files to another directory, as if they had been written to another volume."""
    for name in names:
        (volume / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.move(root / name, volume / name)


def remove_directory(root: Path, name: str) -> None:
    shutil.rmtree(root / name)


# Run inside ``manage.py shell``: a small PNG made with Pillow, as an upload would bring.
PNG_HELPER = """\
import io
from PIL import Image as _Image
from django.core.files.base import ContentFile

def png(name, size=(64, 48), color=(200, 40, 40)):
    buf = io.BytesIO()
    _Image.new("RGB", size, color).save(buf, "PNG")
    return ContentFile(buf.getvalue(), name=name)
"""


# -- one project set up once per module, copied for each test ---------------------------------


def sqlite_site(app: str, settings: str, root: Path) -> Site:
    """A site whose database (``db.sqlite3``) and media live in ``root``."""
    return Site(app, settings, f"sqlite:///{root / 'db.sqlite3'}", root / "media")


def clone(template: Site, dest: Path) -> Site:
    """A copy of a SQLite site's directory (database, media, any other volume beside it)."""
    shutil.copytree(template.media.parent, dest, dirs_exist_ok=True)
    return sqlite_site(template.app, template.settings, dest)
