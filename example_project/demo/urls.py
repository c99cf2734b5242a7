"""Routes of the example site."""

from __future__ import annotations

from django.contrib import admin
from django.urls import include, path

from . import views

urlpatterns = [
    path("", views.home, name="home"),
    path("login", views.login_view, name="login"),
    path("logout", views.logout_view, name="logout"),
    path("profile", views.profile, name="profile"),
    path("preferences", views.preferences, name="preferences"),
    path("account/sessions/", include("django_resilient_sessions.urls")),
    # The outage buttons: DEBUG only, and only on the demo's own redis-server.
    path("demo/redis/<slug:action>", views.redis_control, name="redis_control"),
    path("admin/", admin.site.urls),
]
