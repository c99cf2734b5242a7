"""Settings for running Django's ``sessions_tests`` against our engine.

The main test settings plus Django's ``sessions_tests`` app (its models module defines a
custom session model that the imported test module needs). The app is added only when
``make django-suite-fetch`` has extracted it; otherwise the suite module skips (or fails
on CI) with a message saying how to fetch it.
"""

from __future__ import annotations

import os
import sys

from tests.django_suite.fetch import is_fetched, suite_root
from tests.settings import *  # noqa: F403
from tests.settings import DATABASES, INSTALLED_APPS, MIDDLEWARE

# The second database is for tests/test_multidb.py only.
DATABASES = {"default": DATABASES["default"]}

if is_fetched():
    _root = str(suite_root())
    if _root not in sys.path:
        sys.path.insert(0, _root)
    INSTALLED_APPS = [*INSTALLED_APPS, "sessions_tests"]

# Harness self-check: DRS_DJANGO_SUITE_REFERENCE=1 runs the very same harness against
# Django's own cache session backend and middleware, where everything should pass.
if os.environ.get("DRS_DJANGO_SUITE_REFERENCE") == "1":
    SESSION_ENGINE = "django.contrib.sessions.backends.cache"
    MIDDLEWARE = [
        "django.contrib.sessions.middleware.SessionMiddleware"
        if path == "django_resilient_sessions.middleware.SessionMiddleware"
        else path
        for path in MIDDLEWARE
    ]
