"""``manage.py adoptsessions [--dry-run] [--batch-size N]``: adopt every live session of
``PREVIOUS_ENGINE`` now, rather than one request at a time (see :mod:`...bulkadoption`)."""

from __future__ import annotations

import time
from typing import Any

from django.core.exceptions import ImproperlyConfigured
from django.core.management.base import BaseCommand, CommandError, CommandParser

from ... import bulkadoption
from ...checks import ENGINE, uses_our_engine
from ...conf import conf

#: Seconds between two progress lines when the output is not a terminal.
LINE_EVERY = 10.0


class Command(BaseCommand):
    help = (
        "Adopt every live session of RESILIENT_SESSIONS['PREVIOUS_ENGINE'] (Django's db, "
        "cached_db or cache engine) in batches: logged-in users stay logged in, with their "
        "data. Resumable: adopted sessions leave the previous store, and a second run "
        "skips whatever was adopted. Signed-cookie sessions cannot be listed: lazy "
        "adoption takes them over at their first request. A login of a user whose "
        "sessions were ended since the switch (revoked) is refused with its session."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--dry-run",
            action="store_true",
            help="count the sessions (live, expired, logged in, anonymous, already "
            "adopted) and change nothing",
        )
        parser.add_argument(
            "--batch-size",
            type=int,
            default=500,
            help="sessions per batch: one transaction and one Redis round trip each (default 500)",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        if not uses_our_engine():
            raise CommandError(f"SESSION_ENGINE is not {ENGINE!r}: nothing adopts the sessions.")
        if conf.PREVIOUS_ENGINE is None:
            raise CommandError("RESILIENT_SESSIONS['PREVIOUS_ENGINE'] is not set.")
        size = options["batch_size"]
        if not 1 <= size <= 10_000:
            raise CommandError("--batch-size must be from 1 to 10000.")
        dry_run = options["dry_run"]
        bar = _Progress(self.stdout, options["verbosity"])
        try:
            counts = bulkadoption.adopt_all(size, dry_run=dry_run, progress=bar)
        except (bulkadoption.NotSupported, ImproperlyConfigured) as error:
            raise CommandError(str(error)) from error
        except bulkadoption.STORE_ERRORS as error:
            bar.done()
            raise CommandError(
                f"Stopped: {error!r}. What was adopted stays adopted; run the command "
                "again once Redis and the database answer."
            ) from error
        bar.done()
        if options["verbosity"] >= 1:
            self.stdout.write(_summary(counts, dry_run))


def _summary(c: bulkadoption.Counts, dry_run: bool) -> str:
    verb = "to adopt" if dry_run else "adopted"
    done = c.logged_in + c.anonymous if dry_run else c.adopted
    refused = f"; {c.refused} refused (revoked since the switch)" if c.refused else ""
    return (
        f"Sessions {verb}: {done} ({c.logged_in} logged in, {c.anonymous} anonymous); "
        f"{c.live} live, {c.expired} expired or empty, {c.already} already adopted{refused}."
    )


class _Progress:
    """A bar redrawn in place on a terminal; a plain line every ``LINE_EVERY`` s otherwise."""

    def __init__(self, out: Any, verbosity: int) -> None:
        self.out = out
        self.quiet = verbosity < 1
        self.tty = out.isatty()
        self.last = 0.0
        self.drawn = False

    def __call__(self, counts: bulkadoption.Counts) -> None:
        if self.quiet:
            return
        now = time.monotonic()
        if not self.tty and now - self.last < LINE_EVERY:
            return
        self.last = now
        rate = counts.seen / max(now - counts.started, 1e-6)
        if counts.total:
            share = min(counts.seen / counts.total, 1.0)
            filled = int(share * 30)
            head = f"[{'#' * filled}{'.' * (30 - filled)}] {share:6.1%}"
        else:
            head = f"{counts.seen} scanned"
        line = f"{head}  {counts.adopted} adopted, {counts.already} already  {rate:,.0f}/s"
        if self.tty:
            self.out.write("\r" + line, ending="")
            self.out.flush()
            self.drawn = True
        else:
            self.out.write(line)

    def done(self) -> None:
        if self.drawn:
            self.out.write("")
