"""Signals sent by the resilient session engine.

``cache_lost`` and ``cache_recovered`` are sent by
``django_resilient_sessions.cachecopy.SessionCache``, the others by the
engine's ``SessionStore`` class.  Receivers run inside the request that
noticed; an exception in one is logged, never raised to the request.
"""

from __future__ import annotations

from django.dispatch import Signal

__all__ = [
    "backup_rejected",
    "backup_truncated",
    "cache_lost",
    "cache_recovered",
    "session_restored",
]

#: The session cache (a node of it) stopped answering. Arguments: alias, node
#: (``"host:port"`` of the Redis Cluster node, None off a cluster), error.
cache_lost = Signal()

#: The session cache (a node of it) answers again. Arguments: alias, node,
#: downtime (seconds).
cache_recovered = Signal()

#: A request's session came from its backup. Arguments: key_hash, reason
#: ("cache_unavailable", "cache_miss" or "newer_backup"), partial.
session_restored = Signal()

#: A backup had to leave keys out to fit its cookies. Arguments: key_hash,
#: dropped (list of key names), budget (characters).
backup_truncated = Signal()

#: A backup was refused because its session was ended or revoked. Arguments:
#: key_hash, reason ("ended" when Redis holds the session's tombstone, else the
#: path that tried to restore it: "cache_unavailable", "cache_miss", "newer_backup").
backup_rejected = Signal()
