"""``manage.py sessionstats [--json]``: sessions, users, devices, cache health."""

from __future__ import annotations

import json
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandParser
from django.db.models import Avg, Count, Max

from ...breaker import get_breaker
from ...cachecopy import SessionCache
from ...exceptions import CacheUnavailable
from ...models import PendingPurge, UserSession


def collect() -> dict[str, Any]:
    active = UserSession.objects.active()
    per_user = (
        active.values("user")
        .annotate(n=Count("pk"))
        .aggregate(users=Count("user"), avg=Avg("n"), max=Max("n"))
    )
    devices = dict(
        active.values_list("device_type").annotate(n=Count("pk")).order_by("device_type")
    )
    alias = settings.SESSION_CACHE_ALIAS
    try:
        rtt: float | None = round(SessionCache(alias).ping_ms(), 3)
    except CacheUnavailable:
        rtt = None
    return {
        "active_sessions": active.count(),
        "active_users": per_user["users"] or 0,
        "sessions_per_user": {
            "average": round(float(per_user["avg"] or 0), 2),
            "maximum": per_user["max"] or 0,
        },
        "by_device": {kind or "unknown": n for kind, n in devices.items()},
        "pending_purges": PendingPurge.objects.count(),
        "cache": {
            "alias": alias,
            "breaker": get_breaker(alias).state,
            "reachable": rtt is not None,
            "round_trip_ms": rtt,
        },
    }


class Command(BaseCommand):
    help = "Show active sessions, users, devices and the session cache's health."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--json", action="store_true", help="print JSON for machines")

    def handle(self, *args: Any, **options: Any) -> None:
        stats = collect()
        if options["json"]:
            self.stdout.write(json.dumps(stats, indent=2))
            return
        per_user = stats["sessions_per_user"]
        cache = stats["cache"]
        rtt = f"{cache['round_trip_ms']} ms" if cache["reachable"] else "unreachable"
        label = f"Cache {cache['alias']!r}:"
        lines = [
            f"Active sessions:   {stats['active_sessions']}",
            f"Active users:      {stats['active_users']}",
            f"Sessions per user: {per_user['average']} on average, {per_user['maximum']} at most",
            "By device:         "
            + (", ".join(f"{k} {v}" for k, v in stats["by_device"].items()) or "none"),
            f"Pending purges:    {stats['pending_purges']}",
            f"{label:<19}breaker {cache['breaker']}, round trip {rtt}",
        ]
        self.stdout.write("\n".join(lines))
