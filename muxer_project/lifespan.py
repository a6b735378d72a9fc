"""A worker's life: whether it is draining, and what it does on the ASGI lifespan's shutdown.

Draining starts when the server is told to stop (``muxer_project/serve.py``
flips it on SIGTERM, before anything else happens): ``/readyz`` answers 503
``draining`` at once, and proxy responses carry ``Connection: close`` so
keep-alive clients reconnect elsewhere. The worker keeps serving meanwhile.

The lifespan's shutdown comes after the server has stopped accepting and its
requests have finished (or been cut at the grace deadline). It waits for the
proxy work still recording usage, then closes the outbound clients.
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from asgiref.typing import ASGIReceiveCallable, ASGISendCallable
from django.conf import settings

logger = logging.getLogger(__name__)

# Recording a request's usage takes milliseconds (one XADD, or one insert without Redis); this bounds a slow store.
USAGE_FLUSH_SECONDS = 5.0


class ProcessState:
    """Process-wide; read on the hot path as a plain attribute."""

    def __init__(self) -> None:
        self.draining = False
        self.drain_started: float | None = None

    def begin_draining(self) -> None:
        if not self.draining:
            self.drain_started = time.monotonic()
            self.draining = True

    def forget(self) -> None:
        self.draining = False
        self.drain_started = None


process_state = ProcessState()


async def finish_gateway_work(seconds: float = USAGE_FLUSH_SECONDS) -> int:
    """Wait until no proxy request is in flight in this process (each records its usage before it leaves).

    Returns how many were still in flight at the deadline (0: all finished).
    """
    from routing.consumers import GatewayConsumer

    deadline = time.monotonic() + seconds
    # Polled rather than signalled: the hot path only counts, and this runs once per worker's life.
    while GatewayConsumer.inflight and time.monotonic() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.02)
    left = GatewayConsumer.inflight
    if left:
        logger.warning("shutdown: %d proxy request(s) still recording after %.0f s", left, seconds)
    return left


def bound_database_threads() -> None:
    """The proxy's database work (cache loads, budget reads, direct usage writes) runs on the event loop's default
    thread pool, one connection per thread: its size, ``MUXER_DB_THREADS``, bounds a worker's connections."""
    asyncio.get_running_loop().set_default_executor(
        ThreadPoolExecutor(max_workers=settings.MUXER_DB_THREADS, thread_name_prefix="muxer-db")
    )


class LifespanApp:
    async def __call__(self, scope: Any, receive: ASGIReceiveCallable, send: ASGISendCallable) -> None:
        from providers.http import close_http_client

        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                bound_database_threads()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                process_state.begin_draining()
                await finish_gateway_work()
                await close_http_client()
                await send({"type": "lifespan.shutdown.complete"})
                return
