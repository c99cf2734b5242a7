"""Peer suites: other projects' test suites run against our engine and Django's ``cache`` engine.

A session engine is a drop-in only if other people's tests pass with it. This package runs

* Django's own tests for the apps that exercise sessions (``tests/runtests.py`` from the
  sdist of the installed Django), in four modes: SQLite and PostgreSQL, ``USE_TZ`` off and on;
* django-allauth's own pytest suite (from its sdist);

once with ``django_resilient_sessions`` (our engine, middleware and app) and once with
``django.contrib.sessions.backends.cache`` (Django's middleware), both on a private
redis-server, and compares the two: a test that fails only with our engine must be listed,
with the reason, in ``expected_failures.toml``, or the run fails.

Entry points: ``python -m tests.peer.fetch`` (``make peer-fetch``) and ``python -m tests.peer``
(``make test-peer``); see ``tests/peer/cli.py`` for the options. Nothing here is collected by
pytest (see ``tests/conftest.py``).
"""
