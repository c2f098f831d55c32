"""No views: the real-app projects are driven by management commands only."""

urlpatterns: list = []
