"""volguard.django.helpers: `local_copy` and `require_files`, in-process.

Django is configured here the same way as in test_django_checks.py (whichever module is
imported first configures it). `require_files` needs a database; rather than depend on
which module configured Django, this module adds its own SQLite connection alias and
creates its one table there.
"""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

django = pytest.importorskip("django")

from conftest import configure_django_in_process  # noqa: E402

configure_django_in_process()

from django.core.files.base import ContentFile  # noqa: E402
from django.core.files.storage import FileSystemStorage, InMemoryStorage, Storage  # noqa: E402
from django.db import connections, models  # noqa: E402
from django.db.models.fields.files import FieldFile  # noqa: E402

from volguard.django import helpers  # noqa: E402
from volguard.django.helpers import MissingFilesError, local_copy, require_files  # noqa: E402

ALIAS = "volguard_helpers_tests"


class Document(models.Model):
    """A model with a FileField; each test points the field at its own storage."""

    title = models.CharField(max_length=50, blank=True)
    file = models.FileField(upload_to="docs/", max_length=255, blank=True)

    class Meta:
        app_label = "volguard"


# -- fixtures -----------------------------------------------------------------------------


@pytest.fixture
def temp_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private directory for tempfile, so "no copy left behind" is exact."""
    path = tmp_path / "tmp"
    path.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(path))
    return path


@pytest.fixture(params=["filesystem", "memory"])
def storage(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Storage:
    """FileSystemStorage under tmp_path, or InMemoryStorage, as Document.file's storage."""
    if request.param == "filesystem":
        store: Storage = FileSystemStorage(location=tmp_path / "media")
    else:
        store = InMemoryStorage()
    monkeypatch.setattr(Document._meta.get_field("file"), "storage", store)
    return store


@pytest.fixture
def fs_storage(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FileSystemStorage:
    store = FileSystemStorage(location=tmp_path / "media")
    monkeypatch.setattr(Document._meta.get_field("file"), "storage", store)
    return store


@pytest.fixture(scope="module")
def db(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A SQLite database of this module's own, with Document's table."""
    path = tmp_path_factory.mktemp("db") / "helpers.sqlite3"
    connections.settings[ALIAS] = connections.configure_settings(
        {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": str(path)}}
    )["default"]
    with connections[ALIAS].schema_editor() as editor:
        editor.create_model(Document)
    yield ALIAS
    connections[ALIAS].close()
    del connections[ALIAS]
    del connections.settings[ALIAS]


@pytest.fixture
def documents(db: str) -> Iterator[models.QuerySet]:
    """Document's queryset on the module's database, emptied after each test."""
    queryset = Document.objects.using(db).order_by("pk")
    yield queryset
    queryset.delete()


def add(queryset: models.QuerySet, *names: str) -> list[int]:
    return [queryset.create(file=name).pk for name in names]


# -- local_copy ---------------------------------------------------------------------------


def test_local_copy_yields_a_temporary_copy_and_removes_it(
    storage: Storage, temp_dir: Path
) -> None:
    content = b"id,value\n" + b"1,x\n" * 5000
    name = storage.save("docs/r\u00e9sum\u00e9 of q1.csv", ContentFile(content))
    fieldfile = Document(file=name).file

    with local_copy(fieldfile, chunk_size=1000) as path:
        assert isinstance(path, Path)
        assert path.read_bytes() == content
        assert path.parent == temp_dir
        assert path.suffix == ".csv"
        if isinstance(storage, FileSystemStorage):
            assert fieldfile.closed  # no file handle held while the caller works
            assert path != Path(storage.path(name))

    assert not path.exists()
    assert list(temp_dir.iterdir()) == []
    assert storage.exists(name)  # the stored file itself is untouched


def test_local_copy_removes_the_copy_when_the_block_raises(
    storage: Storage, temp_dir: Path
) -> None:
    name = storage.save("docs/a.txt", ContentFile(b"hello"))

    seen: list[Path] = []

    def process() -> None:
        with local_copy(Document(file=name).file) as path:
            seen.append(path)
            assert path.exists()
            raise RuntimeError("processing broke")

    with pytest.raises(RuntimeError, match="processing broke"):
        process()

    [path] = seen
    assert not path.exists()
    assert list(temp_dir.iterdir()) == []


def test_local_copy_never_uses_path(
    fs_storage: FileSystemStorage, temp_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    name = fs_storage.save("docs/a.csv", ContentFile(b"1\n"))

    def no_path(self: FieldFile) -> str:
        raise AssertionError("local_copy must read through the storage, not .path")

    monkeypatch.setattr(FieldFile, "path", property(no_path))
    with local_copy(Document(file=name).file) as path:
        assert path.read_bytes() == b"1\n"


def test_local_copy_of_a_missing_file_names_the_storage(storage: Storage, temp_dir: Path) -> None:
    with (
        pytest.raises(FileNotFoundError) as raised,
        local_copy(Document(file="docs/gone.csv").file),
    ):
        pytest.fail("the block must not run")

    assert raised.value.errno == errno.ENOENT
    message = str(raised.value)
    assert "docs/gone.csv" in message
    assert type(storage).__name__ in message
    assert list(temp_dir.iterdir()) == []


def test_local_copy_of_an_empty_field_is_a_missing_file(storage: Storage, temp_dir: Path) -> None:
    with (
        pytest.raises(FileNotFoundError, match="empty file field"),
        local_copy(Document(file="").file),
    ):
        pytest.fail("the block must not run")


def test_local_copy_drops_a_suffix_it_cannot_trust(storage: Storage, temp_dir: Path) -> None:
    name = storage.save("docs/odd.c$v", ContentFile(b"x"))
    with local_copy(Document(file=name).file) as path:
        assert path.suffix == ""
        assert path.read_bytes() == b"x"


def test_local_copy_errors_of_its_own_are_not_a_missing_file(
    storage: Storage, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A temp directory that does not exist: our problem, not the user's file.
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "no-such-dir"))
    name = storage.save("docs/a.csv", ContentFile(b"x"))
    with pytest.raises(FileNotFoundError) as raised, local_copy(Document(file=name).file):
        pass
    assert "missing from storage" not in str(raised.value)


# -- require_files ------------------------------------------------------------------------


def test_require_files_passes_when_every_file_exists(storage: Storage, documents) -> None:
    names = [storage.save(f"docs/{d}/f{i}.csv", ContentFile(b"x")) for d in "ab" for i in range(3)]
    add(documents, *names)
    assert require_files(documents) == 6
    assert require_files(documents.none()) == 0


def test_require_files_lists_exactly_the_missing_rows(
    storage: Storage, documents, tmp_path: Path
) -> None:
    present = storage.save("docs/2024/01/02/kept.csv", ContentFile(b"x"))
    (tmp_path / "outside.csv").write_bytes(b"x")  # exists, but outside the storage root
    candidates = [
        present,
        "docs/2024/01/02/gone.csv",  # same directory, no such file
        "docs/1999/no/dir.csv",  # no such directory
        "",  # empty field
        "../outside.csv",  # escapes the root: never followed
        "docs/2024/01/02/na\x00me.csv",  # NUL byte
        "docs/with space and \u00fcnicode.csv",
    ]
    pks = add(documents, *candidates)

    with pytest.raises(MissingFilesError) as raised:
        require_files(documents)

    expected = list(zip(pks[1:], candidates[1:], strict=True))
    assert raised.value.missing == expected
    message = str(raised.value)
    assert "\n" not in message
    assert message.startswith(f"6 files missing from storage {type(storage).__name__}")
    assert f"id {pks[1]} ('docs/2024/01/02/gone.csv')" in message
    assert f"id {pks[3]} (empty file field)" in message
    assert message.endswith("and 1 more")


def test_require_files_does_not_take_a_directory_for_a_file(
    fs_storage: FileSystemStorage, documents
) -> None:
    fs_storage.save("docs/sub/inner.csv", ContentFile(b"x"))
    [pk] = add(documents, "docs/sub")
    with pytest.raises(MissingFilesError) as raised:
        require_files(documents)
    assert raised.value.missing == [(pk, "docs/sub")]


def test_require_files_lists_each_directory_once_on_the_filesystem(
    fs_storage: FileSystemStorage, documents, monkeypatch: pytest.MonkeyPatch
) -> None:
    directories = ["docs/user_1/2024/01/01", "docs/user_1/2024/01/02", "docs/user_2/2024/03/04"]
    names = [
        fs_storage.save(f"{d}/file{i}.csv", ContentFile(b"x"))
        for d in directories
        for i in range(10)
    ]
    add(documents, *names, "docs/user_1/2024/01/01/missing.csv", "docs/none/x.csv")
    listed: list[str] = []
    real_scandir = os.scandir

    def counting_scandir(path: str | os.PathLike[str] = ".") -> object:
        listed.append(os.fspath(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", counting_scandir)
    with pytest.raises(MissingFilesError) as raised:
        require_files(documents)

    assert [name for _, name in raised.value.missing] == [
        "docs/user_1/2024/01/01/missing.csv",
        "docs/none/x.csv",
    ]
    # 32 rows in 4 directories: one listing each, not one check per row.
    root = fs_storage.location
    assert sorted(listed) == sorted(os.path.join(root, d) for d in [*directories, "docs/none"])


def test_require_files_uses_exists_for_storages_that_cannot_scandir(
    documents, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = InMemoryStorage()
    monkeypatch.setattr(Document._meta.get_field("file"), "storage", store)
    kept = store.save("docs/a.csv", ContentFile(b"x"))
    pks = add(documents, kept, "docs/b.csv")
    checked: list[str] = []
    real_exists = store.exists
    monkeypatch.setattr(store, "exists", lambda name: checked.append(name) or real_exists(name))

    with pytest.raises(MissingFilesError) as raised:
        require_files(documents)

    assert raised.value.missing == [(pks[1], "docs/b.csv")]
    assert checked == [kept, "docs/b.csv"]


def test_require_files_follows_the_queryset(storage: Storage, documents) -> None:
    kept = storage.save("docs/a.csv", ContentFile(b"x"))
    documents.create(title="mine", file=kept)
    documents.create(title="other", file="docs/gone.csv")
    assert require_files(documents.filter(title="mine")) == 1


def test_require_files_rejects_a_field_that_is_not_a_file_field(documents) -> None:
    with pytest.raises(TypeError, match=r"volguard\.Document\.title is a CharField"):
        require_files(documents, field="title")


# -- MissingFilesError and import-lightness ------------------------------------------------


def test_missing_files_error_is_one_line_with_the_first_rows() -> None:
    error = MissingFilesError([(1, "a\nb.csv"), (2, None)], storage="S3Storage (bucket)")
    assert error.missing == [(1, "a\nb.csv"), (2, None)]
    assert str(error) == (
        "2 files missing from storage S3Storage (bucket): "
        "id 1 ('a\\nb.csv'), id 2 (empty file field)"
    )
    assert str(MissingFilesError([(3, "x")])) == "1 file missing: id 3 ('x')"


def test_describe_storage_says_where_it_looked(tmp_path: Path) -> None:
    assert helpers.describe_storage(FileSystemStorage(location=tmp_path)) == (
        f"FileSystemStorage ({tmp_path})"
    )


def test_describe_storage_sees_through_default_storage() -> None:
    from django.core.files.storage import default_storage

    assert helpers.describe_storage(default_storage).startswith("FileSystemStorage (")


def test_helpers_import_without_django() -> None:
    code = (
        "import sys, volguard.django.helpers as h; "
        "assert not [m for m in sys.modules if m.startswith('django')], 'django imported'; "
        "print(h.MissingFilesError([(1, 'x')]))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=False, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "1 file missing: id 1 ('x')"
