"""URLs: the admin, where staff upload and inspect UserDataFile rows."""

from django.conf import settings
from django.conf.urls.static import static
from django.contrib import admin
from django.urls import path

urlpatterns = [
    path("admin/", admin.site.urls),
]
# Serving uploads from Django is for local development only (static() is a no-op unless
# DEBUG); on Fly the files live on the volume and a real server or bucket serves them.
urlpatterns += static(settings.MEDIA_URL, document_root=settings.MEDIA_ROOT)
