"""The gateway as a client sees it: a live ASGI server (uvicorn and daphne), the official SDK."""

from __future__ import annotations

import time
from decimal import Decimal

import httpx
import openai
import pytest
from django.conf import settings
from django.test import override_settings

from accounts.models import Organization, User
from billing.models import UsageRecord, UsageStatus
from billing.usage import usage_drain
from tests.conftest import FakeUpstream, Gateway

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def client(gateway: Gateway, api_key: str, catalog: None) -> openai.OpenAI:
    return openai.OpenAI(api_key=api_key, base_url=f"{gateway.url}/v1", max_retries=0)


def wait_for_usage(gateway: Gateway, *, count: int, timeout: float = 10.0) -> list[UsageRecord]:
    """Usage rows appear asynchronously: via the Redis stream (drained here) or a direct write."""
    deadline = time.monotonic() + timeout
    while True:
        if settings.REDIS_URL:
            with override_settings(MUXER_USAGE_STREAM=gateway.usage_stream):
                usage_drain(block_ms=100)
        rows = list(UsageRecord.objects.order_by("created_at"))
        if len(rows) >= count or time.monotonic() > deadline:
            return rows
        time.sleep(0.05)


def test_chat_without_streaming(client: openai.OpenAI, gateway: Gateway, organization: Organization) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model="fake-small", messages=[{"role": "user", "content": "Hello gateway"}]
    )
    completion = raw.parse()
    assert completion.choices[0].message.content == "Fake reply to: Hello gateway"
    assert completion.model == "fake-small"
    assert completion.usage is not None
    assert completion.usage.completion_tokens == 5
    assert raw.headers["x-muxer-model"] == "fake-small"
    assert raw.headers["x-muxer-provider"] == "fake"
    assert raw.headers["x-request-id"].startswith("req_")
    expected_cost = (completion.usage.prompt_tokens * 0.01 + 5 * 0.02) / 1_000_000
    assert float(raw.headers["x-muxer-cost-usd"]) == pytest.approx(expected_cost)

    [row] = wait_for_usage(gateway, count=1)
    assert row.request_id == raw.headers["x-request-id"]
    assert row.organization_id == organization.pk
    assert row.status == UsageStatus.OK
    assert (row.input_tokens, row.output_tokens) == (completion.usage.prompt_tokens, 5)
    assert row.cost_usd == Decimal(raw.headers["x-muxer-cost-usd"])


def test_chat_with_streaming(client: openai.OpenAI, gateway: Gateway) -> None:
    stream = client.chat.completions.create(
        model="fake-small",
        messages=[{"role": "user", "content": "Stream this please"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Fake reply to: Stream this please"
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 6
    assert all(c.usage is None for c in chunks[:-1])

    [row] = wait_for_usage(gateway, count=1)
    assert row.stream is True
    assert row.output_tokens == 6
    assert row.usage_estimated is False


def test_streaming_without_usage_option_sends_no_usage(client: openai.OpenAI, gateway: Gateway) -> None:
    chunks = list(
        client.chat.completions.create(model="fake-small", messages=[{"role": "user", "content": "hi"}], stream=True)
    )
    assert chunks
    assert all(c.usage is None for c in chunks)
    assert chunks[-1].choices[0].finish_reason == "stop"
    [row] = wait_for_usage(gateway, count=1)
    assert row.output_tokens == 4  # the gateway still asked upstream for usage


def test_models_lists_what_the_key_may_use(
    gateway: Gateway, organization: Organization, owner: User, catalog: None
) -> None:
    from tests.factories import issue_key

    limited = issue_key(organization, created_by=owner, allowed_models=("fake-large",)).secret
    models = openai.OpenAI(api_key=limited, base_url=f"{gateway.url}/v1").models.list()
    assert [m.id for m in models.data] == ["fake-large"]
    assert models.data[0].owned_by == "fake"


def test_client_disconnect_stops_upstream_and_records_usage(
    gateway: Gateway, api_key: str, fake_upstream: FakeUpstream
) -> None:
    fake_upstream.reset()
    body = {
        "model": "fake-small",
        "stream": True,
        "messages": [{"role": "user", "content": "[fake words=400 chunk_delay_ms=20] go"}],
    }
    with httpx.stream(
        "POST", f"{gateway.url}/v1/chat/completions", json=body, headers={"authorization": f"Bearer {api_key}"}
    ) as response:
        assert response.status_code == 200
        request_id = response.headers["x-request-id"]
        lines = response.iter_lines()
        received = [next(lines) for _ in range(6)]
        assert any(line.startswith("data: ") for line in received)
    # The client is gone: the upstream stream must be cut well before its 400 words (~8 s).
    deadline = time.monotonic() + 5
    while fake_upstream.stats()["streams_aborted"] < 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    stats = fake_upstream.stats()
    assert stats["streams_aborted"] == 1
    assert stats["streams_completed"] == 0

    [row] = wait_for_usage(gateway, count=1)
    assert row.request_id == request_id
    assert row.status == UsageStatus.CLIENT_DISCONNECTED
    assert row.usage_estimated is True
    assert 0 < row.output_tokens < 400
    assert row.input_tokens > 0
    assert row.cost_usd > 0
