"""django-photologue's project: Photo (an ImageModel with derived cached sizes under
``photologue/photos/cache/``), Gallery (a sorted M2M to Photo) and Django's sites.

An operator's configuration for ``--fix``: a Photo whose picture is gone is hidden
(``is_public`` False) with the message at the end of its caption.
"""

from realapps_base import *  # noqa: F403

SITE_ID = 1
INSTALLED_APPS = [*BASE_APPS, "django.contrib.sites", "sortedm2m", "photologue"]  # noqa: F405
VOLGUARD_MISSING_FILES = {
    "photologue.Photo": {
        "status_field": "is_public",
        "failed_value": False,
        "log_field": "caption",
        "message": "Picture missing from storage.",
    },
}
