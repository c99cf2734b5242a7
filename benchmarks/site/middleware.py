"""The bench site's own middleware: every cookie a response sets, in one header.

wrk hands its script only the last header of a name, so a response that sets the session
cookie and the backup cookie would show it one ``Set-Cookie``. ``X-Bench-Cookies`` lists
them all, ``name=value`` separated by ``"; "`` (a deleted cookie: ``name=``), for the
script's cookie jar (benchmarks/wrk_report.lua). Session keys and backup tokens hold
neither ``;`` nor spaces.
"""

from __future__ import annotations

from collections.abc import Callable

from django.http import HttpRequest, HttpResponse


def cookie_list(get_response: Callable[[HttpRequest], HttpResponse]) -> Callable[..., HttpResponse]:
    def middleware(request: HttpRequest) -> HttpResponse:
        response = get_response(request)
        if response.cookies:
            response["X-Bench-Cookies"] = "; ".join(
                f"{name}={'' if morsel['max-age'] == 0 else morsel.value}"
                for name, morsel in response.cookies.items()
            )
        return response

    return middleware
