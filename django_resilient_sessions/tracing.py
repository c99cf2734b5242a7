"""OpenTelemetry spans around session load and save, when ``opentelemetry-api`` is there.

``session.load`` carries ``resilient_sessions.source`` (cache, backup, ledger, adopted
or none) and ``resilient_sessions.degraded``; ``session.save`` carries
``resilient_sessions.copy`` (cache, backup or none) and
``resilient_sessions.degraded``.  So a trace shows that a slow request was a
degraded one.  The spans go to whatever tracer provider the site configured
(none: the API's no-op one).  Without the package, :func:`span` yields None
and costs nothing.
"""

from __future__ import annotations

import contextlib
from typing import Any

__all__ = ["AVAILABLE", "annotate", "span"]

try:
    from opentelemetry import trace
except ImportError:  # optional: pip install django-resilient-sessions[tracing]
    trace = None  # type: ignore[assignment]

AVAILABLE = trace is not None
#: A proxy until the site sets its tracer provider, then that provider's tracer.
_tracer: Any = trace.get_tracer("django_resilient_sessions") if AVAILABLE else None
ATTRIBUTE_PREFIX = "resilient_sessions."


#: Providers that record nothing: the API's default (no provider set yet) and its no-op.
_IDLE: tuple[type, ...] = (trace.ProxyTracerProvider, trace.NoOpTracerProvider) if AVAILABLE else ()

_NOTHING: contextlib.AbstractContextManager[None] = contextlib.nullcontext()


def span(name: str) -> contextlib.AbstractContextManager[Any]:
    """A span named ``name`` around the block (yields None without OpenTelemetry).

    While the site has set no tracer provider, no span is started at all: the
    API's no-op span would record nothing, and starting one costs a few
    microseconds on every load and save.
    """
    if _tracer is None or isinstance(trace.get_tracer_provider(), _IDLE):
        return _NOTHING
    found: contextlib.AbstractContextManager[Any] = _tracer.start_as_current_span(name)
    return found


def annotate(current: Any, **attributes: str | bool) -> None:
    """Set ``resilient_sessions.<name>`` attributes on ``current`` (a span, or None)."""
    if current is not None and current.is_recording():
        for name, value in attributes.items():
            current.set_attribute(ATTRIBUTE_PREFIX + name, value)
