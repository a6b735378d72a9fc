"""Clients that hang up mid-stream at random points: every request is still recorded, exactly once."""

from __future__ import annotations

import asyncio

import pytest

from .conftest import Stack, record
from .load import drive, jitter

pytestmark = [pytest.mark.redis, pytest.mark.postgres]

COUNT = 60


def test_every_stream_cut_at_a_random_point_is_recorded_once(stack: Stack) -> None:
    chance = jitter(8)
    # Read 1..12 chunks of a ~40-chunk stream, or (one in six) all of it.
    limits = [None if chance.random() < 1 / 6 else chance.randint(1, 12) for _ in range(COUNT)]
    body = {
        "model": "fake-small",
        "messages": [{"role": "user", "content": "Count slowly [fake words=40 chunk_delay_ms=15]"}],
        "stream": True,
    }

    run = asyncio.run(
        drive(
            stack.url,
            stack.key,
            lambda _: body,
            count=COUNT,
            concurrency=10,
            prefix="cut",
            read_chunks=lambda i: limits[i],
        )
    )

    rows = stack.rows([o.request_id for o in run.outcomes])
    recorded = sum(1 for found in rows.values() if len(found) == 1)
    cut = [o for o in run.outcomes if o.status == 499]
    statuses = {o.request_id: rows[o.request_id][0].status for o in run.outcomes if rows[o.request_id]}
    record("client_disconnects", requests=COUNT, cut_mid_stream=len(cut), recorded_pct=100 * recorded / COUNT)
    assert len(cut) >= COUNT // 2
    assert recorded == COUNT, {rid: len(found) for rid, found in rows.items() if len(found) != 1}
    assert all(statuses[o.request_id] == "client_disconnected" for o in cut)
    # What the client saw before it left is estimated and billed, not dropped.
    assert all(rows[o.request_id][0].output_tokens > 0 for o in cut if o.chunks_read > 2)
