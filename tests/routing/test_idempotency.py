"""Idempotency-Key on /v1/chat/completions, end to end through the consumer and the fake upstream.

The fake upstream counts the chat requests it receives, so "no provider call" is
the count not moving; the ledger's rows are the charges.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
from asgiref.testing import ApplicationCommunicator
from django.conf import settings
from prometheus_client import REGISTRY
from pytest_django.fixtures import Settings as SettingsWrapper

from accounts.auth import authenticate
from accounts.models import APIKey, Organization, Role, User
from billing.models import UsageStatus
from muxer_project.asgi import application
from muxer_project.redis import redis_state, sync_redis
from routing import idempotency
from routing.idempotency import forget_idempotency, idempotency_claim
from routing.ratelimit import forget_rate_limits
from tests.conftest import FakeUpstream
from tests.factories import MembershipFactory, OrganizationFactory, issue_key
from tests.routing.harness import PATH, TIMEOUT, Reply, chat, in_thread, post, upstream_stats, usage_rows

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def _no_records() -> Iterator[None]:
    forget_idempotency()
    yield
    redis_state.forget()
    forget_idempotency()


@pytest.fixture(autouse=True)
def quick_retries(settings: SettingsWrapper) -> None:
    settings.MUXER_RETRY_BASE_DELAY_SECONDS = 0.01
    settings.MUXER_RETRY_MAX_DELAY_SECONDS = 0.05


@pytest.fixture
def other_key(organization: Organization, owner: User, catalog: None) -> str:
    return issue_key(organization, created_by=owner, name="second key").secret


@pytest.fixture
def other_tenant_key(catalog: None) -> str:
    other = OrganizationFactory.create()
    owner = MembershipFactory.create(organization=other, role=Role.OWNER).user
    return issue_key(other, created_by=owner).secret


def new_key() -> str:
    return f"order-{uuid.uuid4()}"


def keyed(idempotency_key: str | bytes) -> list[tuple[bytes, bytes]]:
    raw = idempotency_key if isinstance(idempotency_key, bytes) else idempotency_key.encode()
    return [(b"idempotency-key", raw)]


async def send(body: Any, key: str, idempotency_key: str | bytes, **extra: Any) -> Reply:
    return await post(body, key=key, extra_headers=keyed(idempotency_key), **extra)


async def upstream_calls(upstream: FakeUpstream) -> int:
    return int((await upstream_stats(upstream))["requests"])


def replayed(reply: Reply) -> bool:
    return reply.headers.get("idempotent-replayed") == "true"


def store_errors() -> float:
    labels = {"store": "redis" if settings.REDIS_URL else "memory", "operation": "idempotency"}
    return REGISTRY.get_sample_value("muxer_store_errors_total", labels) or 0.0


def limited_key(organization: Organization, owner: User, **limits: Any) -> str:
    issued = issue_key(organization, created_by=owner)
    APIKey.objects.filter(pk=issued.api_key.pk).update(**limits)
    return issued.secret


def forget_limits() -> None:
    forget_rate_limits()
    if settings.REDIS_URL:
        client = sync_redis()
        stale = list(client.scan_iter(match="muxer:rl:*", count=1000))
        if stale:
            client.delete(*stale)


# --- replay ------------------------------------------------------------------------------------------


async def test_a_second_request_with_the_key_gets_the_first_response_without_a_call_or_a_charge(
    api_key: str, upstream: FakeUpstream
) -> None:
    key = new_key()
    first = await send(chat(), api_key, key)
    second = await send(chat(), api_key, key)

    assert first.status == second.status == 200
    assert second.body == first.body
    assert "idempotent-replayed" not in first.headers
    assert second.headers["idempotent-replayed"] == "true"
    for name in ("content-type", "x-muxer-model", "x-muxer-provider", "x-muxer-route-reason", "x-muxer-cost-usd"):
        assert second.headers[name] == first.headers[name], name
    # Each request is its own in the logs.
    assert second.headers["x-request-id"] != first.headers["x-request-id"]
    assert await upstream_calls(upstream) == 1
    [row] = await usage_rows()
    assert row.request_id == first.headers["x-request-id"]


async def test_the_body_is_compared_as_json_not_as_bytes(api_key: str, upstream: FakeUpstream) -> None:
    key = new_key()
    first = await send(b'{"model": "fake-small", "messages": [{"role": "user", "content": "hi"}]}', api_key, key)
    second = await send(b'{"messages":[{"content":"hi","role":"user"}],\n "model":"fake-small"}', api_key, key)

    assert replayed(second)
    assert second.body == first.body
    assert await upstream_calls(upstream) == 1


async def test_a_replay_is_not_counted_against_the_rate_limits(
    organization: Organization, owner: User, catalog: None, upstream: FakeUpstream
) -> None:
    key = await in_thread(limited_key, organization, owner, rpm_limit=2)
    idem = new_key()
    first = await send(chat(max_tokens=16), key, idem)
    replays = [await send(chat(max_tokens=16), key, idem) for _ in range(3)]
    fresh = await post(chat(max_tokens=16), key=key)

    assert first.headers["x-ratelimit-remaining-requests"] == "1"
    assert all(replayed(r) and r.status == 200 for r in replays)
    # The replay carries the first response's headers, as the client first saw them.
    assert {r.headers["x-ratelimit-remaining-requests"] for r in replays} == {"1"}
    assert fresh.status == 200
    assert fresh.headers["x-ratelimit-remaining-requests"] == "0"
    assert await upstream_calls(upstream) == 2


async def test_a_cache_hit_is_kept_as_the_client_got_it(api_key: str, upstream: FakeUpstream) -> None:
    """A replay is the stored response, not another cache hit: a hit gets a fresh completion id, a replay not."""
    settled = chat(temperature=0)
    await post(settled, key=api_key)  # the miss that fills the cache
    key = new_key()
    hit = await send(settled, api_key, key)
    again = await send(settled, api_key, key)

    assert hit.headers["x-muxer-cache"] == "hit"
    assert replayed(again)
    assert again.headers["x-muxer-cache"] == "hit"
    assert again.json()["id"] == hit.json()["id"]
    assert again.body == hit.body
    assert await upstream_calls(upstream) == 1
    assert len(await usage_rows()) == 2  # the miss and the hit; the replay is not recorded


# --- the same key, another request -------------------------------------------------------------------


async def test_the_same_key_with_another_body_is_refused_and_nothing_is_called(
    api_key: str, upstream: FakeUpstream
) -> None:
    key = new_key()
    first = await send(chat("first question"), api_key, key)
    reused = await send(chat("another question"), api_key, key)
    original = await send(chat("first question"), api_key, key)

    assert reused.status == 422
    assert reused.error["code"] == "idempotency_key_reused"
    assert reused.error["param"] == "Idempotency-Key"
    assert reused.error["type"] == "invalid_request_error"
    # The refusal does not disturb what the key holds.
    assert replayed(original)
    assert original.body == first.body
    assert await upstream_calls(upstream) == 1
    assert len(await usage_rows()) == 1


async def test_another_api_key_with_the_same_idempotency_key_is_a_request_of_its_own(
    api_key: str, other_key: str, upstream: FakeUpstream
) -> None:
    key = new_key()
    await send(chat(), api_key, key)
    mine = await send(chat(), other_key, key)
    different_body = await send(chat("something else"), other_key, new_key())

    assert mine.status == 200
    assert not replayed(mine)
    assert different_body.status == 200
    assert await upstream_calls(upstream) == 3
    assert len(await usage_rows()) == 3


async def test_another_tenant_never_sees_the_stored_response(
    api_key: str, other_tenant_key: str, upstream: FakeUpstream
) -> None:
    key = new_key()
    ours = await send(chat(), api_key, key)
    theirs = await send(chat(), other_tenant_key, key)

    assert theirs.status == 200
    assert not replayed(theirs)
    assert theirs.json()["id"] != ours.json()["id"]
    assert await upstream_calls(upstream) == 2
    assert len({row.organization_id for row in await usage_rows()}) == 2


# --- concurrent duplicates ---------------------------------------------------------------------------


async def twenty_at_once(api_key: str, upstream: FakeUpstream) -> list[Reply]:
    key = new_key()
    body = chat("[fake latency_ms=300] hi")
    replies = await asyncio.gather(*(send(body, api_key, key) for _ in range(20)))

    assert await upstream_calls(upstream) == 1
    [row] = await usage_rows()
    assert row.status == UsageStatus.OK
    answered = [r for r in replies if r.status == 200]
    assert {r.body for r in answered} == {answered[0].body}
    assert [r.status for r in replies if r.status != 200] == [409] * (20 - len(answered))
    assert [replayed(r) for r in answered].count(False) == 1
    return replies


async def test_twenty_concurrent_duplicates_make_one_call_and_one_charge(
    api_key: str, upstream: FakeUpstream, settings: SettingsWrapper
) -> None:
    settings.MUXER_IDEMPOTENCY_WAIT_SECONDS = 10

    replies = await twenty_at_once(api_key, upstream)

    # Every duplicate waited for the first answer.
    assert [r.status for r in replies] == [200] * 20
    assert sum(replayed(r) for r in replies) == 19


async def test_a_duplicate_that_waits_too_long_gets_a_409_with_retry_after(
    api_key: str, upstream: FakeUpstream, settings: SettingsWrapper
) -> None:
    settings.MUXER_IDEMPOTENCY_WAIT_SECONDS = 0

    replies = await twenty_at_once(api_key, upstream)

    conflicts = [r for r in replies if r.status == 409]
    assert len(conflicts) == 19
    assert {r.error["code"] for r in conflicts} == {"idempotency_key_in_flight"}
    assert {r.headers["retry-after"] for r in conflicts} == {"1"}


@pytest.mark.redis
@pytest.mark.postgres
async def test_twenty_concurrent_duplicates_on_redis_make_one_call_and_one_charge(
    api_key: str, upstream: FakeUpstream, settings: SettingsWrapper
) -> None:
    settings.MUXER_IDEMPOTENCY_WAIT_SECONDS = 10

    replies = await twenty_at_once(api_key, upstream)

    assert [r.status for r in replies] == [200] * 20
    # The record is Redis's, shared by every process, for the configured time.
    client = sync_redis()
    [record] = list(client.scan_iter(match="muxer:idem:*"))
    assert 0 < client.pttl(record) <= settings.MUXER_IDEMPOTENCY_TTL_SECONDS * 1000
    kept = client.get(record)
    assert isinstance(kept, bytes)
    assert kept.split(b"\n", 1)[1] == replies[0].body


# --- what is not kept --------------------------------------------------------------------------------


@pytest.mark.parametrize(("fault", "status"), [(500, 502), (503, 502), (429, 503)])
async def test_a_retryable_upstream_failure_frees_the_key_for_a_retry(
    fault: int, status: int, api_key: str, upstream: FakeUpstream
) -> None:
    key = new_key()
    body = chat(f"[fake status={fault} times=2] hi")
    failed = await send(body, api_key, key)
    retried = await send(body, api_key, key)
    again = await send(body, api_key, key)

    assert failed.status == status
    assert retried.status == 200
    assert not replayed(retried)
    assert replayed(again)
    assert again.body == retried.body
    assert await upstream_calls(upstream) == 3  # two tries that failed, one that answered
    assert [row.status for row in await usage_rows()] == [UsageStatus.ERROR, UsageStatus.OK]


async def test_a_deterministic_upstream_error_is_kept_and_replayed(api_key: str, upstream: FakeUpstream) -> None:
    key = new_key()
    body = chat("[fake status=400] hi")
    first = await send(body, api_key, key)
    second = await send(body, api_key, key)

    assert first.status == second.status == 400
    assert replayed(second)
    assert second.body == first.body
    assert await upstream_calls(upstream) == 1


async def test_the_gateway_s_own_rate_limit_refusal_frees_the_key(
    organization: Organization, owner: User, catalog: None, upstream: FakeUpstream
) -> None:
    key = await in_thread(limited_key, organization, owner, rpm_limit=1)
    await post(chat(max_tokens=16), key=key)
    idem = new_key()
    refused = await send(chat(max_tokens=16), key, idem)
    await in_thread(forget_limits)  # a minute later
    retried = await send(chat(max_tokens=16), key, idem)

    assert refused.status == 429
    assert retried.status == 200
    assert not replayed(retried)
    assert await upstream_calls(upstream) == 2


async def test_a_client_that_leaves_frees_the_key(api_key: str, upstream: FakeUpstream) -> None:
    key = new_key()
    body = chat("[fake latency_ms=3000 times=1] hi")
    raw = orjson.dumps(body)
    communicator = ApplicationCommunicator(
        application,
        {
            "type": "http",
            "http_version": "1.1",
            "method": "POST",
            "path": PATH,
            "query_string": b"",
            "headers": [
                (b"content-type", b"application/json"),
                (b"authorization", f"Bearer {api_key}".encode()),
                *keyed(key),
            ],
        },
    )
    await communicator.send_input({"type": "http.request", "body": raw, "more_body": False})
    await asyncio.sleep(0.3)
    await communicator.send_input({"type": "http.disconnect"})
    await communicator.wait(timeout=TIMEOUT)

    retried = await send(body, api_key, key)

    assert retried.status == 200
    assert not replayed(retried)
    assert await upstream_calls(upstream) == 2


async def test_a_claim_whose_worker_died_expires(
    api_key: str, upstream: FakeUpstream, settings: SettingsWrapper
) -> None:
    settings.MUXER_IDEMPOTENCY_WAIT_SECONDS = 0
    settings.MUXER_IDEMPOTENCY_PENDING_SECONDS = 0.5
    key = new_key()
    body = orjson.dumps(chat())
    identity = await authenticate(f"Bearer {api_key}")
    # A request that claimed the key and never finished.
    await idempotency_claim(identity=identity, idempotency_key=key, body=body)

    blocked = await send(body, api_key, key)
    await asyncio.sleep(0.7)
    served = await send(body, api_key, key)

    assert blocked.status == 409
    assert served.status == 200
    assert not replayed(served)
    assert await upstream_calls(upstream) == 1


async def test_a_kept_response_expires_after_the_ttl(
    api_key: str, upstream: FakeUpstream, settings: SettingsWrapper
) -> None:
    settings.MUXER_IDEMPOTENCY_TTL_SECONDS = 1.0
    key = new_key()
    await send(chat(), api_key, key)
    soon = await send(chat(), api_key, key)
    await asyncio.sleep(1.2)
    later = await send(chat(), api_key, key)

    assert replayed(soon)
    assert later.status == 200
    assert not replayed(later)
    assert await upstream_calls(upstream) == 2
    assert len(await usage_rows()) == 2


# --- refused before anything runs --------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        pytest.param(b"", id="empty"),
        pytest.param(b"k" * 256, id="too-long"),
        pytest.param("clé-ключ".encode(), id="not-ascii"),
        pytest.param(b"a\tb", id="tab"),
        pytest.param(b"a\x7fb", id="delete"),
    ],
)
async def test_a_malformed_key_is_a_400(value: bytes, api_key: str, upstream: FakeUpstream) -> None:
    reply = await send(chat(), api_key, value)

    assert reply.status == 400
    assert (reply.error["code"], reply.error["param"]) == ("invalid_request_error", "Idempotency-Key")
    assert await upstream_calls(upstream) == 0
    assert await usage_rows() == []


@pytest.mark.parametrize("value", ["k" * 255, "a key with spaces & {punctuation}!", "1"])
async def test_any_printable_key_up_to_255_characters_works(value: str, api_key: str, upstream: FakeUpstream) -> None:
    first = await send(chat(), api_key, value)
    second = await send(chat(), api_key, value)

    assert (first.status, second.status) == (200, 200)
    assert replayed(second)


async def test_a_key_on_a_streamed_request_is_a_400(api_key: str, upstream: FakeUpstream) -> None:
    reply = await send(chat(stream=True), api_key, new_key())

    assert reply.status == 400
    assert reply.error["param"] == "Idempotency-Key"
    assert "stream" in reply.error["message"]
    assert await upstream_calls(upstream) == 0
    assert await usage_rows() == []


async def test_the_key_is_checked_after_authentication(upstream: FakeUpstream) -> None:
    reply = await send(chat(), "mm_live_not_a_key", "k" * 300)

    assert reply.status == 401


async def test_a_store_outage_refuses_keyed_requests_only(
    api_key: str, upstream: FakeUpstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    tried = 0

    async def broken(*args: object) -> None:
        nonlocal tried
        tried += 1
        raise ConnectionError("store down")

    monkeypatch.setattr(idempotency.MemoryRecords, "claim", broken)
    monkeypatch.setattr(idempotency.RedisRecords, "claim", broken)
    before = store_errors()

    refused = [await send(chat(), api_key, new_key()) for _ in range(2)]
    plain = await post(chat(), key=api_key)

    assert [r.status for r in refused] == [503, 503]
    assert {r.error["code"] for r in refused} == {"idempotency_unavailable"}
    assert {r.headers["retry-after"] for r in refused} == {"1"}
    # Once Redis failed, this process holds it down and refuses at once, without waiting on it again.
    assert tried == (1 if settings.REDIS_URL else 2)
    assert store_errors() == before + tried
    assert plain.status == 200
    assert await upstream_calls(upstream) == 1
