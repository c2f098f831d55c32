"""URLs for volguard's media health check: ``path("healthz/", include("volguard.django.urls"))``.

That serves `volguard.django.health.media_health` at ``/healthz/media`` (URL name
``volguard:media_health``), the path to give Fly's ``[[http_service.checks]]``. To check a
storage other than MEDIA_ROOT, route the view yourself with ``{"storage": "alias"}``.
"""

from django.urls import path

from volguard.django.health import media_health

app_name = "volguard"
urlpatterns = [
    path("media", media_health, name="media_health"),
]
