from django.contrib import admin
from django.urls import include, path

from django_resilient_sessions import views as operations
from tests.testapp import views

urlpatterns = [
    path("login/", views.login_view, name="login"),
    path("logout/", views.logout_view, name="logout"),
    path("whoami/", views.whoami, name="whoami"),
    path("set/", views.session_set, name="session-set"),
    path("get/", views.session_get, name="session-get"),
    path("state/", views.session_state, name="session-state"),
    path("expiry/", views.session_expiry, name="session-expiry"),
    path("flush/", views.session_flush, name="session-flush"),
    path("clear/", views.session_clear, name="session-clear"),
    path("read-then-end-elsewhere/", views.read_then_end_elsewhere),
    path("set-typed/", views.set_typed),
    path("typed/", views.typed),
    path("set-datetime/", views.set_datetime),
    path("save-by-key/", views.save_by_key),
    path("stash-and-rebuild/", views.stash_and_rebuild),
    path("admin/", admin.site.urls),
    path("account/sessions/", include("django_resilient_sessions.urls")),
    path("-/health/", operations.health, name="health"),
    path("-/metrics/", operations.metrics, name="metrics"),
]
