"""``manage.py revokesessions USERNAME... [--all | --except-newest] [--reason R]``.

Exit codes: 0 done (also when there was nothing to revoke), 1 an unknown
user (nothing is revoked then), 2 bad arguments.
"""

from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser

from ... import tracking
from ...models import EndReason, UserSession


class Command(BaseCommand):
    help = (
        "End the sessions of the given users, in the database and in Redis. While "
        "RESILIENT_SESSIONS['PREVIOUS_ENGINE'] is set, their sessions still in the previous "
        "engine's store, not adopted yet, are refused their login too."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("usernames", nargs="+", metavar="USERNAME")
        which = parser.add_mutually_exclusive_group()
        which.add_argument("--all", action="store_true", help="every session (the default)")
        which.add_argument(
            "--except-newest",
            action="store_true",
            help="keep each user's most recently active session",
        )
        parser.add_argument(
            "--reason",
            default=str(EndReason.REVOKED),
            choices=[str(value) for value in EndReason.values],
            help="end reason recorded on the rows (default: revoked)",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        model = get_user_model()
        field = model.USERNAME_FIELD
        names = list(dict.fromkeys(options["usernames"]))
        users = {
            getattr(u, field): u for u in model._default_manager.filter(**{f"{field}__in": names})
        }
        unknown = [name for name in names if name not in users]
        if unknown:
            raise CommandError(f"Unknown user(s): {', '.join(unknown)}. Nothing was revoked.")
        total = 0
        for name in names:
            keep = None
            if options["except_newest"]:
                rows = UserSession.objects.active().filter(user=users[name])
                keep = rows.order_by("-last_activity").values_list("key_hash", flat=True).first()
            # (With PREVIOUS_ENGINE set, this bars the user's sessions not adopted yet too.)
            count = tracking.end_user_sessions(
                users[name], options["reason"], keep=keep, active_only=True
            )
            total += count
            if options["verbosity"] >= 1:
                self.stdout.write(f"{name}: {count} session(s) revoked")
        if options["verbosity"] >= 1:
            self.stdout.write(self.style.SUCCESS(f"{total} session(s) revoked in all."))
