"""``manage.py check_missing_files``: the missing-file audit (`volguard.django.missing_files`)."""
