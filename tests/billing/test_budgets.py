"""Budget enforcement: calendar periods, the reservation engine (memory and Redis), and the proxy's 429."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from pytest_django.fixtures import Settings as SettingsWrapper

from accounts.models import APIKey, Organization, User
from billing.budgets import (
    BudgetRule,
    Entry,
    MemoryCounters,
    RedisCounters,
    budget_counters_reconcile,
    budget_usage,
    ledger_spent_units,
    period_bounds,
    to_units,
    worst_case_input_tokens,
)
from billing.models import Budget, UsageRecord
from tests.conftest import FakeUpstream
from tests.factories import issue_key
from tests.routing.harness import chat, in_thread, post, upstream_stats, usage_rows

# --- periods ---------------------------------------------------------------------------------

NOON = datetime(2026, 3, 18, 12, 0, tzinfo=UTC)  # a Wednesday


@pytest.mark.parametrize(
    ("period", "start", "end"),
    [
        ("daily", datetime(2026, 3, 18), datetime(2026, 3, 19)),
        ("weekly", datetime(2026, 3, 16), datetime(2026, 3, 23)),
        ("monthly", datetime(2026, 3, 1), datetime(2026, 4, 1)),
        ("yearly", datetime(2026, 1, 1), datetime(2027, 1, 1)),
    ],
)
def test_periods_align_to_the_utc_calendar(period: str, start: datetime, end: datetime) -> None:
    assert period_bounds(period, "UTC", NOON) == (start.replace(tzinfo=UTC), end.replace(tzinfo=UTC))


def test_periods_follow_the_organizations_time_zone() -> None:
    # 03:00 UTC on the 18th is still the 17th in New York (UTC-4 in March after the DST switch).
    start, end = period_bounds("daily", "America/New_York", datetime(2026, 3, 18, 3, 0, tzinfo=UTC))

    assert (start, end) == (datetime(2026, 3, 17, 4, tzinfo=UTC), datetime(2026, 3, 18, 4, tzinfo=UTC))


def test_a_day_with_a_daylight_saving_switch_is_23_hours_long() -> None:
    start, end = period_bounds("daily", "America/New_York", datetime(2026, 3, 8, 12, tzinfo=UTC))

    assert end is not None
    assert end - start == timedelta(hours=23)


def test_a_lifetime_budget_never_resets() -> None:
    start, end = period_bounds("lifetime", "Europe/Paris", NOON)

    assert (start.year, end) == (1970, None)


# --- the worst case -------------------------------------------------------------------------------


def test_the_worst_case_prompt_counts_a_token_per_byte_plus_images_tools_and_framing() -> None:
    payload: dict[str, Any] = {
        "messages": [
            {"role": "user", "content": "héllo"},  # 6 bytes
            {"role": "user", "content": [{"type": "text", "text": "abc"}, {"type": "image_url", "image_url": {}}]},
        ],
        "tools": [{"type": "function"}],
    }

    assert worst_case_input_tokens(payload) == 8 + 6 + 8 + 3 + 2_000 + len(b'[{"type":"function"}]')


# --- the engine, on both stores ---------------------------------------------------------------------


def rule(limit: str = "1.00", *, hard: bool = True, budget_id: int = 1) -> BudgetRule:
    return BudgetRule(
        id=budget_id,
        organization_id=1,
        scope="organization",
        target_id=None,
        model="",
        period="daily",
        limit_units=to_units(Decimal(limit)),
        hard=hard,
        thresholds=(),
        tz_name="UTC",
    )


def entry(r: BudgetRule, amount: str) -> Entry:
    return Entry(r, f"muxer:budget:{r.id}:test", NOON, None, to_units(Decimal(amount)))


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.redis)])
def store(request: pytest.FixtureRequest) -> MemoryCounters | RedisCounters:
    return MemoryCounters() if request.param == "memory" else RedisCounters()


async def test_a_reservation_needs_its_counter_built_first(store: MemoryCounters | RedisCounters) -> None:
    outcome = await store.reserve("r1", [entry(rule(), "0.10")], expires_at=9e9)

    assert (outcome.ok, outcome.missing) == (False, 0)


async def test_reserve_then_settle_moves_the_hold_to_spend(store: MemoryCounters | RedisCounters) -> None:
    r = rule("1.00")
    await store.init(entry(r, "0").key, to_units(Decimal("0.20")), 0)

    held = await store.reserve("r1", [entry(r, "0.50")], expires_at=9e9)
    assert held.ok
    assert held.left_units == to_units(Decimal("0.30"))
    assert await in_thread(store.read, entry(r, "0").key) == (to_units(Decimal("0.20")), to_units(Decimal("0.50")))

    [(before, after)] = await store.settle("r1", [(entry(r, "0").key, to_units(Decimal("0.05")))])  # type: ignore[misc]
    assert (before, after) == (to_units(Decimal("0.20")), to_units(Decimal("0.25")))
    assert await in_thread(store.read, entry(r, "0").key) == (to_units(Decimal("0.25")), 0)


async def test_a_hard_limit_refuses_what_does_not_fit_and_holds_nothing(store: MemoryCounters | RedisCounters) -> None:
    tight, loose = rule("1.00", budget_id=1), rule("100", budget_id=2)
    for r in (tight, loose):
        await store.init(entry(r, "0").key, to_units(Decimal("0.90")), 0)

    outcome = await store.reserve("r1", [entry(loose, "0.20"), entry(tight, "0.20")], expires_at=9e9)

    assert (outcome.ok, outcome.refused) == (False, 1)
    assert outcome.left_units == to_units(Decimal("0.10"))
    assert await in_thread(store.read, entry(loose, "0").key) == (to_units(Decimal("0.90")), 0)


async def test_a_soft_budget_never_refuses(store: MemoryCounters | RedisCounters) -> None:
    soft = rule("1.00", hard=False)
    await store.init(entry(soft, "0").key, to_units(Decimal("5")), 0)

    assert (await store.reserve("r1", [entry(soft, "1")], expires_at=9e9)).ok


async def test_a_crashed_workers_hold_expires_and_is_released(store: MemoryCounters | RedisCounters) -> None:
    r = rule("1.00")
    await store.init(entry(r, "0").key, 0, 0)
    await store.reserve("crashed", [entry(r, "0.80")], expires_at=1.0)  # already past

    again = await store.reserve("next", [entry(r, "0.80")], expires_at=9e9)

    assert again.ok
    assert await in_thread(store.read, entry(r, "0").key) == (0, to_units(Decimal("0.80")))


# --- the property: no sequence breaks the books ----------------------------------------------------

OPS = st.lists(
    st.tuples(
        st.sampled_from(["reserve", "settle", "release", "expire", "new_period"]),
        st.integers(min_value=0, max_value=3),  # which request
        st.integers(min_value=0, max_value=400),  # amount, in units of $0.001
    ),
    max_size=40,
)


@given(OPS)
@hypothesis_settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_no_sequence_of_operations_overspends_or_disagrees_with_the_ledger(ops: list[tuple[str, int, int]]) -> None:
    import asyncio

    asyncio.run(_play(MemoryCounters(), ops))


@pytest.mark.redis
@given(OPS)
@hypothesis_settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_the_redis_scripts_keep_the_same_books(ops: list[tuple[str, int, int]]) -> None:
    import asyncio

    from muxer_project.redis import sync_redis

    sync_redis().delete(*[f"muxer:budget:1:p{n}" for n in range(41)], "muxer:budget:resv-expiry")
    asyncio.run(_play(RedisCounters(), ops))


async def _play(store: MemoryCounters | RedisCounters, ops: list[tuple[str, int, int]]) -> None:
    """Replay ``ops`` against the store and against a plain model of the books, comparing after each step."""
    from muxer_project import redis as muxer_redis

    limit = to_units(Decimal("1.000"))
    r = rule("1.000")
    period = 0
    ledger = 0  # what settled in the current period: the usage ledger's sum
    holds: dict[str, int] = {}  # outstanding reservations: request -> amount
    await store.init(f"muxer:budget:1:p{period}", 0, 0)
    for op, who, amount in ops:
        key = f"muxer:budget:1:p{period}"
        rid = f"req{who}-{period}"
        units = to_units(Decimal(amount) / 1000)
        if op == "reserve" and rid not in holds:
            outcome = await store.reserve(rid, [Entry(r, key, NOON, None, units)], expires_at=9e9)
            fits = ledger + sum(holds.values()) + units <= limit
            assert outcome.ok == fits
            if fits:
                holds[rid] = units
        elif op in ("settle", "release") and rid in holds:
            held = holds.pop(rid)
            actual = min(units, held) if op == "settle" else 0
            await store.settle(rid, [(key, actual)])
            ledger += actual
        elif op == "expire" and rid in holds:
            # The worker died: its hold lapses and the next reservation sweeps it.
            if isinstance(store, MemoryCounters):
                store.reservations[rid] = (0.0, store.reservations[rid][1])
            else:
                await muxer_redis.async_redis().zadd("muxer:budget:resv-expiry", {rid: 0})
            del holds[rid]
            await store.reserve("sweeper", [Entry(r, key, NOON, None, 0)], expires_at=9e9)
            await store.settle("sweeper", [(key, 0)])
        elif op == "new_period":
            period += 1
            ledger = 0
            holds.clear()
            await store.init(f"muxer:budget:1:p{period}", 0, 0)
        spent, reserved = store.read(f"muxer:budget:1:p{period}") or (0, 0)
        assert spent >= 0
        assert reserved >= 0
        assert spent == ledger
        assert reserved == sum(holds.values())
        assert spent <= limit
    if isinstance(store, RedisCounters):
        await muxer_redis.async_redis().aclose()
        muxer_redis._async_clients.clear()


# --- through the proxy -------------------------------------------------------------------------------


@pytest.fixture
def key_row(organization: Organization, owner: User, catalog: None) -> tuple[str, APIKey]:
    issued = issue_key(organization, created_by=owner)
    return issued.secret, issued.api_key


def make_budget(organization: Organization, **fields: Any) -> Budget:
    values: dict[str, Any] = {"scope": "organization", "period": "daily", "limit_usd": Decimal("1")} | fields
    return Budget.objects.create(organization=organization, **values)


@pytest.mark.django_db(transaction=True)
async def test_a_request_that_does_not_fit_gets_the_budget_error(
    key_row: tuple[str, APIKey], organization: Organization, upstream: FakeUpstream
) -> None:
    secret, key = key_row
    await in_thread(make_budget, organization, scope="api_key", api_key=key, limit_usd=Decimal("0.0000001"))

    reply = await post(chat(max_tokens=16), key=secret)

    assert reply.status == 429
    assert reply.error["type"] == "insufficient_quota"
    assert reply.error["code"] == "budget_exceeded"
    assert Decimal(reply.headers["x-muxer-budget-remaining"]) == Decimal("0.0000001")
    assert (await upstream_stats(upstream))["requests"] == 0
    assert await usage_rows() == []


@pytest.mark.django_db(transaction=True)
async def test_a_request_that_fits_is_charged_and_says_what_is_left(
    key_row: tuple[str, APIKey], organization: Organization, upstream: FakeUpstream
) -> None:
    secret, _ = key_row
    budget = await in_thread(make_budget, organization, limit_usd=Decimal("1"))

    reply = await post(chat(max_tokens=16), key=secret)

    assert reply.status == 200
    assert Decimal(reply.headers["x-muxer-budget-remaining"]) < Decimal("1")
    [row] = await usage_rows()
    usage = await in_thread(lambda: budget_usage(Budget.objects.select_related("organization").get(pk=budget.pk)))
    assert (usage.spent_usd, usage.reserved_usd) == (row.cost_usd, 0)


@pytest.mark.django_db(transaction=True)
async def test_the_organizations_cap_bounds_the_answer_and_the_hold(
    key_row: tuple[str, APIKey], organization: Organization, upstream: FakeUpstream
) -> None:
    secret, _ = key_row
    await in_thread(Organization.objects.filter(pk=organization.pk).update, max_output_tokens_cap=100)
    # fake-small writes up to 16,384 tokens at $0.02 per 1M: $0.00033 worst case without the cap.
    await in_thread(make_budget, organization, limit_usd=Decimal("0.00001"))

    reply = await post(chat(), key=secret)

    assert reply.status == 200
    assert (await upstream_stats(upstream))["last_request"]["body"]["max_tokens"] == 100


@pytest.mark.django_db(transaction=True)
async def test_a_model_budget_only_counts_that_model(
    key_row: tuple[str, APIKey], organization: Organization, upstream: FakeUpstream
) -> None:
    secret, _ = key_row
    await in_thread(make_budget, organization, model="fake-large", limit_usd=Decimal("0.0000001"))

    other = await post(chat(model="fake-small", max_tokens=16), key=secret)
    refused = await post(chat(model="fake-large", max_tokens=16), key=secret)

    assert other.status == 200
    assert (refused.status, refused.error["code"]) == (429, "budget_exceeded")


@pytest.mark.django_db(transaction=True)
async def test_budgets_of_another_team_or_key_do_not_apply(
    key_row: tuple[str, APIKey], organization: Organization, owner: User, upstream: FakeUpstream
) -> None:
    secret, _ = key_row
    other_key = await in_thread(lambda: issue_key(organization, created_by=owner, name="other").api_key)
    await in_thread(make_budget, organization, scope="api_key", api_key=other_key, limit_usd=Decimal(0))

    assert (await post(chat(max_tokens=16), key=secret)).status == 200


@pytest.mark.django_db(transaction=True)
async def test_every_cascade_attempt_counts_against_the_budget(
    key_row: tuple[str, APIKey], organization: Organization, upstream: FakeUpstream
) -> None:
    secret, _ = key_row
    budget = await in_thread(make_budget, organization, limit_usd=Decimal("1"))
    body = chat("Tell me about Paris [fake model=fake-small refuse=1]", model="muxer/cascade", max_tokens=32)

    reply = await post(body, key=secret)

    assert reply.status == 200
    rows = await usage_rows()
    assert len(rows) == 2
    usage = await in_thread(lambda: budget_usage(Budget.objects.select_related("organization").get(pk=budget.pk)))
    assert usage.spent_usd == sum(r.cost_usd for r in rows)


@pytest.mark.django_db(transaction=True)
def test_reconcile_rebuilds_lost_counters_from_the_ledger(organization: Organization, owner: User) -> None:
    key = issue_key(organization, created_by=owner).api_key
    budget = make_budget(organization, limit_usd=Decimal("5"))
    UsageRecord.objects.create(
        request_id="req_x",
        organization=organization,
        api_key=key,
        model="fake-small",
        provider="fake",
        cost_usd=Decimal("0.25"),
        status="ok",
        http_status=200,
        created_at=datetime.now(UTC),
    )
    budget = Budget.objects.select_related("organization").get(pk=budget.pk)
    from billing.budgets import rule_from

    r = rule_from(budget, "UTC")
    start, end = r.window(datetime.now(UTC))

    assert budget_counters_reconcile() == 1
    assert ledger_spent_units(r, start, end) == to_units(Decimal("0.25"))
    assert budget_usage(budget).spent_usd == Decimal("0.25")
    assert budget_counters_reconcile() == 0


def test_settings_have_budget_defaults(settings: SettingsWrapper) -> None:
    assert settings.MUXER_BUDGET_RESERVATION_SECONDS > settings.MUXER_UPSTREAM_TIMEOUT_SECONDS


@pytest.mark.django_db(transaction=True)
def test_the_reconcile_task_is_scheduled_and_runs(organization: Organization, settings: SettingsWrapper) -> None:
    from billing.tasks import budget_counters_reconcile_task

    make_budget(organization, limit_usd=Decimal("5"))
    schedule = {entry["task"] for entry in settings.CELERY_BEAT_SCHEDULE.values()}

    assert "billing.budget_counters_reconcile" in schedule
    assert budget_counters_reconcile_task.delay().get() == 1  # the new budget's counter is built


def test_the_refusal_names_small_amounts_exactly() -> None:
    from billing.budgets import budget_exceeded

    error = budget_exceeded(rule("0.0000005"), to_units(Decimal("0.0000001")))

    assert "($0.0000001 of $0.0000005 left)" in error.message
    assert "($0.00 of $12.50 left)" in budget_exceeded(rule("12.5"), 0).message
