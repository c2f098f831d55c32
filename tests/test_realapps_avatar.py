"""The real-app tier on django-avatar: audit and repair of Avatars whose picture is gone.

django-avatar's shape: ``Avatar.avatar`` is an optional ImageField (``blank=True``) on the
avatar storage, under ``avatars/<user id>/``; thumbnails are derived on save under
``avatars/<user id>/resized/<w>/<h>/``. With ``AVATAR_CLEANUP_DELETED`` (its default) a
``post_delete`` receiver deletes an Avatar's picture and every thumbnail. The project
(tests/realapps/avatar/) makes an avatar whose picture is gone no longer the user's primary
one on ``--fix``.

Content is made through the app's models the way its upload view does (``avatar.save`` of
the upload, which generates the thumbnails), the volume is damaged in known ways, and the
command's answers are checked against that truth. Tests marked xfail prove what issue #8
demands and volguard does not do yet; they must pass (and lose the mark) when it does.
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
    remove_directory,
    sqlite_site,
)

AVATAR = "avatar.Avatar"
USERS = 10

SEED = (
    PNG_HELPER
    + f"""
from django.contrib.auth import get_user_model
from avatar.models import Avatar
result = {{}}
for i in range({USERS}):
    user = get_user_model().objects.create_user(f"user{{i}}")
    avatar = Avatar(user=user, primary=True)
    avatar.avatar.save(f"face{{i}}.png", png(f"face{{i}}.png"))  # as avatar's upload view
    result[user.username] = [avatar.pk, avatar.avatar.name]
"""
)

STATE = """
from avatar.models import Avatar
result = {a.pk: [a.user.username, a.avatar.name, a.primary] for a in Avatar.objects.all()}
"""

Avatars = dict[str, tuple[int, str]]


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> tuple[Site, Avatars]:
    """django-avatar migrated and seeded once on SQLite; each test works on a copy."""
    require("avatar")
    site = sqlite_site("avatar", "avatar_site", tmp_path_factory.mktemp("avatar"))
    site.migrate()
    seeded = site.shell(SEED)
    return site, {user: (pk, name) for user, (pk, name) in seeded.items()}


@pytest.fixture
def site(template: tuple[Site, Avatars], tmp_path: Path) -> Site:
    return clone(template[0], tmp_path / "site")


@pytest.fixture
def avatars(template: tuple[Site, Avatars]) -> Avatars:
    """Username → (pk, picture name)."""
    return template[1]


def _thumbnails(site: Site, name: str) -> set[str]:
    folder, _, base = name.rpartition("/")
    return {f for f in files(site.media) if f.startswith(f"{folder}/resized/") and f.endswith(base)}


def test_the_report_names_exactly_the_avatars_whose_picture_is_gone(
    site: Site, avatars: Avatars
) -> None:
    delete_files(site.media, [avatars["user0"][1], avatars["user1"][1]])
    remove_directory(site.media, avatars["user3"][1].rpartition("/")[0])  # picture, thumbnails
    move_files(site.media, [avatars["user4"][1]], site.media.parent / "other-volume")
    gone = {avatars[u][0] for u in ("user0", "user1", "user3", "user4")}

    audit = site.audit()

    assert audit.returncode == 2, audit.output
    assert audit.reasons(AVATAR) == {pk: {"missing"} for pk in gone}
    assert audit.problem_rows == len(gone)


def test_fix_unsets_primary_on_exactly_the_avatars_whose_picture_is_gone(
    site: Site, avatars: Avatars
) -> None:
    delete_files(site.media, [avatars["user0"][1]])
    remove_directory(site.media, avatars["user3"][1].rpartition("/")[0])
    gone = {avatars["user0"][0], avatars["user3"][0]}
    before = files(site.media)

    fixed = site.audit("--fix", "--max-missing", "50%")

    assert fixed.changed == len(gone), fixed.output
    state = site.shell(STATE)
    assert {int(pk) for pk, (_u, _n, primary) in state.items() if not primary} == gone
    assert files(site.media) == before


def test_delete_refuses_by_default_naming_the_receiver_that_deletes_files(
    site: Site, avatars: Avatars
) -> None:
    delete_files(site.media, [avatars["user0"][1], avatars["user1"][1]])
    before, rows = files(site.media), site.shell(STATE)
    assert _thumbnails(site, avatars["user0"][1])  # what the receiver would delete

    run = site.audit("--delete", "--yes", "--max-missing", "50%")

    assert files(site.media) == before
    assert site.shell(STATE) == rows
    assert run.returncode != 0
    assert "remove_avatar_images" in run.output, run.output


def test_a_delete_that_fails_midway_has_deleted_no_file(site: Site, avatars: Avatars) -> None:
    # The collector sends post_delete in descending key order: user0's row comes last.
    remove_directory(site.media, avatars["user0"][1].rpartition("/")[0])
    delete_files(site.media, [avatars["user5"][1]])
    before, rows = files(site.media), site.shell(STATE)

    run = site.audit("--delete", "--yes", "--max-missing", "50%")

    assert site.shell(STATE) == rows, run.output  # holds today: the batch rolled back
    assert files(site.media) == before, run.output


def test_max_missing_counts_only_rows_that_name_a_picture(site: Site, avatars: Avatars) -> None:
    # Forty users who saved the avatar form without a picture (the field is optional).
    site.shell(
        "from django.contrib.auth import get_user_model\n"
        "from avatar.models import Avatar\n"
        "users = [get_user_model().objects.create_user(f'nopic{i}') for i in range(40)]\n"
        "result = len(Avatar.objects.bulk_create([Avatar(user=u) for u in users]))"
    )
    delete_files(site.media, [avatars["user0"][1], avatars["user1"][1]])
    rows = site.shell(STATE)

    run = site.audit("--fix", "--max-missing", "10%")

    assert run.returncode == 2, run.output
    assert run.refused is not None, run.output
    assert run.refused["id"] == "VG404"
    assert site.shell(STATE) == rows
