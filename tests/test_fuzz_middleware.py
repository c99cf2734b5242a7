"""Property tests: arbitrary session and backup cookies through the full middleware stack.

Hypothesis generates ``Cookie`` headers (Django's test ``Client``, raw ``HTTP_COOKIE``)
made of arbitrary header text and of mutations of a logged-in user's real cookies
(truncated, extended, bit-flipped, one character changed, oversized, re-padded, chunked).
Whatever the header, with Redis up or down:

- the request never raises (the test client re-raises any exception) and never answers 5xx;
- nobody is logged in, and the victim's session data is never served;
- at most one ``django.security.SuspiciousSession`` record is logged per request.

With Redis down the session cookie is the victim's *real* key half of the time, so the
backup alone decides; it is never the victim's real backup. The one exception is the real
key with *no* backup cookie at all: the key is the credential, as on a healthy site, and
the ledger row vouches for the login alone (never the victim's session data).
"""

from __future__ import annotations

import base64
import logging
import string
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from django.contrib.auth.models import User
from django.core.handlers.wsgi import get_str_from_wsgi
from django.http import parse_cookie
from django.test import Client, override_settings
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.redis_server import RedisServer

SESSION = "sessionid"
BACKUP = "sessionbackup"
PASSWORD = "fuzz password"
URLSAFE = string.ascii_letters + string.digits + "-_"
SECURITY_LOGGER = "django.security.SuspiciousSession"
EXAMPLES = 120

#: What a real HTTP server can put in a Cookie header (latin-1, no control characters).
header_text = st.text(
    alphabet=st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_characters="\x7f"),
    max_size=300,
)
urlsafe_text = st.text(alphabet=URLSAFE, max_size=200)


@dataclass(frozen=True)
class Victim:
    session: str
    backup: str


@pytest.fixture
def victim(db: None, redis_server: RedisServer) -> Victim:
    User.objects.create_user(username="victim", password=PASSWORD)
    client = Client()
    assert client.post("/login/", {"username": "victim", "password": PASSWORD}).status_code == 200
    assert client.post("/set/", {"cart": "3 items", "note": "x" * 200}).status_code == 200
    return Victim(client.cookies[SESSION].value, client.cookies[BACKUP].value)


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _unb64(token: str) -> bytes:
    return base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))


def mutations(real: str) -> st.SearchStrategy[str]:
    """Damaged versions of ``real`` (never ``real`` itself)."""
    size = len(real)

    def bit_flip(position: int, bit: int) -> str:
        raw = bytearray(_unb64(real))
        raw[position % len(raw)] ^= 1 << bit
        return _b64(bytes(raw))

    return st.one_of(
        st.integers(0, size - 1).map(lambda i: real[:i]),
        st.tuples(st.integers(0, size - 1), st.sampled_from(URLSAFE)).map(
            lambda t: real[: t[0]] + t[1] + real[t[0] + 1 :]
        ),
        st.tuples(st.integers(0, 4 * size), st.integers(0, 7)).map(lambda t: bit_flip(*t)),
        urlsafe_text.filter(bool).map(lambda tail: real + tail),
        st.integers(1, 3).map(lambda n: real + "=" * n),
        st.integers(3900, 7000).map(lambda n: (real * (n // size + 1))[:n]),
        st.just(base64.b64encode(_unb64(real)).decode()),
    ).filter(lambda value: value != real)


def cookie_header(pairs: list[tuple[str, str | None]]) -> str:
    return "; ".join(f"{name}={value}" for name, value in pairs if value is not None)


def key_alone(header: str, victim: Victim) -> bool:
    """Does this header carry the victim's real session key and no backup at all (as
    Django parses it)? Then the key is the credential, as on a healthy site."""
    # As a request reads it: WSGI's latin-1 text decoded as UTF-8 (U+FFFD for what is
    # not UTF-8), so a lone "\xa0" is a replacement character, not white space.
    cookies = parse_cookie(get_str_from_wsgi({"HTTP_COOKIE": header}, "HTTP_COOKIE", ""))
    return cookies.get(SESSION) == victim.session and not cookies.get(BACKUP)


@pytest.fixture
def security_records(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    caplog.set_level(logging.WARNING, logger=SECURITY_LOGGER)
    yield caplog


def check_anonymous(
    header: str, caplog: pytest.LogCaptureFixture, *, post: bool, user: str | None = None
) -> None:
    """One request with this Cookie header: < 500, anonymous (or ``user``, the login
    alone), no victim data, <= 1 log line."""
    client = Client()
    for path in ("/whoami/", "/get/"):
        caplog.clear()
        response = client.get(path, HTTP_COOKIE=header)
        assert response.status_code < 500
        body = response.json()
        if path == "/whoami/":
            assert body["user"] == user
        else:
            assert "cart" not in body and "note" not in body
        records = [r for r in caplog.records if r.name == SECURITY_LOGGER]
        assert len(records) <= 1, [r.getMessage() for r in records]
    if post:
        caplog.clear()
        response = client.post("/set/", {"n": "1"}, HTTP_COOKIE=header)
        assert response.status_code < 500
        assert len([r for r in caplog.records if r.name == SECURITY_LOGGER]) <= 1


def session_values(victim: Victim) -> st.SearchStrategy[str]:
    return st.one_of(header_text, urlsafe_text, mutations(victim.session))


def backup_values(victim: Victim) -> st.SearchStrategy[str | None]:
    return st.one_of(st.none(), header_text, urlsafe_text, mutations(victim.backup))


@settings(max_examples=EXAMPLES)
@given(data=st.data(), post=st.booleans(), real_backup=st.booleans())
def test_arbitrary_cookies_with_redis_up(
    victim: Victim,
    security_records: pytest.LogCaptureFixture,
    data: st.DataObject,
    post: bool,
    real_backup: bool,
) -> None:
    session = data.draw(session_values(victim).filter(lambda v: v.strip() != victim.session))
    backup = victim.backup if real_backup else data.draw(backup_values(victim))
    pairs = [(SESSION, session), (BACKUP, backup)]
    if data.draw(st.booleans()):
        pairs.reverse()
    check_anonymous(cookie_header(pairs), security_records, post=post)


@settings(max_examples=EXAMPLES)
@given(data=st.data(), post=st.booleans(), real_session=st.booleans())
def test_arbitrary_backups_with_redis_down(
    victim: Victim,
    fault_redis: RedisServer,
    security_records: pytest.LogCaptureFixture,
    data: st.DataObject,
    post: bool,
    real_session: bool,
) -> None:
    # ``victim`` logged in on the shared server; this test's cache is fault_redis, killed:
    # every request is served from its backup cookie (or has none).
    fault_redis.kill()
    session = victim.session if real_session else data.draw(session_values(victim))
    backup = data.draw(backup_values(victim).filter(lambda v: v is None or v != victim.backup))
    header = cookie_header([(SESSION, session), (BACKUP, backup)])
    check_anonymous(
        header,
        security_records,
        post=post,
        user="victim" if key_alone(header, victim) else None,
    )


@settings(max_examples=EXAMPLES)
@given(
    data=st.data(),
    chunks=st.lists(st.one_of(st.none(), header_text, urlsafe_text), min_size=1, max_size=4),
)
def test_arbitrary_backup_chunks_with_redis_down(
    victim: Victim,
    fault_redis: RedisServer,
    security_records: pytest.LogCaptureFixture,
    data: st.DataObject,
    chunks: list[str | None],
) -> None:
    fault_redis.kill()
    # Pieces of the real backup mixed with junk, in chunk cookies.
    pieces = [data.draw(st.one_of(st.just(value), mutations(victim.backup))) for value in chunks]
    pairs: list[tuple[str, str | None]] = [(SESSION, victim.session)]
    pairs += [(BACKUP if i == 0 else f"{BACKUP}_{i}", v) for i, v in enumerate(pieces)]
    header = cookie_header(pairs)
    with override_settings(
        RESILIENT_SESSIONS={"BREAKER_COOLDOWN": 0.5, "BACKUP_COOKIE_MAX_CHUNKS": 4}
    ):
        check_anonymous(
            header,
            security_records,
            post=False,
            user="victim" if key_alone(header, victim) else None,
        )


def test_the_real_cookies_are_logged_in(victim: Victim, fault_redis: RedisServer) -> None:
    """Positive control: the checks above can fail (the real pair is logged in)."""
    header = cookie_header([(SESSION, victim.session), (BACKUP, victim.backup)])
    fault_redis.kill()
    response = Client().get("/whoami/", HTTP_COOKIE=header)
    assert response.json() == {"user": "victim", "degraded": True}
