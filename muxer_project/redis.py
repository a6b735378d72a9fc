"""Shared Redis clients (one async client per event loop, one sync client per process) and Redis's state.

Every client gives up on a command after ``MUXER_REDIS_SOCKET_TIMEOUT_SECONDS``
and on connecting after ``MUXER_REDIS_CONNECT_TIMEOUT_SECONDS``, so a frozen
Redis fails a request's call quickly instead of hanging it. ``redis_state``
then marks Redis down for this process, and the request path serves from its
fallbacks without waiting on Redis again until it answers (``outage.py``).
"""

from __future__ import annotations

import asyncio
from typing import Any

import redis
import redis.asyncio as aioredis
from django.conf import settings
from redis.exceptions import RedisError

from .outage import StoreState

_async_clients: dict[asyncio.AbstractEventLoop, aioredis.Redis] = {}
_sync_client: redis.Redis | None = None
_blocking_clients: dict[tuple[str, float], redis.Redis] = {}

# What a failing Redis raises: redis-py wraps socket trouble in its own errors; OSError covers the rest.
REDIS_ERRORS: tuple[type[BaseException], ...] = (RedisError, OSError)


def _timeouts(extra_seconds: float = 0.0) -> dict[str, Any]:
    return {
        "socket_timeout": settings.MUXER_REDIS_SOCKET_TIMEOUT_SECONDS + extra_seconds,
        "socket_connect_timeout": settings.MUXER_REDIS_CONNECT_TIMEOUT_SECONDS,
    }


def async_redis() -> aioredis.Redis:
    loop = asyncio.get_running_loop()
    client = _async_clients.get(loop)
    if client is None:
        for stale in [lp for lp in _async_clients if lp.is_closed()]:
            del _async_clients[stale]
        # A blocking pool: a burst beyond the pool waits (a bounded time) for a free connection
        # instead of failing at once (redis-py's default pool raises MaxConnectionsError).
        pool = aioredis.BlockingConnectionPool.from_url(
            settings.REDIS_URL,
            max_connections=settings.MUXER_REDIS_MAX_CONNECTIONS,
            timeout=settings.MUXER_REDIS_POOL_TIMEOUT_SECONDS,
            **_timeouts(),
        )
        client = _async_clients[loop] = aioredis.Redis(connection_pool=pool)
    return client


def sync_redis() -> redis.Redis:
    global _sync_client
    if _sync_client is None:
        _sync_client = redis.from_url(settings.REDIS_URL, **_timeouts())
    return _sync_client


def blocking_redis(wait_seconds: float) -> redis.Redis:
    """A sync client for commands Redis may hold for ``wait_seconds`` (``XREADGROUP BLOCK``): its socket
    timeout is that wait plus the usual one, so a long poll is not taken for a frozen Redis."""
    key = (settings.REDIS_URL, wait_seconds)
    client = _blocking_clients.get(key)
    if client is None:
        client = _blocking_clients[key] = redis.from_url(settings.REDIS_URL, **_timeouts(wait_seconds))
    return client


async def _ping() -> None:
    await async_redis().ping()


redis_state = StoreState("redis", probe=_ping, cooldown=lambda: settings.MUXER_REDIS_RETRY_SECONDS)


def redis_usable() -> bool:
    """Whether the request path should use Redis now: configured, and not marked down in this process."""
    return bool(settings.REDIS_URL) and redis_state.usable()
