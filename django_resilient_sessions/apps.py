from __future__ import annotations

from django.apps import AppConfig


class ResilientSessionsConfig(AppConfig):
    name = "django_resilient_sessions"
    verbose_name = "Resilient sessions"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from . import checks, signals, tracking

        del checks  # imported for its @register side effect
        signals.cache_recovered.connect(
            tracking.on_cache_recovered, dispatch_uid="django_resilient_sessions.purge"
        )
