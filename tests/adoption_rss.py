"""Run ``adoptsessions`` in a fresh process and report its peak memory (JSON on stdout).

``python -m tests.adoption_rss ENGINE BATCH``: the database and Redis are the calling
test's (``DRS_TEST_PG_NAME`` names its test database, ``DRS_TEST_REDIS_URL`` its private
redis-server). Prints ``{"baseline_kb", "peak_kb", "seconds", "summary"}``: the resident
set when the command starts and its peak during the command (Linux: the peak is reset
first through ``/proc/self/clear_refs``, then read as ``VmHWM``, so that Django's setup
does not hide it; elsewhere ``ru_maxrss``, the whole process's), and the wall time.
"""

from __future__ import annotations

import io
import json
import os
import resource
import sys
import time


def status(field: str) -> int | None:
    """A field of /proc/self/status in kB (None off Linux)."""
    try:
        with open("/proc/self/status") as lines:
            for line in lines:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def reset_peak() -> int:
    """Start measuring the peak afresh; the resident set now (kB)."""
    try:
        with open("/proc/self/clear_refs", "w") as clear:
            clear.write("5")  # resets VmHWM to the current resident set (Linux >= 4.0)
    except OSError:
        pass  # not Linux: ru_maxrss, the whole process's peak
    return status("VmRSS") or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def main() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")
    import django

    django.setup()
    from django.conf import settings
    from django.core.management import call_command
    from django.test import override_settings

    engine, batch = sys.argv[1], sys.argv[2]
    options = dict(settings.RESILIENT_SESSIONS, PREVIOUS_ENGINE=engine)
    baseline = reset_peak()
    out = io.StringIO()
    start = time.perf_counter()
    with override_settings(RESILIENT_SESSIONS=options):
        call_command("adoptsessions", "--batch-size", batch, stdout=out)
    seconds = time.perf_counter() - start
    peak = status("VmHWM") or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    summary = out.getvalue().strip().splitlines()[-1]
    print(
        json.dumps(
            {"baseline_kb": baseline, "peak_kb": peak, "seconds": seconds, "summary": summary}
        )
    )


if __name__ == "__main__":
    main()
