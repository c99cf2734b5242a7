"""``manage.py sessionstats [--json] [--check]``: sessions, users, devices, cache health.

``--check`` prints one status line and exits 0 (ok), 1 (degraded) or 2 (down),
for cron and Nagios-style checks: see :mod:`django_resilient_sessions.status`.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db.models import Avg, Count, Max

from ... import recent, status
from ...breaker import get_breaker
from ...cachecopy import SessionCache
from ...conf import conf
from ...exceptions import LedgerUnavailable
from ...models import PendingPurge, UserSession

EXIT_CODES = {status.OK: 0, status.DEGRADED: 1, status.DOWN: 2}


def served_from_backups(minutes: int | None = None) -> dict[str, Any]:
    """The "served from backups in the last N minutes" figure (count None: unknown).

    At most ``BACKUP_LOADS_WINDOW`` minutes: the database keeps no older minutes.
    """
    window = conf.BACKUP_LOADS_WINDOW or 15
    minutes = min(minutes or window, window)
    count: int | None = None
    if conf.BACKUP_LOADS_WINDOW is not None:
        try:
            count = recent.backup_loads(minutes)
        except LedgerUnavailable:
            count = None
    return {"minutes": minutes, "loads": count, "covers": "every process sharing the database"}


def collect(minutes: int | None = None) -> dict[str, Any]:
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
        "served_from_backups": served_from_backups(minutes),
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
    # --check reports a misconfiguration as "down" (exit 2) instead of failing the checks.
    requires_system_checks: list[str] = []  # noqa: RUF012  # as Django's own attribute

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--json", action="store_true", help="print JSON for machines")
        parser.add_argument(
            "--check",
            action="store_true",
            help="print one status line and exit 0 (ok), 1 (degraded) or 2 (down)",
        )
        parser.add_argument(
            "--minutes",
            type=int,
            help="window of the served-from-backups figure (default: BACKUP_LOADS_WINDOW)",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        if options["check"]:
            report = status.check(live=True)
            self.stdout.write(report.line())
            code = EXIT_CODES[report.status]
            if code:
                sys.exit(code)
            return
        if options["minutes"] is not None and options["minutes"] < 1:
            raise CommandError("--minutes must be 1 or more.")
        self.check()
        stats = collect(options["minutes"])
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
        lines.append(_backups_line(stats["served_from_backups"]))
        self.stdout.write("\n".join(lines))


def _backups_line(figure: dict[str, Any]) -> str:
    loads = figure["loads"]
    shown = "unknown" if loads is None else f"{loads} session loads (all processes)"
    return f"From backups:      {shown} in the last {figure['minutes']} min"
