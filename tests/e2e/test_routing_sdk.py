"""Routing as a client sees it: a live server, the official SDK's extra_body, headers, /v1/route and feedback."""

from __future__ import annotations

import httpx
import openai
import pytest

from accounts.models import Organization, User
from routing.models import Feedback
from tests.conftest import Gateway
from tests.e2e.test_openai_sdk import wait_for_usage
from tests.factories import issue_key

pytestmark = pytest.mark.django_db(transaction=True)

SMALL_REFUSES = "Tell me about Paris [fake model=fake-small refuse=1]"


@pytest.fixture
def key(organization: Organization, owner: User, catalog: None) -> str:
    return issue_key(organization, created_by=owner, allowed_models=("fake-small", "fake-medium", "fake-large")).secret


@pytest.fixture
def client(gateway: Gateway, key: str) -> openai.OpenAI:
    return openai.OpenAI(api_key=key, base_url=f"{gateway.url}/v1", max_retries=0)


def test_a_cascade_through_extra_body_escalates_and_records_each_step(client: openai.OpenAI, gateway: Gateway) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model="auto",
        messages=[{"role": "user", "content": SMALL_REFUSES}],
        extra_body={"muxer": {"strategy": "cascade", "max_cost_usd": 0.05}},
    )
    completion = raw.parse()

    assert completion.model == "fake-medium"
    assert completion.choices[0].message.content == "Fake reply to: Tell me about Paris"
    assert raw.headers["x-muxer-strategy"] == "cascade"
    assert raw.headers["x-muxer-cascade"] == "fake-small=0.10 (refusal);fake-medium=1.00"
    rows = wait_for_usage(gateway, count=2)
    assert sorted((r.attempt, r.model, r.status) for r in rows) == [
        (1, "fake-small", "escalated"),
        (2, "fake-medium", "ok"),
    ]


def test_a_streamed_cascade_reads_like_any_stream(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model="muxer/cascade",
        messages=[{"role": "user", "content": SMALL_REFUSES}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)

    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Fake reply to: Tell me about Paris"
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 7  # "Fake reply to: Tell me about Paris"


def test_route_then_feedback_over_http(client: openai.OpenAI, gateway: Gateway, key: str) -> None:
    headers = {"Authorization": f"Bearer {key}"}
    body = {"model": "muxer/heuristic", "messages": [{"role": "user", "content": "hi, thanks"}]}

    decision = httpx.post(f"{gateway.url}/v1/route", json=body, headers=headers, timeout=10).json()
    raw = client.chat.completions.with_raw_response.create(**body)  # type: ignore[call-overload]

    assert decision["model"] == raw.headers["x-muxer-model"] == "fake-small"
    assert decision["reason"] == raw.headers["x-muxer-route-reason"]
    wait_for_usage(gateway, count=1)
    request_id = raw.headers["x-request-id"]
    rated = httpx.post(
        f"{gateway.url}/v1/feedback", json={"request_id": request_id, "rating": 2}, headers=headers, timeout=10
    )
    assert rated.status_code == 201
    assert Feedback.objects.get(request_id=request_id).rating == 2
