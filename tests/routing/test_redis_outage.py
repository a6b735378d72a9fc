"""Redis frozen, stopped and restarted under the in-process proxy: requests are still served, within one
timeout, rate limits fall back to each process's own, usage is written directly, and every transition is
logged once and counted."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import pytest
from prometheus_client import REGISTRY
from pytest_django.fixtures import Settings as SettingsWrapper

from accounts.models import Organization, User
from billing.models import UsageRecord
from billing.usage import usage_drain, usage_pending
from muxer_project.redis import redis_state
from tests.conftest import FakeUpstream, RedisServer
from tests.routing.harness import Reply, chat, in_thread, post, upstream_stats
from tests.routing.test_ratelimit import limited_key

pytestmark = pytest.mark.django_db(transaction=True)

# The redis_server fixture's socket timeout is 1 s: a request may pay it once, plus the gateway's own work.
ONE_TIMEOUT = 1.0 + 1.0
# A request that does not wait on Redis at all (any wait would be the whole timeout).
NO_TIMEOUT = 0.75


async def timed_post(key: str, **extra: Any) -> tuple[Reply, float]:
    started = time.monotonic()
    reply = await post(chat(max_tokens=16, **extra), key=key)
    return reply, time.monotonic() - started


async def ledger_ids() -> list[str]:
    return await in_thread(lambda: list(UsageRecord.objects.order_by("id").values_list("request_id", flat=True)))


async def until_recovered() -> None:
    """Let this process's background probe find Redis again (it runs at most once per cool-down)."""
    deadline = time.monotonic() + 10
    while not redis_state.up:
        assert time.monotonic() < deadline, "Redis was not seen again"
        redis_state.usable()
        await redis_state.wait_recovered()
        await asyncio.sleep(0.05)


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def transitions(to: str) -> float:
    return sample("muxer_store_transitions_total", store="redis", to=to)


@pytest.mark.parametrize("fault", ["frozen", "stopped"])
async def test_requests_are_served_within_one_timeout_and_then_without_waiting(
    organization: Organization,
    owner: User,
    catalog: None,
    upstream: FakeUpstream,
    redis_server: RedisServer,
    fault: str,
) -> None:
    key = await in_thread(limited_key, organization, owner, rpm_limit=100)
    before, _ = await timed_post(key)
    assert before.status == 200
    assert await in_thread(usage_pending) == 1

    redis_server.freeze() if fault == "frozen" else redis_server.stop()
    first, first_took = await timed_post(key)
    rest = [await timed_post(key) for _ in range(5)]

    assert first.status == 200, first.body
    assert first_took < ONE_TIMEOUT
    assert [reply.status for reply, _ in rest] == [200] * 5
    # Redis is marked down after the first failure: the others do not wait on it at all.
    assert max(took for _, took in rest) < NO_TIMEOUT
    assert (await upstream_stats(upstream))["requests"] == 7
    # Usage of the six requests served during the outage went straight to the ledger.
    served = [first.headers["x-request-id"], *(reply.headers["x-request-id"] for reply, _ in rest)]
    assert await ledger_ids() == served


async def test_a_stopped_redis_that_comes_back_is_used_again(
    organization: Organization,
    owner: User,
    catalog: None,
    upstream: FakeUpstream,
    redis_server: RedisServer,
) -> None:
    key = await in_thread(limited_key, organization, owner, rpm_limit=100)
    redis_server.stop()
    during, _ = await timed_post(key)
    assert during.status == 200
    assert not redis_state.up

    redis_server.start()
    await until_recovered()
    after, took = await timed_post(key)

    assert after.status == 200
    assert took < NO_TIMEOUT
    # Back on the stream (the usage writer's job), not written directly.
    assert await in_thread(usage_pending) == 1
    assert await ledger_ids() == [during.headers["x-request-id"]]


async def test_while_redis_is_down_each_process_applies_the_limits_itself(
    organization: Organization,
    owner: User,
    catalog: None,
    upstream: FakeUpstream,
    redis_server: RedisServer,
) -> None:
    key = await in_thread(limited_key, organization, owner, rpm_limit=3)
    assert (await timed_post(key))[0].status == 200  # counted in Redis
    redis_server.freeze()

    replies = [(await timed_post(key))[0] for _ in range(4)]

    # The process's own meter starts empty: the same limit of 3, not unlimited.
    assert [reply.status for reply in replies] == [200, 200, 200, 429]
    assert [reply.headers["x-ratelimit-remaining-requests"] for reply in replies[:3]] == ["2", "1", "0"]
    refused = replies[-1]
    assert refused.error["code"] == "rate_limit_exceeded"
    assert int(refused.headers["retry-after"]) >= 1
    assert sample("muxer_store_fallbacks_total", store="redis", operation="rate_limit") >= 4


async def test_failing_closed_refuses_with_503_at_once(
    organization: Organization,
    owner: User,
    catalog: None,
    upstream: FakeUpstream,
    redis_server: RedisServer,
    settings: SettingsWrapper,
) -> None:
    settings.MUXER_RATELIMIT_FAIL_OPEN = False
    key = await in_thread(limited_key, organization, owner, rpm_limit=100)
    redis_server.freeze()

    (first, first_took), (second, second_took) = [await timed_post(key) for _ in range(2)]

    for reply in (first, second):
        assert reply.status == 503
        assert reply.error["code"] == "rate_limit_unavailable"
        assert reply.headers["retry-after"] == "1"
    assert first_took < ONE_TIMEOUT
    assert second_took < NO_TIMEOUT
    assert (await upstream_stats(upstream))["requests"] == 0


async def test_every_transition_is_logged_once_and_counted(
    organization: Organization,
    owner: User,
    catalog: None,
    upstream: FakeUpstream,
    redis_server: RedisServer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    key = await in_thread(limited_key, organization, owner, rpm_limit=100)
    down, up = transitions("down"), transitions("up")
    caplog.set_level(logging.INFO, logger="muxer_project.outage")

    redis_server.freeze()
    for _ in range(3):
        assert (await timed_post(key))[0].status == 200
    # Past the cool-down: a background probe runs (and fails) without a second transition.
    probes = sample("muxer_store_errors_total", store="redis", operation="probe")
    await asyncio.sleep(0.3)
    assert (await timed_post(key))[0].status == 200
    await redis_state.wait_recovered()
    assert transitions("down") == down + 1
    assert sample("muxer_store_errors_total", store="redis", operation="probe") == probes + 1

    redis_server.thaw()
    await until_recovered()
    for _ in range(3):
        assert (await timed_post(key))[0].status == 200

    assert (transitions("down"), transitions("up")) == (down + 1, up + 1)
    records = [(r.levelno, r.getMessage()) for r in caplog.records if r.name == "muxer_project.outage"]
    assert len(records) == 2, records
    (went_down_level, went_down), (came_up_level, came_up) = records
    assert went_down_level == logging.WARNING
    assert went_down.startswith("redis unavailable (TimeoutError during ")
    assert came_up_level == logging.INFO
    assert came_up.startswith("redis answers again after ")


async def test_usage_queued_before_a_freeze_is_flushed_after_it_once(
    organization: Organization,
    owner: User,
    catalog: None,
    upstream: FakeUpstream,
    redis_server: RedisServer,
) -> None:
    key = await in_thread(limited_key, organization, owner, rpm_limit=100)
    queued, _ = await timed_post(key)
    redis_server.freeze()
    direct, _ = await timed_post(key)
    assert await ledger_ids() == [direct.headers["x-request-id"]]

    redis_server.thaw()

    def drain() -> int:
        moved = 0
        while moved_now := usage_drain(block_ms=0):
            moved += moved_now
        return moved

    assert await in_thread(drain) == 1
    assert sorted(await ledger_ids()) == sorted([queued.headers["x-request-id"], direct.headers["x-request-id"]])


def test_the_usage_writers_client_waits_longer_than_its_block(redis_server: RedisServer) -> None:
    from muxer_project.redis import blocking_redis, sync_redis

    blocking = blocking_redis(1.0).connection_pool.connection_kwargs
    plain = sync_redis().connection_pool.connection_kwargs

    assert plain["socket_timeout"] == 1.0
    assert blocking["socket_timeout"] == 2.0
    # A long poll on a healthy Redis is not a timeout.
    assert usage_drain(block_ms=1000) == 0


async def test_the_response_cache_on_a_redis_marked_down_is_not_asked(
    organization: Organization,
    owner: User,
    catalog: None,
    upstream: FakeUpstream,
    redis_server: RedisServer,
    settings: SettingsWrapper,
) -> None:
    settings.MUXER_RESPONSE_CACHE_URL = settings.REDIS_URL
    settings.CACHES = {
        **settings.CACHES,
        "responses": {
            "BACKEND": "django_redis.cache.RedisCache",
            "LOCATION": settings.REDIS_URL,
            "OPTIONS": {"SOCKET_CONNECT_TIMEOUT": 0.5, "SOCKET_TIMEOUT": 0.5},
        },
    }
    key = await in_thread(limited_key, organization, owner, rpm_limit=100)
    first, _ = await timed_post(key, temperature=0)
    assert first.headers["x-muxer-cache"] == "miss"

    redis_server.freeze()
    marking, _ = await timed_post(key, temperature=0)  # pays the timeout once and marks Redis down
    assert not redis_state.up
    replies = [await timed_post(key, temperature=0) for _ in range(4)]

    assert marking.status == 200
    # Looked up as a miss without waiting on the frozen cache (each lookup and store would cost 0.5 s).
    assert [(reply.status, reply.headers["x-muxer-cache"]) for reply, _ in replies] == [(200, "miss")] * 4
    assert max(took for _, took in replies) < NO_TIMEOUT
    assert (await upstream_stats(upstream))["requests"] == 6
