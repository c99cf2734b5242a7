"""Imported first by the engine: a clear error when the app is not installed.

Without ``"django_resilient_sessions"`` in ``INSTALLED_APPS`` the engine's models do
not exist and Django would raise a bare ``RuntimeError`` from deep in an import.
"""

from __future__ import annotations

from django.apps import apps
from django.core.exceptions import ImproperlyConfigured

if not apps.is_installed("django_resilient_sessions"):
    raise ImproperlyConfigured(
        "SESSION_ENGINE is 'django_resilient_sessions.backends.resilient' but "
        "'django_resilient_sessions' is not in INSTALLED_APPS: add it (next to "
        "'django.contrib.sessions') and run manage.py migrate."
    )
