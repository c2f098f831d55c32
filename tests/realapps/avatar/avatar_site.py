"""django-avatar's project: Avatar (an ImageField on the avatar storage, optional, with
thumbnails derived under ``avatars/<user>/resized/<w>/<h>/``). ``AVATAR_CLEANUP_DELETED`` is
on, its default: a ``post_delete`` receiver deletes an Avatar's picture and its thumbnails.

An operator's configuration for ``--fix``: an avatar whose picture is gone stops being the
user's primary one.
"""

from realapps_base import *  # noqa: F403

INSTALLED_APPS = [*BASE_APPS, "avatar"]  # noqa: F405
AVATAR_AUTO_GENERATE_SIZES = (80, 40)
AVATAR_CLEANUP_DELETED = True
VOLGUARD_MISSING_FILES = {
    "avatar.Avatar": {"owner_field": "user", "status_field": "primary", "failed_value": False},
}
