"""The Django project the benchmarks serve and drive; the session engine comes from
``DRS_BENCH_ENGINE`` (see :mod:`benchmarks.site.settings`)."""
