"""Budgets while Redis is frozen or stopped: checked against the PostgreSQL ledger, so a hard limit still holds;
and once Redis is back (with its data or without), its counters are rebuilt from the ledger."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest
import redis
from django.db import OperationalError
from pytest_django.fixtures import Settings as SettingsWrapper

from accounts.models import APIKey, Organization
from billing import budgets
from billing.budgets import (
    RedisCounters,
    budget_usage,
    ledger_spent_units,
    reserve,
    rule_from,
    settle,
    to_units,
)
from billing.models import Budget, UsageRecord
from billing.usage import usage_drain
from muxer_project.redis import async_redis, redis_state
from tests.billing.test_budgets import key_row, make_budget  # noqa: F401 - the key fixture
from tests.conftest import FakeUpstream, RedisServer
from tests.routing.harness import chat, in_thread, post, upstream_stats
from tests.routing.test_redis_outage import until_recovered

pytestmark = pytest.mark.django_db(transaction=True)

# fake-small ($0.01 / $0.02 per 1M tokens), "Hello gateway" with max_tokens=16: the hold is the worst case
# (21 prompt tokens at a token per byte plus framing, and 16 answer tokens); the charge is 4 + 5 tokens.
WORST = Decimal("0.00000053")
CHARGE = Decimal("0.00000014")


def spend(organization: Organization, key: APIKey, cost: str, request_id: str) -> None:
    UsageRecord.objects.create(
        request_id=request_id,
        organization=organization,
        api_key=key,
        model="fake-small",
        provider="fake",
        cost_usd=Decimal(cost),
        status="ok",
        http_status=200,
        created_at=datetime.now(UTC),
    )


def ledger_and_counter(budget_id: int) -> tuple[int, tuple[int, int] | None]:
    """The ledger's sum for the budget's current period, and its Redis counter (spent, held)."""
    budget = Budget.objects.select_related("organization").get(pk=budget_id)
    rule = rule_from(budget, budget.organization.timezone)
    start, end = rule.window(datetime.now(UTC))
    return ledger_spent_units(rule, start, end), RedisCounters().read(rule.counter_key(start))


def drain() -> None:
    while usage_drain(block_ms=0):
        pass


@pytest.mark.postgres
@pytest.mark.parametrize("fault", ["frozen", "stopped"])
async def test_a_budget_the_ledger_says_is_spent_still_refuses(
    key_row: tuple[str, APIKey],  # noqa: F811
    organization: Organization,
    upstream: FakeUpstream,
    redis_server: RedisServer,
    fault: str,
) -> None:
    secret, key = key_row
    budget = await in_thread(make_budget, organization, limit_usd=Decimal("0.000001"))
    # Spend Redis never saw: only the ledger knows that less than the worst case is left.
    await in_thread(spend, organization, key, "0.0000006", "req_earlier")
    redis_server.freeze() if fault == "frozen" else redis_server.stop()

    reply = await post(chat(max_tokens=16), key=secret)

    assert reply.status == 429
    assert reply.error["code"] == "budget_exceeded"
    assert reply.headers["x-muxer-budget-id"] == str(budget.pk)
    assert Decimal(reply.headers["x-muxer-budget-remaining"]) == Decimal("0.0000004")
    assert (await upstream_stats(upstream))["requests"] == 0


@pytest.mark.postgres
@pytest.mark.parametrize("refresh_seconds", [0.0, 3600.0])
async def test_spend_during_the_outage_counts_so_the_hard_limit_holds(
    key_row: tuple[str, APIKey],  # noqa: F811
    organization: Organization,
    upstream: FakeUpstream,
    redis_server: RedisServer,
    settings: SettingsWrapper,
    refresh_seconds: float,
) -> None:
    # 0: the ledger is read for every request; 3600: read once, so this process's own settled spend
    # (its rows already in the ledger or not) is all that stops the next request.
    settings.MUXER_BUDGET_LEDGER_REFRESH_SECONDS = refresh_seconds
    secret, _ = key_row
    limit = Decimal("0.0000012")  # less than ten requests' charges
    await in_thread(make_budget, organization, limit_usd=limit)
    redis_server.freeze()

    statuses = [(await post(chat(max_tokens=16), key=secret)).status for _ in range(10)]

    admitted = statuses.count(200)
    assert statuses == [200] * admitted + [429] * (10 - admitted)
    spent = await in_thread(lambda: sum(r.cost_usd for r in UsageRecord.objects.all()))
    assert spent == admitted * CHARGE
    assert spent <= limit
    if refresh_seconds:
        # Nothing counted twice: admitted while what was spent plus the worst case fit.
        assert admitted == int((limit - WORST) / CHARGE) + 1 == 5
    else:
        # A fresh read has the rows this process also still counts itself (for up to 10 s): refused earlier.
        assert admitted >= 3


@pytest.mark.postgres
async def test_after_a_freeze_the_counter_takes_in_the_spend_made_meanwhile(
    key_row: tuple[str, APIKey],  # noqa: F811
    organization: Organization,
    upstream: FakeUpstream,
    redis_server: RedisServer,
) -> None:
    secret, _ = key_row
    budget = await in_thread(make_budget, organization, limit_usd=Decimal("1"))
    assert (await post(chat(max_tokens=16), key=secret)).status == 200
    await in_thread(drain)
    ledger, counter = await in_thread(ledger_and_counter, budget.pk)
    assert counter == (ledger, 0) == (to_units(CHARGE), 0)

    redis_server.freeze()
    for _ in range(3):
        assert (await post(chat(max_tokens=16), key=secret)).status == 200
    redis_server.thaw()
    await until_recovered()

    ledger, counter = await in_thread(ledger_and_counter, budget.pk)
    assert counter == (ledger, 0) == (to_units(4 * CHARGE), 0)


@pytest.mark.postgres
async def test_after_a_restart_that_lost_the_data_the_counter_is_rebuilt_from_the_ledger(
    key_row: tuple[str, APIKey],  # noqa: F811
    organization: Organization,
    upstream: FakeUpstream,
    redis_server: RedisServer,
) -> None:
    secret, _ = key_row
    budget = await in_thread(make_budget, organization, limit_usd=Decimal("1"))
    assert (await post(chat(max_tokens=16), key=secret)).status == 200
    await in_thread(drain)

    redis_server.stop()
    for _ in range(2):
        assert (await post(chat(max_tokens=16), key=secret)).status == 200
    redis_server.start()  # empty: no counters, no stream
    assert (await in_thread(ledger_and_counter, budget.pk))[1] is None
    await until_recovered()

    ledger, counter = await in_thread(ledger_and_counter, budget.pk)
    assert counter == (ledger, 0) == (to_units(3 * CHARGE), 0)

    # And on from there through Redis as usual: the counter and the ledger still agree.
    reply = await post(chat(max_tokens=16), key=secret)
    assert reply.status == 200
    await in_thread(drain)
    ledger, counter = await in_thread(ledger_and_counter, budget.pk)
    assert counter == (ledger, 0) == (to_units(4 * CHARGE), 0)


@pytest.mark.postgres
@pytest.mark.parametrize("fault", ["refused", "frozen"])
async def test_a_hold_taken_before_the_outage_and_settled_during_it_is_released_afterwards(
    key_row: tuple[str, APIKey],  # noqa: F811
    organization: Organization,
    redis_server: RedisServer,
    monkeypatch: pytest.MonkeyPatch,
    fault: str,
) -> None:
    _, key = key_row
    budget = await in_thread(make_budget, organization, limit_usd=Decimal("1"))
    found = await budgets.organization_budgets(organization.pk)
    held = await reserve(
        rules=found.rules,
        team_id=None,
        api_key_id=key.pk,
        user_id=None,
        costs={"fake-small": Decimal("0.5")},
        total=Decimal("0.5"),
    )
    assert held is not None
    assert not held.from_ledger
    assert (await in_thread(ledger_and_counter, budget.pk))[1] == (0, to_units(Decimal("0.5")))

    if fault == "refused":
        # The settlement never reaches Redis. (A frozen Redis runs it late, once thawed: both must end the same.)
        async def refused(*args: object) -> None:
            raise redis.ConnectionError("connection refused")

        monkeypatch.setattr(budgets._redis, "settle", refused)
    else:
        redis_server.freeze()
    held.charge("fake-small", Decimal("0.01"))
    await settle(held)
    assert not redis_state.up
    await in_thread(spend, organization, key, "0.01", "req_settled_in_the_outage")
    monkeypatch.undo()
    redis_server.thaw()
    await until_recovered()

    assert (await in_thread(ledger_and_counter, budget.pk))[1] == (to_units(Decimal("0.01")), 0)


async def test_a_ledger_that_cannot_be_read_either_is_a_503(
    key_row: tuple[str, APIKey],  # noqa: F811
    organization: Organization,
    upstream: FakeUpstream,
    redis_server: RedisServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    secret, _ = key_row
    await in_thread(make_budget, organization, limit_usd=Decimal("1"))
    await budgets.organization_budgets(organization.pk)  # the rules are cached: only the ledger is needed

    def unreachable(*args: object) -> int:
        raise OperationalError("connection refused")

    monkeypatch.setattr(budgets, "ledger_spent_units", unreachable)
    redis_server.stop()

    reply = await post(chat(max_tokens=16), key=secret)

    assert reply.status == 503
    assert reply.error["code"] == "budget_unavailable"
    assert (await upstream_stats(upstream))["requests"] == 0


async def test_the_console_reads_spend_from_the_ledger_while_redis_is_down(
    key_row: tuple[str, APIKey],  # noqa: F811
    organization: Organization,
    redis_server: RedisServer,
) -> None:
    _, key = key_row
    budget = await in_thread(make_budget, organization, limit_usd=Decimal("1"))
    await in_thread(spend, organization, key, "0.25", "req_spent")
    redis_server.stop()

    usage = await in_thread(lambda: budget_usage(Budget.objects.select_related("organization").get(pk=budget.pk)))

    assert (usage.spent_usd, usage.reserved_usd, usage.remaining_usd) == (Decimal("0.25"), 0, Decimal("0.75"))


@pytest.mark.postgres
@pytest.mark.parametrize("connection", ["stale", "fresh"])
async def test_a_request_in_flight_across_a_restart_is_counted_once(
    key_row: tuple[str, APIKey],  # noqa: F811
    organization: Organization,
    redis_server: RedisServer,
    connection: str,
) -> None:
    _, key = key_row
    budget = await in_thread(make_budget, organization, limit_usd=Decimal("1"))
    found = await budgets.organization_budgets(organization.pk)
    held = await reserve(
        rules=found.rules,
        team_id=None,
        api_key_id=key.pk,
        user_id=None,
        costs={"fake-small": Decimal("0.5")},
        total=Decimal("0.5"),
    )
    assert held is not None
    await in_thread(spend, organization, key, "0.25", "req_before")

    redis_server.restart()  # the counter and the hold are gone
    if connection == "fresh":
        # The settlement reaches the new Redis (else it fails on the old connection, and Redis is marked down).
        await async_redis().connection_pool.disconnect()
    held.charge("fake-small", Decimal("0.01"))
    await settle(held)
    assert redis_state.up == (connection == "fresh")

    async def another_request() -> None:
        later = await reserve(
            rules=found.rules, team_id=None, api_key_id=key.pk, user_id=None, costs={"fake-small": CHARGE}, total=CHARGE
        )
        assert later is not None
        await settle(later)

    if connection == "fresh":
        # Another request rebuilds the counter before this one's usage row is in the ledger.
        await another_request()
        await in_thread(spend, organization, key, "0.01", "req_in_flight")
    else:
        await in_thread(spend, organization, key, "0.01", "req_in_flight")  # written directly, at once
        await until_recovered()
        await another_request()  # the counter's first use after the restart rebuilds it

    ledger, counter = await in_thread(ledger_and_counter, budget.pk)
    assert counter == (ledger, 0) == (to_units(Decimal("0.26")), 0)


@pytest.mark.postgres
async def test_a_counter_built_while_usage_is_still_queued_counts_it(
    key_row: tuple[str, APIKey],  # noqa: F811
    organization: Organization,
    upstream: FakeUpstream,
    redis_server: RedisServer,
) -> None:
    secret, _ = key_row
    budget = await in_thread(make_budget, organization, limit_usd=Decimal("1"))
    assert (await post(chat(max_tokens=16), key=secret)).status == 200
    # The counter is lost (as when Redis restarts) while the request's usage is still on the stream.
    await in_thread(budgets.forget_budget_state)

    assert await in_thread(budgets.budget_counters_reconcile) == 1
    assert (await in_thread(ledger_and_counter, budget.pk)) == (0, (to_units(CHARGE), 0))
    await in_thread(drain)
    assert (await in_thread(ledger_and_counter, budget.pk)) == (to_units(CHARGE), (to_units(CHARGE), 0))
