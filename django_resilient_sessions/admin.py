"""Read-only admin for ``UserSession`` with a "Revoke selected sessions" action.

Deleting rows (the "Delete selected" action or the Delete button) revokes
the sessions first, so a deleted row never leaves a device logged in.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from django.contrib import admin, messages
from django.contrib.auth import get_user_model
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse
from django.utils.translation import gettext_lazy as _
from django.utils.translation import ngettext, pgettext, pgettext_lazy

from . import recent
from .conf import conf
from .exceptions import LedgerUnavailable
from .models import UserSession

if TYPE_CHECKING:
    ModelAdmin = admin.ModelAdmin[UserSession]
else:  # ModelAdmin is generic for type checkers only
    ModelAdmin = admin.ModelAdmin


class StatusFilter(admin.SimpleListFilter):
    title = _("status")
    parameter_name = "status"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, Any]]:
        return [
            ("active", pgettext_lazy("session status", "active")),
            ("ended", pgettext_lazy("session status", "ended or expired")),
        ]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        active = UserSession.objects.active().values("pk")
        filtered: QuerySet[Any] = queryset
        if self.value() == "active":
            filtered = queryset.filter(pk__in=active)
        elif self.value() == "ended":
            filtered = queryset.exclude(pk__in=active)
        return filtered


@admin.register(UserSession)
class UserSessionAdmin(ModelAdmin):
    list_display = ("user", "device", "ip", "created_at", "last_activity", "status")
    list_filter = (StatusFilter, "end_reason", "device_type")
    list_select_related = ("user",)
    date_hierarchy = "created_at"
    ordering = ("-last_activity",)
    actions = ("revoke_sessions",)
    readonly_fields = tuple(f.name for f in UserSession._meta.fields)

    def get_search_fields(self, request: HttpRequest) -> tuple[str, ...]:
        return (f"user__{get_user_model().USERNAME_FIELD}", "ip")

    @admin.display(description=_("device"))
    def device(self, obj: UserSession) -> str:
        return " / ".join(part for part in (obj.browser, obj.os) if part) or obj.device_type_label

    @admin.display(description=_("status"))
    def status(self, obj: UserSession) -> str:
        if obj.ended_at is not None:
            # Translators: the status of a session, with why it ended, e.g. "ended (revoked)".
            ended = pgettext("session status", "ended (%(reason)s)")
            return ended % {"reason": obj.get_end_reason_display()}
        if obj.is_active:  # the one definition of "active", grace included
            return pgettext("session status", "active")
        return pgettext("session status", "expired")

    def changelist_view(
        self, request: HttpRequest, extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        context = {"backup_loads": backup_loads_text(), **(extra_context or {})}
        return super().changelist_view(request, context)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_revoke_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("django_resilient_sessions.delete_usersession")

    def delete_model(self, request: HttpRequest, obj: UserSession) -> None:
        obj.revoke()
        super().delete_model(request, obj)

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[UserSession]) -> None:
        UserSession.objects.filter(pk__in=queryset.values("pk")).revoke()
        super().delete_queryset(request, queryset)

    @admin.action(description=_("Revoke selected sessions"), permissions=["revoke"])
    def revoke_sessions(self, request: HttpRequest, queryset: QuerySet[UserSession]) -> None:
        count = UserSession.objects.filter(pk__in=queryset.values("pk")).revoke()
        self.message_user(
            request,
            ngettext("%(count)d session revoked.", "%(count)d sessions revoked.", count)
            % {"count": count},
            messages.SUCCESS,
        )


def backup_loads_text() -> str:
    """ "Served from backups in the last N minutes" over every process ("" when not kept)."""
    minutes = conf.BACKUP_LOADS_WINDOW
    if minutes is None:
        return ""
    try:
        loads = recent.backup_loads(minutes)
    except LedgerUnavailable:
        return ""
    # Translators: a figure above the list of sessions in the admin.
    text = ngettext(
        "Served from backups in the last %(minutes)d minutes: %(count)d session load "
        "(all servers).",
        "Served from backups in the last %(minutes)d minutes: %(count)d session loads "
        "(all servers).",
        loads,
    )
    return text % {"minutes": minutes, "count": loads}
