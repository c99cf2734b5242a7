"""WSGI application for the multi-worker test server (``gunicorn tests.mw_wsgi``).

``DJANGO_SETTINGS_MODULE`` comes from the environment (``tests.mw_settings`` when unset).
"""

from __future__ import annotations

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.mw_settings")

application = get_wsgi_application()
