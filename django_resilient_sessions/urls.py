"""``path("account/sessions/", include("django_resilient_sessions.urls"))``."""

from __future__ import annotations

from django.urls import path

from . import views

app_name = "resilient_sessions"

urlpatterns = [
    path("", views.session_list, name="list"),
    path("<int:pk>/revoke/", views.revoke_session, name="revoke"),
    path("revoke-others/", views.revoke_others, name="revoke_others"),
]
