"""The ``SessionBase`` contract of the resilient ``SessionStore`` with a healthy cache.

Modelled on Django's own ``SessionTestsMixin`` (tests/sessions_tests/tests.py): dict
behaviour, save and reload, ``exists``, ``delete``, ``flush``, ``cycle_key``, custom expiry
(checked against the real Redis TTL), invalid and unknown keys (nothing created), no
resurrection (``UpdateError``), ``CreateError`` on a key collision, a fresh backup and version
on every save, the hashed Redis key (no session key in Redis), the ``UserSession`` row of a
logged-in session (and zero queries in the steady state), and the async twins.
"""

from __future__ import annotations

import time
from datetime import datetime, timedelta
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from django.contrib.auth import get_user_model
from django.contrib.auth.models import AbstractBaseUser
from django.contrib.sessions.backends.base import CreateError, UpdateError
from django.core.cache import caches
from django.core.signing import JSONSerializer
from django.db import connection
from django.test import TestCase, override_settings
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from django_resilient_sessions import codec, cookies, purges
from django_resilient_sessions.backends.resilient import SessionStore
from django_resilient_sessions.cachecopy import SessionCache, hash_key
from django_resilient_sessions.models import PendingPurge, UserSession
from tests.redis_server import RedisServer
from tests.web import is_tombstone, redis_key_for_hash

pytestmark = pytest.mark.django_db

COOKIE_AGE = 1209600  # settings.SESSION_COOKIE_AGE (Django's default, used by tests.settings)


# Helpers ---------------------------------------------------------------------------------


def redis_key(session_key: str) -> str:
    """The raw Redis key of a session, as the engine names it."""
    return redis_key_for_hash(hash_key(session_key))


def pttl(server: RedisServer, session_key: str) -> int:
    with server.client() as client:
        ttl: int = client.pttl(redis_key(session_key))
    return ttl


def assert_ttl(server: RedisServer, session_key: str, seconds: int) -> None:
    """The Redis TTL of the session is ``seconds`` (less the few spent since the save)."""
    ttl = pttl(server, session_key)
    assert (seconds - 5) * 1000 < ttl <= seconds * 1000, ttl


def dump_redis(server: RedisServer) -> dict[bytes, bytes]:
    """Every session entry and its raw value (plain Redis strings), tombstones left out."""
    with server.client() as client:
        values = {key: client.get(key) or b"" for key in client.scan_iter()}
    return {key: value for key, value in values.items() if not is_tombstone(value)}


def tombstones(server: RedisServer) -> list[bytes]:
    """Keys that mark ended sessions, so that no backup brings them back."""
    with server.client() as client:
        return [key for key in client.scan_iter() if is_tombstone(client.get(key))]


def cache_entry(session_key: str) -> list[Any] | None:
    """The decoded cache entry: [version, data, backup_tag]."""
    read = SessionCache().read(hash_key(session_key))
    entry = read.entry
    return None if entry is None else [entry.version, entry.data, entry.tag]


def ledger_statements(queries: CaptureQueriesContext) -> list[str]:
    """The statements run, without the savepoints of the test's own transaction."""
    return [q["sql"] for q in queries.captured_queries if "SAVEPOINT" not in q["sql"]]


def open_backup(store: SessionStore) -> codec.Backup:
    assert store.sealed is not None and store.session_key
    backup = codec.open_token(
        store.sealed.token, store.session_key, JSONSerializer, cookies.max_token_chars()
    )
    assert backup is not None
    return backup


def auth_data(user: AbstractBaseUser) -> dict[str, str]:
    return {
        "_auth_user_id": str(user.pk),
        "_auth_user_backend": "django.contrib.auth.backends.ModelBackend",
        "_auth_user_hash": user.get_session_auth_hash(),
    }


def saved_store(**data: Any) -> SessionStore:
    store = SessionStore()
    store.update(data)
    store.save()
    return store


@pytest.fixture
def user() -> AbstractBaseUser:
    created: AbstractBaseUser = get_user_model().objects.create_user("ann", password="pw")
    return created


# Dict behaviour --------------------------------------------------------------------------


def test_new_session_is_empty_and_untouched() -> None:
    store = SessionStore()

    assert store.modified is False
    assert store.accessed is False
    assert store.session_key is None
    assert store.get("cat") is None
    assert store.is_empty()
    assert store.source is None


def test_dict_operations() -> None:
    store = SessionStore()
    store["cat"] = "dog"
    assert store.modified is True
    assert store["cat"] == "dog"
    assert store.pop("cat") == "dog"
    assert store.pop("cat", "gone") == "gone"
    with pytest.raises(KeyError):
        store.pop("cat")

    assert store.setdefault("x", 1) == 1
    assert store.setdefault("x", 2) == 1
    store.update({"y": [1, 2], "z": {"n": None}})
    assert store.has_key("y") and not store.has_key("nope")
    assert "z" in store
    assert sorted(store.keys()) == ["x", "y", "z"]
    assert sorted(map(str, store.values())) == ["1", "[1, 2]", "{'n': None}"]
    assert sorted(store.items()) == [("x", 1), ("y", [1, 2]), ("z", {"n": None})]
    del store["x"]
    assert "x" not in store

    store.modified = store.accessed = False
    store.clear()
    assert list(store.items()) == []
    assert store.modified is True and store.accessed is True


def test_save_and_reload_in_a_new_store(redis_server: RedisServer) -> None:
    store = saved_store(cat="dog", n=3, nested={"a": ["b", None, True]}, text="Zoë 🎉")
    key = store.session_key
    assert key is not None and len(key) == 32

    again = SessionStore(key)

    assert dict(again.items()) == {
        "cat": "dog",
        "n": 3,
        "nested": {"a": ["b", None, True]},
        "text": "Zoë 🎉",
    }
    assert again.source == "cache"
    assert again.degraded is False
    assert again.session_key == key
    assert again.exists(key) is True


def test_save_does_not_clear_data() -> None:
    store = saved_store(a="b")

    assert store["a"] == "b"


def test_exists() -> None:
    store = saved_store(a=1)

    assert store.exists(store.session_key or "") is True
    assert store.exists("x" * 32) is False
    assert store.exists("") is False


def test_delete_then_load_gives_empty(redis_server: RedisServer) -> None:
    store = saved_store(a=1)
    key = store.session_key or ""

    store.delete(key)

    assert store.exists(key) is False
    assert dump_redis(redis_server) == {}
    assert [t.decode() for t in tombstones(redis_server)] == [redis_key(key)]
    fresh = SessionStore(key)
    assert fresh.load() == {}
    assert fresh.session_key is None


def test_delete_own_session_without_argument() -> None:
    store = saved_store(a=1)
    key = store.session_key or ""

    store.delete()

    assert store.exists(key) is False
    assert SessionStore(key).load() == {}


def test_flush_empties_and_changes_key() -> None:
    store = saved_store(foo="bar")
    old_key = store.session_key or ""

    store.flush()

    assert store.exists(old_key) is False
    assert store.session_key is None
    assert store.modified is True and store.accessed is True
    assert dict(store.items()) == {}
    store["after"] = 1
    store.save()
    assert store.session_key not in (None, old_key)
    assert SessionStore(old_key).load() == {}


def test_cycle_key_keeps_data_and_changes_key() -> None:
    store = saved_store(a="c", b="d")
    old_key = store.session_key or ""
    old_items = sorted(store.items())

    store.cycle_key()

    assert store.session_key not in (None, old_key)
    assert store.exists(old_key) is False
    assert sorted(store.items()) == old_items
    assert sorted(SessionStore(store.session_key).items()) == old_items


def test_cycle_key_without_loaded_session() -> None:
    key = saved_store(a="c").session_key or ""
    store = SessionStore(key)

    store.cycle_key()

    assert store.session_key not in (None, key)
    assert store.exists(key) is False
    assert SessionStore(store.session_key).get("a") == "c"


# Expiry ------------------------------------------------------------------------------------


def test_default_expiry(redis_server: RedisServer) -> None:
    store = saved_store(a=1)

    assert store.get_expiry_age() == COOKIE_AGE
    assert store.get_expire_at_browser_close() is False
    assert_ttl(redis_server, store.session_key or "", COOKIE_AGE)


def test_custom_expiry_seconds(redis_server: RedisServer) -> None:
    store = SessionStore()
    store["a"] = 1
    store.set_expiry(120)
    store.save()

    assert store.get_expiry_age() == 120
    assert_ttl(redis_server, store.session_key or "", 120)
    reloaded = SessionStore(store.session_key)
    assert reloaded.get_expiry_age() == 120
    assert open_backup(store).expires_at - timezone.now().timestamp() == pytest.approx(120, abs=3)


def test_custom_expiry_datetime(redis_server: RedisServer) -> None:
    store = SessionStore()
    store["a"] = 1
    store.set_expiry(timezone.now() + timedelta(seconds=600))
    store.save()

    assert 595 <= store.get_expiry_age() <= 600
    assert_ttl(redis_server, store.session_key or "", 600)
    assert isinstance(store.get_expiry_date(), datetime)


def test_custom_expiry_timedelta(redis_server: RedisServer) -> None:
    store = SessionStore()
    store["a"] = 1
    store.set_expiry(timedelta(minutes=3))
    store.save()

    assert 175 <= store.get_expiry_age() <= 180
    assert_ttl(redis_server, store.session_key or "", 180)


def test_expiry_at_browser_close(redis_server: RedisServer) -> None:
    store = SessionStore()
    store["a"] = 1
    store.set_expiry(0)
    store.save()

    assert store.get_expire_at_browser_close() is True
    assert store.get_expiry_age() == COOKIE_AGE
    assert_ttl(redis_server, store.session_key or "", COOKIE_AGE)
    assert SessionStore(store.session_key).get_expire_at_browser_close() is True


def test_custom_expiry_reset() -> None:
    store = SessionStore()
    store.set_expiry(100)
    store.set_expiry(None)

    assert store.get_expiry_age() == COOKIE_AGE


def test_session_past_its_expiry_is_gone(redis_server: RedisServer) -> None:
    store = SessionStore()
    store["a"] = 1
    store.set_expiry(1)
    store.save()
    key = store.session_key or ""
    with redis_server.client() as client:
        client.pexpire(redis_key(key), 1)  # expire in 1 ms rather than waiting a second
    time.sleep(0.02)

    assert SessionStore(key).load() == {}


def test_negative_expiry_saves_nothing(redis_server: RedisServer) -> None:
    store = SessionStore()
    store["a"] = 1
    store.set_expiry(-10)
    store.save()

    assert store.exists(store.session_key or "") is False
    assert dump_redis(redis_server) == {}


# Keys in Redis, unknown and invalid keys -----------------------------------------------------


def test_redis_holds_only_the_hash_of_the_session_key(redis_server: RedisServer) -> None:
    stores = [saved_store(i=i, text="value") for i in range(3)]
    dump = dump_redis(redis_server)

    assert len(dump) == 3
    for store in stores:
        key = (store.session_key or "").encode()
        assert redis_key(store.session_key or "").encode() in dump
        assert store.key_hash == hash_key(store.session_key or "")
        for raw_key, raw_value in dump.items():
            assert key not in raw_key
            assert key not in raw_value


def test_loading_unknown_key_creates_nothing(redis_server: RedisServer) -> None:
    store = SessionStore("someunknownkey")

    assert store.load() == {}
    assert store.session_key is None
    assert store.exists("someunknownkey") is False
    assert dump_redis(redis_server) == {}

    store["cat"] = "dog"
    store.save()
    assert store.session_key not in (None, "someunknownkey")
    assert len(dump_redis(redis_server)) == 1


@pytest.mark.parametrize("key", [None, "", "1", "1234567"])
def test_invalid_keys_behave_as_django(key: str | None, redis_server: RedisServer) -> None:
    store = SessionStore(key)

    assert store.session_key is None
    assert store.load() == {}
    assert dump_redis(redis_server) == {}
    store.save()
    assert store.session_key is not None and store.session_key != key
    assert store.get("cat") is None


def test_session_key_validation() -> None:
    store = SessionStore()
    store._session_key = "12345678"
    assert store.session_key == "12345678"
    store._session_key = "1234567"
    assert store.session_key is None
    with pytest.raises(AttributeError):
        store.session_key = "x" * 32  # type: ignore[misc]


def test_unreadable_cache_entry_is_treated_as_missing(redis_server: RedisServer) -> None:
    key = "u" * 32
    with redis_server.client() as client:
        client.set(redis_key(key), b"not a django-redis value")

    store = SessionStore(key)

    assert store.load() == {}
    assert store.session_key is None


# No resurrection, collisions -----------------------------------------------------------------


def test_save_of_session_deleted_elsewhere_raises_update_error() -> None:
    first = SessionStore()
    first["data"] = "value1"
    first.save(must_create=True)
    SessionStore(first.session_key).delete()

    first["data"] = "value2"
    with pytest.raises(UpdateError):
        first.save()

    assert first.exists(first.session_key or "") is False
    assert first.load() == {}


def test_save_of_reloaded_session_deleted_elsewhere_raises_update_error() -> None:
    key = saved_store(data="value1").session_key
    first = SessionStore(key)
    assert first["data"] == "value1"
    SessionStore(key).flush()

    first["data"] = "value2"
    with pytest.raises(UpdateError):
        first.save()
    assert SessionStore(key).load() == {}


def test_session_restored_from_backup_and_logged_out_elsewhere_is_not_resurrected(
    user: AbstractBaseUser, redis_server: RedisServer
) -> None:
    login = saved_store(**auth_data(user), cart="full")
    key, token = login.session_key or "", login.sealed.token  # type: ignore[union-attr]
    redis_server.flushall()  # Redis restarted empty: the next request restores the backup

    slow = SessionStore(key, backup=token)
    assert slow["cart"] == "full" and slow.source == "backup"
    SessionStore(key, backup=token).flush()  # logout in a concurrent request
    assert not UserSession.objects.get(key_hash=hash_key(key)).is_active

    slow["cart"] = "changed"
    with pytest.raises(UpdateError):
        slow.save()
    assert SessionStore(key).load() == {}


@override_settings(RESILIENT_SESSIONS={"BREAKER_COOLDOWN": 0.2})
def test_session_served_from_backup_during_outage_and_logged_out_is_not_resurrected(
    user: AbstractBaseUser, fault_redis: RedisServer
) -> None:
    login = saved_store(**auth_data(user), cart="full")
    key, token = login.session_key or "", login.sealed.token  # type: ignore[union-attr]
    fault_redis.pause()  # hung Redis: the copy with the login stays in it

    slow = SessionStore(key, backup=token)
    assert slow["cart"] == "full"
    assert (slow.source, slow.degraded) == ("backup", True)
    SessionStore(key, backup=token).flush()  # logout in a concurrent request
    assert PendingPurge.objects.filter(key_hash=hash_key(key)).exists()
    fault_redis.resume()
    time.sleep(0.25)  # past the breaker's cool-down: the next call probes Redis

    probing = SessionStore(key)
    assert probing.load() == {}  # Redis answers, but the purge is still queued: not trusted
    assert probing.degraded is True
    purges.on_request_finished()  # the probing request is over: the queue is drained
    assert not PendingPurge.objects.exists()
    after = SessionStore(key)
    assert after.load() == {}
    assert after.degraded is False
    slow["cart"] = "changed"
    with pytest.raises(UpdateError):
        slow.save()  # the ledger says the login ended: no copy is put back
    assert dump_redis(fault_redis) == {}


def test_must_create_twice_with_same_key_raises_create_error() -> None:
    key = "collision-key-0123456789abcdefgh"
    SessionStore(key).save(must_create=True)

    with pytest.raises(CreateError):
        SessionStore(key).save(must_create=True)


def test_create_picks_a_key_not_in_use() -> None:
    store = SessionStore()
    store.create()

    assert store.session_key is not None
    assert store.exists(store.session_key) is True
    assert store.modified is True


# Versions and backups ---------------------------------------------------------------------


def test_each_save_increments_version_and_makes_a_new_backup() -> None:
    store = SessionStore()
    store["n"] = 0
    tokens: list[str] = []
    for n in range(1, 4):
        store["n"] = n
        store.save()
        assert store.sealed is not None
        tokens.append(store.sealed.token)
        backup = open_backup(store)
        entry = cache_entry(store.session_key or "")
        assert entry is not None
        assert backup.version == entry[0] == n
        assert backup.data == entry[1] == {"n": n}
        assert entry[2] == codec.token_tag(store.sealed.token)
        assert backup.partial is False

    assert len(set(tokens)) == 3
    reloaded = SessionStore(store.session_key, backup=tokens[-1])
    reloaded["n"] = 4
    reloaded.save()
    assert open_backup(reloaded).version == 4


def test_reload_with_current_backup_does_not_need_a_new_one() -> None:
    store = saved_store(a=1)
    token = store.sealed.token  # type: ignore[union-attr]

    current = SessionStore(store.session_key, backup=token)
    missing = SessionStore(store.session_key)
    assert current["a"] == missing["a"] == 1

    assert current.needs_backup is False
    assert current.backup_rejected is False
    assert missing.needs_backup is True


# Logged-in sessions -------------------------------------------------------------------------


def test_logged_in_save_creates_one_user_session_row(user: AbstractBaseUser) -> None:
    store = saved_store(**auth_data(user))

    rows = list(UserSession.objects.all())

    assert len(rows) == 1
    assert rows[0].key_hash == store.key_hash == hash_key(store.session_key or "")
    assert rows[0].user_id == user.pk
    assert rows[0].is_active
    assert rows[0].expires_at > timezone.now() + timedelta(seconds=COOKIE_AGE - 60)


def test_anonymous_save_creates_no_row() -> None:
    saved_store(a=1)

    assert UserSession.objects.count() == 0


def test_steady_state_load_and_save_run_no_query(
    user: AbstractBaseUser, django_assert_num_queries: Any
) -> None:
    first = saved_store(**auth_data(user))
    key, token = first.session_key, first.sealed.token  # type: ignore[union-attr]

    with django_assert_num_queries(0):
        store = SessionStore(key, backup=token)
        assert store["_auth_user_id"] == str(user.pk)
        store["page"] = 2
        store.save()
        again = SessionStore(key, backup=store.sealed.token)  # type: ignore[union-attr]
        again["page"] = 3
        again.save()

    assert UserSession.objects.count() == 1


def test_activity_is_written_once_the_interval_elapsed(
    user: AbstractBaseUser, django_assert_num_queries: Any
) -> None:
    first = saved_store(**auth_data(user))
    row = UserSession.objects.get()

    with override_settings(RESILIENT_SESSIONS={"ACTIVITY_UPDATE_INTERVAL": 0}):
        store = SessionStore(first.session_key, backup=first.sealed.token)  # type: ignore[union-attr]
        store["page"] = 2
        with CaptureQueriesContext(connection) as queries:
            store.save()
    assert len(ledger_statements(queries)) == 1

    row.refresh_from_db()
    assert row.last_activity > row.created_at


def test_logout_flush_ends_the_row(user: AbstractBaseUser) -> None:
    store = saved_store(**auth_data(user))
    key_hash = store.key_hash

    SessionStore(store.session_key).flush()

    row = UserSession.objects.get(key_hash=key_hash)
    assert row.ended_at is not None
    assert row.end_reason == "logout"
    assert not UserSession.objects.active().exists()


def test_cycle_key_moves_the_row_to_the_new_key(user: AbstractBaseUser) -> None:
    store = saved_store(**auth_data(user))
    old_hash = store.key_hash

    store.cycle_key()

    row = UserSession.objects.get()
    assert row.key_hash == store.key_hash != old_hash
    assert row.is_active
    assert SessionStore(store.session_key)["_auth_user_id"] == str(user.pk)


# Async twins -------------------------------------------------------------------------------


class AsyncContractTests(TestCase):
    """The async API (Django's ``a*`` methods) against the real cache and database."""

    user: Any

    @classmethod
    def setUpTestData(cls) -> None:
        cls.user = get_user_model().objects.create_user("bob", password="pw")

    async def test_aget_aset_asave_aload(self) -> None:
        store = SessionStore()
        self.assertIsNone(await store.aget("cat"))
        await store.aset("cat", "dog")
        self.assertIs(store.modified, True)
        await store.asave()
        key = store.session_key
        self.assertIsNotNone(key)

        again = SessionStore(key)
        self.assertEqual(await again.aload(), {"cat": "dog"})
        self.assertEqual(await SessionStore(key).aget("cat"), "dog")
        self.assertEqual(await again.apop("cat"), "dog")

    async def test_aexists_and_adelete(self) -> None:
        store = SessionStore()
        await store.aset("a", 1)
        await store.asave()
        key = store.session_key or ""
        self.assertIs(await store.aexists(key), True)

        await store.adelete(key)

        self.assertIs(await store.aexists(key), False)
        self.assertEqual(await SessionStore(key).aload(), {})

    async def test_aflush(self) -> None:
        store = SessionStore()
        await store.aset("foo", "bar")
        await store.asave()
        old_key = store.session_key or ""

        await store.aflush()

        self.assertIsNone(store.session_key)
        self.assertIs(await store.aexists(old_key), False)
        self.assertEqual(await store.aitems(), dict().items())

    async def test_acycle_key(self) -> None:
        store = SessionStore()
        await store.aset("a", "c")
        await store.aset("b", "d")
        await store.asave()
        old_key = store.session_key or ""
        old_items = sorted(await store.aitems())

        await store.acycle_key()

        self.assertNotIn(store.session_key, (None, old_key))
        self.assertIs(await store.aexists(old_key), False)
        self.assertEqual(sorted(await store.aitems()), old_items)
        self.assertEqual(await SessionStore(store.session_key).aget("b"), "d")

    async def test_acycle_key_keeps_the_user_session_row(self) -> None:
        store = SessionStore()
        for name, value in auth_data(self.user).items():
            await store.aset(name, value)
        await store.asave()
        old_hash = store.key_hash
        self.assertEqual(await UserSession.objects.filter(key_hash=old_hash).acount(), 1)

        await store.acycle_key()

        row = await UserSession.objects.aget(user=self.user)
        self.assertEqual(row.key_hash, store.key_hash)
        self.assertNotEqual(row.key_hash, old_hash)
        self.assertIsNone(row.ended_at)
        self.assertIs(await UserSession.objects.filter(key_hash=old_hash).aexists(), False)
        self.assertEqual(
            await SessionStore(store.session_key).aget("_auth_user_id"), str(self.user.pk)
        )

    async def test_aget_expiry_age_and_aset_expiry(self) -> None:
        store = SessionStore()
        await store.aset("a", 1)
        self.assertEqual(await store.aget_expiry_age(), COOKIE_AGE)
        await store.aset_expiry(300)
        await store.asave()

        self.assertEqual(await store.aget_expiry_age(), 300)
        self.assertEqual(await SessionStore(store.session_key).aget_expiry_age(), 300)
        ttl = await sync_to_async(caches["default"].client.get_client().pttl)(
            redis_key(store.session_key or "")
        )
        self.assertTrue(295_000 < ttl <= 300_000, ttl)

    async def test_acreate(self) -> None:
        store = SessionStore()
        await store.acreate()

        self.assertIsNotNone(store.session_key)
        self.assertIs(await store.aexists(store.session_key or ""), True)

    async def test_aload_unknown_key_creates_nothing(self) -> None:
        store = SessionStore("someunknownkey")

        self.assertEqual(await store.aload(), {})
        self.assertIsNone(store.session_key)
        self.assertIs(await store.aexists("someunknownkey"), False)

    async def test_asave_does_not_resurrect(self) -> None:
        first = SessionStore()
        await first.aset("data", "value1")
        await first.asave(must_create=True)
        await SessionStore(first.session_key).adelete()

        await first.aset("data", "value2")
        with self.assertRaises(UpdateError):
            await first.asave()
        self.assertEqual(await first.aload(), {})

    async def test_asave_logged_in_creates_row(self) -> None:
        store = SessionStore()
        await store.aupdate(auth_data(self.user))
        await store.asave()

        rows = [row async for row in UserSession.objects.all()]
        self.assertEqual([r.key_hash for r in rows], [store.key_hash])
