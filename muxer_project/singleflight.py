"""Collapse concurrent loads of the same thing into one.

When a cached entry expires under load, every request in flight misses at
once; without this, each would run its own database query on its own
connection.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable
from typing import Any, TypeVar

T = TypeVar("T")


class SingleFlight:
    def __init__(self) -> None:
        self._inflight: dict[tuple[int, Hashable], asyncio.Future[Any]] = {}

    async def run(self, key: Hashable, load: Callable[[], Awaitable[T]]) -> T:
        slot = (id(asyncio.get_running_loop()), key)
        future = self._inflight.get(slot)
        if future is None:
            future = asyncio.ensure_future(load())
            self._inflight[slot] = future
            future.add_done_callback(lambda _f: self._inflight.pop(slot, None))
        # Shielded: one caller giving up (a client disconnect) must not cancel the load for the others.
        result: T = await asyncio.shield(future)
        return result
