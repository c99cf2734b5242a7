"""What the engine needs of a Django cache alias: a redis-py client and key names.

Three backends are supported: django-redis (``django_redis.cache.RedisCache``,
including its Sentinel client), Django's own
``django.core.cache.backends.redis.RedisCache`` (one server, or a primary
followed by replicas) and this package's Redis Cluster backend
(:mod:`.cache`).  Each gives a redis-py client connected to the primary (the
cluster's routes each key to its slot's primary);
the engine sends its own commands and values through it, so neither backend's
serializer or compressor is involved.  Anything else raises
``ImproperlyConfigured`` when the engine first uses the alias (the system
check ``E007`` says so earlier where checks run).
"""

from __future__ import annotations

from typing import Any

from django.core.cache import caches
from django.core.exceptions import ImproperlyConfigured

__all__ = ["RedisAccess", "backend_kind", "cache_of"]

DJANGO_REDIS = "django-redis"
BUILTIN = "django"
CLUSTER = "cluster"


def backend_kind(backend: Any) -> str | None:
    """``"django-redis"``, ``"django"``, ``"cluster"`` or ``None`` (an unsupported backend)."""
    cls = type(backend)
    if cls not in _kinds:
        _kinds[cls] = _kind_of(cls)
    return _kinds[cls]


_kinds: dict[type, str | None] = {}


def _kind_of(cls: type) -> str | None:
    try:
        from django_redis.cache import RedisCache as DjangoRedisCache
    except ImportError:  # django-redis is optional when Django's own backend is used
        DjangoRedisCache = None
    from django.core.cache.backends.redis import RedisCache as BuiltinRedisCache

    from .cache import RedisClusterCache

    if issubclass(cls, RedisClusterCache):
        return CLUSTER
    if DjangoRedisCache is not None and issubclass(cls, DjangoRedisCache):
        return DJANGO_REDIS
    if issubclass(cls, BuiltinRedisCache):
        return BUILTIN
    return None


def _sharded(client: Any) -> bool:
    """django-redis's ``ShardClient`` spreads keys over servers itself: no single primary."""
    from django_redis.client import ShardClient

    return isinstance(client, ShardClient)


def cache_of(alias: str) -> Any:
    """``caches[alias]``, or ``ImproperlyConfigured`` saying why it cannot be had."""
    try:
        return caches[alias]
    except Exception as error:  # InvalidCacheBackendError, or a backend that fails to build
        raise ImproperlyConfigured(
            f"SESSION_CACHE_ALIAS {alias!r} is not a usable cache: {error}"
        ) from error


class RedisAccess:
    """The primary of the cache alias ``alias``, as a redis-py client."""

    def __init__(self, alias: str, backend: Any = None) -> None:
        if backend is None:
            backend = cache_of(alias)
        kind = backend_kind(backend)
        if kind is None:
            raise ImproperlyConfigured(
                f"The session cache {alias!r} is {type(backend).__module__}."
                f"{type(backend).__qualname__}; django-resilient-sessions needs django-redis "
                "(django_redis.cache.RedisCache), Django's "
                "django.core.cache.backends.redis.RedisCache or, for Redis Cluster, "
                "django_resilient_sessions.cache.RedisClusterCache."
            )
        client = getattr(backend, "client", None)
        if kind == DJANGO_REDIS and (not hasattr(client, "get_client") or _sharded(client)):
            raise ImproperlyConfigured(
                f"The django-redis client of the session cache {alias!r} "
                f"({type(client).__name__}) has no single primary; use DefaultClient "
                "or SentinelClient."
            )
        self.alias = alias
        self.kind = kind
        #: A Redis Cluster: keys are routed to their slot's node, one breaker per node.
        self.cluster = kind == CLUSTER
        self.backend: Any = backend
        self._client: Any = None

    @property
    def connected(self) -> bool:
        """Has :meth:`client` made its client already?"""
        return self._client is not None

    def client(self) -> Any:
        """A redis-py client for the primary (reads go there too: no stale replica).

        Kept once made: a redis-py client reconnects by itself.
        """
        if self._client is None:
            if self.kind == DJANGO_REDIS:
                self._client = self.backend.client.get_client(write=True)
            else:  # Django's RedisCache, and ours for a cluster (a subclass)
                self._client = self.backend._cache.get_client(write=True)
        return self._client

    def key(self, name: str) -> str:
        """``name`` under the alias's ``KEY_PREFIX``, ``VERSION`` and ``KEY_FUNCTION``."""
        return str(self.backend.make_key(name))
