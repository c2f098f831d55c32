"""volguard.django.storage_index.PerRowIndex on a volume, in-process (real files, real stats).

The re-check before remediation answers names whose directory is gone from one ``stat`` of
that directory; these tests pin that it never answers a present file as missing, and that
the calls it saves are really not made.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

django = pytest.importorskip("django")

from conftest import configure_django_in_process  # noqa: E402

configure_django_in_process()

from django.core.files.storage import FileSystemStorage  # noqa: E402

from volguard.django import storage_index  # noqa: E402
from volguard.django.storage_index import PerRowIndex  # noqa: E402


def _storage(tmp_path: Path, *files: str) -> FileSystemStorage:
    root = tmp_path / "media"
    root.mkdir()
    for name in files:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text("x")
    return FileSystemStorage(location=str(root))


def _counting_stat(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    calls: list[str] = []
    real = os.stat

    def stat(path, *args, **kwargs):  # type: ignore[no-untyped-def]
        calls.append(os.fspath(path))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(storage_index.os, "stat", stat)
    return calls


def test_a_gone_directory_answers_for_every_name_in_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    storage = _storage(tmp_path, "here/a.csv", "top.csv")
    index = PerRowIndex(storage, gone_directories=True)
    calls = _counting_stat(monkeypatch)
    names = [f"gone/2024/{i}.csv" for i in range(50)]
    assert [index.exists(n) for n in names] == [False] * 50
    # the first name, then its directory; the other 49 without a call
    assert len(calls) == 2
    assert calls[1].endswith(os.path.join("media", "gone", "2024"))
    assert index.requests == 2


def test_names_in_a_present_directory_are_each_checked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    storage = _storage(tmp_path, "here/a.csv", "here/c.csv", "top.csv")
    index = PerRowIndex(storage, gone_directories=True)
    calls = _counting_stat(monkeypatch)
    got = {n: index.exists(n) for n in ["here/a.csv", "here/b.csv", "here/c.csv", "here/d.csv"]}
    assert got == {"here/a.csv": True, "here/b.csv": False, "here/c.csv": True, "here/d.csv": False}
    assert len(calls) == 5  # four names and, once, the directory of the first one not there
    assert index.exists("top.csv")
    assert not index.exists("nope.csv")


def test_a_file_where_a_directory_should_be_means_gone(tmp_path: Path) -> None:
    storage = _storage(tmp_path, "blocker", "real/x.csv")
    index = PerRowIndex(storage, gone_directories=True)
    assert not index.exists("blocker/x.csv")
    assert not index.exists("blocker/y.csv")
    assert index.exists("real/x.csv")


def test_without_the_option_every_name_is_its_own_stat(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    storage = _storage(tmp_path, "top.csv")
    index = PerRowIndex(storage)
    calls = _counting_stat(monkeypatch)
    assert not any(index.exists(f"gone/{i}.csv") for i in range(5))
    assert len(calls) == 5
    assert index.requests == 5


def test_a_file_that_arrives_in_a_present_directory_is_seen(tmp_path: Path) -> None:
    storage = _storage(tmp_path, "here/a.csv")
    index = PerRowIndex(storage, gone_directories=True)
    assert not index.exists("here/new.csv")
    (Path(storage.location) / "here" / "new.csv").write_text("late upload")
    assert index.exists("here/new.csv")


@pytest.mark.parametrize("index_class", [PerRowIndex, storage_index.DirectoryIndex])
def test_a_zero_byte_file_exists_and_is_empty_on_every_volume_index(
    tmp_path: Path, index_class: type[storage_index.NameIndex]
) -> None:
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "full.csv").write_bytes(b"x")
    (tmp_path / "d" / "zero.csv").write_bytes(b"")
    storage = FileSystemStorage(location=str(tmp_path))
    index = PerRowIndex(storage) if index_class is PerRowIndex else index_class(storage, sizes=True)

    assert index.exists("d/zero.csv")
    assert index.is_empty("d/zero.csv")
    assert index.exists("d/full.csv")
    assert not index.is_empty("d/full.csv")
    if isinstance(index, storage_index.DirectoryIndex):
        # The audit's fast path never settles an empty file: it must reach is_empty.
        assert "zero.csv" not in index._plain_files("d", 255)
        assert "full.csv" in index._plain_files("d", 255)


def test_a_listing_without_sizes_stats_nothing_and_finds_no_empty_file(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "zero.csv").write_bytes(b"")
    index = storage_index.build_index(
        FileSystemStorage(location=str(tmp_path)), rows=5000, per_row_max=10
    )
    assert isinstance(index, storage_index.DirectoryIndex)
    assert index.exists("d/zero.csv")
    assert not index.is_empty("d/zero.csv")
    sized = storage_index.build_index(
        FileSystemStorage(location=str(tmp_path)), rows=5000, per_row_max=10, sizes=True
    )
    assert sized.exists("d/zero.csv")
    assert sized.is_empty("d/zero.csv")
    assert sized.detail == "1 directories listed with sizes"
