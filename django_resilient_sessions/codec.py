"""The backup token: an encrypted, authenticated, versioned copy of a session.

Layout of the token before base64url (no padding)::

    format (1 byte) | nonce (12 bytes) | AES-256-GCM(plaintext) + tag (16 bytes)
    plaintext = version (u64) | base (u64) | expires_at (u64, unix seconds) | flags (u8)
                | parent (12 bytes) | payload

``base`` and ``parent`` are the lineage: ``base`` is the version of the Redis
copy this backup descends from (0: the session was never stored in Redis),
``parent`` the fingerprint of the copy it was made from (a Redis copy's, or
the previous backup's), so a Redis copy written back from that very parent is
recognised as an ancestor.  Format 1 (no lineage) is still read, as a backup
that descends from its own version.

The payload is the session dict through ``SESSION_SERIALIZER``, zlib-compressed
when that makes it shorter.  The encryption key is derived from ``SECRET_KEY``
with HKDF (purpose string), then expanded per session key; the associated data
binds the token to the format and to its session key, so a token moved to
another session, edited, or cut fails authentication.

:func:`open_token` is total: whatever string it is given, it returns a
:class:`Backup` or ``None`` and logs why on ``django.security.SuspiciousSession``.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import logging
import os
import struct
import time
import zlib
from dataclasses import dataclass, field
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF, HKDFExpand
from django.conf import settings
from django.utils.encoding import force_bytes

__all__ = ["Backup", "open_token", "seal"]

FORMAT = 2
PURPOSE = b"django_resilient_sessions.backup"
NONCE_BYTES = 12
TAG_BYTES = 16
HEADER = struct.Struct(">QQQB12s")
HEADER_V1 = struct.Struct(">QQB")
FLAG_COMPRESSED = 1
FLAG_PARTIAL = 2
# Nothing we write is ever larger than this once decompressed (see cookies.py).
MAX_PLAINTEXT = 256 * 1024
COMPRESS_ABOVE = 96

security_logger = logging.getLogger("django.security.SuspiciousSession")


@dataclass
class Backup:
    """What a backup token carries."""

    version: int
    expires_at: int
    data: dict[str, Any] = field(default_factory=dict)
    partial: bool = False
    #: The version of the Redis copy this backup descends from (0: none).
    base: int = 0
    #: Fingerprint of the copy this backup was made from (see :func:`token_tag`).
    parent: bytes = bytes(12)


@functools.lru_cache(maxsize=8)
def _master_key(secret: str) -> bytes:
    hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=PURPOSE)
    return hkdf.derive(force_bytes(secret))


@functools.lru_cache(maxsize=1024)
def _session_cipher(secret: str, session_key: str) -> AESGCM:
    # A key per session keeps the number of random nonces used under one key
    # far below the AES-GCM bound, however many sessions a site saves.
    expand = HKDFExpand(algorithm=hashes.SHA256(), length=32, info=force_bytes(session_key))
    return AESGCM(expand.derive(_master_key(secret)))


def _aad(session_key: str, form: int = FORMAT) -> bytes:
    return PURPOSE + bytes((form,)) + force_bytes(session_key)


def _secrets() -> list[str]:
    return [settings.SECRET_KEY, *getattr(settings, "SECRET_KEY_FALLBACKS", [])]


def seal(backup: Backup, session_key: str, serializer: Any, payload: bytes | None = None) -> str:
    """Encrypt ``backup`` for ``session_key`` and return the token string.

    ``payload``: ``backup.data`` already serialized (the engine serializes once for
    both copies).
    """
    if payload is None:
        payload = serializer().dumps(backup.data)
    if len(payload) > MAX_PLAINTEXT:
        raise ValueError("session too large for a backup")
    flags = FLAG_PARTIAL if backup.partial else 0
    if len(payload) > COMPRESS_ABOVE:
        packed = zlib.compress(payload, 1)
        if len(packed) < len(payload):
            payload, flags = packed, flags | FLAG_COMPRESSED
    header = HEADER.pack(backup.version, backup.base, backup.expires_at, flags, backup.parent)
    plaintext = header + payload
    nonce = os.urandom(NONCE_BYTES)
    cipher = _session_cipher(settings.SECRET_KEY, session_key)
    sealed = bytes((FORMAT,)) + nonce + cipher.encrypt(nonce, plaintext, _aad(session_key))
    return base64.urlsafe_b64encode(sealed).rstrip(b"=").decode("ascii")


def token_tag(token: str) -> bytes:
    """A fingerprint of a token, to recognise the one a cache copy was saved with."""
    return hashlib.blake2b(token.encode(), digest_size=12).digest()


def _reject(reason: str) -> None:
    security_logger.warning("Session backup rejected: %s.", reason)


def open_token(token: str, session_key: str, serializer: Any, max_chars: int) -> Backup | None:
    """Decrypt and check a token; ``None`` (and a log line) for anything invalid."""
    if not token or not session_key:
        return None
    if len(token) > max_chars:
        _reject("oversized")
        return None
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    except (binascii.Error, ValueError):
        raw = b""
    # Only the one canonical spelling is accepted (the decoder skips foreign
    # characters and ignores padding bits).
    if not raw or base64.urlsafe_b64encode(raw).rstrip(b"=") != token.encode("ascii", "replace"):
        _reject("not base64url")
        return None
    if len(raw) < 1 + NONCE_BYTES + TAG_BYTES + HEADER_V1.size:
        _reject("truncated")
        return None
    form = raw[0]
    if form not in (1, FORMAT):
        _reject(f"unknown format {form}")
        return None
    plaintext = _decrypt(raw[1 : 1 + NONCE_BYTES], raw[1 + NONCE_BYTES :], session_key, form)
    if plaintext is None:
        _reject("authentication failed (tampered, truncated, other key or other session)")
        return None
    parent = bytes(12)
    if form == 1:
        version, expires_at, flags = HEADER_V1.unpack_from(plaintext)
        base, payload = version, plaintext[HEADER_V1.size :]
    elif len(plaintext) < HEADER.size:
        _reject("truncated")
        return None
    else:
        version, base, expires_at, flags, parent = HEADER.unpack_from(plaintext)
        payload = plaintext[HEADER.size :]
    if flags & FLAG_COMPRESSED:
        inflated = _inflate(payload)
        if inflated is None:
            _reject("payload does not decompress within bounds")
            return None
        payload = inflated
    try:
        data = serializer().loads(payload)
    # Any serializer may raise anything on bytes it did not write; the token
    # authenticated, so this is a bug or a changed SESSION_SERIALIZER: no backup.
    except Exception:
        _reject("payload does not deserialize")
        return None
    if not isinstance(data, dict):
        _reject("payload is not a mapping")
        return None
    if expires_at <= time.time():
        return None
    return Backup(version, expires_at, data, bool(flags & FLAG_PARTIAL), base, parent)


def _decrypt(nonce: bytes, sealed: bytes, session_key: str, form: int) -> bytes | None:
    aad = _aad(session_key, form)
    for secret in _secrets():
        try:
            return _session_cipher(secret, session_key).decrypt(nonce, sealed, aad)
        except InvalidTag:
            continue
    return None


def _inflate(payload: bytes) -> bytes | None:
    inflater = zlib.decompressobj()
    try:
        out = inflater.decompress(payload, MAX_PLAINTEXT)
    except zlib.error:
        return None
    if inflater.unconsumed_tail or not inflater.eof:
        return None
    return out
