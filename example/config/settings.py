"""Settings for the incident's app, read from the environment (12-factor, as on Fly).

- ``SECRET_KEY``: required in production; an insecure development default otherwise.
- ``DEBUG``: ``1``/``true`` to enable (default off).
- ``ALLOWED_HOSTS``: comma-separated (default: localhost and ``.fly.dev``).
- ``MEDIA_ROOT``: where uploads go (default ``<BASE_DIR>/media``; on Fly ``/data/media``,
  on the volume mounted at ``/data``).
- ``BUCKET_NAME``: uploads go to this S3 bucket instead (django-storages), under
  ``MEDIA_LOCATION`` (default ``media``). ``fly storage create`` (Tigris) sets it with
  ``AWS_ENDPOINT_URL_S3``, ``AWS_ACCESS_KEY_ID`` and ``AWS_SECRET_ACCESS_KEY``
  (https://fly.io/docs/python/do-more/add-object-storage/); ``AWS_REGION`` is optional.
- ``MIGRATE_MEDIA_BUCKET`` (without ``BUCKET_NAME``): uploads stay on the volume
  (``STORAGES["default"]``, also ``"volume"``) and this bucket is ``STORAGES["bucket"]``,
  the target of ``manage.py migrate_media --to bucket``; with ``MEDIA_FALLBACK=1`` the
  default is volguard's FallbackStorage (the bucket first, then the volume) for the cutover.
- ``DATABASE_URL``: ``sqlite:///relative.db``, ``sqlite:////absolute.db`` or
  ``postgres://user:password@host:port/name?sslmode=…`` (default: ``db.sqlite3`` here).
- ``CELERY_BROKER_URL``: default ``memory://`` (in-process only, so tasks then run eagerly).
- ``CELERY_TASK_ALWAYS_EAGER``: run tasks in the calling process (default: on exactly when
  the broker is ``memory://``, since no worker could receive them).
- ``VOLGUARD_FLY_TOML``: the fly.toml that ``manage.py check --deploy`` lints (default: the
  repository's incident fly.toml, beside this directory).
- ``VOLGUARD_EXPECT_MOUNT``: ``true``/``false`` or the volume's mount point (``/data``): must
  MEDIA_ROOT be on its own filesystem? (unset: yes exactly on Fly, where ``FLY_MACHINE_ID``
  is set). The VG404 interlock and the media health check refuse when it is not.
"""

import os
from pathlib import Path
from urllib.parse import parse_qsl, unquote, urlsplit

from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent


def env_bool(name: str, default: bool = False) -> bool:
    """A boolean from the environment: ``1``, ``true``, ``yes``, ``on`` (any case) are true."""
    value = os.environ.get(name)
    if value is None or value.strip() == "":
        return default
    return value.strip().lower() in {"1", "true", "yes", "on"}


def database_from_url(url: str) -> dict:
    """A Django ``DATABASES`` entry from a ``DATABASE_URL`` (what ``fly postgres attach`` sets).

    Parsed here with urllib rather than with dj-database-url to keep the example's
    dependencies to Django and Celery. ``sqlite:///name`` is relative to BASE_DIR,
    ``sqlite:////abs/name`` absolute; query parameters of a PostgreSQL URL (``sslmode``)
    become connection OPTIONS.
    """
    parts = urlsplit(url)
    if parts.scheme == "sqlite":
        name = unquote(parts.path)[1:]  # strip the slash that separates it from the host
        if not name:
            raise ImproperlyConfigured(f"DATABASE_URL {url!r} names no SQLite file")
        return {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": name if name == ":memory:" else BASE_DIR / name,
        }
    if parts.scheme in {"postgres", "postgresql", "pgsql"}:
        return {
            "ENGINE": "django.db.backends.postgresql",
            "NAME": unquote(parts.path.lstrip("/")),
            "USER": unquote(parts.username or ""),
            "PASSWORD": unquote(parts.password or ""),
            "HOST": parts.hostname or "",
            "PORT": str(parts.port or ""),
            "OPTIONS": dict(parse_qsl(parts.query)),
        }
    raise ImproperlyConfigured(
        f"DATABASE_URL scheme {parts.scheme!r} is not supported (use sqlite:// or postgres://)"
    )


# The default is for development only: Django's `check --deploy` flags it (security.W009).
SECRET_KEY = os.environ.get("SECRET_KEY", "django-insecure-volguard-example-development-only")
DEBUG = env_bool("DEBUG")
ALLOWED_HOSTS = [
    h.strip()
    for h in os.environ.get("ALLOWED_HOSTS", "localhost,127.0.0.1,.fly.dev").split(",")
    if h.strip()
]

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "volguard.django",
    "apps.services",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "config.urls"
WSGI_APPLICATION = "config.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

DATABASES = {
    "default": database_from_url(os.environ.get("DATABASE_URL", "sqlite:///db.sqlite3")),
}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "staticfiles"
MEDIA_URL = "media/"
MEDIA_ROOT = os.environ.get("MEDIA_ROOT") or str(BASE_DIR / "media")
if os.environ.get("BUCKET_NAME"):  # object storage every Machine reaches (credentials: boto3's)
    STORAGES = {
        "default": {
            "BACKEND": "storages.backends.s3.S3Storage",
            "OPTIONS": {
                "bucket_name": os.environ["BUCKET_NAME"],
                "location": os.environ.get("MEDIA_LOCATION", "media"),
                "endpoint_url": os.environ.get("AWS_ENDPOINT_URL_S3") or None,
                "region_name": os.environ.get("AWS_REGION") or None,
            },
        },
        "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
    }
elif os.environ.get("MIGRATE_MEDIA_BUCKET"):  # the move to object storage (migrate_media)
    from botocore.config import Config

    _VOLUME = {"BACKEND": "django.core.files.storage.FileSystemStorage"}
    _FALLBACK = {
        "BACKEND": "volguard.django.storage.FallbackStorage",
        "OPTIONS": {"primary": "bucket", "fallback": "volume"},
    }
    STORAGES = {
        "default": _FALLBACK if env_bool("MEDIA_FALLBACK") else _VOLUME,
        "volume": _VOLUME,
        "bucket": {
            "BACKEND": "storages.backends.s3.S3Storage",
            "OPTIONS": {
                "bucket_name": os.environ["MIGRATE_MEDIA_BUCKET"],
                "location": os.environ.get("MEDIA_LOCATION", "media"),
                "endpoint_url": os.environ.get("AWS_ENDPOINT_URL_S3") or None,
                "region_name": os.environ.get("AWS_REGION") or None,
                # botocore 1.36+ otherwise uploads aws-chunked bodies with a trailing
                # checksum over HTTPS, which Tigris and other S3-compatible stores refuse.
                "client_config": Config(
                    request_checksum_calculation="when_required",
                    response_checksum_validation="when_required",
                ),
            },
        },
        "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
    }

CELERY_BROKER_URL = os.environ.get("CELERY_BROKER_URL", "memory://")
CELERY_TASK_ALWAYS_EAGER = env_bool(
    "CELERY_TASK_ALWAYS_EAGER", default=CELERY_BROKER_URL.startswith("memory://")
)
# Only matters when eager: let an exception a task did not handle reach the caller (and
# fail the test) instead of hiding in an EagerResult.
CELERY_TASK_EAGER_PROPAGATES = True

VOLGUARD_FLY_TOML = os.environ.get("VOLGUARD_FLY_TOML", str(BASE_DIR.parent / "fly.toml"))

_expect_mount = os.environ.get("VOLGUARD_EXPECT_MOUNT", "")
VOLGUARD_EXPECT_MOUNT = {"true": True, "false": False, "": None}.get(
    _expect_mount.lower(), _expect_mount
)
