"""The one place the package reads its settings.

Every option lives in the ``RESILIENT_SESSIONS`` dict.  Values are read lazily
on each access, so ``override_settings`` works in tests.  ``DEFAULTS`` is the
documented table; the system checks in :mod:`.checks` reject unknown keys and
bad values with stable IDs.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cached_property
from typing import Any

from django.conf import settings
from django.core.signals import setting_changed
from django.dispatch import receiver

DEFAULTS: dict[str, Any] = {
    # Name of the (first) backup cookie; chunks add "_1", "_2", ...
    "BACKUP_COOKIE_NAME": "sessionbackup",
    # Byte budget of one backup cookie, name and attributes included.
    "BACKUP_COOKIE_MAX_BYTES": 4000,
    # How many cookies one backup may be split over.
    "BACKUP_COOKIE_MAX_CHUNKS": 1,
    # Session keys kept in a partial backup besides Django's auth keys.
    "ESSENTIAL_KEYS": [],
    # Seconds the cache is skipped after a failure before one probe goes through.
    "BREAKER_COOLDOWN": 5.0,
    # Seconds the probe waits for Redis to answer its PING.
    "BREAKER_PROBE_TIMEOUT": 0.05,
    # When the database cannot confirm an authenticated backup, drop its auth keys.
    "FAIL_CLOSED": True,
    # Prefix of the cache keys (followed by the SHA-256 of the session key).
    "CACHE_KEY_PREFIX": "resilient_sessions:",
    # Seconds between two writes of a session's last activity to the database.
    "ACTIVITY_UPDATE_INTERVAL": 300,
    # Record the client IP address on tracking rows.
    "TRACK_IP": True,
    # Dotted path of a callable(request) -> str | None giving the client IP.
    "IP_RESOLVER": None,
    # Days ended or expired tracking rows are kept before clearsessions deletes them.
    "ENDED_RETENTION_DAYS": 30,
    # Rows deleted per statement by clearsessions.
    "CLEANUP_BATCH_SIZE": 5000,
    # Seconds between two checks, per process, for cache purges queued by
    # another process during an outage (None: only on this process's recovery).
    "PURGE_CHECK_INTERVAL": 60,
    # Most sessions one user may have at once (None: no limit).
    "MAX_SESSIONS_PER_USER": None,
    # What a login past the limit does: "evict_oldest" or "refuse".
    "SESSION_LIMIT_POLICY": "evict_oldest",
    # Seconds without activity after which a login ends (None: never).
    "IDLE_TIMEOUT": None,
    # Seconds after login at which a login ends, active or not (None: never).
    "ABSOLUTE_TIMEOUT": None,
    # Dotted path of the session engine the site switches from: keys unknown here are
    # looked up there and adopted once (None: no adoption).
    "PREVIOUS_ENGINE": None,
    # Dotted path of a stock session engine every session is mirrored into (under its
    # key), for a switch back to it without logging anyone out (None: no mirror).
    "EXPORT_TO": None,
    # Minutes of the "served from backups" figure of sessionstats and the admin; the
    # counts are kept per minute in the database, summed over every process (None:
    # not kept).
    "BACKUP_LOADS_WINDOW": 15,
    # Seconds the health view, sessionstats --check and the metrics scrape wait for the
    # ledger's database before reporting it as not answering.
    "HEALTH_CHECK_TIMEOUT": 1.0,
}

LOGIN_AT_KEY = "_resilient_login_at"
SEEN_AT_KEY = "_resilient_seen_at"
ROW_EXPIRY_KEY = "_resilient_row_expiry"
ROW_HASH_KEY = "_resilient_row_hash"
UNTRACKED_KEY = "_resilient_untracked"
#: The engine (``EXPORT_TO``) a session was last mirrored into (see ``export.py``).
EXPORTED_KEY = "_resilient_exported"
AUTH_KEYS = (
    "_auth_user_id",
    "_auth_user_backend",
    "_auth_user_hash",
    LOGIN_AT_KEY,
    SEEN_AT_KEY,
    ROW_EXPIRY_KEY,
    ROW_HASH_KEY,
    UNTRACKED_KEY,
)
"""The part of a session that makes it a login: Django's auth keys and ours."""


class Settings:
    """Typed view of ``settings.RESILIENT_SESSIONS``, read once per value.

    Values are cached on first use and forgotten whenever Django announces a
    settings change (``override_settings`` in tests), see :func:`reload`.
    """

    def _get(self, name: str) -> Any:
        options = getattr(settings, "RESILIENT_SESSIONS", None) or {}
        return options.get(name, DEFAULTS[name])

    @cached_property
    def derived(self) -> dict[str, Any]:
        """Values other modules compute from settings, forgotten with them."""
        return {}

    @cached_property
    def BACKUP_COOKIE_NAME(self) -> str:
        return str(self._get("BACKUP_COOKIE_NAME"))

    @cached_property
    def BACKUP_COOKIE_MAX_BYTES(self) -> int:
        return int(self._get("BACKUP_COOKIE_MAX_BYTES"))

    @cached_property
    def BACKUP_COOKIE_MAX_CHUNKS(self) -> int:
        return int(self._get("BACKUP_COOKIE_MAX_CHUNKS"))

    @cached_property
    def ESSENTIAL_KEYS(self) -> tuple[str, ...]:
        return (*AUTH_KEYS, "_session_expiry", *self._get("ESSENTIAL_KEYS"))

    @cached_property
    def BREAKER_COOLDOWN(self) -> float:
        return float(self._get("BREAKER_COOLDOWN"))

    @cached_property
    def BREAKER_PROBE_TIMEOUT(self) -> float:
        return float(self._get("BREAKER_PROBE_TIMEOUT"))

    @cached_property
    def FAIL_CLOSED(self) -> bool:
        return bool(self._get("FAIL_CLOSED"))

    @cached_property
    def CACHE_KEY_PREFIX(self) -> str:
        return str(self._get("CACHE_KEY_PREFIX"))

    @cached_property
    def ACTIVITY_UPDATE_INTERVAL(self) -> int:
        return int(self._get("ACTIVITY_UPDATE_INTERVAL"))

    @cached_property
    def TRACK_IP(self) -> bool:
        return bool(self._get("TRACK_IP"))

    @cached_property
    def IP_RESOLVER(self) -> Callable[..., str | None] | None:
        path = self._get("IP_RESOLVER")
        if not path:
            return None
        from django.utils.module_loading import import_string

        resolver: Callable[..., str | None] = import_string(path)
        return resolver

    @cached_property
    def ENDED_RETENTION_DAYS(self) -> int:
        return int(self._get("ENDED_RETENTION_DAYS"))

    @cached_property
    def CLEANUP_BATCH_SIZE(self) -> int:
        return int(self._get("CLEANUP_BATCH_SIZE"))

    @cached_property
    def PURGE_CHECK_INTERVAL(self) -> float | None:
        value = self._get("PURGE_CHECK_INTERVAL")
        return None if value is None else float(value)

    @cached_property
    def MAX_SESSIONS_PER_USER(self) -> int | None:
        value = self._get("MAX_SESSIONS_PER_USER")
        return None if value is None else int(value)

    @cached_property
    def SESSION_LIMIT_POLICY(self) -> str:
        return str(self._get("SESSION_LIMIT_POLICY"))

    @cached_property
    def IDLE_TIMEOUT(self) -> int | None:
        value = self._get("IDLE_TIMEOUT")
        return None if value is None else int(value)

    @cached_property
    def ABSOLUTE_TIMEOUT(self) -> int | None:
        value = self._get("ABSOLUTE_TIMEOUT")
        return None if value is None else int(value)

    @cached_property
    def PREVIOUS_ENGINE(self) -> str | None:
        value = self._get("PREVIOUS_ENGINE")
        return str(value) if value else None

    @cached_property
    def EXPORT_TO(self) -> str | None:
        value = self._get("EXPORT_TO")
        return str(value) if value else None

    @cached_property
    def BACKUP_LOADS_WINDOW(self) -> int | None:
        value = self._get("BACKUP_LOADS_WINDOW")
        return None if value is None else int(value)

    @cached_property
    def HEALTH_CHECK_TIMEOUT(self) -> float:
        return float(self._get("HEALTH_CHECK_TIMEOUT"))


conf = Settings()


#: Bumped whenever a setting the engine derives objects from changes (tests'
#: ``override_settings``): what was made from the old values is made again.
generation = 0


@receiver(setting_changed)
def reload(*, setting: str, **kwargs: Any) -> None:
    """Forget cached values when ``RESILIENT_SESSIONS`` or a cookie/cache setting changes."""
    global generation
    if setting == "RESILIENT_SESSIONS" or setting.startswith("SESSION_"):
        conf.__dict__.clear()
    if setting in ("CACHES", "SESSION_CACHE_ALIAS", "SESSION_SERIALIZER", "SECRET_KEY"):
        generation += 1
