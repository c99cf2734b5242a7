"""Unit tests of the backup token codec (``codec``) and the cookie budget helpers (``cookies``).

Covers: seal/open round trips (unicode, nested, empty, large, version/expiry/partial kept),
compression, property tests (round trip of any JSON-able dict; ``open_token`` total on any
string, random bytes and mutations of a valid token), expiry, binding to the session key,
``SECRET_KEY_FALLBACKS`` rotation, hand-crafted hostile tokens (decompression bomb, unknown
format, non-mapping and undecodable payloads, oversized tokens), and the chunking helpers
``split_token`` / ``read_token`` / ``chunk_capacity``.
"""

from __future__ import annotations

import base64
import logging
import os
import string
import time
import zlib
from typing import Any

import pytest
from django.conf import settings
from django.core.signing import JSONSerializer
from django.test import override_settings
from hypothesis import example, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from django_resilient_sessions import codec, cookies

SECURITY_LOGGER = "django.security.SuspiciousSession"
KEY = "k0dec0testsessionkey0123456789ab"
OTHER_KEY = "another0session0key0987654321zyx"
URLSAFE_ALPHABET = string.ascii_letters + string.digits + "-_"
NO_LIMIT = 10**9


def _future(seconds: int = 3600) -> int:
    return int(time.time()) + seconds


def _seal(data: dict[str, Any], *, key: str = KEY, version: int = 7, partial: bool = False) -> str:
    return codec.seal(codec.Backup(version, _future(), data, partial), key, JSONSerializer)


def _open(token: str, key: str = KEY, max_chars: int = NO_LIMIT) -> codec.Backup | None:
    return codec.open_token(token, key, JSONSerializer, max_chars)


def _raw_token(plaintext: bytes, *, key: str = KEY, fmt: int = codec.FORMAT) -> str:
    """Encrypt ``plaintext`` with the real key, as ``seal`` does, but with any content."""
    nonce = os.urandom(codec.NONCE_BYTES)
    cipher = codec._session_cipher(settings.SECRET_KEY, key)
    aad = codec.PURPOSE + bytes((fmt,)) + key.encode()
    if fmt == codec.FORMAT:
        assert aad == codec._aad(key)
    sealed = bytes((fmt,)) + nonce + cipher.encrypt(nonce, plaintext, aad)
    return base64.urlsafe_b64encode(sealed).rstrip(b"=").decode("ascii")


def _decrypt_plaintext(token: str, key: str = KEY) -> bytes:
    raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    nonce, body = raw[1 : 1 + codec.NONCE_BYTES], raw[1 + codec.NONCE_BYTES :]
    plaintext: bytes = codec._session_cipher(settings.SECRET_KEY, key).decrypt(
        nonce, body, codec._aad(key)
    )
    return plaintext


def _security_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == SECURITY_LOGGER]


# Round trips -------------------------------------------------------------------------------

ROUND_TRIP_DATA = {
    "empty": {},
    "unicode": {"name": "Zoë 山田 🎉", "ключ": "значение", "emoji🔑": "\u0000\u2028"},
    "nested": {"cart": {"items": [{"sku": "A-1", "qty": 2}, {"sku": "B", "qty": None}]}, "n": [[]]},
    "scalars": {"int": -(2**70), "bool": True, "none": None, "zero": 0, "empty": ""},
    "large_compressible": {"blob": "abc" * 20_000, "list": list(range(1000))},
    "django_auth": {
        "_auth_user_id": "42",
        "_auth_user_backend": "django.contrib.auth.backends.ModelBackend",
        "_auth_user_hash": "f" * 64,
        "_session_expiry": 600,
    },
}


@pytest.mark.parametrize("data", ROUND_TRIP_DATA.values(), ids=ROUND_TRIP_DATA.keys())
@pytest.mark.parametrize("partial", [False, True])
def test_round_trip(data: dict[str, Any], partial: bool) -> None:
    expires_at = _future(1234)
    token = codec.seal(codec.Backup(2**64 - 1, expires_at, data, partial), KEY, JSONSerializer)

    opened = _open(token)

    assert opened == codec.Backup(2**64 - 1, expires_at, data, partial)
    assert isinstance(token, str)
    assert set(token) <= set(URLSAFE_ALPHABET), "tokens are unpadded base64url"


def test_each_seal_uses_a_fresh_nonce() -> None:
    first, second = _seal({"a": 1}), _seal({"a": 1})

    assert first != second
    assert _open(first) == _open(second)


def test_compression_used_when_it_helps() -> None:
    size = 6000
    compressible = {"v": "x" * size}
    incompressible = {"v": base64.b32encode(os.urandom(size))[:size].decode()}

    small_token = _seal(compressible)
    big_token = _seal(incompressible)

    assert len(small_token) < len(big_token) // 4
    flags = codec.HEADER.unpack_from(_decrypt_plaintext(small_token))[3]
    assert flags & codec.FLAG_COMPRESSED
    assert _open(small_token).data == compressible  # type: ignore[union-attr]


def test_compression_skipped_for_small_payloads() -> None:
    # Compressible, but not worth it below COMPRESS_ABOVE bytes of payload.
    data = {"v": "x" * (codec.COMPRESS_ABOVE - len('{"v":""}'))}
    assert len(JSONSerializer().dumps(data)) == codec.COMPRESS_ABOVE

    flags = codec.HEADER.unpack_from(_decrypt_plaintext(_seal(data)))[3]

    assert not flags & codec.FLAG_COMPRESSED
    assert _open(_seal(data)).data == data  # type: ignore[union-attr]


def test_partial_flag_is_inside_the_authenticated_plaintext() -> None:
    _, _, _, flags, _ = codec.HEADER.unpack_from(_decrypt_plaintext(_seal({"a": 1}, partial=True)))

    assert flags & codec.FLAG_PARTIAL


def test_seal_refuses_payload_over_max_plaintext() -> None:
    with pytest.raises(ValueError):
        _seal({"v": "x" * (codec.MAX_PLAINTEXT + 1)})


# Property tests ----------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(),
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5)
    ),
    max_leaves=25,
)
json_dicts = st.dictionaries(st.text(max_size=20), json_values, max_size=8)


@hsettings(max_examples=300)
@given(
    data=json_dicts,
    version=st.integers(0, 2**64 - 1),
    lifetime=st.integers(60, 10**9),
    partial=st.booleans(),
)
def test_round_trip_property(
    data: dict[str, Any], version: int, lifetime: int, partial: bool
) -> None:
    backup = codec.Backup(version, _future(lifetime), data, partial)

    assert _open(codec.seal(backup, KEY, JSONSerializer)) == backup


@hsettings(max_examples=300)
@given(text=st.text(max_size=300))
@example(text="")
@example(text="=")
@example(text="A" * 62)
@example(text="AQ" + "A" * 60)
def test_open_token_on_any_text_returns_none(text: str) -> None:
    assert _open(text) is None


@hsettings(max_examples=300)
@given(raw=st.binary(max_size=400), force_format=st.booleans())
def test_open_token_on_random_bytes_returns_none(raw: bytes, force_format: bool) -> None:
    if force_format:
        raw = bytes((codec.FORMAT,)) + raw  # get past the format check into decryption
    token = base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

    assert _open(token) is None


@pytest.fixture
def valid_token() -> tuple[str, codec.Backup]:
    backup = codec.Backup(5, _future(), {"user": "ann", "cart": [1, 2, 3], "note": "x" * 200})
    return codec.seal(backup, KEY, JSONSerializer), backup


@hsettings(max_examples=300)
@given(cut=st.integers(min_value=0))
def test_truncated_token_never_opens(valid_token: tuple[str, codec.Backup], cut: int) -> None:
    token, _ = valid_token
    truncated = token[: cut % len(token)]

    assert _open(truncated) is None


@hsettings(max_examples=400)
@given(position=st.integers(min_value=0), replacement=st.characters())
def test_single_character_replaced_never_opens(
    valid_token: tuple[str, codec.Backup], position: int, replacement: str
) -> None:
    token, backup = valid_token
    index = position % len(token)
    mutated = token[:index] + replacement + token[index + 1 :]

    opened = _open(mutated)

    if mutated == token:
        assert opened == backup
    else:
        assert opened is None


@hsettings(max_examples=300)
@given(junk=st.text(min_size=1, max_size=50))
@example(junk="=")
@example(junk="==")
@example(junk="!*!")
@example(junk="A")
def test_appended_junk_never_opens(valid_token: tuple[str, codec.Backup], junk: str) -> None:
    token, _ = valid_token

    assert _open(token + junk) is None


def _token_with(predicate: Any, *, random: bool = False) -> str:
    """The first token of growing size that satisfies ``predicate``."""
    for size in range(1, 20_000, 97 if random else 1):
        value = os.urandom(size).hex() if random else "y" * size
        token = _seal({"v": value})
        if predicate(token):
            return token
    raise AssertionError("no token found")  # pragma: no cover


def _flip_padding_bit(token: str) -> str:
    """Change the last character's lowest bit: a padding bit when ``len(token) % 4`` is 2 or 3."""
    alphabet = string.ascii_uppercase + string.ascii_lowercase + string.digits + "-_"
    return token[:-1] + alphabet[alphabet.index(token[-1]) ^ 1]


NON_CANONICAL = {
    "padding_appended": lambda t: t + "==",
    "non_alphabet_junk_appended": lambda t: t + "!*!",
    "standard_alphabet_for_urlsafe": lambda t: t.replace("-", "+").replace("_", "/"),
    "padding_bit_flipped": _flip_padding_bit,
}


@pytest.mark.parametrize("mutate", NON_CANONICAL.values(), ids=NON_CANONICAL.keys())
def test_only_the_exact_token_string_opens(mutate: Any) -> None:
    token = _token_with(lambda t: len(t) % 4 in (2, 3) and ("-" in t or "_" in t))
    mutated = mutate(token)
    assert mutated != token

    assert _open(token) is not None
    assert _open(mutated) is None


# Expiry, key binding, rotation ------------------------------------------------------------


def test_expired_token_gives_none() -> None:
    past = codec.seal(codec.Backup(1, int(time.time()) - 1, {"a": 1}), KEY, JSONSerializer)
    now = codec.seal(codec.Backup(1, int(time.time()), {"a": 1}), KEY, JSONSerializer)
    zero = codec.seal(codec.Backup(1, 0, {"a": 1}), KEY, JSONSerializer)

    assert _open(past) is None
    assert _open(now) is None
    assert _open(zero) is None


def test_token_is_bound_to_its_session_key(caplog: pytest.LogCaptureFixture) -> None:
    token = _seal({"a": 1})

    with caplog.at_level(logging.WARNING, logger=SECURITY_LOGGER):
        assert _open(token, OTHER_KEY) is None
        assert _open(token, KEY[:-1] + "c") is None
    assert _open(token, KEY) is not None
    assert len(_security_records(caplog)) == 2


def test_empty_token_or_key_gives_none() -> None:
    token = _seal({"a": 1})

    assert _open("", KEY) is None
    assert _open(token, "") is None


def test_fallback_secret_key_opens_old_tokens() -> None:
    with override_settings(SECRET_KEY="old-secret-key-" + "o" * 40):
        old_token = _seal({"a": "old"})

    with override_settings(
        SECRET_KEY="new-secret-key-" + "n" * 40, SECRET_KEY_FALLBACKS=["old-secret-key-" + "o" * 40]
    ):
        opened = _open(old_token)
        resealed = _seal({"a": "new"})
    with override_settings(SECRET_KEY="new-secret-key-" + "n" * 40, SECRET_KEY_FALLBACKS=[]):
        without_fallback = _open(old_token)
        new_opened = _open(resealed)

    assert opened is not None and opened.data == {"a": "old"}
    assert without_fallback is None
    assert new_opened is not None and new_opened.data == {"a": "new"}


def test_token_sealed_under_unrelated_key_does_not_open(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with override_settings(SECRET_KEY="unrelated-secret-" + "u" * 40):
        foreign = _seal({"a": 1})

    with caplog.at_level(logging.WARNING, logger=SECURITY_LOGGER):
        assert _open(foreign) is None
    assert any("authentication failed" in r.getMessage() for r in _security_records(caplog))


# Hostile tokens built with the real key ---------------------------------------------------


def _plaintext(payload: bytes, flags: int = 0, version: int = 1, base: int = 0) -> bytes:
    return codec.HEADER.pack(version, base, _future(), flags, bytes(12)) + payload


def test_decompression_bomb_is_refused(caplog: pytest.LogCaptureFixture) -> None:
    inflated = b'{"v":"' + b"\x41" * (codec.MAX_PLAINTEXT * 8) + b'"}'
    bomb = zlib.compress(inflated, 9)
    assert len(bomb) < 10_000
    token = _raw_token(_plaintext(bomb, codec.FLAG_COMPRESSED))

    with caplog.at_level(logging.WARNING, logger=SECURITY_LOGGER):
        assert _open(token) is None
    assert any("decompress" in r.getMessage() for r in _security_records(caplog))


def test_payload_one_byte_past_max_plaintext_is_refused() -> None:
    filler = codec.MAX_PLAINTEXT + 1 - len(b'{"v":""}')
    payload = b'{"v":"' + b"z" * filler + b'"}'
    assert len(payload) == codec.MAX_PLAINTEXT + 1

    assert _open(_raw_token(_plaintext(zlib.compress(payload), codec.FLAG_COMPRESSED))) is None


def test_payload_of_exactly_max_plaintext_opens() -> None:
    filler = codec.MAX_PLAINTEXT - len(b'{"v":""}')
    payload = b'{"v":"' + b"z" * filler + b'"}'
    assert len(payload) == codec.MAX_PLAINTEXT

    opened = _open(_raw_token(_plaintext(zlib.compress(payload), codec.FLAG_COMPRESSED)))

    assert opened is not None and len(opened.data["v"]) == filler


def test_compressed_flag_on_garbage_is_refused(caplog: pytest.LogCaptureFixture) -> None:
    token = _raw_token(_plaintext(b"definitely not zlib", codec.FLAG_COMPRESSED))

    with caplog.at_level(logging.WARNING, logger=SECURITY_LOGGER):
        assert _open(token) is None
    assert _security_records(caplog)


def test_truncated_zlib_stream_is_refused() -> None:
    stream = zlib.compress(b'{"v":"' + b"q" * 5000 + b'"}')
    token = _raw_token(_plaintext(stream[:-6], codec.FLAG_COMPRESSED))

    assert _open(token) is None


@pytest.mark.parametrize("fmt", [0, 3, 255])
def test_unknown_format_byte_is_refused(fmt: int, caplog: pytest.LogCaptureFixture) -> None:
    token = _raw_token(_plaintext(b'{"a":1}'), fmt=fmt)

    with caplog.at_level(logging.WARNING, logger=SECURITY_LOGGER):
        assert _open(token) is None
    assert any(f"unknown format {fmt}" in r.getMessage() for r in _security_records(caplog))


@pytest.mark.parametrize(
    "payload", [b"[1, 2]", b'"text"', b"42", b"null", b"\xff\xfe not json", b""]
)
def test_authentic_payload_that_is_not_a_json_mapping_is_refused(
    payload: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger=SECURITY_LOGGER):
        assert _open(_raw_token(_plaintext(payload))) is None
    assert _security_records(caplog)


def test_format_1_tokens_still_open_as_their_own_base() -> None:
    """Backups written before the lineage field (format 1) still restore sessions."""
    plaintext = codec.HEADER_V1.pack(7, _future(), 0) + b'{"a":1}'
    opened = _open(_raw_token(plaintext, fmt=1))

    assert opened is not None
    assert (opened.version, opened.base, opened.data) == (7, 7, {"a": 1})


def test_lineage_is_sealed_inside_the_token() -> None:
    token = codec.seal(codec.Backup(5, _future(), {"a": 1}, base=3), KEY, JSONSerializer)
    opened = _open(token)

    assert opened is not None and (opened.version, opened.base) == (5, 3)


def test_handcrafted_plaintext_matches_seal_layout() -> None:
    """The helpers above build what ``seal`` builds: the same token opens identically."""
    token = _raw_token(_plaintext(b'{"a":1}', codec.FLAG_PARTIAL, version=9))

    opened = _open(token)

    assert opened is not None
    assert (opened.version, opened.data, opened.partial) == (9, {"a": 1}, True)


def test_oversized_token_is_refused_before_decryption(caplog: pytest.LogCaptureFixture) -> None:
    token = _seal({"v": "w" * 300})

    with caplog.at_level(logging.WARNING, logger=SECURITY_LOGGER):
        assert _open(token, max_chars=len(token) - 1) is None
        # Garbage past the limit is refused for its size, not for failing authentication.
        assert _open("A" * 50_000, max_chars=len(token)) is None
    messages = [r.getMessage() for r in _security_records(caplog)]

    assert len(messages) == 2
    assert all("oversized" in m for m in messages)
    assert _open(token, max_chars=len(token)) is not None


# Cookie helpers -----------------------------------------------------------------------------

THREE_CHUNKS = {"RESILIENT_SESSIONS": {"BACKUP_COOKIE_MAX_CHUNKS": 3}}


@override_settings(**THREE_CHUNKS)
def test_chunk_names() -> None:
    assert cookies.chunk_names() == ["sessionbackup", "sessionbackup_1", "sessionbackup_2"]
    assert cookies.chunk_names(1) == ["sessionbackup"]


@override_settings(**THREE_CHUNKS)
def test_split_and_read_token_across_three_chunks() -> None:
    capacity = cookies.chunk_capacity()
    assert len(capacity) == 3
    token = _token_with(lambda t: capacity[0] + capacity[1] < len(t), random=True)
    assert len(token) <= cookies.max_token_chars()

    parts = cookies.split_token(token)
    jar = dict(zip(cookies.chunk_names(), parts, strict=True))

    assert len(parts) == 3
    assert [len(p) <= c for p, c in zip(parts, capacity, strict=True)] == [True] * 3
    assert "".join(parts) == token
    assert cookies.read_token(jar) == token
    assert _open(cookies.read_token(jar) or "", max_chars=cookies.max_token_chars()) is not None


@override_settings(**THREE_CHUNKS)
def test_split_token_uses_only_the_chunks_it_needs() -> None:
    token = _seal({"a": 1})

    assert cookies.split_token(token) == [token]
    assert cookies.read_token({"sessionbackup": token}) == token


@override_settings(**THREE_CHUNKS)
def test_read_token_stops_at_the_first_missing_chunk() -> None:
    jar = {"sessionbackup": "AAA", "sessionbackup_2": "CCC"}

    assert cookies.read_token(jar) == "AAA"
    assert cookies.read_token({"sessionbackup_1": "BBB"}) is None
    assert cookies.read_token({}) is None
    assert cookies.read_token({"sessionbackup": ""}) is None


def test_chunk_capacity_accounts_for_the_cookie_name() -> None:
    with override_settings(**THREE_CHUNKS):
        first, second, third = cookies.chunk_capacity()
    with override_settings(
        RESILIENT_SESSIONS={"BACKUP_COOKIE_MAX_CHUNKS": 1, "BACKUP_COOKIE_NAME": "b" * 40}
    ):
        (long_name,) = cookies.chunk_capacity()

    assert second == third == first - len("_1")
    assert long_name == first - (40 - len("sessionbackup"))
    assert first < cookies.conf.BACKUP_COOKIE_MAX_BYTES - len("sessionbackup=")


def test_chunk_capacity_accounts_for_domain_and_path() -> None:
    (base,) = cookies.chunk_capacity()
    domain = ".a-rather-long-subdomain.example.com"
    with override_settings(SESSION_COOKIE_DOMAIN=domain):
        (with_domain,) = cookies.chunk_capacity()
    with override_settings(SESSION_COOKIE_PATH="/a/much/deeper/path/"):
        (with_path,) = cookies.chunk_capacity()

    assert with_domain <= base - len(domain)
    assert with_path == base - (len("/a/much/deeper/path/") - 1)


def test_chunk_capacity_follows_the_byte_budget() -> None:
    (base,) = cookies.chunk_capacity()
    with override_settings(RESILIENT_SESSIONS={"BACKUP_COOKIE_MAX_BYTES": 1000}):
        (small,) = cookies.chunk_capacity()
    with override_settings(RESILIENT_SESSIONS={"BACKUP_COOKIE_MAX_BYTES": 10}):
        (none,) = cookies.chunk_capacity()

    assert small == base - 3000
    assert none == 0


@pytest.mark.parametrize("domain", [None, ".example.com", ".x" * 60])
def test_full_chunk_with_all_attributes_fits_the_budget(domain: str | None) -> None:
    from http.cookies import SimpleCookie

    with override_settings(SESSION_COOKIE_DOMAIN=domain, SESSION_COOKIE_SAMESITE="Strict"):
        (capacity,) = cookies.chunk_capacity()
        jar: SimpleCookie = SimpleCookie()
        jar["sessionbackup"] = "A" * capacity
        morsel = jar["sessionbackup"]
        morsel["max-age"] = settings.SESSION_COOKIE_AGE
        morsel["expires"] = "Thu, 01 Jan 2099 00:00:00 GMT"
        morsel["path"] = settings.SESSION_COOKIE_PATH
        if domain:
            morsel["domain"] = domain
        morsel["secure"] = True
        morsel["httponly"] = True
        morsel["samesite"] = "Strict"

        assert len(morsel.OutputString()) <= cookies.conf.BACKUP_COOKIE_MAX_BYTES
