"""The measurements behind docs/sizing.md (``python -m benchmarks --sections sizing``).

Everything is measured here, on the bench's private redis-server and database:

``memory``
    Sessions made by the engine (a login with small data, a login with about 1 KB of
    data, and a tombstone), each measured with ``MEMORY USAGE key SAMPLES 0``; then
    ``N`` copies of each real entry under keys of the engine's own form, with its TTL,
    written at once: the growth of ``used_memory`` per session (what ``MEMORY USAGE``
    leaves out: the key space's and the expiry table's own entries).
``requests``
    The bench site in this process (Django's test client, the engine's middleware): a
    login, a read, a write, a read whose activity update is due, a logout. For each:
    the Redis commands and round trips on the wire (a proxy in front of the
    redis-server, :class:`tests.faults.RedisFaultProxy`; a script's own calls inside
    Redis are not commands the client sends), the ledger
    statements that wrote (``INSERT``/``UPDATE``/``DELETE``), the bytes of the
    ``Cookie`` header the browser sends next and of the ``Set-Cookie`` headers received.
    Backup sizes for the small and the 1 KB session, sealed by the engine.
``redis``
    ``redis-benchmark`` against a fresh private redis-server holding 10,000 entries of
    the 1 KB session's size: ``GET`` (a load) and ``EVAL`` of the engine's update script
    (a save), 50 connections, no pipelining: commands per second of one shard on one core.
``ledger``
    The engine's own activity update (``ledger.touch``, one ``UPDATE`` in its own
    transaction) from 4 threads for a few seconds: ledger writes per second.

:mod:`benchmarks.sizing_model` turns them into the figures of the page.
"""

from __future__ import annotations

import csv
import hashlib
import io
import os
import secrets
import shutil
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks.env import BenchEnv
from tests.faults import proxied_cache
from tests.redis_server import RedisServer, django_cache_pointing_at, find_redis_server

#: About 1 KB of JSON beside the login (checked: :func:`_data_of`): a cart and preferences,
#: and identifiers that do not compress (the backup is compressed: a sizing should not
#: count on it).
KB_DATA = {
    "cart": [
        {"sku": f"SKU-{i:04d}", "qty": i % 3 + 1, "price": f"{9 + 3 * i}.90", "title": title}
        for i, title in enumerate(
            ("Enamel mug, blue", "Field guide to mushrooms", "T-shirt, size M", "Notebook")
        )
    ],
    "prefs": {"lang": "en-gb", "tz": "Europe/London", "currency": "GBP", "theme": "dark"},
    "recent": [hashlib.sha256(str(i).encode()).hexdigest()[:20] for i in range(24)],
    "form_token": hashlib.sha256(b"form").hexdigest(),
}
SMALL_DATA = {"lang": "en"}
PROFILES = {"login, small data": SMALL_DATA, "login, 1 KB of data": KB_DATA}


def _data_of(data: dict[str, Any]) -> int:
    import json

    return len(json.dumps(data, separators=(",", ":")))


# -- memory ---------------------------------------------------------------------------------


def _engine_session(env: BenchEnv, data: dict[str, Any]) -> Any:
    """A saved, logged-in session of the bench user holding ``data`` (a SessionStore)."""
    from django.contrib.auth import get_user_model

    from django_resilient_sessions.backends.resilient import SessionStore

    user = get_user_model().objects.get(pk=env.user_id())
    store = SessionStore()
    store.update(
        {
            "_auth_user_id": str(user.pk),
            "_auth_user_backend": "django.contrib.auth.backends.ModelBackend",
            "_auth_user_hash": user.get_session_auth_hash(),
            **data,
        }
    )
    store.save()
    return store


def _usage(client: Any, key: str) -> int:
    return int(client.execute_command("MEMORY", "USAGE", key, "SAMPLES", "0"))


def memory(env: BenchEnv, redis: RedisServer, copies: int) -> dict[str, Any]:
    from django_resilient_sessions.cachecopy import SessionCache

    cache = SessionCache()
    found: dict[str, Any] = {}
    with redis.client() as client:
        for name, data in {**PROFILES, "tombstone": SMALL_DATA}.items():
            client.flushall()
            store = _engine_session(env, data)
            key = cache.entry_key(store.key_hash)
            if name == "tombstone":
                store.flush()
            value = client.get(key)
            ttl = int(client.pttl(key))
            usage = _usage(client, key)
            # The same entry under `copies` keys of the engine's form (fresh key hashes).
            client.flushall()
            base = int(client.info("memory")["used_memory"])
            pipe = client.pipeline(transaction=False)
            for _ in range(copies):
                digest = hashlib.sha256(secrets.token_bytes(16)).hexdigest()
                pipe.set(cache.entry_key(digest), value, px=ttl)
                if len(pipe) >= 1000:
                    pipe.execute()
            pipe.execute()
            grown = int(client.info("memory")["used_memory"]) - base
            found[name] = {
                "data_json_bytes": 0 if name == "tombstone" else _data_of(data),
                "key_bytes": len(key),
                "value_bytes": len(value),
                "memory_usage_bytes": usage,
                "used_memory_per_session": round(grown / copies, 1),
                "copies": copies,
            }
        client.flushall()
    return found


# -- requests -------------------------------------------------------------------------------


def _cookie_bytes(jar: Any) -> int:
    """Bytes of the ``Cookie`` header a browser sends with this jar ("a=1; b=2")."""
    pairs = [f"{name}={morsel.value}" for name, morsel in jar.items() if morsel.value]
    return len("; ".join(pairs))


def requests(env: BenchEnv, redis: RedisServer) -> dict[str, Any]:
    """What each kind of request costs, measured on the bench site in this process."""
    from django.conf import settings
    from django.db import connection
    from django.test import Client, override_settings
    from django.test.utils import CaptureQueriesContext

    from benchmarks.env import PASSWORD, USERNAME
    from django_resilient_sessions.conf import conf

    browser = Client(HTTP_HOST="localhost")
    steps: list[tuple[str, str, str, dict[str, str] | None, dict[str, Any]]] = [
        ("login", "POST", "/login/", {"username": USERNAME, "password": PASSWORD}, {}),
        ("read", "GET", "/read/", None, {}),
        ("write", "POST", "/write/", {"note": "sizing"}, {}),
        ("read, activity update due", "GET", "/read/", None, {"ACTIVITY_UPDATE_INTERVAL": 0}),
        ("logout", "POST", "/logout/", None, {}),
    ]
    found: dict[str, Any] = {}
    with proxied_cache(redis) as proxy:
        for name, method, path, body, options in steps:
            with (
                override_settings(RESILIENT_SESSIONS=options),
                CaptureQueriesContext(connection) as queries,
            ):
                proxy.reset_log()
                response = browser.get(path) if method == "GET" else browser.post(path, body or {})
                names = [command.lower() for command in proxy.names()]
                round_trips = len(proxy.batches)
            writes = [
                q["sql"].split()[0].upper()
                for q in queries.captured_queries
                if q["sql"].split()[0].upper() in ("INSERT", "UPDATE", "DELETE")
                and "resilient_sessions" in q["sql"]
            ]
            set_cookie = [m.OutputString() for m in response.cookies.values()]
            backup = response.cookies.get(conf.BACKUP_COOKIE_NAME)
            found[name] = {
                "status": response.status_code,
                "redis_commands": len(names),
                "redis_round_trips": round_trips,
                "redis_by_command": {c: names.count(c) for c in sorted(set(names))},
                "ledger_writes": len(writes),
                "ledger_statements": writes,
                "cookie_header_bytes_next": _cookie_bytes(browser.cookies),
                "set_cookie_bytes": sum(len(line) for line in set_cookie),
                "set_cookies": len(set_cookie),
                "backup_value_chars": len(backup.value) if backup is not None else 0,
            }
    backups = {}
    for name, data in PROFILES.items():
        store = _engine_session(env, data)
        token = store.sealed.token if store.sealed is not None else ""
        backups[name] = {"data_json_bytes": _data_of(data), "backup_token_chars": len(token)}
    return {
        "per_request": found,
        "backups": backups,
        "backup_cookie_name": conf.BACKUP_COOKIE_NAME,
        "session_cookie_name": settings.SESSION_COOKIE_NAME,
        "session_key_chars": 32,
        "activity_update_interval_s": conf.ACTIVITY_UPDATE_INTERVAL,
    }


# -- Redis capacity --------------------------------------------------------------------------


def _redis_benchmark() -> str | None:
    sibling = Path(find_redis_server()).with_name("redis-benchmark")
    if os.access(sibling, os.X_OK):
        return str(sibling)
    return shutil.which("redis-benchmark")


def redis_capacity(value_bytes: int, requests_per_test: int) -> dict[str, Any]:
    """Commands per second one redis-server takes for the engine's load and save."""
    from django_resilient_sessions.cachecopy import UPDATE

    tool = _redis_benchmark()
    if tool is None:
        return {"skipped": "redis-benchmark is not installed (it ships with redis-server)"}
    keys = 10_000
    value = "x" * value_bytes
    tests = {
        "GET (a load)": ["GET", "s:{__rand_int__}"],
        "EVAL update script (a save)": [
            "EVAL", UPDATE, "1", "s:{__rand_int__}", value, "1209600000", "ended",
        ],
    }  # fmt: skip
    found: dict[str, Any] = {"clients": 50, "keys": keys, "value_bytes": value_bytes}
    with RedisServer() as server, server.client() as client:
        pipe = client.pipeline(transaction=False)
        for i in range(keys):
            pipe.set(f"s:{{{i:012d}}}", value)
        pipe.execute()
        for name, command in tests.items():
            done = subprocess.run(
                [
                    *(tool, "-h", server.host, "-p", str(server.port), "-c", "50"),
                    *("-n", str(requests_per_test), "-r", str(keys), "--csv", *command),
                ],
                capture_output=True,
                text=True,
                timeout=600,
                check=True,
            )
            rows = list(csv.reader(io.StringIO(done.stdout)))
            found[name] = {
                "ops_per_s": round(float(rows[-1][1])),
                "p50_ms": float(rows[-1][4]),
                "p99_ms": float(rows[-1][6]),
            }
    return found


# -- ledger capacity -------------------------------------------------------------------------


def ledger_capacity(env: BenchEnv, seconds: float, threads: int = 4) -> dict[str, Any]:
    """The engine's activity update (``ledger.touch``) as fast as ``threads`` threads go."""
    from datetime import timedelta

    from django.db import connection, connections
    from django.utils import timezone

    from django_resilient_sessions import ledger
    from django_resilient_sessions.models import UserSession

    user_id = env.user_id()
    rows = 5_000
    hashes = [hashlib.sha256(secrets.token_bytes(16)).hexdigest() for _ in range(rows)]
    expires = timezone.now() + timedelta(days=14)
    UserSession.objects.bulk_create(
        [UserSession(key_hash=h, user_id=user_id, expires_at=expires) for h in hashes],
        batch_size=1000,
    )
    counts = [0] * threads
    stop = threading.Event()

    def work(index: int) -> None:
        try:
            n = 0
            while not stop.is_set():
                h = hashes[(index * 7919 + n * threads) % rows]
                ledger.touch(h, user_id, version=n, expires_at=time.time() + 1_209_600)
                n += 1
            counts[index] = n
        finally:
            connections.close_all()

    workers = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
    started = time.monotonic()
    for worker in workers:
        worker.start()
    time.sleep(seconds)
    stop.set()
    for worker in workers:
        worker.join()
    elapsed = time.monotonic() - started
    UserSession.objects.filter(key_hash__in=hashes).delete()
    return {
        "threads": threads,
        "seconds": round(elapsed, 1),
        "writes": sum(counts),
        "writes_per_s": round(sum(counts) / elapsed),
        "database": connection.vendor,
        "statement": "UPDATE django_resilient_sessions_usersession (ledger.touch), autocommit",
    }


def run(env: BenchEnv, *, smoke: bool, progress: Callable[[str], None] = print) -> dict[str, Any]:
    """The ``sizing`` section: the measurements (``measured``) and the model's figures."""
    from benchmarks import sizing_model

    started = time.monotonic()
    found: dict[str, Any] = {}
    # A redis-server of its own: what earlier sections left in the bench's does not count.
    with RedisServer() as redis, django_cache_pointing_at(redis.url):
        found["memory"] = memory(env, redis, 200 if smoke else 20_000)
        progress(f"  sizing: memory in {time.monotonic() - started:.1f} s")
        found["requests"] = requests(env, redis)
        progress("  sizing: requests counted")
    value = found["memory"]["login, 1 KB of data"]["value_bytes"]
    found["redis"] = redis_capacity(value, 2_000 if smoke else 200_000)
    progress(f"  sizing: redis-benchmark done ({time.monotonic() - started:.1f} s)")
    found["ledger"] = ledger_capacity(env, 0.5 if smoke else 5.0)
    progress(f"  sizing: ledger writes {found['ledger']['writes_per_s']}/s")
    return {"measured": found, **sizing_model.model(found)}
