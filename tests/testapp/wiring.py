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


class LedgerReadElsewhereRouter:
    """Writes the ledger with the users but forgets its reads (E011 catches that too)."""

    def db_for_read(self, model: Any, **hints: Any) -> str | None:
        return "other" if model._meta.app_label == "auth" else None

    def db_for_write(self, model: Any, **hints: Any) -> str | None:
        labels = ("auth", "django_resilient_sessions")
        return "other" if model._meta.app_label in labels else None

    def allow_migrate(self, db: str, app_label: str, **hints: Any) -> bool | None:
        return None


class ReplicaRouter:
    """Reads from a replica, writes to the primary (Django's docs' primary/replica router)."""

    def db_for_read(self, model: Any, **hints: Any) -> str | None:
        return "replica"

    def db_for_write(self, model: Any, **hints: Any) -> str | None:
        return "default"

    def allow_relation(self, obj1: Any, obj2: Any, **hints: Any) -> bool | None:
        pool = {"default", "replica"}
        return obj1._state.db in pool and obj2._state.db in pool

    def allow_migrate(self, db: str, app_label: str, **hints: Any) -> bool | None:
        return None


#: The apps that go with the user model on a site that keeps its users on "other".
WITH_THE_USERS = {"admin", "auth", "contenttypes", "sessions", "django_resilient_sessions"}


class UsersOnOtherRouter:
    """A multi-database site: the users, and the ledger with them, on "other"."""

    def db_for_read(self, model: Any, **hints: Any) -> str | None:
        return "other" if model._meta.app_label in WITH_THE_USERS else None

    db_for_write = db_for_read

    def allow_migrate(self, db: str, app_label: str, **hints: Any) -> bool | None:
        return None


class AllButContribRouter:
    """Django's own admin_views.test_multidb router: every app but auth, sessions and
    contenttypes goes to "other", the ledger included (E011)."""

    def db_for_read(self, model: Any, **hints: Any) -> str | None:
        labels = ("auth", "sessions", "contenttypes")
        return "default" if model._meta.app_label in labels else "other"

    db_for_write = db_for_read

    def allow_relation(self, obj1: Any, obj2: Any, **hints: Any) -> bool | None:
        return True

    def allow_migrate(self, db: str, app_label: str, **hints: Any) -> bool | None:
        return True


class LaggingReplicaRouter:
    """Every read from "other", a replica (that the test lets lag), every write to
    "default", the primary: Django's docs' primary/replica router."""

    def db_for_read(self, model: Any, **hints: Any) -> str | None:
        return "other"

    def db_for_write(self, model: Any, **hints: Any) -> str | None:
        return "default"

    def allow_relation(self, obj1: Any, obj2: Any, **hints: Any) -> bool | None:
        return True

    def allow_migrate(self, db: str, app_label: str, **hints: Any) -> bool | None:
        return None
