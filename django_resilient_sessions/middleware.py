"""``SessionMiddleware``: Django's, plus the backup cookie(s) and visible ledger failures.

Use it in place of ``django.contrib.sessions.middleware.SessionMiddleware``.
It hands the store the request's backup cookie and the cleaned client details,
and on the response sets the backup cookie(s) exactly when the session cookie
is set, with the same lifetime and flags (always ``HttpOnly``: no script needs
a backup), or deletes them when the session is emptied or the backup refused.

A login, logout or revocation the ledger cannot record is answered with HTTP
503 and a page saying that nothing changed (``LedgerUnavailable``); a login past
``MAX_SESSIONS_PER_USER`` under the ``refuse`` policy with HTTP 403
(``SessionLimitExceeded``), in any login view, the admin's included.
"""

from __future__ import annotations

import time
from typing import Any

from django.conf import settings
from django.contrib.sessions.backends.base import UpdateError
from django.contrib.sessions.exceptions import SessionInterrupted
from django.contrib.sessions.middleware import SessionMiddleware as DjangoSessionMiddleware
from django.core.exceptions import ImproperlyConfigured
from django.http import HttpRequest, HttpResponse, HttpResponseBase, JsonResponse
from django.template.loader import render_to_string
from django.utils.cache import patch_vary_headers
from django.utils.http import http_date
from django.utils.translation import gettext as _

from . import client, cookies, requestscope
from .backends.resilient import SessionStore as ResilientStore
from .checks import misplaced
from .exceptions import LedgerUnavailable, SessionLimitExceeded
from .redisclient import RedisAccess

__all__ = ["SessionMiddleware"]

#: Set on a request whose failure this middleware answered: its session is still saved.
ANSWERED = "_resilient_sessions_answered"


def refusal(request: HttpRequest, error: Exception) -> HttpResponse:
    """The page (or JSON) for a ledger failure (503) or a refused login (403)."""
    if isinstance(error, SessionLimitExceeded):
        status, code = 403, "session_limit"
        title = _("Too many active sessions")
        message = str(error)
    else:
        status, code = 503, "ledger_unavailable"
        title = _("Please try again in a moment")
        message = _(
            "Your sign-in or sign-out could not be recorded just now, so nothing was "
            "changed. Please try again in a moment."
        )
    accept = request.headers.get("Accept", "")
    if accept.startswith("application/json") or request.GET.get("format") == "json":
        response: HttpResponse = JsonResponse(
            {"ok": False, "error": code, "message": message}, status=status
        )
    else:
        context = {"title": title, "message": message}
        try:
            page = render_to_string("django_resilient_sessions/unavailable.html", context, request)
        # No template engine finds the app's templates (TEMPLATES without
        # APP_DIRS, or none at all): the refusal must still not be a 500.
        except Exception:
            response = HttpResponse(f"{title}\n\n{message}\n", status=status)
            response["Content-Type"] = "text/plain; charset=utf-8"
        else:
            response = HttpResponse(page, status=status)
    if status == 503:
        response["Retry-After"] = "5"
    return response


class SessionMiddleware(DjangoSessionMiddleware):
    def __init__(self, get_response: Any) -> None:
        super().__init__(get_response)
        # Where checks do not run (gunicorn, uvicorn), what check E010 sees fails here,
        # when the handler is built: otherwise the first request would meet a reader's
        # own error, which names Django's SessionMiddleware.
        problems = misplaced(list(settings.MIDDLEWARE))
        if problems:
            raise ImproperlyConfigured(" ".join(problems[0]))
        if issubclass(self.SessionStore, ResilientStore):
            # Likewise an unsupported session cache (E007): at start-up, not at login.
            RedisAccess(settings.SESSION_CACHE_ALIAS)

    def process_request(self, request: HttpRequest) -> None:
        session_key = request.COOKIES.get(settings.SESSION_COOKIE_NAME)
        if issubclass(self.SessionStore, ResilientStore):
            backup, who = cookies.read_token(request.COOKIES), client.from_request(request)
            # For a store a package builds itself in this request (see requestscope).
            requestscope.open_scope(session_key, backup, who)
            request.session = self.SessionStore(session_key, backup=backup, client=who)
        else:
            # SESSION_ENGINE is not ours (a system check says so): behave as Django.
            request.session = self.SessionStore(session_key)

    def process_exception(self, request: HttpRequest, exception: Exception) -> HttpResponse | None:
        if isinstance(exception, (LedgerUnavailable, SessionLimitExceeded)):
            setattr(request, ANSWERED, True)
            return refusal(request, exception)
        return None

    def process_response(  # type: ignore[override]  # any response, as Django's does
        self, request: HttpRequest, response: HttpResponseBase
    ) -> HttpResponseBase:
        try:
            return self._respond(request, response)
        finally:
            requestscope.close()

    def _respond(self, request: HttpRequest, response: HttpResponseBase) -> HttpResponseBase:
        try:
            session: Any = request.session
            accessed = session.accessed
            modified = session.modified
            empty = session.is_empty()
        except AttributeError:
            return response
        sent = [name for name in cookies.chunk_names() if name in request.COOKIES]
        renew = getattr(session, "needs_backup", False)
        had_cookie = settings.SESSION_COOKIE_NAME in request.COOKIES
        failed = response.status_code >= 500 and not getattr(request, ANSWERED, False)
        if empty:
            if not getattr(session, "keep_cookie", False):
                self._delete(response, [settings.SESSION_COOKIE_NAME] * had_cookie + sent)
            need_vary = accessed or had_cookie
        elif failed and getattr(session, "adopted_new_key", False):
            # Adopted under a new key, whose old cookie is refused from now on: the
            # key must reach the browser, although nothing of a failed response is
            # saved (the adopted copy is in Redis already).
            self._set_key(response, session)
            need_vary = True
        elif not (modified or renew or settings.SESSION_SAVE_EVERY_REQUEST) or failed:
            # Like Django: nothing to save, or no save for a failed response.
            need_vary = accessed
        else:
            try:
                self._save(request, response, session, sent)
            except (LedgerUnavailable, SessionLimitExceeded) as error:
                return refusal(request, error)
            need_vary = True
        if getattr(session, "backup_rejected", False) and getattr(session, "sealed", None) is None:
            self._delete(response, [n for n in sent if n not in response.cookies])
        if need_vary:
            patch_vary_headers(response, ("Cookie",))
        return response

    def _save(
        self, request: HttpRequest, response: HttpResponseBase, session: Any, sent: list[str]
    ) -> None:
        flags = self._flags(session)
        try:
            session.save()
        except UpdateError:
            raise SessionInterrupted(
                "The request's session was deleted before the request completed. "
                "The user may have logged out in a concurrent request, for example."
            ) from None
        if getattr(session, "interrupted", False):
            return  # a renewal of a session ended meanwhile: nothing to set
        self._set_key(response, session, flags)
        sealed = getattr(session, "sealed", None)
        chunks = cookies.split_token(sealed.token) if sealed else []
        names = cookies.chunk_names(len(chunks))
        for name, chunk in zip(names, chunks, strict=True):
            response.set_cookie(name, chunk, httponly=True, **flags)
        self._delete(response, [name for name in sent if name not in names])

    @staticmethod
    def _flags(session: Any) -> dict[str, Any]:
        """The session cookies' attributes (expiry computed before the save, as Django)."""
        if session.get_expire_at_browser_close():
            max_age, expires = None, None
        else:
            max_age = session.get_expiry_age()
            expires = http_date(time.time() + max_age)
        return {
            "max_age": max_age,
            "expires": expires,
            "domain": settings.SESSION_COOKIE_DOMAIN,
            "path": settings.SESSION_COOKIE_PATH,
            "secure": settings.SESSION_COOKIE_SECURE or None,
            "samesite": settings.SESSION_COOKIE_SAMESITE,
        }

    def _set_key(
        self, response: HttpResponseBase, session: Any, flags: dict[str, Any] | None = None
    ) -> None:
        response.set_cookie(
            settings.SESSION_COOKIE_NAME,
            session.session_key,
            httponly=settings.SESSION_COOKIE_HTTPONLY,
            **(flags if flags is not None else self._flags(session)),
        )

    @staticmethod
    def _delete(response: HttpResponseBase, names: list[str]) -> None:
        for name in names:
            response.delete_cookie(
                name,
                path=settings.SESSION_COOKIE_PATH,
                domain=settings.SESSION_COOKIE_DOMAIN,
                samesite=settings.SESSION_COOKIE_SAMESITE,
            )
