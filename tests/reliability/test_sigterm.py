"""SIGTERM while streams are running: readiness turns false first, the streams finish, their usage is recorded."""

from __future__ import annotations

import asyncio
import signal
import time

import httpx
import pytest

from .conftest import Stack, record
from .load import Run, drive

pytestmark = [pytest.mark.redis, pytest.mark.postgres]

STREAMS = 12


def test_streams_in_flight_finish_and_are_recorded_after_sigterm(stack: Stack) -> None:
    body = {
        "model": "fake-small",
        "messages": [{"role": "user", "content": "Count slowly [fake words=40 chunk_delay_ms=50]"}],
        "stream": True,
    }
    readiness: list[int] = []

    async def scenario() -> list[Run]:
        load = asyncio.ensure_future(
            drive(stack.url, stack.key, lambda _: body, count=STREAMS, concurrency=STREAMS, prefix="term")
        )
        await asyncio.sleep(0.6)  # every stream has started and is ~a third of the way through
        stack.gateway.send_signal(signal.SIGTERM)
        # Within the drain period (1 s) every worker turns unready; poll until one answers 503 (each poll is a
        # new connection, which either worker may take).
        async with httpx.AsyncClient() as client:
            for _ in range(20):
                await asyncio.sleep(0.05)
                try:
                    status = (await client.get(f"{stack.url}/readyz", timeout=2)).status_code
                except httpx.HTTPError:
                    status = 0
                if status != 200:
                    readiness.append(status)
                    break
        return [await load]

    started = time.monotonic()
    [run] = asyncio.run(scenario())
    exit_code = stack.gateway.wait(timeout=30)
    took = time.monotonic() - started

    finished = [o for o in run.outcomes if o.status == 200 and b"data: [DONE]" in o.body]
    rows = stack.rows([o.request_id for o in run.outcomes])
    recorded_ok = sum(1 for found in rows.values() if len(found) == 1 and found[0].status == "ok")
    record(
        "sigterm_during_streams",
        streams=STREAMS,
        finished=len(finished),
        recorded_ok=recorded_ok,
        readyz_during_drain=readiness[0],
        exit_code=exit_code,
        seconds_to_exit=round(took, 1),
    )
    assert readiness == [503]
    assert len(finished) == STREAMS
    assert recorded_ok == STREAMS
    assert exit_code == 0
