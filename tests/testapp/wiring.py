"""Classes the system-check tests point settings at (a middleware subclass, routers)."""

from __future__ import annotations

from typing import Any

from django_resilient_sessions.middleware import SessionMiddleware


class SiteSessionMiddleware(SessionMiddleware):
    """A site's own subclass of the resilient middleware."""


class LedgerElsewhereRouter:
    """Sends the ledger to another database than the users (what E011 catches)."""

    def db_for_read(self, model: Any, **hints: Any) -> str | None:
        return "other" if model._meta.app_label == "django_resilient_sessions" else None

    db_for_write = db_for_read

    def allow_migrate(self, db: str, app_label: str, **hints: Any) -> bool | None:
        return None


class LedgerWithUsersRouter:
    """Sends the ledger with the users: what a multi-database site should do."""

    def db_for_read(self, model: Any, **hints: Any) -> str | None:
        labels = ("auth", "django_resilient_sessions")
        return "default" if model._meta.app_label in labels else "other"

    db_for_write = db_for_read

    def allow_migrate(self, db: str, app_label: str, **hints: Any) -> bool | None:
        return None
