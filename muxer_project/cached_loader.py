"""A per-process, time-limited copy of rows the hot path reads on every request.

The proxy reads the catalog, an organization's keys, budgets and router on
every call. Each is loaded from the database at most once per ``ttl()``
seconds per process; concurrent misses share one load (:class:`SingleFlight`),
and the load runs on a worker thread of its own whose connection is closed
afterwards, because the proxy runs outside Django's request cycle and nothing
else would retire it.

When the database cannot be reached, a copy that has expired is still served
for up to ``MUXER_STALE_CACHE_SECONDS`` past its lifetime, so the requests of
keys a process has seen keep working through an outage. While the database
is down such a copy is answered at once, and one reload at most per second
runs in the background, so a frozen database holds no request. A key never
seen has nothing to fall back on: its load fails, and the caller answers 503.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Callable, Hashable
from typing import Any, Generic, TypeVar

from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import close_old_connections

from . import metrics
from .errors import DATABASE_UNAVAILABLE
from .singleflight import SingleFlight

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")

logger = logging.getLogger(__name__)

# While the database is down, how often a loader tries it again in the background.
RETRY_SECONDS = 1.0


class CachedLoader(Generic[K, V]):
    """``load(key)`` cached for ``ttl()`` seconds (read each time, so settings overrides apply)."""

    def __init__(self, name: str, load: Callable[[K], V], ttl: Callable[[], float], max_entries: int = 100_000):
        self.name = name
        self.load = load
        self.ttl = ttl
        self.max_entries = max_entries
        self._entries: dict[K, tuple[float, V]] = {}
        self._flights = SingleFlight()
        # Whether the last load failed because the database was unreachable, and when to try it next.
        self._down = False
        self._retry_at = 0.0
        self._refreshes: set[asyncio.Future[Any]] = set()

    def cached(self, key: K) -> tuple[bool, V | None]:
        """``(True, value)`` when a fresh copy is held, else ``(False, None)``; the value itself may be ``None``."""
        entry = self._entries.get(key)
        if entry is not None and time.monotonic() - entry[0] < self.ttl():
            return True, entry[1]
        return False, None

    def stale(self, key: K) -> tuple[bool, V | None]:
        """Like :meth:`cached`, but a copy up to ``MUXER_STALE_CACHE_SECONDS`` past its lifetime also counts."""
        entry = self._entries.get(key)
        if entry is not None and time.monotonic() - entry[0] < self.ttl() + settings.MUXER_STALE_CACHE_SECONDS:
            return True, entry[1]
        return False, None

    def store(self, key: K, value: V) -> V:
        if len(self._entries) >= self.max_entries:
            self._entries.clear()
        self._entries[key] = (time.monotonic(), value)
        return value

    def _load_in_worker(self, key: K) -> V:
        """Never run on the caller's thread: closing its connection would break the caller's transaction."""
        try:
            return self.load(key)
        finally:
            close_old_connections()

    async def _load(self, key: K) -> V:
        load = sync_to_async(functools.partial(self._load_in_worker, key), thread_sensitive=False)
        return await self._flights.run((self.name, key), load)

    async def get(self, key: K) -> V:
        found, value = self.cached(key)
        if found:
            return value  # type: ignore[return-value]
        if self._down:
            found, value = self.stale(key)
            if found:
                self._refresh_later(key)
                return self._served_stale(value)  # type: ignore[arg-type]
        try:
            loaded = await self._load(key)
        except DATABASE_UNAVAILABLE:
            self._went_down()
            found, value = self.stale(key)
            if found:
                return self._served_stale(value)  # type: ignore[arg-type]
            raise
        self._came_back()
        return self.store(key, loaded)

    def get_sync(self, key: K) -> V:
        found, value = self.cached(key)
        if found:
            return value  # type: ignore[return-value]
        try:
            loaded = self.load(key)
        except DATABASE_UNAVAILABLE:
            self._went_down()
            found, value = self.stale(key)
            if found:
                return self._served_stale(value)  # type: ignore[arg-type]
            raise
        self._came_back()
        return self.store(key, loaded)

    def _refresh_later(self, key: K) -> None:
        """Try the database again in the background, at most once per :data:`RETRY_SECONDS` per loader."""
        now = time.monotonic()
        if now < self._retry_at:
            return
        self._retry_at = now + RETRY_SECONDS
        task = asyncio.ensure_future(self._refresh(key))
        self._refreshes.add(task)
        task.add_done_callback(self._refreshes.discard)

    async def _refresh(self, key: K) -> None:
        try:
            loaded = await self._load(key)
        except DATABASE_UNAVAILABLE:
            self._retry_at = time.monotonic() + RETRY_SECONDS
            return
        except Exception:  # nobody awaits this task; the next request's own load would raise it again
            logger.warning("%s: background reload failed", self.name, exc_info=True)
            return
        self._came_back()
        self.store(key, loaded)

    def _served_stale(self, value: V) -> V:
        metrics.store_errors.labels("database", f"stale_{self.name}").inc()
        return value

    def _went_down(self) -> None:
        if not self._down:
            self._down = True
            self._retry_at = time.monotonic() + RETRY_SECONDS
            logger.warning(
                "database unreachable: %s served from this process's copies for up to %.0f s past their lifetime",
                self.name,
                settings.MUXER_STALE_CACHE_SECONDS,
            )

    def _came_back(self) -> None:
        if self._down:
            self._down = False
            logger.info("database reachable again: %s loads resumed", self.name)

    def forget(self, key: K | None = None) -> None:
        if key is None:
            self._entries.clear()
            self._down = False
            self._retry_at = 0.0
        else:
            self._entries.pop(key, None)
