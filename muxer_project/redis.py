"""Shared Redis clients: one async client per event loop, one sync client per process."""

from __future__ import annotations

import asyncio

import redis
import redis.asyncio as aioredis
from django.conf import settings

_async_clients: dict[asyncio.AbstractEventLoop, aioredis.Redis] = {}
_sync_client: redis.Redis | None = None


def async_redis() -> aioredis.Redis:
    loop = asyncio.get_running_loop()
    client = _async_clients.get(loop)
    if client is None:
        for stale in [lp for lp in _async_clients if lp.is_closed()]:
            del _async_clients[stale]
        # A blocking pool: a burst beyond the pool waits for a free connection
        # instead of failing (redis-py's default pool raises MaxConnectionsError).
        pool = aioredis.BlockingConnectionPool.from_url(
            settings.REDIS_URL, max_connections=settings.MUXER_REDIS_MAX_CONNECTIONS, timeout=5
        )
        client = _async_clients[loop] = aioredis.Redis(connection_pool=pool)
    return client


def sync_redis() -> redis.Redis:
    global _sync_client
    if _sync_client is None:
        _sync_client = redis.from_url(settings.REDIS_URL)
    return _sync_client
