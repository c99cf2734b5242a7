"""URLs of the bench site."""

from __future__ import annotations

from django.urls import path

from benchmarks.site import views

urlpatterns = [
    path("login/", views.login_view),
    path("read/", views.read_view),
    path("write/", views.write_view),
    path("logout/", views.logout_view),
    path("health/", views.health_view),
]
