"""The tracking table: one row per authenticated session.

Rows are keyed by the SHA-256 of the session key (never the key), so the table
tells which sessions exist and whether each is still allowed to live, without
letting a reader of the database into any of them.  A backup cookie that holds
a login is trusted only while its row is active.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from django.conf import settings
from django.db import models
from django.db.models import Q
from django.utils import timezone
from django.utils.translation import gettext, pgettext_lazy
from django.utils.translation import gettext_lazy as _

from .conf import conf

__all__ = [
    "DEVICE_TYPES",
    "AdoptedSession",
    "AdoptionBar",
    "EndReason",
    "PendingPurge",
    "UserSession",
]

#: The names of ``UserSession.device_type``'s values (see ``django_resilient_sessions.devices``).
DEVICE_TYPES = {
    "desktop": pgettext_lazy("device type", "desktop"),
    "mobile": pgettext_lazy("device type", "mobile"),
    "tablet": pgettext_lazy("device type", "tablet"),
    "bot": pgettext_lazy("device type", "bot"),
    "other": pgettext_lazy("device type", "other device"),
}


class EndReason(models.TextChoices):
    LOGOUT = "logout", _("logged out")
    REVOKED = "revoked", _("revoked")
    LIMIT = "limit", _("session limit")
    EXPIRED = "expired", _("expired")
    IDLE = "idle", _("idle timeout")
    PASSWORD_CHANGE = "password_change", _("password changed")
    ACCOUNT_DELETED = "account_deleted", _("account deleted")
    REPLACED = "replaced", _("another user logged in")
    EXPORTED = "exported", _("moved to another session engine")


def active_q(now: datetime | None = None) -> Q:
    """The one definition of an active row: not ended, and not expired past the grace.

    ``expires_at`` is refreshed once per ``ACTIVITY_UPDATE_INTERVAL`` (or as
    soon as the session's expiry moves further than that), so it may lag the
    Redis copy's TTL by up to that interval: the grace.  The backup check, the
    lists, revocation, the session limit and ``clearsessions`` all use this.
    """
    now = now or timezone.now()
    return Q(ended_at__isnull=True, expires_at__gt=now - UserSession.grace())


class UserSessionQuerySet(models.QuerySet["UserSession"]):
    def active(self) -> UserSessionQuerySet:
        """Rows whose session may still be used (see :func:`active_q`)."""
        active: UserSessionQuerySet = self.filter(active_q())
        return active

    def revoke(self, reason: str = "revoked") -> int:
        """End these sessions in the database and in the cache; returns how many.

        Raises :class:`~.exceptions.LedgerUnavailable` when the end could not be
        recorded (nothing is ended then).
        """
        from . import tracking  # the ledger's composition with Redis sits above the models

        return tracking.revoke(self, reason)


class UserSession(models.Model):
    key_hash = models.CharField(_("session key hash"), max_length=64, unique=True)
    # Not CASCADE: deleting a user ends their sessions (Redis copies included)
    # and deletes these rows first (tracking.on_user_deleted), so the admin's
    # "delete user" needs no permission on user sessions.
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.DO_NOTHING,
        related_name="resilient_sessions",
        verbose_name=_("user"),
    )
    created_at = models.DateTimeField(_("logged in"), default=timezone.now)
    last_activity = models.DateTimeField(_("last activity"), default=timezone.now)
    expires_at = models.DateTimeField(_("expires"), db_index=True)
    ended_at = models.DateTimeField(_("ended"), null=True, blank=True, db_index=True)
    end_reason = models.CharField(
        _("end reason"), max_length=20, choices=EndReason.choices, blank=True
    )
    ip = models.GenericIPAddressField(_("IP address"), null=True, blank=True)
    user_agent = models.CharField(_("user agent"), max_length=300, blank=True)
    device_type = models.CharField(_("device type"), max_length=10, blank=True)
    browser = models.CharField(_("browser"), max_length=60, blank=True)
    os = models.CharField(_("operating system"), max_length=60, blank=True)
    # The newest backup version served while Redis could not be used (or at
    # the last activity update): an older backup of this login is a rollback.
    backup_version = models.PositiveBigIntegerField(_("backup version"), default=0)
    # What the login needs besides its session key (Django's auth backend path
    # and session auth hash), so that a client without its backup cookie (an
    # app with a session token) stays logged in while Redis cannot answer.
    # Neither lets anyone in without the session key, which is not stored.
    auth_backend = models.CharField(_("authentication backend"), max_length=255, blank=True)
    auth_hash = models.CharField(_("session auth hash"), max_length=128, blank=True)
    # Adopted from a signed cookie of PREVIOUS_ENGINE: its end bars the adoption of
    # the user's signed cookies signed before it (see ``bars``).
    signed_origin = models.BooleanField(_("adopted from a signed cookie"), default=False)

    objects = UserSessionQuerySet.as_manager()

    class Meta:
        verbose_name = _("user session")
        verbose_name_plural = _("user sessions")
        indexes = (models.Index(fields=["user", "ended_at"], name="drs_user_ended_idx"),)

    def __str__(self) -> str:
        # Translators: a user's session in the admin, e.g. "alice since 2024-05-01 09:30".
        return gettext("%(user)s since %(date)s") % {
            "user": self.user,
            "date": f"{self.created_at:%Y-%m-%d %H:%M}",
        }

    @property
    def device_type_label(self) -> str:
        """``device_type`` in words, in the active language ("" when unknown)."""
        return str(DEVICE_TYPES.get(self.device_type, self.device_type))

    @property
    def is_active(self) -> bool:
        """Same rule as :func:`active_q`."""
        return self.ended_at is None and self.expires_at > timezone.now() - self.grace()

    def revoke(self, reason: str = "revoked") -> bool:
        """End this session in the database and in the cache."""
        from . import tracking  # see UserSessionQuerySet.revoke

        ended = tracking.end([self.key_hash], reason) > 0
        if ended:
            self.refresh_from_db(fields=["ended_at", "end_reason"])
        return ended

    @classmethod
    def grace(cls) -> timedelta:
        """Slack on ``expires_at``, which is refreshed at most once per interval."""
        return timedelta(seconds=conf.ACTIVITY_UPDATE_INTERVAL)


class PendingPurge(models.Model):
    """A Redis copy to delete: queued with the end it belongs to, done once Redis answers.

    ``in_flight``: written in the same transaction as the end of a login, and
    deleted once Redis has taken the deletion (an outbox); left behind only if
    the process failed right then, so it counts as pending once it is older
    than a few seconds (``outbox.SETTLED``).

    ``slot``: the Redis Cluster hash slot of the session's key (its key hash is
    the key's hash tag), so that a node's breaker waits for its own slots'
    deletions only.
    """

    key_hash = models.CharField(max_length=64, unique=True)
    created_at = models.DateTimeField(default=timezone.now)
    in_flight = models.BooleanField(default=False)
    slot = models.PositiveIntegerField(default=0, db_index=True)

    class Meta:
        verbose_name = _("pending cache purge")
        verbose_name_plural = _("pending cache purges")

    def __str__(self) -> str:
        return self.key_hash[:12]


class AdoptedSession(models.Model):
    """A session taken over from ``PREVIOUS_ENGINE``: adopted once, never again.

    ``key_hash`` is the hash of the key the previous engine knew it by (for a
    signed-cookie session, of the cookie's value).  Written in the same
    transaction as the adopted login's ``UserSession`` row, so that of two
    requests adopting the same session at once, one fails on the unique key
    and serves what the other adopted; and an old key (a signed cookie that
    cannot be revoked) is refused once adopted.
    """

    key_hash = models.CharField(_("session key hash"), max_length=64, unique=True)
    adopted_at = models.DateTimeField(_("adopted"), default=timezone.now)
    engine = models.CharField(_("previous engine"), max_length=255)

    class Meta:
        verbose_name = _("adopted session")
        verbose_name_plural = _("adopted sessions")

    def __str__(self) -> str:
        return self.key_hash[:12]


class AdoptionBar(models.Model):
    """No session of ``PREVIOUS_ENGINE`` issued before ``since`` is adopted as this user.

    Raised (to the latest time) in the same transaction as the end of a user's
    sessions while ``PREVIOUS_ENGINE`` is set: by a revocation of all of a
    user's sessions (which cannot reach those still in the previous store), and
    by the end of a session adopted from a signed cookie (whose earlier values
    are still valid signed cookies).  See ``django_resilient_sessions.bars``.

    ``user_key`` is the user's primary key as a string, as a session holds it
    (``_auth_user_id``): not a foreign key, so that deleting a user (which ends
    their sessions, and raises their bar) leaves it in place.
    """

    user_key = models.CharField(_("user"), max_length=255, unique=True)
    since = models.DateTimeField(_("since"))

    class Meta:
        verbose_name = _("adoption bar")
        verbose_name_plural = _("adoption bars")

    def __str__(self) -> str:
        return f"{self.user_key} {self.since:%Y-%m-%d %H:%M}"


class BackupLoadsMinute(models.Model):
    """Session loads served from backups in one minute, summed over every process.

    The ring behind the "served from backups in the last N minutes" figure
    (``sessionstats``, the admin): each process adds its own counts at most
    every ``recent.FLUSH_INTERVAL`` seconds, and rows older than
    ``BACKUP_LOADS_WINDOW`` minutes are deleted as new ones come.
    """

    #: Unix time // 60.
    minute = models.BigIntegerField(primary_key=True)
    loads = models.BigIntegerField(default=0)

    class Meta:
        verbose_name = _("backup loads per minute")
        verbose_name_plural = _("backup loads per minute")
        default_permissions = ()

    def __str__(self) -> str:
        return f"{self.minute}: {self.loads}"
