"""URLs of the django-allauth test site: allauth's pages, its headless API and a probe."""

from django.http import HttpRequest, JsonResponse
from django.urls import include, path


def whoami(request: HttpRequest) -> JsonResponse:
    """Who the session says this is, and whether it was served without Redis."""
    user = request.user
    return JsonResponse(
        {
            "user": user.get_username() if user.is_authenticated else None,
            "degraded": getattr(request.session, "degraded", None),
        }
    )


urlpatterns = [
    path("accounts/", include("allauth.urls")),
    path("_allauth/", include("allauth.headless.urls")),
    path("whoami/", whoami, name="whoami"),
]
