"""The real-app tier on django-polymorphic: a file field on a polymorphic multi-table parent,
and a storage chosen per row.

The project (tests/realapps/polymorphic/) has a small app of ours on django-polymorphic:
``Document`` (a ``PolymorphicModel``: its default manager downcasts every row to its subclass)
declares the file field, ``Invoice`` and ``Contract`` inherit it through multi-table
inheritance; ``Scan`` keeps each row's file on the public or the private storage by its
``is_private`` flag, the way django-filer splits files (the field's own ``storage`` is the
public one).

Content is made through the models (``FieldFile.save``), the volumes are damaged in known
ways, and the command's answers are checked against that truth; ``--delete`` and the
re-upload race run on PostgreSQL. Tests marked xfail prove what issue #8 demands and
volguard does not do yet; they must pass (and lose the mark) when it does.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import require, throwaway_postgres
from realapps.harness import Site, clone, delete_files, files, sqlite_site

DOCUMENT, INVOICE, SCAN = "library.Document", "library.Invoice", "library.Scan"
FAILED_MESSAGE = "File missing from storage. Please re-upload your file."

SEED = """
from django.core.files.base import ContentFile
from library.models import Contract, Document, Invoice, Scan
docs, scans = {}, {}
def add(obj, name, body):
    obj.file.save(name, ContentFile(body))
    return obj
for i in range(4):
    d = add(Document(title=f"note {i}"), f"note{i}.txt", b"note %d" % i)
    docs[d.title] = [d.pk, d.file.name]
for i in range(8):
    d = add(Invoice(title=f"invoice {i}", number=f"INV-{i}"), f"inv{i}.pdf", b"%%PDF %d" % i)
    docs[d.title] = [d.pk, d.file.name]
for i in range(4):
    d = add(Contract(title=f"contract {i}", signed_by=f"signer {i}"), f"con{i}.pdf", b"%%PDF c")
    docs[d.title] = [d.pk, d.file.name]
for i in range(10):
    s = add(Scan(title=f"scan {i}", is_private=i % 2 == 1), f"scan{i}.png", b"scan %d" % i)
    scans[s.title] = [s.pk, s.file.name]
result = {"docs": docs, "scans": scans}
"""

# Every Document as its own class, with its own fields (the default manager downcasts).
STATE = """
from library.models import Document
def own(d):
    return getattr(d, "number", None) or getattr(d, "signed_by", None)
result = {d.pk: [type(d).__name__, d.title, d.file.name, d.processing_status, own(d)]
          for d in Document.objects.all()}
"""

Seeded = dict[str, dict[str, tuple[int, str]]]


def _seed(site: Site) -> Seeded:
    site.migrate()
    seeded = site.shell(SEED)
    return {
        kind: {t: (pk, name) for t, (pk, name) in rows.items()} for kind, rows in seeded.items()
    }


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> tuple[Site, Seeded]:
    """The project migrated and seeded once on SQLite; each test works on a copy."""
    require("polymorphic")
    site = sqlite_site("polymorphic", "polymorphic_site", tmp_path_factory.mktemp("polymorphic"))
    return site, _seed(site)


@pytest.fixture
def site(template: tuple[Site, Seeded], tmp_path: Path) -> Site:
    return clone(template[0], tmp_path / "site")


@pytest.fixture
def seeded(template: tuple[Site, Seeded]) -> Seeded:
    return template[1]


def _damage_documents(site: Site, docs: dict[str, tuple[int, str]]) -> dict[str, set[int]]:
    """One file of each class deleted, two of the Invoices'."""
    titles = ("note 0", "invoice 0", "invoice 1", "contract 0")
    delete_files(site.media, [docs[t][1] for t in titles])
    return {
        "all": {docs[t][0] for t in titles},
        "invoices": {docs[t][0] for t in titles if t.startswith("invoice")},
    }


def test_the_report_names_every_document_whose_file_is_gone_whatever_its_class(
    site: Site, seeded: Seeded
) -> None:
    gone = _damage_documents(site, seeded["docs"])

    audit = site.audit("--model", DOCUMENT)

    assert audit.returncode == 2, audit.output
    assert audit.reasons(DOCUMENT) == {pk: {"missing"} for pk in gone["all"]}


def test_the_inherited_file_field_is_audited_from_the_child_model(
    site: Site, seeded: Seeded
) -> None:
    gone = _damage_documents(site, seeded["docs"])

    audit = site.audit("--model", INVOICE)

    assert audit.returncode == 2, audit.output
    assert audit.pks("missing") == gone["invoices"]


def test_fix_marks_exactly_the_documents_whose_file_is_gone_and_keeps_their_class(
    site: Site, seeded: Seeded
) -> None:
    gone = _damage_documents(site, seeded["docs"])
    before = site.shell(STATE)

    fixed = site.audit("--model", DOCUMENT, "--fix", "--max-missing", "50%")

    assert fixed.changed == len(gone["all"]), fixed.output
    after = site.shell(STATE)
    for pk, (cls, title, name, status, own) in after.items():
        assert [cls, title, name, own] == [before[pk][i] for i in (0, 1, 2, 4)]
        assert status == ("failed" if int(pk) in gone["all"] else "ready")


def test_an_intact_file_on_its_rows_own_storage_is_never_reported_missing(
    site: Site, seeded: Seeded
) -> None:
    scans = seeded["scans"]
    delete_files(site.media, [scans["scan 0"][1]])  # public
    delete_files(site.media.parent / "private-media", [scans["scan 1"][1]])  # private
    gone = {scans["scan 0"][0], scans["scan 1"][0]}

    audit = site.audit("--model", SCAN)

    if audit.returncode == 1:  # a clear per-model refusal is allowed instead of a guess
        assert SCAN in audit.output
    else:
        assert audit.pks("missing", SCAN) == gone, audit.output


# -- PostgreSQL: --delete with export and loaddata, and the re-upload race ----------------------


@pytest.fixture(scope="module")
def pg_site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Site, Seeded]]:
    require("polymorphic")
    root = tmp_path_factory.mktemp("polymorphic-pg")
    with throwaway_postgres("vg_realapps_polymorphic") as url:
        site = Site("polymorphic", "polymorphic_site", url, root / "media")
        yield site, _seed(site)


def test_deleted_documents_come_back_whole_with_loaddata(pg_site: tuple[Site, Seeded]) -> None:
    site, seeded = pg_site
    gone = _damage_documents(site, seeded["docs"])
    before, files_before = site.shell(STATE), files(site.media.parent)
    export = site.media.parent / "exports" / "documents.json"

    run = site.audit(
        "--model", DOCUMENT, "--delete", "--yes", "--max-missing", "50%", "--export", str(export)
    )
    deleted = site.shell(STATE)

    assert {int(pk) for pk in before} - {int(pk) for pk in deleted} <= gone["all"], run.output
    assert files_before.keys() <= files(site.media.parent).keys()  # no file deleted
    if run.changed:
        restore = site.manage("loaddata", str(export))
        assert restore.returncode == 0, restore.stderr[-2000:]
    assert site.shell(STATE) == before


def _waiting_on_a_lock(admin: Any, database: str, timeout: float = 60) -> bool:
    """Whether a backend of ``database`` comes to wait on a lock within ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        row = admin.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND wait_event_type = 'Lock'",
            (database,),
        ).fetchone()
        if row[0]:
            return True
        time.sleep(0.2)
    return False


def test_a_file_uploaded_again_while_fix_waits_for_the_row_lock_is_not_marked_failed(
    pg_site: tuple[Site, Seeded], tmp_path: Path
) -> None:
    psycopg = require("psycopg")
    site, seeded = pg_site
    pk, name = seeded["docs"]["note 3"]
    path = site.media / name
    content = path.read_bytes()
    path.unlink()
    database = site.database_url.rsplit("/", 1)[1]

    # The app's own request holds the row, as a re-upload's transaction would.
    with (
        psycopg.connect(site.database_url) as holder,
        psycopg.connect(site.database_url, autocommit=True) as admin,
    ):
        holder.execute("SELECT id FROM library_document WHERE id = %s FOR UPDATE", (pk,))
        fix = site.popen(
            "check_missing_files",
            "--json",
            "--older-than",
            "0",
            "--model",
            DOCUMENT,
            "--fix",
            "--max-missing",
            "100%",
            cwd=tmp_path,
        )
        try:
            waited = _waiting_on_a_lock(admin, database)
            path.write_bytes(content)  # the upload lands while --fix waits
            holder.commit()
            out, err = fix.communicate(timeout=120)
        finally:
            if fix.poll() is None:
                fix.kill()
    assert waited, "check_missing_files --fix never waited for the row lock"
    state = site.shell(STATE)
    assert state[str(pk)][3] == "ready", out + err
