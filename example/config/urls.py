"""URLs: the admin, where staff upload and inspect UserDataFile rows, and the health check.

``/healthz/media`` is volguard's media health check (docs/health.md): 200 when MEDIA_ROOT is
on the volume and writable, 503 otherwise; fly.toml's ``[[http_service.checks]]`` polls it.
"""

from django.conf import settings
from django.conf.urls.static import static
from django.contrib import admin
from django.urls import include, path

urlpatterns = [
    path("admin/", admin.site.urls),
    path("healthz/", include("volguard.django.urls")),
]
# Serving uploads from Django is for local development only (static() is a no-op unless
# DEBUG); on Fly the files live on the volume and a real server or bucket serves them.
urlpatterns += static(settings.MEDIA_URL, document_root=settings.MEDIA_ROOT)
