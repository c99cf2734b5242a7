"""OpenTelemetry spans around session load and save, with the real SDK's in-memory exporter.

A trace shows which copy served a request and whether it was degraded: ``session.load``
carries ``resilient_sessions.source`` and ``resilient_sessions.degraded``, ``session.save``
``resilient_sessions.copy`` and ``resilient_sessions.degraded``, with Redis up and killed.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from django.test import Client
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from tests.redis_server import RedisServer
from tests.web import login, make_user, set_values, whoami

pytestmark = pytest.mark.django_db

_EXPORTER = InMemorySpanExporter()


class _WhileTesting(SimpleSpanProcessor):
    """Exports only during the tests of this module (the provider stays for the process)."""

    active = False

    def on_end(self, span: ReadableSpan) -> None:
        if self.active:
            super().on_end(span)


_PROCESSOR = _WhileTesting(_EXPORTER)


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    """The spans finished during the test (the SDK is set up once per process)."""
    if not isinstance(trace.get_tracer_provider(), TracerProvider):
        provider = TracerProvider()
        provider.add_span_processor(_PROCESSOR)
        trace.set_tracer_provider(provider)
    _EXPORTER.clear()
    _PROCESSOR.active = True
    try:
        yield _EXPORTER
    finally:
        _PROCESSOR.active = False
        _EXPORTER.clear()


def ours(exporter: InMemorySpanExporter, name: str) -> list[dict[str, Any]]:
    return [dict(s.attributes or {}) for s in exporter.get_finished_spans() if s.name == name]


def test_load_and_save_spans_show_the_source(
    spans: InMemorySpanExporter, fault_redis: RedisServer
) -> None:
    make_user()
    client = Client()
    login(client)
    spans.clear()
    assert whoami(client)["user"] == "alice"
    set_values(client, colour="red")
    loads = ours(spans, "session.load")
    assert (
        loads
        == [
            {"resilient_sessions.source": "cache", "resilient_sessions.degraded": False},
        ]
        * 2
    )
    assert ours(spans, "session.save") == [
        {"resilient_sessions.copy": "cache", "resilient_sessions.degraded": False}
    ]

    spans.clear()
    fault_redis.kill()
    assert whoami(client) == {"user": "alice", "degraded": True}
    set_values(client, colour="blue")
    assert (
        ours(spans, "session.load")
        == [
            {"resilient_sessions.source": "backup", "resilient_sessions.degraded": True},
        ]
        * 2
    )
    assert ours(spans, "session.save") == [
        {"resilient_sessions.copy": "backup", "resilient_sessions.degraded": True}
    ]


def test_a_load_span_is_a_child_of_the_request_span(spans: InMemorySpanExporter) -> None:
    make_user()
    client = Client()
    login(client)
    spans.clear()
    tracer = trace.get_tracer("tests")
    with tracer.start_as_current_span("request") as request_span:
        assert whoami(client)["user"] == "alice"
    [load] = [s for s in spans.get_finished_spans() if s.name == "session.load"]
    assert load.parent is not None
    assert load.parent.span_id == request_span.get_span_context().span_id


def test_an_unknown_session_key_loads_nothing(spans: InMemorySpanExporter) -> None:
    client = Client()
    client.cookies["sessionid"] = "x" * 32
    assert whoami(client)["user"] is None
    assert ours(spans, "session.load") == [
        {"resilient_sessions.source": "none", "resilient_sessions.degraded": False}
    ]
