"""The Prometheus metrics, scraped from ``views.metrics`` in this process (single-process mode).

Each test reads the exposition before and after what it does and checks the differences
against what was done: loads by source while Redis is up, killed and back, saves by copy,
write-backs, refused backups by reason, ended sessions, the purge queue (counter and the
gauge read from the database at scrape time), the breaker gauge, the outage histogram and
the ledger's timing histogram. The live multi-worker form is ``tests/test_metrics_live.py``.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from django.test import Client, override_settings
from prometheus_client.parser import text_string_to_metric_families

from django_resilient_sessions import health, metrics
from django_resilient_sessions.models import UserSession
from tests.redis_server import RedisServer
from tests.web import BACKUP_COOKIE, captured, login, make_user, ok, replay, set_values, whoami

pytestmark = pytest.mark.django_db(transaction=True)

COOLDOWN = 0.2
Series = dict[tuple[str, tuple[tuple[str, str], ...]], float]


@pytest.fixture(autouse=True)
def short_cooldown() -> Iterator[None]:
    with override_settings(RESILIENT_SESSIONS={"BREAKER_COOLDOWN": COOLDOWN}):
        yield


def scrape(client: Client | None = None) -> Series:
    response = (client or Client()).get("/-/metrics/")
    assert response.status_code == 200, response.content[:300]
    assert response["Content-Type"].startswith("text/plain")
    found: Series = {}
    for family in text_string_to_metric_families(response.content.decode()):
        for sample in family.samples:
            found[sample.name, tuple(sorted(sample.labels.items()))] = sample.value
    return found


def value(series: Series, name: str, **labels: str) -> float:
    return series.get((name, tuple(sorted(labels.items()))), 0.0)


def grew(before: Series, after: Series, name: str, **labels: str) -> float:
    return value(after, name, **labels) - value(before, name, **labels)


def test_metrics_are_installed_with_the_extra() -> None:
    assert metrics.AVAILABLE
    assert health.sink is not None


def test_loads_saves_and_write_backs_through_an_outage(fault_redis: RedisServer) -> None:
    make_user()
    client = Client()
    login(client)
    before = scrape()
    for _ in range(3):
        assert whoami(client)["user"] == "alice"
    set_values(client, colour="red")
    healthy = scrape()
    assert grew(before, healthy, "resilient_sessions_loads_total", source="cache") == 4
    assert grew(before, healthy, "resilient_sessions_loads_total", source="backup") == 0
    assert grew(before, healthy, "resilient_sessions_saves_total", copy="cache") == 1
    assert grew(before, healthy, "resilient_sessions_backups_written_total") == 1
    assert value(healthy, "resilient_sessions_breaker_open", alias="default", node="") == 0

    fault_redis.kill()
    for _ in range(2):
        assert whoami(client) == {"user": "alice", "degraded": True}
    set_values(client, colour="blue")
    down = scrape()
    assert grew(healthy, down, "resilient_sessions_loads_total", source="backup") == 3
    assert grew(healthy, down, "resilient_sessions_loads_total", source="cache") == 0
    assert grew(healthy, down, "resilient_sessions_saves_total", copy="backup") == 1
    assert grew(healthy, down, "resilient_sessions_cache_errors_total") >= 1
    assert grew(healthy, down, "resilient_sessions_cache_skipped_total") >= 1
    assert value(down, "resilient_sessions_breaker_open", alias="default", node="") == 1
    assert value(down, "resilient_sessions_ledger_up") == 1

    fault_redis.start()  # back, empty
    time.sleep(COOLDOWN + 0.05)
    assert whoami(client) == {"user": "alice", "degraded": False}  # the probe, a write-back
    assert whoami(client) == {"user": "alice", "degraded": False}
    back = scrape()
    assert grew(down, back, "resilient_sessions_write_backs_total") == 1
    assert grew(down, back, "resilient_sessions_loads_total", source="backup") == 1
    assert grew(down, back, "resilient_sessions_loads_total", source="cache") == 1
    assert value(back, "resilient_sessions_breaker_open", alias="default", node="") == 0
    outages = "resilient_sessions_outage_duration_seconds_count"
    assert grew(down, back, outages, alias="default") == 1
    assert value(back, "resilient_sessions_outage_duration_seconds_sum", alias="default") > 0


def test_refused_backups_are_counted_by_reason() -> None:
    make_user()
    client = Client()
    login(client)
    before_logout = captured(client)
    assert ok(client.post("/logout/")) == {"ok": True}
    alive = Client()
    login(alive)
    before = scrape()
    assert whoami(replay(before_logout))["user"] is None  # its tombstone refuses it
    tampered = replay({**captured(alive), BACKUP_COOKIE: "not-a-backup"})
    assert whoami(tampered)["user"] == "alice"  # served from Redis, the backup refused
    after = scrape()
    rejected = "resilient_sessions_backups_rejected_total"
    assert grew(before, after, rejected, reason="ended") == 1
    assert grew(before, after, rejected, reason="invalid") == 1
    assert grew(before, after, "resilient_sessions_loads_total", source="none") == 1
    assert grew(before, after, "resilient_sessions_loads_total", source="cache") == 1


def test_ended_sessions_and_the_purge_queue(fault_redis: RedisServer) -> None:
    make_user()
    client = Client()
    login(client)
    before = scrape()
    fault_redis.kill()
    assert UserSession.objects.get().revoke()  # its Redis copy's deletion is queued
    down = scrape()
    assert grew(before, down, "resilient_sessions_ended_total", reason="revoked") == 1
    assert grew(before, down, "resilient_sessions_purges_queued_total") == 1
    assert value(down, "resilient_sessions_purges_pending") == 1
    assert value(down, "resilient_sessions_ledger_up") == 1

    fault_redis.start()
    time.sleep(COOLDOWN + 0.05)
    # The probe finds the queue, schedules the drain after the response; the next closes.
    assert whoami(client)["user"] is None
    assert whoami(client)["user"] is None
    back = scrape()
    assert grew(down, back, "resilient_sessions_purges_done_total") == 1
    assert value(back, "resilient_sessions_purges_pending") == 0


def test_ledger_operations_are_timed() -> None:
    make_user()
    before = scrape()
    login(Client())
    after = scrape()
    timed = "resilient_sessions_ledger_query_duration_seconds_count"
    assert grew(before, after, timed, operation="start") == 1
    assert value(after, "resilient_sessions_ledger_query_duration_seconds_sum", operation="start")


def test_no_label_names_a_session_or_a_user() -> None:
    make_user()
    client = Client()
    login(client)
    set_values(client, colour="red")
    key = captured(client)
    for (name, labels), _ in scrape().items():
        if name.startswith("resilient_sessions_"):
            for label, text in labels:
                assert label in {"source", "copy", "reason", "result", "operation", "alias",
                                 "node", "le"}, (name, label)  # fmt: skip
                assert "alice" not in text
                assert all(part not in text for part in key.values())


def test_every_exported_family_is_declared() -> None:
    """``metrics.METRICS`` is the list the docs and the dashboard are checked against."""
    make_user()
    login(Client())
    families = set()
    for name, _ in scrape():
        for suffix in ("_bucket", "_count", "_sum", "_created"):
            name = name.removesuffix(suffix)
        if name.startswith("resilient_sessions_"):
            families.add(name if name in declared_names() else name + "_total")
    assert families <= declared_names()
    assert {
        "resilient_sessions_loads_total",
        "resilient_sessions_breaker_open",
        "resilient_sessions_ledger_up",
        "resilient_sessions_purges_pending",
        "resilient_sessions_ledger_query_duration_seconds",
    } <= families


def declared_names() -> set[str]:
    return {metrics.PREFIX + name for name in metrics.METRICS}


def test_async_sessions_and_the_views_under_asgi() -> None:
    """The ASGI handler (AsyncClient) serves both views; async session access is counted."""
    from asgiref.sync import async_to_sync
    from django.test import AsyncClient

    from django_resilient_sessions.backends.resilient import SessionStore

    async def scenario() -> tuple[int, int, str]:
        store = SessionStore()
        await store.aset("colour", "red")
        await store.asave()
        again = SessionStore(store.session_key)
        assert await again.aget("colour") == "red"
        client = AsyncClient()
        health_answer = await client.get("/-/health/")
        metrics_answer = await client.get("/-/metrics/")
        return (
            health_answer.status_code,
            metrics_answer.status_code,
            metrics_answer.content.decode(),
        )

    before = scrape()
    health_code, metrics_code, text = async_to_sync(scenario)()
    assert (health_code, metrics_code) == (200, 200)
    assert "resilient_sessions_loads_total" in text
    after = scrape()
    assert grew(before, after, "resilient_sessions_loads_total", source="cache") == 1
    assert grew(before, after, "resilient_sessions_saves_total", copy="cache") == 1
