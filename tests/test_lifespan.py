"""The ASGI lifespan's startup bounds the worker's database threads (one connection each)."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

from asgiref.sync import sync_to_async
from pytest_django.fixtures import Settings as SettingsWrapper

from muxer_project.lifespan import LifespanApp


def test_startup_caps_the_threads_of_the_proxys_database_work(settings: SettingsWrapper) -> None:
    settings.MUXER_DB_THREADS = 3
    threads: set[int] = set()

    def database_work() -> None:
        threads.add(threading.get_ident())
        time.sleep(0.02)

    async def main() -> None:
        messages = asyncio.Queue[Any]()
        await messages.put({"type": "lifespan.startup"})
        sent: list[dict[str, Any]] = []
        started = asyncio.Event()

        async def send(message: Any) -> None:
            sent.append(message)
            started.set()

        serving = asyncio.create_task(LifespanApp()({"type": "lifespan"}, messages.get, send))
        await asyncio.wait_for(started.wait(), timeout=5)
        assert sent == [{"type": "lifespan.startup.complete"}]
        await asyncio.gather(*(sync_to_async(database_work, thread_sensitive=False)() for _ in range(30)))
        serving.cancel()

    asyncio.run(main())

    # 30 concurrent calls shared three threads (Python's default pool would have used min(32, CPUs + 4)).
    assert len(threads) == 3
