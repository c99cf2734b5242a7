"""A previous session engine of someone else's making, for the adoption tests: its
``load()`` answers whatever the test sets in :attr:`SessionStore.answer` (or raises it)."""

from __future__ import annotations

from typing import Any

from django.contrib.sessions.backends.base import SessionBase


class SessionStore(SessionBase):
    #: What ``load()`` returns (an exception instance is raised).
    answer: Any = None

    def load(self) -> Any:
        if isinstance(self.answer, BaseException):
            raise self.answer
        return self.answer

    def exists(self, session_key: str) -> bool:
        return bool(self.answer)

    def create(self) -> None:
        """Never asked: the store is only read."""

    def save(self, must_create: bool = False) -> None:
        """Never asked: the store is only read."""

    def delete(self, session_key: str | None = None) -> None:
        """Nothing to delete."""
