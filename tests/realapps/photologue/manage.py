#!/usr/bin/env python
"""manage.py of the django-photologue test project (DATABASE_URL and MEDIA_ROOT required)."""

import os
import sys
from pathlib import Path

if __name__ == "__main__":
    here = Path(__file__).resolve().parent
    sys.path[:0] = [str(here), str(here.parent / "shared")]
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "photologue_site")
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)
