from __future__ import annotations

from django.apps import AppConfig
from django.utils.translation import gettext_lazy as _


class ResilientSessionsConfig(AppConfig):
    name = "django_resilient_sessions"
    verbose_name = _("Resilient sessions")
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from django.contrib.auth import get_user_model
        from django.contrib.auth.signals import user_logged_in
        from django.db.models.signals import pre_delete

        from . import checks, lifecycle, metrics, purges, recent, tracking

        del checks  # imported for its @register side effect
        purges.install()
        metrics.install()  # nothing without prometheus-client
        recent.install()
        user_logged_in.connect(
            lifecycle.on_user_logged_in, dispatch_uid="django_resilient_sessions.login"
        )
        pre_delete.connect(
            tracking.on_user_deleted,
            sender=get_user_model(),
            dispatch_uid="django_resilient_sessions.user_deleted",
        )
