"""Benchmarks of django-resilient-sessions against Django's own session engines.

Run with ``make bench`` (full) or ``make bench-smoke`` (tiny counts); see :mod:`.run`.
Modules: :mod:`.env` (redis-server, database, machine and versions), :mod:`.ops`
(per-operation timings in process), :mod:`.http` (gunicorn + wrk by Redis state),
:mod:`.loadgen` (Python fallback when wrk is missing), :mod:`.cleanup`
(``clearsessions`` over many expired rows), :mod:`.report` (JSON, Markdown, charts)
and :mod:`.site` (the small Django project served by gunicorn).
"""
