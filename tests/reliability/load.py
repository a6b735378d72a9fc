"""A bounded load driver for the fault suite: N requests, C at a time, each with its own request id.

Each request carries an ``X-Request-ID`` of the test's making, so every answer
can be matched to its usage row exactly (the gateway keys usage by request id).
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp


@dataclass
class Outcome:
    request_id: str
    status: int  # 0: the connection failed or was cut before an answer
    seconds: float
    body: bytes = b""
    error: str = ""
    chunks_read: int = 0
    started: float = 0.0  # time.monotonic() when sent


@dataclass
class Run:
    outcomes: list[Outcome] = field(default_factory=list)

    @property
    def served(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.status == 200]

    def share_served(self) -> float:
        return len(self.served) / len(self.outcomes) if self.outcomes else 0.0

    def p99(self, outcomes: list[Outcome] | None = None) -> float:
        chosen = sorted(o.seconds for o in (self.outcomes if outcomes is None else outcomes))
        if not chosen:
            return 0.0
        return chosen[min(len(chosen) - 1, round(0.99 * (len(chosen) - 1)))]

    def statuses(self) -> dict[int, int]:
        found: dict[int, int] = {}
        for outcome in self.outcomes:
            found[outcome.status] = found.get(outcome.status, 0) + 1
        return found


def new_request_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:20]}"


async def drive(
    url: str,
    key: str,
    bodies: Callable[[int], dict[str, Any]],
    *,
    count: int,
    concurrency: int,
    prefix: str,
    headers: dict[str, str] | None = None,
    read_chunks: Callable[[int], int | None] | None = None,
    request_seconds: float = 30.0,
    during: Callable[[int], None] | None = None,
    stop_when: Callable[[], bool] | None = None,
) -> Run:
    """Send ``count`` requests (``bodies(i)``), ``concurrency`` in flight. ``read_chunks(i)``: for a streamed
    request, how many body chunks to read before closing the connection (None: read it all). ``during(i)`` runs
    just before request i is sent (to inject a fault mid-load). ``stop_when()``, asked before each request, ends the
    run early when it returns True (a load bounded by time rather than count)."""
    run = Run()
    queue = list(range(count))
    connector = aiohttp.TCPConnector(limit=concurrency, force_close=True)
    limits = aiohttp.ClientTimeout(total=request_seconds)
    async with aiohttp.ClientSession(connector=connector, timeout=limits) as session:

        async def worker() -> None:
            while queue and not (stop_when is not None and stop_when()):
                index = queue.pop(0)
                if during is not None:
                    during(index)
                run.outcomes.append(await _one(session, url, key, bodies(index), index, prefix, headers, read_chunks))

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return run


async def _one(
    session: aiohttp.ClientSession,
    url: str,
    key: str,
    body: dict[str, Any],
    index: int,
    prefix: str,
    headers: dict[str, str] | None,
    read_chunks: Callable[[int], int | None] | None,
) -> Outcome:
    request_id = new_request_id(prefix)
    sent_at = time.monotonic()
    sent = {"Authorization": f"Bearer {key}", "X-Request-ID": request_id, **(headers or {})}
    started = time.perf_counter()
    limit = read_chunks(index) if read_chunks is not None else None
    try:
        async with session.post(f"{url}/v1/chat/completions", json=body, headers=sent) as response:
            if limit is None:
                payload = await response.read()
                return Outcome(request_id, response.status, time.perf_counter() - started, payload, started=sent_at)
            read = 0
            async for _chunk in response.content.iter_any():
                read += 1
                if read >= limit:
                    break
            # Leaving the block without reading the rest closes the connection (force_close): a disconnect.
            response.close()
            return Outcome(request_id, 499, time.perf_counter() - started, chunks_read=read, started=sent_at)
    except (TimeoutError, aiohttp.ClientError) as exc:
        return Outcome(request_id, 0, time.perf_counter() - started, error=type(exc).__name__, started=sent_at)


def jitter(seed: int) -> random.Random:
    return random.Random(seed)
