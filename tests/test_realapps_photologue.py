"""The real-app tier on django-photologue: audit and repair of Photos whose picture is gone.

photologue's shape: ``Photo`` (an ``ImageModel``) keeps its picture under
``photologue/photos/`` and derives cached sizes from it (``photologue/photos/cache/``: files,
not rows); ``Gallery.photos`` is a sorted many-to-many to Photo, and ``Photo.sites`` one to
Django's sites. Deleting a Photo through the ORM removes its rows in both through tables.
The project (tests/realapps/photologue/) hides a Photo whose picture is gone (``is_public``
False, message at the end of the caption) on ``--fix``.

Content is made through photologue's models (``Photo.image.save``, which pre-caches the sizes;
``Gallery.photos.add``), the volume is damaged in known ways, and the command's answers are
checked against that truth. Tests marked xfail prove what issue #8 demands and volguard does
not do yet; they must pass (and lose the mark) when it does.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import require
from realapps.harness import (
    PNG_HELPER,
    Site,
    clone,
    delete_files,
    files,
    move_files,
    sqlite_site,
    truncate_files,
)

PHOTO = "photologue.Photo"
MESSAGE = "Picture missing from storage."  # the project's VOLGUARD_MISSING_FILES message
PHOTOS = 12

SEED = (
    PNG_HELPER
    + f"""
from photologue.models import Gallery, Photo
photos = []
for i in range({PHOTOS}):
    photo = Photo(title=f"Photo {{i}}", slug=f"photo-{{i}}")
    photo.image.save(f"pic{{i}}.png", png(f"pic{{i}}.png"), save=False)
    photo.save()  # photologue pre-caches its sizes here
    photos.append(photo)
Gallery.objects.create(title="Holidays", slug="holidays").photos.add(*photos[:6])
Gallery.objects.create(title="Portraits", slug="portraits").photos.add(*photos[4:])
result = {{p.title: [p.pk, p.image.name] for p in photos}}
"""
)

STATE = """
from photologue.models import Gallery, Photo
def sites(p):
    return sorted(p.sites.values_list("pk", flat=True))

def members(g):
    return list(g.photos.values_list("pk", flat=True))

result = {
    "photos": {p.pk: [p.title, p.image.name, p.is_public, p.caption, sites(p)]
               for p in Photo.objects.all()},
    "galleries": {g.slug: members(g) for g in Gallery.objects.all()},
}
"""


def _seed(site: Site) -> dict[str, tuple[int, str]]:
    site.migrate()
    return {title: (pk, name) for title, (pk, name) in site.shell(SEED).items()}


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> tuple[Site, dict[str, tuple[int, str]]]:
    """photologue migrated and seeded once on SQLite; each test works on a copy."""
    require("photologue")
    site = sqlite_site("photologue", "photologue_site", tmp_path_factory.mktemp("photologue"))
    return site, _seed(site)


@pytest.fixture
def site(template: tuple[Site, dict], tmp_path: Path) -> Site:
    return clone(template[0], tmp_path / "site")


@pytest.fixture
def photos(template: tuple[Site, dict]) -> dict[str, tuple[int, str]]:
    """Title → (pk, picture name)."""
    return template[1]


def _damage(site: Site, photos: dict[str, tuple[int, str]]) -> set[int]:
    """Pictures 0 and 1 deleted, 3 moved to another volume; their cached sizes stay."""
    delete_files(site.media, [photos["Photo 0"][1], photos["Photo 1"][1]])
    move_files(site.media, [photos["Photo 3"][1]], site.media.parent / "other-volume")
    return {photos[t][0] for t in ("Photo 0", "Photo 1", "Photo 3")}


def test_the_report_names_exactly_the_photos_whose_picture_is_gone(
    site: Site, photos: dict[str, tuple[int, str]]
) -> None:
    gone = _damage(site, photos)

    audit = site.audit()

    assert audit.returncode == 2, audit.output
    assert audit.reasons(PHOTO) == {pk: {"missing"} for pk in gone}
    assert audit.problem_rows == len(gone)
    assert audit.total_rows == PHOTOS


def test_a_picture_truncated_to_zero_bytes_is_reported_with_its_own_reason(
    site: Site, photos: dict[str, tuple[int, str]]
) -> None:
    pk, name = photos["Photo 2"]
    truncate_files(site.media, [name])

    audit = site.audit()

    reasons = audit.reasons(PHOTO).get(pk, set())
    assert reasons, audit.output
    assert "missing" not in reasons
    assert audit.returncode == 2


def test_fix_hides_exactly_the_photos_whose_picture_is_gone_and_touches_no_file(
    site: Site, photos: dict[str, tuple[int, str]]
) -> None:
    gone = _damage(site, photos)
    before = files(site.media)

    fixed = site.audit("--fix", "--max-missing", "50%")
    again = site.audit("--fix", "--max-missing", "50%")

    assert fixed.changed == len(gone), fixed.output
    assert again.changed == 0, again.output
    state = site.shell(STATE)["photos"]
    for pk, (_title, _name, is_public, caption, _sites) in state.items():
        if int(pk) in gone:
            assert (is_public, caption) == (False, MESSAGE)
        else:
            assert (is_public, caption) == (True, "")
    assert files(site.media) == before


# -- --delete, export and loaddata ---------------------------------------------------------------


@pytest.fixture(scope="module")
def deleted_and_restored(
    template: tuple[Site, dict[str, tuple[int, str]]], tmp_path_factory: pytest.TempPathFactory
) -> dict:
    """Damage, ``--delete --yes --export``, then ``loaddata`` of the export (on SQLite: the
    PostgreSQL round trip is tests/test_realapps_polymorphic.py's).

    Returns the state before, after the delete, and after the restore, with the files.
    """
    site = clone(template[0], tmp_path_factory.mktemp("photologue-delete"))
    gone = _damage(site, template[1])
    before, files_before = site.shell(STATE), files(site.media)
    export = site.media.parent / "exports" / "photos.json"
    run = site.audit("--delete", "--yes", "--max-missing", "50%", "--export", str(export))
    deleted = site.shell(STATE)
    restore = site.manage("loaddata", str(export)) if export.exists() else None
    return {
        "gone": gone,
        "run": run,
        "before": before,
        "deleted": deleted,
        "restore": restore,
        "restored": site.shell(STATE),
        "files_before": files_before,
        "files_after": files(site.media),
    }


def test_delete_removes_only_photos_whose_picture_is_gone_and_loaddata_brings_them_back(
    deleted_and_restored: dict,
) -> None:
    r = deleted_and_restored
    removed = {int(pk) for pk in r["before"]["photos"]} - {int(pk) for pk in r["deleted"]["photos"]}
    assert removed <= r["gone"], r["run"].output
    if removed:
        assert r["restore"] is not None
        assert r["restore"].returncode == 0, r["restore"].stderr
    assert r["restored"]["photos"] == r["before"]["photos"]
    assert r["files_after"] == r["files_before"]  # no picture, no cached size deleted


def test_delete_either_refuses_naming_the_galleries_or_loaddata_restores_their_photos(
    deleted_and_restored: dict,
) -> None:
    r = deleted_and_restored
    if r["run"].changed == 0:  # refused: nothing deleted, and the plan said why
        assert r["deleted"] == r["before"]
        assert "Gallery" in r["run"].output, r["run"].output
    assert r["restored"]["galleries"] == r["before"]["galleries"]
