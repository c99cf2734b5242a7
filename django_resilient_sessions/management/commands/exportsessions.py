"""``manage.py exportsessions --to ENGINE``: is every live session mirrored into ENGINE yet?

``--finish``, once the site runs on ENGINE: forget every session this engine holds
(see :func:`...handback.finish`).
"""

from __future__ import annotations

import datetime
from typing import Any

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.core.management.base import BaseCommand, CommandError, CommandParser

from ... import engines, export, handback
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
        "not mirrored expires at the time shown); 2: EXPORT_TO is not ENGINE. Once "
        "SESSION_ENGINE is ENGINE, --finish ends every session this engine still holds "
        "(ledger rows and Redis copies), so that none of them can be served again if the "
        "site switches back to it later."
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
        parser.add_argument(
            "--finish",
            action="store_true",
            help="the last step, once SESSION_ENGINE is ENGINE: end every ledger row, delete "
            "every Redis copy, forget the adoption records",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        engine = options["to"]
        if options["finish"]:
            return self._finish(engine, options["verbosity"])
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

    def _finish(self, engine: str, verbosity: int) -> None:
        unusable = engines.problem(engine, export=True)
        if unusable is not None:
            raise CommandError(f"--to {engine}: {unusable}")
        if engine != settings.SESSION_ENGINE:
            raise CommandError(
                f"SESSION_ENGINE is {settings.SESSION_ENGINE!r}, not {engine!r}: --finish ends "
                "every session this engine holds. Run it once the site runs on "
                f"{engine}, after the switch.",
                returncode=2,
            )
        try:
            done = handback.finish()
        except ImproperlyConfigured as error:
            raise CommandError(str(error)) from error
        except STORE_ERRORS as error:
            raise CommandError(
                f"Stopped: {error!r}. Run the command again once Redis and the database answer."
            ) from error
        if verbosity >= 1:
            self.stdout.write(
                f"Ledger rows ended: {done.ended}; Redis copies deleted: {done.removed}; "
                f"adoption records forgotten: {done.forgotten}.\n"
                f"Nothing this engine held can serve a session now. To switch back to it "
                f"later, set RESILIENT_SESSIONS['PREVIOUS_ENGINE'] = {engine!r}: the sessions "
                f"live in {engine} are adopted."
            )
