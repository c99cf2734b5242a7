"""A Django cache backend for Redis Cluster: ``django_resilient_sessions.cache.RedisClusterCache``.

Neither django-redis nor Django's own ``RedisCache`` speaks the cluster
protocol, so this backend puts Django's cache API over redis-py's
:class:`redis.cluster.RedisCluster`, which does all of it (slot routing,
``MOVED`` and ``ASK`` redirections, replicas promoted).  It is Django's
``RedisCache`` with a client that routes by key::

    CACHES = {
        "sessions": {
            "BACKEND": "django_resilient_sessions.cache.RedisClusterCache",
            # Any nodes of the cluster (the others are discovered).
            "LOCATION": ["redis://10.0.0.1:6379", "redis://10.0.0.2:6379"],
            "OPTIONS": {"socket_timeout": 0.25, "socket_connect_timeout": 0.25},
        },
    }

``OPTIONS`` are redis-py's keywords for ``RedisCluster`` (they reach every
node's connections).  Unless ``retry`` is given, a failed command is not
retried: the session engine's per-node circuit breaker decides what happens
next, without the waits a retry adds.  Only making the client is tried again,
on other nodes: its first command goes to one node, which may be a dead one.
Reads and writes go to primaries.

Multi-key calls (``get_many``, ``set_many``, ``delete_many``) are split by
slot, so they are not atomic across slots; ``clear()`` flushes every primary.
The session engine itself only sends single-key commands.
"""

from __future__ import annotations

import threading
from typing import Any
from urllib.parse import unquote, urlsplit

from django.core.cache.backends.redis import RedisCache, RedisCacheClient
from django.core.exceptions import ImproperlyConfigured

__all__ = ["RedisClusterCache", "RedisClusterCacheClient"]

#: Attempts at making the client, per node given in LOCATION. Making it sends a first
#: command (``COMMAND``) to one node, the first given when it can, which may be a dead
#: one: without retries redis-py gives up there; each retry picks a node again.
CONNECT_ATTEMPTS_PER_NODE = 3

_clients: dict[tuple[Any, ...], Any] = {}
_clients_lock = threading.Lock()


class RedisClusterCacheClient(RedisCacheClient):
    """Django's Redis cache client, over one ``RedisCluster`` shared by the process."""

    # Set by RedisCacheClient.__init__ (not in django-stubs).
    _servers: list[str]
    _serializer: Any
    _pool_options: dict[str, Any]

    def __init__(
        self,
        servers: list[str],
        serializer: Any = None,
        pool_class: Any = None,
        parser_class: Any = None,
        **options: Any,
    ) -> None:
        if pool_class is not None:
            raise ImproperlyConfigured(
                "RedisClusterCache makes a connection pool per node itself: "
                "remove OPTIONS['pool_class']."
            )
        super().__init__(servers, serializer=serializer, parser_class=parser_class, **options)
        self._key = (tuple(servers), tuple(sorted((k, repr(v)) for k, v in options.items())))

    def get_client(self, key: Any = None, *, write: bool = False) -> Any:
        client = _clients.get(self._key)
        if client is None:
            with _clients_lock:
                client = _clients.get(self._key)
                if client is None:
                    client = _clients[self._key] = self._connect()
        return client

    def _connect(self) -> Any:
        from redis.backoff import NoBackoff
        from redis.cluster import ClusterNode, RedisCluster
        from redis.retry import Retry

        nodes = []
        options = dict(self._pool_options)
        for server in self._servers:
            url = urlsplit(server)
            if url.scheme not in ("redis", "rediss") or not url.hostname:
                raise ImproperlyConfigured(
                    f"RedisClusterCache LOCATION {_shown(server)!r} is not a redis:// or "
                    "rediss:// URL."
                )
            if url.path not in ("", "/", "/0"):
                raise ImproperlyConfigured(
                    f"RedisClusterCache LOCATION {_shown(server)!r} names a database: "
                    "Redis Cluster has database 0 only."
                )
            nodes.append(ClusterNode(url.hostname, url.port or 6379))  # type: ignore[no-untyped-call]
            if url.scheme == "rediss":
                options.setdefault("ssl", True)
            if url.username:
                options.setdefault("username", unquote(url.username))
            if url.password:
                options.setdefault("password", unquote(url.password))
        retry = options.pop("retry", None)
        # Making the client sends a first command to one node, which may be a dead one:
        # another node on each attempt. Then no retries at all (see the docstring).
        attempts = Retry(NoBackoff(), CONNECT_ATTEMPTS_PER_NODE * len(nodes))
        client = RedisCluster(startup_nodes=nodes, retry=retry or attempts, **options)
        client.set_retry(retry or Retry(NoBackoff(), 0))
        return client

    # Multi-key operations: split by slot (redis-py's non-atomic variants).

    def get_many(self, keys: Any) -> dict[Any, Any]:
        keys = list(keys)
        values = self.get_client().mget_nonatomic(keys)
        return {
            k: self._serializer.loads(v) for k, v in zip(keys, values, strict=True) if v is not None
        }

    def set_many(self, data: Any, timeout: Any) -> None:
        client = self.get_client(write=True)
        if timeout == 0:
            client.delete(*data)
            return
        pipeline = client.pipeline()
        for key, value in data.items():
            pipeline.set(key, self._serializer.dumps(value), ex=timeout)
        pipeline.execute()

    def delete_many(self, keys: Any) -> None:
        self.get_client(write=True).delete(*keys)

    def clear(self) -> bool:
        from redis.cluster import RedisCluster

        client = self.get_client(write=True)
        return bool(client.flushdb(target_nodes=RedisCluster.PRIMARIES))


def _shown(url: str) -> str:
    """``url`` without its password, for messages (they reach logs and health checks)."""
    try:
        parts = urlsplit(url)
        if parts.password is None:
            return url
    except ValueError:  # not even a URL: nothing to tell apart, show nothing of it
        return "(unreadable URL)"
    user = parts.username or ""
    host = parts.netloc.rsplit("@", 1)[1]
    return parts._replace(netloc=f"{user}:***@{host}").geturl()


class RedisClusterCache(RedisCache):
    """Django's ``RedisCache`` over Redis Cluster (see the module docstring)."""

    def __init__(self, server: Any, params: dict[str, Any]) -> None:
        super().__init__(server, params)
        self._class = RedisClusterCacheClient


def forget_clients() -> None:
    """Close and drop the process's cluster clients (tests, reconfiguration)."""
    with _clients_lock:
        for client in _clients.values():
            client.close()
        _clients.clear()
