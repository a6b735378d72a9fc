"""Back-pressure: a worker serves at most ``MUXER_MAX_INFLIGHT_REQUESTS`` proxy requests at once.

Past the cap the next request is refused at once with 503 ``overloaded`` and
``Retry-After: 1``, before its body is read, and counted in
``muxer_overloaded_total``. In process, through the real ASGI application, with
the fake upstream holding the first requests open.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import orjson
import pytest
from channels.testing import ApplicationCommunicator
from prometheus_client import REGISTRY
from pytest_django.fixtures import Settings as SettingsWrapper

from billing.models import UsageStatus
from muxer_project.asgi import application
from muxer_project.lifespan import process_state
from routing.consumers import GatewayConsumer
from tests.conftest import FakeUpstream
from tests.routing.harness import PATH, TIMEOUT, Reply, chat, post, request_headers, usage_rows

pytestmark = pytest.mark.django_db(transaction=True)


def overloaded_count(endpoint: str) -> float:
    return REGISTRY.get_sample_value("muxer_overloaded_total", {"endpoint": endpoint}) or 0.0


async def wait_for_inflight(count: int) -> None:
    deadline = time.monotonic() + TIMEOUT
    while GatewayConsumer.inflight != count:
        assert time.monotonic() < deadline, f"in flight: {GatewayConsumer.inflight}, expected {count}"
        await asyncio.sleep(0.01)


def slow(latency_ms: int) -> dict[str, Any]:
    return chat(f"[fake latency_ms={latency_ms}] Hello gateway")


@pytest.fixture(autouse=True)
def _nothing_in_flight() -> None:
    assert GatewayConsumer.inflight == 0, "a request of an earlier test is still counted"


async def test_past_the_cap_a_request_gets_503_overloaded_at_once(
    api_key: str, upstream: FakeUpstream, settings: SettingsWrapper
) -> None:
    settings.MUXER_MAX_INFLIGHT_REQUESTS = 2
    before = overloaded_count("chat_completions")
    held = [asyncio.ensure_future(post(slow(1500), key=api_key)) for _ in range(2)]
    await wait_for_inflight(2)

    started = time.perf_counter()
    refused = await post(chat(), key=api_key)
    took = time.perf_counter() - started

    assert refused.status == 503
    assert refused.error == {
        "message": "The gateway is at capacity; retry shortly.",
        "type": "server_error",
        "param": None,
        "code": "overloaded",
    }
    assert refused.headers["retry-after"] == "1"
    assert took < 0.5, f"the refusal took {took:.2f} s: it waited instead of refusing"
    assert overloaded_count("chat_completions") == before + 1
    # The held requests were not disturbed, and once they are done the worker serves again.
    assert [reply.status for reply in await asyncio.gather(*held)] == [200, 200]
    assert GatewayConsumer.inflight == 0
    assert (await post(chat(), key=api_key)).status == 200
    # The refused request reached no provider and was not billed.
    assert [row.status for row in await usage_rows()] == [UsageStatus.OK] * 3


async def test_the_refusal_comes_before_the_body_is_read(
    api_key: str, upstream: FakeUpstream, settings: SettingsWrapper
) -> None:
    settings.MUXER_MAX_INFLIGHT_REQUESTS = 1
    held = asyncio.ensure_future(post(slow(1000), key=api_key))
    await wait_for_inflight(1)
    body = orjson.dumps(chat())
    communicator = ApplicationCommunicator(
        application,
        {
            "type": "http",
            "http_version": "1.1",
            "method": "POST",
            "path": PATH,
            "query_string": b"",
            "headers": request_headers(api_key, body, content_length=True),
        },
    )
    # No body is ever sent: a server that read it first would wait here until the timeout.
    start = await communicator.receive_output(timeout=2)
    end = await communicator.receive_output(timeout=2)
    await communicator.wait(timeout=2)
    assert start["status"] == 503
    assert orjson.loads(end["body"])["error"]["code"] == "overloaded"
    assert (await held).status == 200


async def test_the_cap_counts_every_proxy_endpoint_together(
    api_key: str, upstream: FakeUpstream, settings: SettingsWrapper
) -> None:
    settings.MUXER_MAX_INFLIGHT_REQUESTS = 1
    before = overloaded_count("messages")
    held = asyncio.ensure_future(post(slow(1000), key=api_key))
    await wait_for_inflight(1)
    refused = await post(
        {"model": "fake-small", "max_tokens": 16, "messages": [{"role": "user", "content": "Hello"}]},
        key=api_key,
        path="/v1/messages",
    )
    # In Anthropic's shape on its endpoint; the SDKs retry a 503.
    assert refused.status == 503
    assert refused.json()["error"]["type"] == "overloaded_error"
    assert refused.headers["retry-after"] == "1"
    assert overloaded_count("messages") == before + 1
    assert (await held).status == 200


async def test_zero_means_no_cap(api_key: str, upstream: FakeUpstream, settings: SettingsWrapper) -> None:
    settings.MUXER_MAX_INFLIGHT_REQUESTS = 0
    replies: list[Reply] = await asyncio.gather(*(post(slow(300), key=api_key) for _ in range(5)))
    assert [reply.status for reply in replies] == [200] * 5


async def test_a_request_cut_by_the_server_records_usage_before_it_ends(api_key: str, upstream: FakeUpstream) -> None:
    """The grace deadline of a shutdown cancels the server's task for each request still running: the request's
    work stops as a disconnect would, and its usage is recorded before the task ends (and leaves the count)."""
    body = orjson.dumps(chat("[fake chunk_delay_ms=200 words=50] tell me a story", stream=True))
    communicator = ApplicationCommunicator(
        application,
        {
            "type": "http",
            "http_version": "1.1",
            "method": "POST",
            "path": PATH,
            "query_string": b"",
            "headers": request_headers(api_key, body, content_length=True),
        },
    )
    await communicator.send_input({"type": "http.request", "body": body, "more_body": False})
    start = await communicator.receive_output(timeout=TIMEOUT)
    assert start["status"] == 200
    for _ in range(4):  # a few words under way
        assert b"data: {" in (await communicator.receive_output(timeout=TIMEOUT))["body"]

    task = communicator.future
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    assert GatewayConsumer.inflight == 0
    rows = await usage_rows()
    assert [(row.status, row.stream) for row in rows] == [(UsageStatus.CLIENT_DISCONNECTED, True)]
    assert 0 < rows[0].output_tokens < 50


async def test_the_lifespan_shutdown_waits_for_requests_in_flight_to_record_their_usage(
    api_key: str, upstream: FakeUpstream
) -> None:
    """What a stopping worker does last (muxer_project/lifespan.py): it turns to draining, and does not close
    its clients until every proxy request in flight has finished and recorded its usage."""
    held = asyncio.ensure_future(post(slow(800), key=api_key))
    await wait_for_inflight(1)
    lifespan = ApplicationCommunicator(application, {"type": "lifespan", "asgi": {"version": "3.0"}})
    try:
        await lifespan.send_input({"type": "lifespan.startup"})
        assert (await lifespan.receive_output(timeout=TIMEOUT))["type"] == "lifespan.startup.complete"
        started = time.perf_counter()
        await lifespan.send_input({"type": "lifespan.shutdown"})
        assert (await lifespan.receive_output(timeout=TIMEOUT))["type"] == "lifespan.shutdown.complete"
        waited = time.perf_counter() - started
        assert process_state.draining
        assert held.done(), "the shutdown finished while a request was still in flight"
        assert waited > 0.3
    finally:
        process_state.forget()
    assert (await held).status == 200
    assert [row.status for row in await usage_rows()] == [UsageStatus.OK]
