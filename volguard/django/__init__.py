"""volguard's Django side: a reusable app that runs volguard's checks inside Django.

Add ``"volguard.django"`` to ``INSTALLED_APPS`` and ``manage.py check --deploy`` reports
volguard's fly.toml and MEDIA_ROOT rules (VG100–VG114) as system checks ``volguard.E101`` …
(see ``volguard.django.checks`` and docs/checks.md, "Django system checks").

Kept import-light on purpose: importing this package does not import Django, which stays
an optional extra (``pip install volguard[django]``). Django is imported by the submodules
(``apps``, ``checks``) that need it.
"""
