"""``manage.py exportsessions --to ENGINE``: is every live session mirrored into ENGINE yet?"""

from __future__ import annotations

import datetime
from typing import Any

from django.core.exceptions import ImproperlyConfigured
from django.core.management.base import BaseCommand, CommandError, CommandParser

from ... import engines, export
from ...bulkadoption import STORE_ERRORS, NotSupported
from ...conf import conf


class Command(BaseCommand):
    help = (
        "The way back to a stock session engine. Neither Redis nor the database holds a "
        "usable session key (only hashes), so no command can write sessions under the keys "
        "browsers hold: with RESILIENT_SESSIONS['EXPORT_TO'] = ENGINE, each request mirrors "
        "its session into ENGINE's store. This command removes from that store the logins "
        "that ended without their key at hand (revoked, timed out), then counts, from a "
        "SCAN of this engine's Redis entries, the live sessions mirrored and not yet. Exit "
        "status 0: all are, switch SESSION_ENGINE to ENGINE now; 1: not yet (the last one "
        "not mirrored expires at the time shown); 2: EXPORT_TO is not ENGINE."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--to",
            required=True,
            metavar="ENGINE",
            help="the stock engine to go back to, e.g. django.contrib.sessions.backends.db",
        )
        parser.add_argument(
            "--no-prune",
            action="store_true",
            help="only count; leave ended logins in ENGINE's store",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        engine = options["to"]
        if engine != conf.EXPORT_TO:
            raise CommandError(
                f"RESILIENT_SESSIONS['EXPORT_TO'] is {conf.EXPORT_TO!r}, not {engine!r}: "
                "set it, deploy, and let requests mirror their sessions first.",
                returncode=2,
            )
        unusable = engines.problem(engine, export=True)
        if unusable is not None:
            raise CommandError(f"RESILIENT_SESSIONS['EXPORT_TO'] is {engine!r}: {unusable}")
        pruned = 0
        try:
            if not options["no_prune"]:
                try:
                    pruned = export.prune()
                except NotSupported as error:
                    self.stderr.write(f"Ended logins not removed from {engine}: {error}")
            found = export.report()
        except ImproperlyConfigured as error:
            raise CommandError(str(error)) from error
        except STORE_ERRORS as error:
            raise CommandError(
                f"Stopped: {error!r}. Run the command again once Redis and the database answer."
            ) from error
        total = found.mirrored + found.missing
        lines = [
            f"Live sessions: {total}; mirrored into {engine}: {found.mirrored}; "
            f"not yet: {found.missing}.",
        ]
        if not options["no_prune"]:
            lines.append(f"Ended logins removed from {engine}: {pruned}.")
        if found.missing:
            last = datetime.datetime.fromtimestamp(found.last_expiry, tz=datetime.timezone.utc)
            lines.append(
                f"The last session not mirrored expires at {last:%Y-%m-%d %H:%M:%S} UTC "
                "(unless a request mirrors it first). Do not switch yet."
            )
        else:
            lines.append(f"Every live session is in {engine}: SESSION_ENGINE can switch to it.")
        self.stdout.write("\n".join(lines))
        if found.missing:
            raise SystemExit(1)
