"""``manage.py sessionstats [--json]``: sessions, users, devices, cache health."""

from __future__ import annotations

import json
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandParser
from django.db.models import Avg, Count, Max

from ...breaker import get_breaker
from ...cachecopy import SessionCache
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
    cache = SessionCache(alias)
    times = cache.ping_ms()
    states = {breaker.name: breaker.state for breaker in cache.breakers()}
    nodes = [
        {"name": name, "breaker": states.get(name, "closed"), "round_trip_ms": rtt}
        for name, rtt in times.items()
    ]
    rtt = max((n["round_trip_ms"] for n in nodes if n["round_trip_ms"] is not None), default=None)
    reachable = bool(nodes) and all(n["round_trip_ms"] is not None for n in nodes)
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
            "reachable": reachable,
            # The slowest node's (the only one off a cluster).
            "round_trip_ms": rtt,
            "nodes": nodes,
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
        if len(cache["nodes"]) > 1 or cache["nodes"][0]["name"] != cache["alias"]:
            for node in cache["nodes"]:
                ms = node["round_trip_ms"]
                shown = f"{ms} ms" if ms is not None else "unreachable"
                lines.append(
                    f"  node {node['name']}: breaker {node['breaker']}, round trip {shown}"
                )
        self.stdout.write("\n".join(lines))
