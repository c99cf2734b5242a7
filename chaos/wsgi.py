"""WSGI entry point of the chaos app servers (``gunicorn chaos.wsgi``)."""

from __future__ import annotations

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "chaos.settings")

application = get_wsgi_application()

from chaos import auth  # noqa: E402  (needs the apps loaded)

auth.install()
auth.preload()
