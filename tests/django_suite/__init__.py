"""Django's own session backend tests, run against our engine (see test_django_session_suite)."""
