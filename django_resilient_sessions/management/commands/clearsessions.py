"""Django's ``clearsessions``, reporting what the resilient engine cleaned.

Takes effect when ``django_resilient_sessions`` comes before
``django.contrib.sessions`` in ``INSTALLED_APPS``; otherwise Django's own
command runs and cleans just the same, silently.
"""

from __future__ import annotations

from typing import Any

from django.contrib.sessions.management.commands import clearsessions

from ... import tracking
from ...checks import uses_our_engine


class Command(clearsessions.Command):
    def handle(self, **options: Any) -> None:
        if not uses_our_engine():
            return super().handle(**options)
        verbosity = options["verbosity"]

        def progress(done: tracking.Cleanup) -> None:
            if verbosity >= 2:
                self.stdout.write(f"  ... {done.expired} marked expired, {done.deleted} deleted")

        done = tracking.clear_expired(progress=progress)
        if verbosity >= 1:
            self.stdout.write(
                f"Sessions: {done.expired} marked expired, {done.deleted} old rows deleted, "
                f"{done.purged} cache purges finished."
                + (f" Adoption bars lifted: {done.bars}." if done.bars else "")
            )
        return None
