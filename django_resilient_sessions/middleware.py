"""``SessionMiddleware``: Django's, plus the backup cookie(s).

Use it in place of ``django.contrib.sessions.middleware.SessionMiddleware``.
It hands the store the request's backup cookie and client details, and on the
response sets the backup cookie(s) exactly when the session cookie is set, with
the same lifetime and flags (always ``HttpOnly``: no script needs a backup), or
deletes them when the session is emptied or the backup was refused.
"""

from __future__ import annotations

import time
from typing import Any

from django.conf import settings
from django.contrib.sessions.backends.base import UpdateError
from django.contrib.sessions.exceptions import SessionInterrupted
from django.contrib.sessions.middleware import SessionMiddleware as DjangoSessionMiddleware
from django.http import HttpRequest, HttpResponseBase
from django.utils.cache import patch_vary_headers
from django.utils.http import http_date

from . import cookies
from .backends.resilient import ClientInfo
from .backends.resilient import SessionStore as ResilientStore
from .conf import conf

__all__ = ["SessionMiddleware"]


def client_info(request: HttpRequest) -> ClientInfo:
    resolver = conf.IP_RESOLVER
    ip = resolver(request) if resolver else request.META.get("REMOTE_ADDR")
    return ClientInfo(ip or None, request.META.get("HTTP_USER_AGENT", "")[:300])


class SessionMiddleware(DjangoSessionMiddleware):
    def process_request(self, request: HttpRequest) -> None:
        session_key = request.COOKIES.get(settings.SESSION_COOKIE_NAME)
        if issubclass(self.SessionStore, ResilientStore):
            request.session = self.SessionStore(
                session_key, backup=cookies.read_token(request.COOKIES), client=client_info(request)
            )
        else:
            # SESSION_ENGINE is not ours (a system check says so): behave as Django.
            request.session = self.SessionStore(session_key)

    def process_response(  # type: ignore[override]  # any response, as Django's does
        self, request: HttpRequest, response: HttpResponseBase
    ) -> HttpResponseBase:
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
        if empty:
            if not getattr(session, "keep_cookie", False):
                self._delete(response, [settings.SESSION_COOKIE_NAME] * had_cookie + sent)
            need_vary = accessed or had_cookie
        elif not (modified or renew or settings.SESSION_SAVE_EVERY_REQUEST):
            need_vary = accessed
        elif response.status_code >= 500:
            # Like Django: no save for a failed response.
            need_vary = accessed
        else:
            self._save(request, response, session, sent)
            need_vary = True
        if getattr(session, "backup_rejected", False) and getattr(session, "sealed", None) is None:
            self._delete(response, [n for n in sent if n not in response.cookies])
        if need_vary:
            patch_vary_headers(response, ("Cookie",))
        return response

    def _save(
        self, request: HttpRequest, response: HttpResponseBase, session: Any, sent: list[str]
    ) -> None:
        if session.get_expire_at_browser_close():
            max_age, expires = None, None
        else:
            max_age = session.get_expiry_age()
            expires = http_date(time.time() + max_age)
        try:
            session.save()
        except UpdateError:
            raise SessionInterrupted(
                "The request's session was deleted before the request completed. "
                "The user may have logged out in a concurrent request, for example."
            ) from None
        flags: dict[str, Any] = {
            "max_age": max_age,
            "expires": expires,
            "domain": settings.SESSION_COOKIE_DOMAIN,
            "path": settings.SESSION_COOKIE_PATH,
            "secure": settings.SESSION_COOKIE_SECURE or None,
            "samesite": settings.SESSION_COOKIE_SAMESITE,
        }
        response.set_cookie(
            settings.SESSION_COOKIE_NAME,
            session.session_key,
            httponly=settings.SESSION_COOKIE_HTTPONLY,
            **flags,
        )
        sealed = getattr(session, "sealed", None)
        chunks = cookies.split_token(sealed.token) if sealed else []
        names = cookies.chunk_names(len(chunks))
        for name, chunk in zip(names, chunks, strict=True):
            response.set_cookie(name, chunk, httponly=True, **flags)
        self._delete(response, [name for name in sent if name not in names])

    @staticmethod
    def _delete(response: HttpResponseBase, names: list[str]) -> None:
        for name in names:
            response.delete_cookie(
                name,
                path=settings.SESSION_COOKIE_PATH,
                domain=settings.SESSION_COOKIE_DOMAIN,
                samesite=settings.SESSION_COOKIE_SAMESITE,
            )
