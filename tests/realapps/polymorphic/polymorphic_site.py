"""django-polymorphic's project, with a small app of our own on it (``library``): a file
field declared on a polymorphic multi-table parent (Document → Invoice, Contract), and a
field whose storage is chosen per row (Scan), the way django-filer splits public and private
files. ``PRIVATE_MEDIA_ROOT`` is the private storage's directory (default: beside MEDIA_ROOT).
"""

from realapps_base import *  # noqa: F403

INSTALLED_APPS = [*BASE_APPS, "polymorphic", "library"]  # noqa: F405
