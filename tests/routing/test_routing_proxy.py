"""Every strategy end to end through the proxy and the fake upstream: headers, usage rows, cascades, cost caps."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import orjson
import pytest
from channels.testing import HttpCommunicator

from accounts.models import Organization, User
from billing.models import UsageRecord
from muxer_project.asgi import application
from tests.conftest import FakeUpstream
from tests.factories import issue_key
from tests.routing.harness import (
    TIMEOUT,
    Reply,
    chat,
    data_chunks,
    in_thread,
    post,
    sse_events,
    upstream_stats,
    usage_rows,
)

pytestmark = pytest.mark.django_db(transaction=True)

FAKE_TIERS = ("fake-small", "fake-medium", "fake-large")
HARD = (
    "Analyze step by step the trade-offs of this Python architecture, prove the bound on the integral, "
    "then write the refactored code:\n```python\ndef f(x):\n    return x ** 2\n```"
)
SMALL_REFUSES = "Tell me about Paris [fake model=fake-small refuse=1]"
SMALL_AND_MEDIUM_REFUSE = "Tell me about Paris [fake model=fake-small refuse=1] [fake model=fake-medium refuse=1]"


@pytest.fixture
def fake_key(organization: Organization, owner: User, catalog: None) -> str:
    """A key limited to the fake provider's three tiers, so every route is predictable."""
    return issue_key(organization, created_by=owner, allowed_models=FAKE_TIERS).secret


def header(name: str, value: str) -> list[tuple[bytes, bytes]]:
    return [(name.encode(), value.encode())]


async def set_org_policy(organization: Organization, **fields: Any) -> None:
    await in_thread(Organization.objects.filter(pk=organization.pk).update, **fields)


# --- each strategy ---------------------------------------------------------------------


async def test_auto_uses_the_organizations_default_strategy_hybrid(fake_key: str, upstream: FakeUpstream) -> None:
    reply = await post(chat("Hello there", model="auto"), key=fake_key)

    assert reply.status == 200
    assert reply.headers["x-muxer-strategy"] == "hybrid"
    assert reply.headers["x-muxer-route-reason"].startswith("hybrid: score ")
    assert reply.headers["x-muxer-model"] == "fake-small"
    [row] = await usage_rows()
    assert (row.route_strategy, row.route_reason) == ("hybrid", reply.headers["x-muxer-route-reason"])
    assert row.prompt_features, "routed requests keep the prompt's hashed features for retraining"
    assert "Hello" not in orjson.dumps(row.prompt_features).decode()


async def test_auto_follows_a_strategy_set_on_the_organization(
    fake_key: str, organization: Organization, upstream: FakeUpstream
) -> None:
    await set_org_policy(organization, routing_strategy="heuristic")

    reply = await post(chat(HARD, model="auto"), key=fake_key)

    assert reply.headers["x-muxer-strategy"] == "heuristic"
    assert reply.headers["x-muxer-model"] == "fake-large"


async def test_the_heuristic_alias_sends_easy_and_hard_prompts_to_different_tiers(
    fake_key: str, upstream: FakeUpstream
) -> None:
    easy = await post(chat("hi, thanks", model="muxer/heuristic"), key=fake_key)
    hard = await post(chat(HARD, model="muxer/heuristic"), key=fake_key)

    assert (easy.status, hard.status) == (200, 200)
    assert easy.headers["x-muxer-model"] == "fake-small"
    assert hard.headers["x-muxer-model"] == "fake-large"
    assert "code" in hard.headers["x-muxer-route-reason"]


async def test_the_semantic_alias_routes_by_the_shipped_model(fake_key: str, upstream: FakeUpstream) -> None:
    reply = await post(chat("What is 2 + 2?", model="muxer/semantic"), key=fake_key)

    assert reply.status == 200
    assert reply.headers["x-muxer-strategy"] == "semantic"
    assert "p(cheap fails, strong right)=" in reply.headers["x-muxer-route-reason"]
    assert reply.headers["x-muxer-model"] in FAKE_TIERS


# --- cascade ---------------------------------------------------------------------------


async def test_a_cascade_returns_the_cheap_answer_when_it_is_good(fake_key: str, upstream: FakeUpstream) -> None:
    reply = await post(chat("Hello there", model="muxer/cascade"), key=fake_key)

    assert reply.status == 200
    assert reply.headers["x-muxer-model"] == "fake-small"
    assert reply.headers["x-muxer-cascade"] == "fake-small=1.00"
    [row] = await usage_rows()
    assert (row.model, row.attempt, row.status) == ("fake-small", 1, "ok")


async def test_a_cascade_escalates_a_refusal_and_bills_every_attempt(fake_key: str, upstream: FakeUpstream) -> None:
    reply = await post(chat(SMALL_REFUSES, model="muxer/cascade"), key=fake_key)

    assert reply.status == 200
    assert reply.headers["x-muxer-model"] == "fake-medium"
    assert reply.json()["choices"][0]["message"]["content"].startswith("Fake reply to: Tell me about Paris")
    assert reply.headers["x-muxer-cascade"] == "fake-small=0.10 (refusal);fake-medium=1.00"
    rows = await usage_rows()
    assert [(r.model, r.attempt, r.status) for r in rows] == [
        ("fake-small", 1, "escalated"),
        ("fake-medium", 2, "ok"),
    ]
    assert {r.request_id for r in rows} == {reply.headers["x-request-id"]}
    assert rows[0].cost_usd > 0
    assert Decimal(reply.headers["x-muxer-cost-usd"]) == rows[0].cost_usd + rows[1].cost_usd


async def test_a_cascade_escalates_invalid_json_when_json_was_asked_for(fake_key: str, upstream: FakeUpstream) -> None:
    body = chat(SMALL_REFUSES, model="muxer/cascade", response_format={"type": "json_object"})

    reply = await post(body, key=fake_key)

    assert reply.headers["x-muxer-model"] == "fake-medium"
    assert "invalid_json" in reply.headers["x-muxer-cascade"]
    assert orjson.loads(reply.json()["choices"][0]["message"]["content"])["reply"].startswith("Fake reply to")


async def test_a_cascade_passes_over_a_failing_tier(fake_key: str, upstream: FakeUpstream) -> None:
    content = "Tell me about Paris [fake model=fake-small refuse=1] [fake model=fake-medium status=400]"

    reply = await post(chat(content, model="muxer/cascade"), key=fake_key)

    assert reply.status == 200
    assert reply.headers["x-muxer-model"] == "fake-large"
    rows = sorted(await usage_rows(), key=lambda r: r.attempt)
    assert [(r.model, r.attempt, r.status) for r in rows] == [
        ("fake-small", 1, "escalated"),
        ("fake-medium", 2, "error"),
        ("fake-large", 3, "ok"),
    ]


async def test_a_streamed_cascade_replays_an_accepted_answer_as_a_stream(fake_key: str, upstream: FakeUpstream) -> None:
    body = chat(SMALL_REFUSES, model="muxer/cascade", stream=True, stream_options={"include_usage": True})

    reply = await post(body, key=fake_key)

    assert reply.status == 200
    assert reply.headers["content-type"] == "text/event-stream"
    events = sse_events(reply.body)
    assert events[-1] == b"data: [DONE]"
    chunks = data_chunks(events)
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert text.startswith("Fake reply to: Tell me about Paris")
    assert chunks[-1]["usage"]["completion_tokens"] > 0
    assert {c["model"] for c in chunks} == {"fake-medium"}
    rows = await usage_rows()
    assert [(r.model, r.status) for r in rows] == [("fake-small", "escalated"), ("fake-medium", "ok")]


async def test_a_streamed_cascade_streams_its_last_tier_live(fake_key: str, upstream: FakeUpstream) -> None:
    reply = await post(chat(SMALL_AND_MEDIUM_REFUSE, model="muxer/cascade", stream=True), key=fake_key)

    assert reply.status == 200
    assert reply.headers["x-muxer-model"] == "fake-large"
    assert reply.headers["x-muxer-cascade"].endswith("fake-large=streamed")
    chunks = data_chunks(sse_events(reply.body))
    assert len(chunks) > 2  # the provider's own chunks, not one replayed block
    rows = sorted(await usage_rows(), key=lambda r: r.attempt)
    assert [(r.model, r.attempt, r.status, r.stream) for r in rows] == [
        ("fake-small", 1, "escalated", False),
        ("fake-medium", 2, "escalated", False),
        ("fake-large", 3, "ok", True),
    ]


async def test_a_cost_cap_keeps_a_cascade_from_climbing(fake_key: str, upstream: FakeUpstream) -> None:
    # fake-small's refusal costs ~$0.0000002; fake-medium fits what is left, fake-large (~$0.001) does not.
    reply = await post(
        chat(SMALL_AND_MEDIUM_REFUSE, model="muxer/cascade"),
        key=fake_key,
        extra_headers=header("x-muxer-max-cost", "0.0002"),
    )

    assert reply.status == 200
    assert "fake-large" not in reply.headers["x-muxer-cascade"]
    assert Decimal(reply.headers["x-muxer-cost-usd"]) <= Decimal("0.0002")


# --- controls ----------------------------------------------------------------------------


async def test_the_strategy_header_picks_the_router_for_auto(fake_key: str, upstream: FakeUpstream) -> None:
    reply = await post(chat(HARD, model="auto"), key=fake_key, extra_headers=header("x-muxer-strategy", "heuristic"))

    assert reply.headers["x-muxer-strategy"] == "heuristic"


async def test_the_body_field_picks_the_router_and_never_reaches_the_provider(
    fake_key: str, upstream: FakeUpstream
) -> None:
    reply = await post(chat("Hello there", model="auto", muxer={"strategy": "cascade"}), key=fake_key)

    assert reply.headers["x-muxer-strategy"] == "cascade"
    sent = (await upstream_stats(upstream))["last_request"]["body"]
    assert "muxer" not in sent


async def test_a_cost_cap_header_bounds_the_answer_sent_upstream(fake_key: str, upstream: FakeUpstream) -> None:
    # The hard prompt wants fake-large, but at $2 per 1M output tokens $0.0001 leaves it fewer than the 64
    # tokens of a useful answer; fake-medium ($0.20 per 1M out) fits, with max_tokens set so it cannot overrun.
    reply = await post(
        chat(HARD, model="muxer/heuristic"), key=fake_key, extra_headers=header("x-muxer-max-cost", "0.0001")
    )

    assert reply.status == 200
    assert reply.headers["x-muxer-model"] == "fake-medium"
    sent = (await upstream_stats(upstream))["last_request"]["body"]
    prompt_tokens = reply.json()["usage"]["prompt_tokens"]
    worst_case = (Decimal(prompt_tokens) * Decimal("0.10") + Decimal(sent["max_tokens"]) * Decimal("0.20")) / 1_000_000
    # The gateway's own token estimate is a little above the provider's count, so a little room is left.
    assert Decimal("0.000099") < worst_case <= Decimal("0.0001")
    [row] = await usage_rows()
    assert row.cost_usd <= Decimal("0.0001")


@pytest.mark.parametrize(
    ("extra", "headers", "param"),
    [
        ({"muxer": {"strategy": "fastest"}}, [], "muxer.strategy"),
        ({"muxer": {"max_cost_usd": -1}}, [], "muxer.max_cost_usd"),
        ({"muxer": {"max_cost_usd": True}}, [], "muxer.max_cost_usd"),
        ({"muxer": {"quality_floor": "gold"}}, [], "muxer.quality_floor"),
        ({"muxer": {"colour": "red"}}, [], "muxer.colour"),
        ({"muxer": "cascade"}, [], "muxer"),
        ({}, header("x-muxer-strategy", "random"), "X-Muxer-Strategy"),
        ({}, header("x-muxer-max-cost", "lots"), "X-Muxer-Max-Cost"),
        ({}, header("x-muxer-max-cost", "NaN"), "X-Muxer-Max-Cost"),
    ],
)
async def test_bad_routing_controls_get_a_precise_400(
    fake_key: str, upstream: FakeUpstream, extra: dict[str, Any], headers: list[tuple[bytes, bytes]], param: str
) -> None:
    reply = await post(chat(model="auto", **extra), key=fake_key, extra_headers=headers)

    assert reply.status == 400
    assert reply.error["param"] == param
    assert reply.error["type"] == "invalid_request_error"
    assert await usage_rows() == []


async def test_a_cap_no_model_can_meet_is_refused_before_any_call(fake_key: str, upstream: FakeUpstream) -> None:
    reply = await post(chat(model="auto"), key=fake_key, extra_headers=header("x-muxer-max-cost", "0.00000001"))

    assert reply.status == 400
    assert reply.error["code"] == "no_model_available"
    assert (await upstream_stats(upstream))["requests"] == 0


# --- /v1/route ---------------------------------------------------------------------------


async def route(body: Any, key: str | None, headers: list[tuple[bytes, bytes]] | None = None) -> Reply:
    raw = orjson.dumps(body)
    all_headers = [(b"content-type", b"application/json"), *(headers or [])]
    if key:
        all_headers.append((b"authorization", f"Bearer {key}".encode()))
    communicator = HttpCommunicator(application, "POST", "/v1/route", body=raw, headers=all_headers)
    response = await communicator.get_response(timeout=TIMEOUT)
    await communicator.wait(timeout=TIMEOUT)
    return Reply(
        status=response["status"],
        headers={k.decode(): v.decode() for k, v in response["headers"]},
        body=response["body"],
    )


async def test_route_explains_a_decision_without_calling_a_provider(fake_key: str, upstream: FakeUpstream) -> None:
    reply = await route(chat(SMALL_REFUSES, model="muxer/cascade"), fake_key, header("x-muxer-max-cost", "0.5"))

    assert reply.status == 200
    body = reply.json()
    assert body["strategy"] == "cascade"
    assert body["model"] == "fake-small"
    assert [step["model"] for step in body["cascade"]] == list(FAKE_TIERS)
    assert body["max_cost_usd"] == "0.5"
    assert Decimal(body["estimated_cost_usd"]) > 0
    assert (await upstream_stats(upstream))["requests"] == 0
    assert await in_thread(UsageRecord.objects.count) == 0


async def test_route_refuses_bad_input_in_the_openai_shape(fake_key: str, upstream: FakeUpstream) -> None:
    missing = await route({"model": "auto"}, fake_key)
    unknown = await route(chat(model="no-such-model"), fake_key)
    anonymous = await route(chat(model="auto"), None)

    assert (missing.status, missing.json()["error"]["param"]) == (400, "messages")
    assert (unknown.status, unknown.json()["error"]["code"]) == (404, "model_not_found")
    assert anonymous.status == 401


# --- what usage records keep for savings reports -----------------------------------------------


async def test_usage_rows_keep_the_prompts_complexity_and_a_request_fingerprint(
    fake_key: str, upstream: FakeUpstream
) -> None:
    await post(chat("hi, thanks", model="fake-small"), key=fake_key)
    await post(chat("hi, thanks", model="fake-small", stream=True, user="someone"), key=fake_key)
    await post(chat(HARD, model="fake-small"), key=fake_key)

    first, again, hard = sorted(await usage_rows(), key=lambda r: r.id)
    assert first.request_fingerprint == again.request_fingerprint  # a cache would have answered the second
    assert len(first.request_fingerprint) == 64
    assert hard.request_fingerprint != first.request_fingerprint
    assert first.complexity is not None
    assert hard.complexity is not None
    assert first.complexity < 0.1 < 0.8 < hard.complexity
