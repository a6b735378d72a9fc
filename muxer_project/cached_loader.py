"""A per-process, time-limited copy of rows the hot path reads on every request.

The proxy reads the catalog, an organization's keys, budgets and router on
every call. Each is loaded from the database at most once per ``ttl()``
seconds per process; concurrent misses share one load (:class:`SingleFlight`),
and the load runs on a worker thread of its own whose connection is closed
afterwards, because the proxy runs outside Django's request cycle and nothing
else would retire it.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

from asgiref.sync import sync_to_async
from django.db import close_old_connections

from .singleflight import SingleFlight

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class CachedLoader(Generic[K, V]):
    """``load(key)`` cached for ``ttl()`` seconds (read each time, so settings overrides apply)."""

    def __init__(self, name: str, load: Callable[[K], V], ttl: Callable[[], float], max_entries: int = 100_000):
        self.name = name
        self.load = load
        self.ttl = ttl
        self.max_entries = max_entries
        self._entries: dict[K, tuple[float, V]] = {}
        self._flights = SingleFlight()

    def cached(self, key: K) -> tuple[bool, V | None]:
        """``(True, value)`` when a fresh copy is held, else ``(False, None)``; the value itself may be ``None``."""
        entry = self._entries.get(key)
        if entry is not None and time.monotonic() - entry[0] < self.ttl():
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

    async def get(self, key: K) -> V:
        found, value = self.cached(key)
        if found:
            return value  # type: ignore[return-value]
        load = sync_to_async(functools.partial(self._load_in_worker, key), thread_sensitive=False)
        return self.store(key, await self._flights.run((self.name, key), load))

    def get_sync(self, key: K) -> V:
        found, value = self.cached(key)
        if found:
            return value  # type: ignore[return-value]
        return self.store(key, self.load(key))

    def forget(self, key: K | None = None) -> None:
        if key is None:
            self._entries.clear()
        else:
            self._entries.pop(key, None)
