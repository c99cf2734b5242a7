"""The session engines the benchmarks compare, by short name."""

from __future__ import annotations

ENGINES: dict[str, str] = {
    "resilient": "django_resilient_sessions.backends.resilient",
    "cache": "django.contrib.sessions.backends.cache",
    "cached_db": "django.contrib.sessions.backends.cached_db",
    "signed_cookies": "django.contrib.sessions.backends.signed_cookies",
    "db": "django.contrib.sessions.backends.db",
}
