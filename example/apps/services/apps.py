from django.apps import AppConfig


class ServicesConfig(AppConfig):
    name = "apps.services"
    default_auto_field = "django.db.models.BigAutoField"
