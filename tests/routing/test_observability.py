"""The proxy consumers' own metrics and access log: they bypass Django's middleware, so they must record both."""

from __future__ import annotations

import json
import logging

import pytest
from prometheus_client import REGISTRY

from accounts.models import APIKey, Organization, User
from tests.conftest import FakeUpstream
from tests.factories import issue_key
from tests.routing.harness import chat, in_thread, post, upstream_stats

pytestmark = pytest.mark.django_db(transaction=True)


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


@pytest.fixture
def access_lines(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.INFO, logger="muxer.access")
    return caplog


def access_events(caplog: pytest.LogCaptureFixture) -> list[dict[str, object]]:
    """The access lines' fields (extras on the record, which the formatter renders as JSON)."""
    return [{**vars(r)["access"], "event": r.getMessage()} for r in caplog.records if r.name == "muxer.access"]


async def test_a_request_is_counted_with_its_org_model_provider_strategy_and_status(
    api_key: str, organization: Organization, upstream: FakeUpstream
) -> None:
    labels = {
        "endpoint": "chat_completions",
        "org": str(organization.pk),
        "model": "fake-small",
        "provider": "fake",
        "strategy": "explicit",
        "status": "200",
    }
    before = sample("muxer_requests_total", **labels)
    tokens_before = sample(
        "muxer_tokens_total", org=str(organization.pk), model="fake-small", provider="fake", direction="output"
    )
    latency_before = sample("muxer_upstream_latency_seconds_count", provider="fake", model="fake-small")
    overhead_before = sample("muxer_gateway_overhead_seconds_count", endpoint="chat_completions")

    replies = [await post(chat(), key=api_key) for _ in range(3)]

    assert [reply.status for reply in replies] == [200, 200, 200]
    assert replies[0].headers["x-muxer-strategy"] == "explicit"
    assert sample("muxer_requests_total", **labels) == before + 3
    # "Fake reply to: Hello gateway" is five completion tokens.
    assert (
        sample("muxer_tokens_total", org=str(organization.pk), model="fake-small", provider="fake", direction="output")
        == tokens_before + 15
    )
    assert sample("muxer_cost_usd_total", org=str(organization.pk), model="fake-small", provider="fake") > 0
    assert sample("muxer_upstream_latency_seconds_count", provider="fake", model="fake-small") == latency_before + 3
    assert sample("muxer_gateway_overhead_seconds_count", endpoint="chat_completions") == overhead_before + 3


async def test_a_stream_records_time_to_first_token_and_its_whole_duration(
    api_key: str, upstream: FakeUpstream
) -> None:
    ttft_before = sample("muxer_time_to_first_token_seconds_count", provider="fake", model="fake-small")
    latency_before = sample("muxer_upstream_latency_seconds_count", provider="fake", model="fake-small")

    reply = await post(chat(stream=True), key=api_key)

    assert reply.status == 200
    assert sample("muxer_time_to_first_token_seconds_count", provider="fake", model="fake-small") == ttft_before + 1
    assert sample("muxer_upstream_latency_seconds_count", provider="fake", model="fake-small") == latency_before + 1


async def test_refusals_are_counted_by_kind(
    organization: Organization, owner: User, catalog: None, upstream: FakeUpstream
) -> None:
    org = str(organization.pk)
    issued = await in_thread(issue_key, organization, created_by=owner)
    await in_thread(APIKey.objects.filter(pk=issued.api_key.pk).update, rpm_limit=1)
    auth_before = sample("muxer_auth_failures_total", kind="api_key")
    limited_before = sample("muxer_rate_limited_total", org=org, endpoint="chat_completions")

    assert (await post(chat(), key=issued.secret)).status == 200
    assert (await post(chat(), key=issued.secret)).status == 429
    assert (await post(chat(), key="mm_live_" + "x" * 38)).status == 401

    assert sample("muxer_rate_limited_total", org=org, endpoint="chat_completions") == limited_before + 1
    assert sample("muxer_auth_failures_total", kind="api_key") == auth_before + 1
    assert (
        sample(
            "muxer_requests_total",
            endpoint="chat_completions",
            org="",
            model="",
            provider="",
            strategy="",
            status="401",
        )
        >= 1
    )


async def test_provider_failures_and_pii_detections_are_counted(
    api_key: str, organization: Organization, upstream: FakeUpstream
) -> None:
    await in_thread(Organization.objects.filter(pk=organization.pk).update, pii_policy={"email": "mask"})
    errors_before = sample("muxer_provider_errors_total", provider="fake", model="fake-small", status="502")
    pii_before = sample("muxer_pii_detections_total", org=str(organization.pk), entity="email", action="mask")

    failed = await post(chat("[fake status=503] hi"), key=api_key)
    masked = await post(chat("write to ada@example.com please"), key=api_key)

    assert failed.status == 502
    assert masked.status == 200
    assert sample("muxer_provider_errors_total", provider="fake", model="fake-small", status="502") > errors_before
    assert (
        sample("muxer_pii_detections_total", org=str(organization.pk), entity="email", action="mask") == pii_before + 1
    )


async def test_routing_decision_time_is_observed_per_strategy(api_key: str, upstream: FakeUpstream) -> None:
    before = sample("muxer_routing_decision_seconds_count", strategy="heuristic")

    reply = await post(chat(model="auto"), key=api_key, extra_headers=[(b"x-muxer-strategy", b"heuristic")])

    assert reply.status == 200
    assert sample("muxer_routing_decision_seconds_count", strategy="heuristic") == before + 1


async def test_one_access_line_per_request_carries_the_request_id_org_key_prefix_route_and_latencies(
    api_key: str, organization: Organization, upstream: FakeUpstream, access_lines: pytest.LogCaptureFixture
) -> None:
    reply = await post(chat(), key=api_key, extra_headers=[(b"x-request-id", b"trace-42.a_B")])

    assert reply.status == 200
    assert reply.headers["x-request-id"] == "trace-42.a_B"
    [line] = access_events(access_lines)
    assert line["event"] == "request"
    assert line["request_id"] == "trace-42.a_B"
    assert line["org_id"] == organization.pk
    assert line["key_prefix"] == api_key[:16]
    assert (line["model"], line["provider"], line["strategy"]) == ("fake-small", "fake", "explicit")
    assert line["status"] == 200
    assert line["route_reason"]
    took = {name: float(line[name]) for name in ("latency_ms", "upstream_ms", "overhead_ms")}  # type: ignore[arg-type]
    assert took["latency_ms"] > 0
    assert took["upstream_ms"] > 0
    assert 0 < took["overhead_ms"] <= took["latency_ms"]
    # The key itself never: only its lookup prefix.
    assert api_key not in json.dumps(line)


async def test_the_request_id_is_sent_to_the_provider(api_key: str, upstream: FakeUpstream) -> None:
    reply = await post(chat(), key=api_key)

    sent = (await upstream_stats(upstream))["last_request"]["headers"]
    assert {name.lower(): value for name, value in sent.items()}["x-request-id"] == reply.headers["x-request-id"]
    assert reply.headers["x-request-id"].startswith("req_")


async def test_an_unsafe_request_id_is_replaced(api_key: str, upstream: FakeUpstream) -> None:
    reply = await post(chat(), key=api_key, extra_headers=[(b"x-request-id", b"bad id\twith spaces")])

    assert reply.headers["x-request-id"].startswith("req_")


async def test_messages_refusals_are_counted_too(
    organization: Organization, owner: User, catalog: None, upstream: FakeUpstream
) -> None:
    org = str(organization.pk)
    issued = await in_thread(issue_key, organization, created_by=owner)
    await in_thread(APIKey.objects.filter(pk=issued.api_key.pk).update, rpm_limit=1)
    before = sample("muxer_rate_limited_total", org=org, endpoint="messages")
    body = {"model": "fake-small", "max_tokens": 16, "messages": [{"role": "user", "content": "Hello"}]}

    statuses = [(await post(body, key=issued.secret, path="/v1/messages")).status for _ in range(2)]

    assert statuses == [200, 429]
    assert sample("muxer_rate_limited_total", org=org, endpoint="messages") == before + 1
