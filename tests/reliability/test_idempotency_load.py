"""One Idempotency-Key sent 20 times at once, across both workers: one upstream call, one charge."""

from __future__ import annotations

import asyncio
import uuid

import aiohttp
import pytest

from tests.conftest import FakeUpstream

from .conftest import Stack, record

pytestmark = [pytest.mark.redis, pytest.mark.postgres]

COPIES = 20


async def send_copies(stack: Stack, key: str, body: dict[str, object]) -> list[tuple[int, bytes, str]]:
    connector = aiohttp.TCPConnector(limit=COPIES, force_close=True)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=60)) as session:

        async def one(index: int) -> tuple[int, bytes, str]:
            headers = {"Authorization": f"Bearer {stack.key}", "Idempotency-Key": key, "X-Request-ID": f"idem-{index}"}
            async with session.post(f"{stack.url}/v1/chat/completions", json=body, headers=headers) as response:
                return response.status, await response.read(), response.headers.get("Idempotent-Replayed", "")

        return await asyncio.gather(*(one(i) for i in range(COPIES)))


def test_twenty_concurrent_copies_make_one_upstream_call_and_one_charge(
    stack: Stack, fake_upstream: FakeUpstream
) -> None:
    marker = uuid.uuid4().hex[:12]
    body: dict[str, object] = {
        "model": "fake-small",
        "messages": [{"role": "user", "content": f"Order {marker} [fake latency_ms=300]"}],
    }
    before = fake_upstream.stats()["requests"]

    replies = asyncio.run(send_copies(stack, f"order-{marker}", body))

    calls = fake_upstream.stats()["requests"] - before
    rows = stack.rows([f"idem-{i}" for i in range(COPIES)])
    charged = [rid for rid, found in rows.items() if found]
    bodies = {answer for status, answer, _ in replies if status == 200}
    record(
        "idempotency_20x",
        copies=COPIES,
        upstream_calls=calls,
        charges=len(charged),
        answered_200=sum(1 for status, _, _ in replies if status == 200),
        replayed=sum(1 for _, _, replayed in replies if replayed == "true"),
    )
    assert calls == 1
    assert len(charged) == 1
    assert all(status == 200 for status, _, _ in replies), [status for status, _, _ in replies]
    assert len(bodies) == 1  # every copy got the first answer, byte for byte
