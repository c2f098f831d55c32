"""The Django app config: ``INSTALLED_APPS = [..., "volguard.django"]``."""

from __future__ import annotations

from django.apps import AppConfig


class VolguardConfig(AppConfig):
    name = "volguard.django"
    label = "volguard"
    verbose_name = "volguard"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # Importing the module registers its checks with Django's check registry.
        from volguard.django import checks  # noqa: F401
