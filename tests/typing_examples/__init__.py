"""Code as a site would write it against the engine, type-checked by ``make lint`` (mypy).

``site_code.py`` is in mypy's ``files`` (pyproject.toml): strict, with the django-stubs
plugin, as a site using django-stubs checks its own code. ``tests/test_typing.py`` shows
that the same code written without :mod:`django_resilient_sessions.typing` fails there.
"""
