"""Settings shared by the real-app test projects (tests/realapps/<app>/), read from the
environment like example/config/settings.py: ``DATABASE_URL`` (``sqlite:////abs/path`` or
``postgres://…``) and ``MEDIA_ROOT``. Each project's settings module star-imports this one
and adds its apps and its ``VOLGUARD_MISSING_FILES``.
"""

import os
from urllib.parse import parse_qsl, unquote, urlsplit


def database_from_url(url: str) -> dict:
    """A ``DATABASES`` entry from a SQLite (absolute path) or PostgreSQL URL."""
    parts = urlsplit(url)
    if parts.scheme == "sqlite":
        return {"ENGINE": "django.db.backends.sqlite3", "NAME": unquote(parts.path)[1:]}
    return {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": unquote(parts.path.lstrip("/")),
        "USER": unquote(parts.username or ""),
        "PASSWORD": unquote(parts.password or ""),
        "HOST": parts.hostname or "",
        "PORT": str(parts.port or ""),
        "OPTIONS": dict(parse_qsl(parts.query)),
    }


SECRET_KEY = "volguard-realapps-tests-only"
DEBUG = False
ALLOWED_HOSTS = ["localhost"]
DATABASES = {"default": database_from_url(os.environ["DATABASE_URL"])}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
USE_TZ = True
TIME_ZONE = "UTC"
MEDIA_ROOT = os.environ["MEDIA_ROOT"]
MEDIA_URL = "/media/"
STATIC_URL = "/static/"
ROOT_URLCONF = "realapps_urls"
# The audit reads these projects' volumes as plain directories: no Fly mount to expect.
VOLGUARD_EXPECT_MOUNT = False
# Caches the avatar app's thumbnail URLs; per process, so nothing leaks between runs.
CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}

BASE_APPS = [
    "django.contrib.contenttypes",
    "django.contrib.auth",
    "volguard.django",
]
