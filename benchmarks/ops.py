"""Per-operation timings, in this process, of this engine and Django's engines.

Every engine uses the same django-redis cache (the bench's redis-server) and database.
Repetitions are interleaved: repetition ``i`` times one operation of every engine, in an
order rotated by ``i``, so that drift (other processes, CPU frequency) hits all engines
alike and the ratios to Django's ``cache`` engine, measured in the same run, hold.
Each operation is timed on its own with ``time.perf_counter_ns`` (garbage collection off,
as ``timeit`` does); setup work (logging in a fresh session before a flush, loading the
session before ``cycle_key``) is outside the timed region.

The session is a logged-in user (Django's auth keys, a real user row, so this engine's
``UserSession`` row exists) plus :data:`benchmarks.site.views.APP_DATA` (~500 bytes).
For this engine a request carries the backup cookie: "load" is
``SessionStore(key, backup=token).load()`` and every save hands the new token back, as
the browser would.

Operations:

``load``       a request-like load of an existing session (cache hit)
``save``       load + modify one key + save, as a request that writes does
``create``     a new session holding the app data (no login)
``cycle_key``  ``cycle_key()`` of a loaded, logged-in session (what ``login()`` does)
``flush``      ``flush()`` of a loaded, logged-in session (what ``logout()`` does)
``encode``     the engine's serialized form of the session (ours: the backup token;
               ``cache``: django-redis' pickle; ``cached_db``: the signed database value;
               ``signed_cookies``: the cookie)
``decode``     the reverse
``load_down``  load while the redis-server is killed (our breaker open); compared with
               ``signed_cookies``, the other engine that keeps users logged in without
               Redis (``cache`` answers an empty session, ``cached_db`` reads the database)
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib import import_module
from typing import Any

from django.core.cache import caches

from benchmarks.env import BenchEnv, no_gc
from benchmarks.site.engines import ENGINES
from benchmarks.site.views import APP_DATA, app_data_size
from benchmarks.stats import percentile, ratio
from django_resilient_sessions import codec, cookies

ENGINE_NAMES = ("resilient", "cache", "cached_db", "signed_cookies")
BASELINE = "cache"
OPS = ("load", "save", "create", "cycle_key", "flush", "encode", "decode", "load_down")
#: Baseline of each operation when it is not Django's cache engine.
OP_BASELINE = {"load_down": "signed_cookies"}
#: Operations that are cheap enough for more repetitions.
CHEAP_OPS = frozenset({"load", "save", "encode", "decode", "load_down"})

SESSION_KEY = "_auth_user_id"


@dataclass
class Handle:
    """What a client holds between requests: the session cookie (and our backup)."""

    key: str | None
    token: str | None = None


class Engine:
    """One session engine, driven like a request would drive it."""

    def __init__(self, name: str, user: Any) -> None:
        self.name = name
        self.store_class: Any = import_module(ENGINES[name]).SessionStore
        self.auth = {
            "_auth_user_id": str(user.pk),
            "_auth_user_backend": "django.contrib.auth.backends.ModelBackend",
            "_auth_user_hash": user.get_session_auth_hash(),
        }
        self.codec_store: Any = self.store_class(None)
        self.cache: Any = caches["default"]

    def store(self, handle: Handle | None) -> Any:
        return self.store_class(handle.key if handle else None)

    def keep(self, handle: Handle, store: Any) -> None:
        """Remember what the response would set in the browser."""
        handle.key = store.session_key

    def login(self) -> Handle:
        """A new logged-in session holding the app data."""
        store = self.store(None)
        store.update(self.auth)
        store.update(APP_DATA)
        store.save()
        handle = Handle(None)
        self.keep(handle, store)
        return handle

    def encode(self, handle: Handle, data: dict[str, Any]) -> Any:
        """The engine's stored form of ``data`` (objects built once, outside the timing)."""
        if self.name == "cache":
            return self.cache.client.encode(data)
        if self.name == "signed_cookies":
            self.codec_store._session_cache = data
            return self.codec_store._get_session_key()
        return self.codec_store.encode(data)

    def decode(self, handle: Handle, blob: Any) -> dict[str, Any]:
        if self.name == "cache":
            decoded: dict[str, Any] = self.cache.client.decode(blob)
            return decoded
        if self.name == "signed_cookies":
            self.codec_store._session_key = blob
            loaded: dict[str, Any] = self.codec_store.load()
            return loaded
        result: dict[str, Any] = self.codec_store.decode(blob)
        return result


class Resilient(Engine):
    """This engine: the request carries the backup token and gets a new one on save."""

    def __init__(self, name: str, user: Any) -> None:
        super().__init__(name, user)
        self.max_chars = cookies.max_token_chars()

    def store(self, handle: Handle | None) -> Any:
        if handle is None:
            return self.store_class(None)
        return self.store_class(handle.key, backup=handle.token)

    def keep(self, handle: Handle, store: Any) -> None:
        handle.key = store.session_key
        if store.sealed is not None:
            handle.token = store.sealed.token

    def encode(self, handle: Handle, data: dict[str, Any]) -> Any:
        assert handle.key is not None
        backup = codec.Backup(1, int(time.time()) + 3600, data)
        return codec.seal(backup, handle.key, self.codec_store.serializer)

    def decode(self, handle: Handle, blob: Any) -> dict[str, Any]:
        assert handle.key is not None
        backup = codec.open_token(blob, handle.key, self.codec_store.serializer, self.max_chars)
        assert backup is not None, "the backup token did not open"
        return backup.data


def make_engine(name: str, user: Any) -> Engine:
    return Resilient(name, user) if name == "resilient" else Engine(name, user)


# -- one timed step per operation -------------------------------------------------------------

Step = Callable[[Engine, Any, int], int]


class Outcome:
    """What an engine's loads answered: logged in, logged out, or an exception."""

    def __init__(self) -> None:
        self.logged_in = 0
        self.anonymous = 0
        self.errors: dict[str, int] = {}

    def text(self) -> str:
        total = self.logged_in + self.anonymous + sum(self.errors.values())
        if self.errors:
            names = ", ".join(sorted(self.errors))
            return f"raises {names} ({sum(self.errors.values())} of {total})"
        if self.anonymous and not self.logged_in:
            return "empty session (logged out)"
        if self.anonymous:
            return f"logged out {self.anonymous} times of {total}"
        return "logged in"


def _step_load(engine: Engine, state: dict[str, Any], rep: int) -> int:
    handle: Handle = state["handle"]
    outcome: Outcome = state["outcome"]
    start = time.perf_counter_ns()
    try:
        data = engine.store(handle).load()
    except Exception as error:
        # Django's cached_db: the database answers, then the unguarded cache.set() raises.
        elapsed = time.perf_counter_ns() - start
        if state["strict"]:
            raise
        name = type(error).__name__
        outcome.errors[name] = outcome.errors.get(name, 0) + 1
        return elapsed
    elapsed = time.perf_counter_ns() - start
    if data.get(SESSION_KEY) == engine.auth[SESSION_KEY]:
        outcome.logged_in += 1
    else:
        outcome.anonymous += 1
        if state["strict"]:
            raise AssertionError(f"{engine.name}: load lost the login")
    return elapsed


def _step_save(engine: Engine, state: dict[str, Any], rep: int) -> int:
    handle: Handle = state["handle"]
    start = time.perf_counter_ns()
    store = engine.store(handle)
    store["visits"] = rep
    store.save()
    elapsed = time.perf_counter_ns() - start
    assert store.get(SESSION_KEY) == engine.auth[SESSION_KEY], f"{engine.name}: save lost login"
    engine.keep(handle, store)
    return elapsed


def _step_create(engine: Engine, state: dict[str, Any], rep: int) -> int:
    start = time.perf_counter_ns()
    store = engine.store(None)
    store.update(APP_DATA)
    store.save()
    elapsed = time.perf_counter_ns() - start
    assert store.session_key, f"{engine.name}: create made no session"
    return elapsed


def _step_cycle_key(engine: Engine, state: dict[str, Any], rep: int) -> int:
    handle: Handle = state["handle"]
    store = engine.store(handle)
    old = store.get(SESSION_KEY) and store.session_key
    assert old, f"{engine.name}: the session to cycle is not logged in"
    start = time.perf_counter_ns()
    store.cycle_key()
    elapsed = time.perf_counter_ns() - start
    # signed_cookies: the "key" is the signed data itself, the same within a second.
    assert engine.name == "signed_cookies" or store.session_key != old, (
        f"{engine.name}: cycle_key kept the key"
    )
    engine.keep(handle, store)
    return elapsed


def _step_flush(engine: Engine, state: dict[str, Any], rep: int) -> int:
    store = engine.store(engine.login())
    assert store.get(SESSION_KEY), f"{engine.name}: the session to flush is not logged in"
    start = time.perf_counter_ns()
    store.flush()
    elapsed = time.perf_counter_ns() - start
    assert store.session_key is None and store.is_empty(), f"{engine.name}: flush kept data"
    return elapsed


def _step_encode(engine: Engine, state: dict[str, Any], rep: int) -> int:
    start = time.perf_counter_ns()
    engine.encode(state["handle"], state["data"])
    return time.perf_counter_ns() - start


def _step_decode(engine: Engine, state: dict[str, Any], rep: int) -> int:
    start = time.perf_counter_ns()
    data = engine.decode(state["handle"], state["blob"])
    elapsed = time.perf_counter_ns() - start
    assert data.get(SESSION_KEY) == engine.auth[SESSION_KEY], f"{engine.name}: decode failed"
    return elapsed


STEPS: dict[str, Step] = {
    "load": _step_load,
    "load_down": _step_load,
    "save": _step_save,
    "create": _step_create,
    "cycle_key": _step_cycle_key,
    "flush": _step_flush,
    "encode": _step_encode,
    "decode": _step_decode,
}


def prepare(op: str, engine: Engine) -> dict[str, Any]:
    handle = engine.login()
    state: dict[str, Any] = {"handle": handle, "outcome": Outcome(), "strict": op == "load"}
    if op in ("encode", "decode"):
        data = {**engine.store(handle).load()}
        state["data"] = data
        state["blob"] = engine.encode(handle, data)
    return state


def _interleaved(
    op: str, engines: list[Engine], states: dict[str, dict[str, Any]], reps: int, warmup: int
) -> dict[str, list[int]]:
    step = STEPS[op]
    samples: dict[str, list[int]] = {engine.name: [] for engine in engines}
    count = len(engines)
    with no_gc():
        for rep in range(warmup + reps):
            if rep % 500 == 499:
                import gc

                gc.collect()
            shift = rep % count
            for engine in engines[shift:] + engines[:shift]:
                elapsed = step(engine, states[engine.name], rep)
                if rep >= warmup:
                    samples[engine.name].append(elapsed)
    return samples


def run(
    env: BenchEnv,
    *,
    reps: int,
    cheap_reps: int,
    engines: tuple[str, ...] = ENGINE_NAMES,
    progress: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Time every operation for every engine; returns the ``ops`` section of the results.

    ``load_down`` runs last: it kills the redis-server, which is started again (empty)
    before returning.
    """
    from django.contrib.auth import get_user_model

    from django_resilient_sessions.breaker import reset_breakers

    user = get_user_model().objects.get(pk=env.user_id())
    drivers = [make_engine(name, user) for name in engines]
    results: list[dict[str, Any]] = []
    for op in OPS:
        n = cheap_reps if op in CHEAP_OPS else reps
        warmup = max(n // 20, 5)
        reset_breakers()
        states = {engine.name: prepare(op, engine) for engine in drivers}
        if op == "load_down":
            env.redis.kill()
        try:
            started = time.monotonic()
            samples = _interleaved(op, drivers, states, n, warmup)
        finally:
            if op == "load_down":
                env.redis.start()
                _reconnect(env)
        results.extend(_summarise(op, drivers, samples, states))
        progress(
            f"  ops: {op:<10} {n} reps x {len(drivers)} engines in "
            f"{time.monotonic() - started:.1f} s"
        )
    return {
        "engines": list(engines),
        "baseline": BASELINE,
        "op_baseline": OP_BASELINE,
        "results": results,
        "sizes": _sizes(drivers),
    }


def _reconnect(env: BenchEnv) -> None:
    """After the redis-server came back: fresh django-redis clients, closed breakers."""
    from django.core.cache import caches

    from django_resilient_sessions.breaker import reset_breakers
    from tests.redis_server import forget_django_redis_pools

    forget_django_redis_pools(env.redis.url)
    with contextlib.suppress(AttributeError):  # never used in this thread
        del caches["default"]
    reset_breakers()


def _summarise(
    op: str, engines: list[Engine], samples: dict[str, list[int]], states: dict[str, Any]
) -> list[dict[str, Any]]:
    baseline = OP_BASELINE.get(op, BASELINE)
    medians = {name: percentile(values, 50) / 1000 for name, values in samples.items()}
    p99s = {name: percentile(values, 99) / 1000 for name, values in samples.items()}
    rows = []
    for engine in engines:
        name = engine.name
        row: dict[str, Any] = {
            "op": op,
            "engine": name,
            "n": len(samples[name]),
            "median_us": round(medians[name], 1),
            "p99_us": round(p99s[name], 1),
            "ratio": ratio(medians[name], medians.get(baseline, 0.0)),
            "p99_ratio": ratio(p99s[name], p99s.get(baseline, 0.0)),
            "baseline": baseline,
        }
        if op in ("load", "load_down"):
            row["outcome"] = states[name]["outcome"].text()
        rows.append(row)
    return rows


def _sizes(engines: list[Engine]) -> dict[str, int]:
    """Sizes of the session in each engine's storage form (bytes or characters)."""
    sizes: dict[str, int] = {"app_data_json": app_data_size()}
    for engine in engines:
        handle = engine.login()
        data = {**engine.store(handle).load()}
        blob = engine.encode(handle, data)
        sizes[f"{engine.name}_encoded"] = len(blob)
    return sizes
