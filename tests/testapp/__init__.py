"""Minimal Django app whose views exercise the session engine end to end."""
