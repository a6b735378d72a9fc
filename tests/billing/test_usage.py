"""The usage ledger's intake: batch writes, the Redis stream and its writer, and the fallback."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import orjson
import pytest
import redis
from asgiref.sync import sync_to_async
from django.conf import settings as django_settings
from django.db import connections
from pytest_django.fixtures import Settings as SettingsWrapper

from accounts.models import APIKey, Organization, User
from billing.models import UsageRecord, UsageStatus
from billing.usage import GROUP, UsageEvent, usage_drain, usage_emit, usage_pending, usage_write_batch
from muxer_project import redis as muxer_redis
from tests.factories import issue_key

# 2026-01-02T03:04:05Z and an hour later.
T0 = 1767323045.0
T1 = T0 + 3600


@pytest.fixture
def key(organization: Organization, owner: User) -> APIKey:
    return issue_key(organization, created_by=owner).api_key


@pytest.fixture
def usage_stream(settings: SettingsWrapper) -> Iterator[str]:
    """A stream of this test's own; deleted afterwards through the real Redis, whatever the test pointed at."""
    name = f"muxer:usage:test:{uuid.uuid4().hex}"
    url = django_settings.REDIS_URL
    settings.MUXER_USAGE_STREAM = name
    yield name
    if url:
        client = redis.from_url(url)
        client.delete(name)
        client.close()


@pytest.fixture
async def _close_loop_redis() -> AsyncIterator[None]:
    yield
    client = muxer_redis._async_clients.pop(asyncio.get_running_loop(), None)
    if client is not None:
        await client.aclose()


def event(key: APIKey, request_id: str = "req_1", *, created_at: float = T0, **overrides: Any) -> UsageEvent:
    usage: UsageEvent = {
        "request_id": request_id,
        "organization_id": key.organization_id,
        "api_key_id": key.pk,
        "team_id": None,
        "user_id": key.created_by_id,
        "model": "fake-small",
        "provider": "fake",
        "input_tokens": 4,
        "output_tokens": 5,
        "cached_input_tokens": 1,
        "reasoning_tokens": 2,
        "usage_estimated": False,
        "cost_usd": "0.0000001400",
        "latency_ms": 12,
        "status": "ok",
        "http_status": 200,
        "error_code": "",
        "stream": True,
        "created_at": created_at,
    }
    usage.update(overrides)  # type: ignore[typeddict-item]
    return usage


def emit(usage: UsageEvent) -> None:
    """``usage_emit`` from synchronous code, on a loop of its own whose Redis client is closed after."""

    async def run() -> None:
        await usage_emit(usage)
        client = muxer_redis._async_clients.pop(asyncio.get_running_loop(), None)
        if client is not None:
            await client.aclose()

    asyncio.run(run())


def in_worker_thread(function: Any) -> Any:
    """Database work from an async test, on a thread that closes its connection afterwards."""

    def run(*args: Any, **kwargs: Any) -> Any:
        try:
            return function(*args, **kwargs)
        finally:
            connections.close_all()

    return sync_to_async(run)


# --- usage_write_batch ------------------------------------------------------------


@pytest.mark.django_db
def test_it_writes_one_row_per_event_with_every_field(key: APIKey) -> None:
    written = usage_write_batch([event(key, "req_a"), event(key, "req_b", status="error", http_status=502)])

    assert written == 2
    a, b = UsageRecord.objects.order_by("request_id")
    assert (a.request_id, b.request_id) == ("req_a", "req_b")
    assert (a.organization_id, a.api_key_id, a.user_id, a.team_id) == (
        key.organization_id,
        key.pk,
        key.created_by_id,
        None,
    )
    assert (a.model, a.provider) == ("fake-small", "fake")
    assert (a.input_tokens, a.output_tokens, a.cached_input_tokens, a.reasoning_tokens) == (4, 5, 1, 2)
    assert a.cost_usd == Decimal("0.00000014")
    assert (a.latency_ms, a.status, a.http_status, a.error_code) == (12, UsageStatus.OK, 200, "")
    assert (a.stream, a.usage_estimated) == (True, False)
    assert a.created_at == datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    assert (b.status, b.http_status) == (UsageStatus.ERROR, 502)


@pytest.mark.django_db
def test_an_empty_batch_writes_nothing(key: APIKey) -> None:
    assert usage_write_batch([]) == 0
    assert UsageRecord.objects.count() == 0


@pytest.mark.django_db
def test_the_same_event_written_twice_is_one_row(key: APIKey) -> None:
    usage_write_batch([event(key)])
    usage_write_batch([event(key, output_tokens=999)])

    [row] = UsageRecord.objects.all()
    assert row.output_tokens == 5  # the first delivery stands


@pytest.mark.django_db
def test_a_duplicate_inside_one_batch_is_one_row(key: APIKey) -> None:
    usage_write_batch([event(key), event(key), event(key, "req_2")])

    assert sorted(UsageRecord.objects.values_list("request_id", flat=True)) == ["req_1", "req_2"]


@pytest.mark.django_db
def test_it_sets_the_keys_last_use_to_its_latest_event(key: APIKey) -> None:
    assert key.last_used_at is None

    usage_write_batch([event(key, "req_late", created_at=T1), event(key, "req_early", created_at=T0)])

    key.refresh_from_db()
    assert key.last_used_at == datetime.fromtimestamp(T1, tz=UTC)


@pytest.mark.django_db
def test_an_older_event_never_moves_last_use_back(key: APIKey) -> None:
    usage_write_batch([event(key, "req_late", created_at=T1)])
    usage_write_batch([event(key, "req_early", created_at=T0)])

    key.refresh_from_db()
    assert key.last_used_at == datetime.fromtimestamp(T1, tz=UTC)


@pytest.mark.django_db
def test_it_leaves_other_keys_last_use_alone(key: APIKey, organization: Organization, owner: User) -> None:
    other = issue_key(organization, created_by=owner, name="other").api_key

    usage_write_batch([event(key)])

    other.refresh_from_db()
    assert other.last_used_at is None


# --- the Redis stream ---------------------------------------------------------------


@pytest.mark.redis
@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("_close_loop_redis")
async def test_emitted_events_land_in_the_database_after_a_drain(key: APIKey, usage_stream: str) -> None:
    await usage_emit(event(key, "req_a"))
    await usage_emit(event(key, "req_b"))

    assert await in_worker_thread(usage_pending)() == 2
    assert await in_worker_thread(UsageRecord.objects.count)() == 0

    assert await in_worker_thread(usage_drain)(block_ms=0) == 2

    rows = await in_worker_thread(lambda: sorted(UsageRecord.objects.values_list("request_id", flat=True)))()
    assert rows == ["req_a", "req_b"]
    assert await in_worker_thread(usage_pending)() == 0


@pytest.mark.redis
@pytest.mark.django_db
def test_a_drain_of_an_empty_stream_writes_nothing(key: APIKey, usage_stream: str) -> None:
    assert usage_drain(block_ms=0) == 0
    assert UsageRecord.objects.count() == 0


def crash_after_claiming(usage_stream: str, *, wrote_rows: bool) -> None:
    """Play a writer that read the stream as its own consumer and died before acknowledging."""
    client = muxer_redis.sync_redis()
    client.xgroup_create(usage_stream, GROUP, id="0", mkstream=True)
    response: Any = client.xreadgroup(GROUP, "crashed-writer", {usage_stream: ">"}, count=100)
    [(_name, entries)] = response
    if wrote_rows:
        usage_write_batch([orjson.loads(fields[b"e"]) for _id, fields in entries])
    pending: Any = client.xpending(usage_stream, GROUP)
    assert pending["pending"] == len(entries) == 1
    assert pending["consumers"] == [{"name": b"crashed-writer", "pending": 1}]


@pytest.mark.redis
@pytest.mark.django_db
def test_an_event_a_crashed_writer_claimed_is_reclaimed_and_written_once(key: APIKey, usage_stream: str) -> None:
    emit(event(key))
    crash_after_claiming(usage_stream, wrote_rows=False)
    assert UsageRecord.objects.count() == 0

    assert usage_drain(block_ms=0, reclaim_idle_ms=0) == 1

    [row] = UsageRecord.objects.all()
    assert row.request_id == "req_1"
    pending: Any = muxer_redis.sync_redis().xpending(usage_stream, GROUP)
    assert pending["pending"] == 0
    assert usage_pending() == 0
    assert usage_drain(block_ms=0, reclaim_idle_ms=0) == 0
    assert UsageRecord.objects.count() == 1


@pytest.mark.redis
@pytest.mark.django_db
def test_an_event_written_but_not_acknowledged_before_a_crash_stays_one_row(key: APIKey, usage_stream: str) -> None:
    emit(event(key))
    crash_after_claiming(usage_stream, wrote_rows=True)
    assert UsageRecord.objects.count() == 1

    assert usage_drain(block_ms=0, reclaim_idle_ms=0) == 1

    assert UsageRecord.objects.count() == 1
    assert usage_pending() == 0


@pytest.mark.redis
@pytest.mark.django_db
def test_a_freshly_claimed_event_is_left_to_its_writer(key: APIKey, usage_stream: str) -> None:
    emit(event(key))
    crash_after_claiming(usage_stream, wrote_rows=False)

    # Its writer may still be busy with it: only an idle claim (a minute by default) is taken over.
    assert usage_drain(block_ms=0) == 0

    assert UsageRecord.objects.count() == 0
    assert usage_pending() == 1


# --- without Redis -------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
async def test_without_redis_an_event_is_written_directly(
    key: APIKey, usage_stream: str, settings: SettingsWrapper
) -> None:
    settings.REDIS_URL = ""

    await usage_emit(event(key))

    [row] = await in_worker_thread(lambda: list(UsageRecord.objects.all()))()
    assert row.request_id == "req_1"


@pytest.mark.django_db(transaction=True)
async def test_when_redis_is_unreachable_an_event_is_written_directly(
    key: APIKey,
    usage_stream: str,
    settings: SettingsWrapper,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    settings.REDIS_URL = "redis://127.0.0.1:1/0"
    monkeypatch.setattr(muxer_redis, "_async_clients", {})
    monkeypatch.setattr(muxer_redis, "_sync_client", None)

    with caplog.at_level(logging.WARNING, logger="billing.usage"):
        await usage_emit(event(key, "req_unqueued"))
    dead = muxer_redis._async_clients.pop(asyncio.get_running_loop())
    await dead.aclose()

    [row] = await in_worker_thread(lambda: list(UsageRecord.objects.all()))()
    assert row.request_id == "req_unqueued"
    assert row.cost_usd == Decimal("0.00000014")
    # (Redis's own transition to down is logged once too, by muxer_project.outage.)
    [warning] = [record for record in caplog.records if record.name == "billing.usage"]
    assert warning.levelno == logging.WARNING
    assert warning.getMessage().startswith("usage stream unavailable")
    assert warning.getMessage().endswith("writing usage req_unqueued directly")


@pytest.mark.redis
@pytest.mark.django_db(transaction=True)
def test_an_event_the_database_refuses_is_set_aside_and_the_rest_is_written(key: APIKey, usage_stream: str) -> None:
    # An event whose key no longer exists can never be written; retrying it would block every event behind it.
    emit(event(key, "req_before"))
    emit(event(key, "req_orphan", api_key_id=key.pk + 10_000))
    emit(event(key, "req_after"))

    assert usage_drain(block_ms=0) == 3

    assert sorted(UsageRecord.objects.values_list("request_id", flat=True)) == ["req_after", "req_before"]
    assert usage_pending() == 0
    aside: Any = muxer_redis.sync_redis().xrange(f"{usage_stream}:rejected")
    assert [orjson.loads(fields[b"e"])["request_id"] for _id, fields in aside] == ["req_orphan"]
    # The next pass has nothing left to retry.
    emit(event(key, "req_later"))
    assert usage_drain(block_ms=0) == 1
    assert UsageRecord.objects.filter(request_id="req_later").exists()
    muxer_redis.sync_redis().delete(f"{usage_stream}:rejected")


@pytest.mark.redis
@pytest.mark.django_db
def test_a_batch_whose_stream_was_lost_while_written_brings_the_budgets_to_the_ledger(
    key: APIKey, usage_stream: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from billing import usage as usage_module
    from billing.budgets import RedisCounters, ledger_spent_units, rule_from
    from billing.models import Budget

    budget = Budget.objects.create(
        organization=key.organization, scope="organization", period="monthly", limit_usd=Decimal("1")
    )
    rule = rule_from(budget, key.organization.timezone)
    start, _end = rule.window(datetime.now(UTC))
    counter_key = rule.counter_key(start)
    emit(event(key, created_at=datetime.now(UTC).timestamp()))
    write = usage_module.usage_write_batch

    def write_then_lose_redis(events: list[UsageEvent]) -> None:
        write(events)
        # Redis restarted without its data while the batch was being written; a request then rebuilt the
        # budget's counter from the ledger, which did not have the batch yet.
        client = muxer_redis.sync_redis()
        client.delete(usage_stream)
        RedisCounters().build(counter_key, 0, 0)

    monkeypatch.setattr(usage_module, "usage_write_batch", write_then_lose_redis)

    assert usage_drain(block_ms=0) == 1

    assert UsageRecord.objects.count() == 1
    found = RedisCounters().read(counter_key)
    assert found is not None
    assert found[0] == ledger_spent_units(rule, start, None) == 1400
