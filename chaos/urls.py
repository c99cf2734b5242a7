"""URLs of the chaos app (see :mod:`chaos.views`)."""

from __future__ import annotations

from django.urls import path

from chaos import views

urlpatterns = [
    path("login/", views.login_view),
    path("logout/", views.logout_view),
    path("state/", views.state_view),
    path("set/", views.set_view),
]
