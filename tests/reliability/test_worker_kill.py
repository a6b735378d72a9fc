"""A worker killed (SIGKILL) mid-load: no request is charged twice, and no answered request goes unrecorded."""

from __future__ import annotations

import asyncio
import os
import signal

import pytest

from .conftest import Stack, record
from .load import drive

pytestmark = [pytest.mark.redis, pytest.mark.postgres]

COUNT = 240
CONCURRENCY = 16


def test_killing_a_worker_loses_only_its_in_flight_requests_and_charges_nothing_twice(stack: Stack) -> None:
    workers = stack.worker_pids()
    assert len(workers) == 2, workers
    victim = workers[0]
    body = {"model": "fake-small", "messages": [{"role": "user", "content": "Hello [fake latency_ms=40]"}]}

    def kill_at(index: int) -> None:
        if index == COUNT // 3:
            os.kill(victim, signal.SIGKILL)

    run = asyncio.run(
        drive(stack.url, stack.key, lambda _: body, count=COUNT, concurrency=CONCURRENCY, prefix="kill", during=kill_at)
    )

    rows = stack.rows([o.request_id for o in run.outcomes])
    answered = [o for o in run.outcomes if o.status == 200]
    in_flight = [o for o in run.outcomes if o.status != 200]
    lost = [o.request_id for o in answered if not rows[o.request_id]]
    doubled = [rid for rid, found in rows.items() if len(found) > 1]
    record(
        "worker_sigkill",
        requests=COUNT,
        answered=len(answered),
        cut_in_flight=len(in_flight),
        cut_and_recorded=sum(1 for o in in_flight if rows[o.request_id]),
        answered_but_unrecorded=len(lost),
        charged_twice=len(doubled),
    )
    assert doubled == []
    # The killed worker's requests that were answered had their usage on the stream before the answer ended,
    # or were written after: none of them is lost.
    assert lost == []
    # Only requests in flight on the killed worker can fail: at most what was in flight.
    assert len(in_flight) <= CONCURRENCY, run.statuses()
    assert len(answered) >= COUNT - CONCURRENCY
