"""Daily usage rollups (billing/rollups.py) and the retention of raw usage records."""

from __future__ import annotations

import itertools
import threading
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from django.db import connection, connections
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from pytest_django.fixtures import Settings as SettingsWrapper

from accounts.models import APIKey, Organization, Team, User
from billing import rollups
from billing.models import Budget, BudgetPeriod, BudgetScope, UsageRecord, UsageRollup, UsageStatus
from billing.rollups import usage_records_expire, usage_rollup_build
from muxer_project.celery import app
from tests.factories import OrganizationFactory, TeamFactory, issue_key

DAY = date(2026, 3, 10)
NOON = datetime(2026, 3, 10, 12, tzinfo=UTC)
_request_ids = itertools.count(1)


def make_record(
    key: APIKey,
    *,
    created_at: datetime = NOON,
    model: str = "gpt-4o-mini",
    provider: str = "openai",
    status: str = UsageStatus.OK,
    cost: str = "0.0010000000",
    tokens: tuple[int, int, int, int] = (100, 50, 0, 0),
    team: Team | None = None,
    user: User | None = None,
    request_id: str | None = None,
    attempt: int = 1,
    **extra: Any,
) -> UsageRecord:
    """One usage row as the proxy writes it; ``tokens`` is (input, output, cached input, reasoning)."""
    input_tokens, output_tokens, cached, reasoning = tokens
    return UsageRecord.objects.create(
        request_id=request_id or f"req_{next(_request_ids)}",
        attempt=attempt,
        organization_id=key.organization_id,
        api_key=key,
        team=team if team is not None else key.team,
        user=user if user is not None else key.created_by,
        model=model,
        provider=provider,
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        cached_input_tokens=cached,
        reasoning_tokens=reasoning,
        cost_usd=Decimal(cost),
        latency_ms=extra.pop("latency_ms", 120),
        status=status,
        http_status=extra.pop("http_status", 200 if status == UsageStatus.OK else 502),
        created_at=created_at,
        **extra,
    )


ROLLUP_COLUMNS = (
    "organization_id", "team_id", "api_key_id", "model", "provider", "requests", "errors",
    "input_tokens", "output_tokens", "cached_input_tokens", "reasoning_tokens", "cost_usd",
)  # fmt: skip


def rollup_rows(day: date = DAY) -> list[tuple[Any, ...]]:
    ordered = UsageRollup.objects.filter(day=day).order_by("organization_id", "team_id", "api_key_id", "model")
    return list(ordered.values_list(*ROLLUP_COLUMNS))


@pytest.fixture
def key(organization: Organization, owner: User) -> APIKey:
    return issue_key(organization, created_by=owner, name="default").api_key


@pytest.fixture
def team_key(organization: Organization, owner: User) -> APIKey:
    team = TeamFactory.create(organization=organization)
    return issue_key(organization, created_by=owner, name="team", team=team).api_key


# --- building a day -----------------------------------------------------------------


@pytest.mark.django_db
def test_a_day_is_summed_per_organization_team_key_model_and_provider(key: APIKey, team_key: APIKey) -> None:
    other_key = issue_key(OrganizationFactory.create(), name="other").api_key
    make_record(key, tokens=(100, 50, 20, 10), cost="0.0010000000")
    make_record(key, tokens=(300, 70, 0, 0), cost="0.0020000001", created_at=NOON + timedelta(hours=5))
    make_record(key, status=UsageStatus.ERROR, tokens=(40, 0, 0, 0), cost="0")
    make_record(key, model="claude-haiku-4-5", provider="anthropic", tokens=(10, 5, 0, 0), cost="0.0000500000")
    make_record(team_key, status=UsageStatus.CLIENT_DISCONNECTED, tokens=(7, 3, 0, 0), cost="0.0000030000")
    make_record(other_key, tokens=(1, 1, 0, 0), cost="0.0000000020")

    assert usage_rollup_build(day=DAY) == 4

    org, team = key.organization_id, team_key.team_id
    assert rollup_rows() == [
        (org, 0, key.pk, "claude-haiku-4-5", "anthropic", 1, 0, 10, 5, 0, 0, Decimal("0.0000500000")),
        (org, 0, key.pk, "gpt-4o-mini", "openai", 2, 1, 440, 120, 20, 10, Decimal("0.0030000001")),
        (org, team, team_key.pk, "gpt-4o-mini", "openai", 0, 1, 7, 3, 0, 0, Decimal("0.0000030000")),
        (other_key.organization_id, 0, other_key.pk, "gpt-4o-mini", "openai", 1, 0, 1, 1, 0, 0, Decimal("2E-9")),
    ]


@pytest.mark.django_db
def test_every_attempt_of_a_cascade_is_spend_and_only_ok_rows_are_requests(key: APIKey) -> None:
    make_record(key, request_id="req_c", attempt=1, model="fake-small", status=UsageStatus.ESCALATED, cost="0.0001")
    make_record(key, request_id="req_c", attempt=2, model="fake-small", status=UsageStatus.OK, cost="0.0002")

    usage_rollup_build(day=DAY)

    [row] = rollup_rows()
    assert row[5:7] == (1, 1)  # requests, errors: the escalated attempt is not a served request
    assert row[-1] == Decimal("0.0003")


@pytest.mark.django_db
def test_days_are_utc_days(key: APIKey) -> None:
    make_record(key, created_at=datetime(2026, 3, 9, 23, 59, 59, 999999, tzinfo=UTC), cost="1")
    make_record(key, created_at=datetime(2026, 3, 10, 0, 0, tzinfo=UTC), cost="2")
    make_record(key, created_at=datetime(2026, 3, 10, 23, 59, 59, tzinfo=UTC), cost="4")
    make_record(key, created_at=datetime(2026, 3, 11, 0, 0, tzinfo=UTC), cost="8")

    usage_rollup_build(day=DAY)

    [row] = rollup_rows()
    assert (row[5], row[-1]) == (2, Decimal(6))


@pytest.mark.django_db
def test_rebuilding_a_day_replaces_its_rollups(key: APIKey) -> None:
    make_record(key, cost="1")
    usage_rollup_build(day=DAY)
    assert usage_rollup_build(day=DAY) == 1
    assert rollup_rows()[0][5:] == (1, 0, 100, 50, 0, 0, Decimal(1))

    make_record(key, cost="2", created_at=NOON + timedelta(hours=1))
    make_record(key, cost="4", model="gpt-4o")
    assert usage_rollup_build(day=DAY) == 2

    assert [(r[3], r[5], r[-1]) for r in rollup_rows()] == [("gpt-4o", 1, Decimal(4)), ("gpt-4o-mini", 2, Decimal(3))]
    assert UsageRollup.objects.count() == 2


@pytest.mark.django_db
def test_a_day_without_usage_has_no_rollups(key: APIKey) -> None:
    make_record(key)

    assert usage_rollup_build(day=DAY + timedelta(days=1)) == 0
    assert UsageRollup.objects.count() == 0


@pytest.mark.django_db
def test_a_day_is_read_with_one_aggregate_query(key: APIKey, team_key: APIKey) -> None:
    for hour in range(6):
        make_record(key if hour % 2 else team_key, created_at=NOON + timedelta(minutes=hour))

    with CaptureQueriesContext(connection) as queries:
        usage_rollup_build(day=DAY)

    reads = [q["sql"] for q in queries.captured_queries if 'FROM "billing_usagerecord"' in q["sql"]]
    assert len(reads) == 1
    assert "GROUP BY" in reads[0]


@pytest.mark.django_db
def test_a_rebuild_never_replaces_rollups_with_fewer_requests_than_they_count(key: APIKey) -> None:
    for _ in range(3):
        make_record(key, cost="1")
    usage_rollup_build(day=DAY)
    # Retention aged out two of the day's raw records; the rollups are the record of the day now.
    UsageRecord.objects.filter(pk__in=UsageRecord.objects.values_list("pk", flat=True)[:2]).delete()

    assert usage_rollup_build(day=DAY) == 1
    assert rollup_rows()[0][5:7] == (3, 0)
    assert rollup_rows()[0][-1] == Decimal(3)


# --- retention ------------------------------------------------------------------------


@pytest.fixture
def now(monkeypatch: pytest.MonkeyPatch) -> datetime:
    """2026-06-08 06:00 UTC: with 90 days' retention, records before 2026-03-10 go."""
    fixed = datetime(2026, 6, 8, 6, tzinfo=UTC)
    monkeypatch.setattr(timezone, "now", lambda: fixed)
    return fixed


@pytest.mark.django_db
def test_retention_deletes_raw_records_of_days_the_rollups_count(key: APIKey, now: datetime) -> None:
    aged = [make_record(key, created_at=NOON - timedelta(days=d), cost="1") for d in (1, 1, 2, 40)]
    kept = [make_record(key, created_at=NOON, cost="1"), make_record(key, created_at=now, cost="1")]
    for day in (DAY - timedelta(days=1), DAY - timedelta(days=2), DAY - timedelta(days=40)):
        usage_rollup_build(day=day)

    result = usage_records_expire()

    assert (result.days, result.deleted) == (3, 4)
    assert set(UsageRecord.objects.values_list("pk", flat=True)) == {r.pk for r in kept}
    assert UsageRollup.objects.filter(day=DAY - timedelta(days=1)).get().requests == 2
    assert not any(UsageRecord.objects.filter(pk=r.pk).exists() for r in aged)


@pytest.mark.django_db
def test_retention_rolls_up_a_day_before_deleting_records_the_rollups_have_not_seen(key: APIKey, now: datetime) -> None:
    old = DAY - timedelta(days=3)
    make_record(key, created_at=NOON - timedelta(days=3), cost="1")
    usage_rollup_build(day=old)
    # Written late, after the day was rolled up; and a day that was never rolled up.
    make_record(key, created_at=NOON - timedelta(days=3, hours=1), cost="2")
    make_record(key, created_at=NOON - timedelta(days=5), cost="4")

    assert usage_records_expire().deleted == 3

    assert UsageRecord.objects.count() == 0
    assert [(r.day, r.requests, r.cost_usd) for r in UsageRollup.objects.order_by("day")] == [
        (DAY - timedelta(days=5), 1, Decimal(4)),
        (old, 2, Decimal(3)),
    ]


@pytest.mark.django_db
def test_zero_retention_days_keep_raw_records_forever(key: APIKey, now: datetime, settings: SettingsWrapper) -> None:
    settings.MUXER_USAGE_RETENTION_DAYS = 0
    make_record(key, created_at=now - timedelta(days=3650))

    assert usage_records_expire().deleted == 0
    assert UsageRecord.objects.count() == 1
    assert UsageRollup.objects.count() == 0


def budget(organization: Organization, period: str) -> Budget:
    return Budget.objects.create(
        organization=organization, scope=BudgetScope.ORGANIZATION, period=period, limit_usd=Decimal(100)
    )


@pytest.mark.django_db
def test_records_in_a_budgets_current_period_are_kept_for_its_ledger(key: APIKey, now: datetime) -> None:
    budget(key.organization, BudgetPeriod.YEARLY)  # this year: from 2026-01-01
    budget(key.organization, BudgetPeriod.MONTHLY)
    other_key = issue_key(OrganizationFactory.create(), name="no budget").api_key
    last_year = make_record(key, created_at=datetime(2025, 12, 31, 23, tzinfo=UTC))
    this_year = make_record(key, created_at=datetime(2026, 1, 1, 1, tzinfo=UTC))
    theirs = make_record(other_key, created_at=datetime(2026, 1, 1, 1, tzinfo=UTC))

    result = usage_records_expire()

    assert (result.days, result.deleted, result.held) == (2, 2, 1)
    assert list(UsageRecord.objects.values_list("pk", flat=True)) == [this_year.pk]
    assert not UsageRecord.objects.filter(pk__in=[last_year.pk, theirs.pk]).exists()
    # The day's rollups still count every request, kept or not.
    assert UsageRollup.objects.get(day=date(2026, 1, 1), api_key_id=key.pk).requests == 1
    assert UsageRollup.objects.get(day=date(2026, 1, 1), api_key_id=other_key.pk).requests == 1


@pytest.mark.django_db
def test_a_lifetime_budget_keeps_all_its_organizations_records(key: APIKey, now: datetime) -> None:
    budget(key.organization, BudgetPeriod.LIFETIME)
    make_record(key, created_at=now - timedelta(days=3000))

    assert usage_records_expire() == rollups.RetentionResult(days=0, deleted=0, held=1)
    assert UsageRecord.objects.count() == 1


@pytest.mark.django_db
def test_retention_skips_straight_over_days_without_records(key: APIKey, now: datetime) -> None:
    make_record(key, created_at=now - timedelta(days=900))
    make_record(key, created_at=now - timedelta(days=100))

    with CaptureQueriesContext(connection) as queries:
        assert usage_records_expire().deleted == 2

    # Two days' work, not 800 days of lookups.
    assert len(queries.captured_queries) < 40


@pytest.mark.django_db
def test_retention_deletes_in_batches(key: APIKey, now: datetime) -> None:
    for minute in range(5):
        make_record(key, created_at=NOON - timedelta(days=1, minutes=minute))

    with CaptureQueriesContext(connection) as queries:
        assert usage_records_expire(batch_size=2).deleted == 5

    deletes = [q for q in queries.captured_queries if q["sql"].startswith('DELETE FROM "billing_usagerecord"')]
    assert len(deletes) == 3


# --- the Celery tasks and their schedule ------------------------------------------------


@pytest.mark.django_db
def test_the_tasks_are_registered_and_scheduled(settings: SettingsWrapper) -> None:
    app.loader.import_default_modules()
    for name in ("billing.usage_rollup_day", "billing.usage_rollup_recent", "billing.usage_retention_apply"):
        assert name in app.tasks
    scheduled = {entry["task"] for entry in settings.CELERY_BEAT_SCHEDULE.values()}
    assert {"billing.usage_rollup_recent", "billing.usage_retention_apply"} <= scheduled


@pytest.mark.django_db
def test_the_day_task_builds_the_day_it_is_given(key: APIKey) -> None:
    make_record(key)

    assert rollups.usage_rollup_day.apply(args=[DAY.isoformat()]).get() == 1
    assert rollup_rows()[0][5] == 1


@pytest.mark.django_db
def test_the_recent_task_builds_yesterday_and_today(key: APIKey, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(timezone, "now", lambda: datetime(2026, 3, 11, 0, 30, tzinfo=UTC))
    make_record(key, created_at=NOON)  # yesterday
    make_record(key, created_at=datetime(2026, 3, 11, 0, 10, tzinfo=UTC), model="gpt-4o")  # today
    make_record(key, created_at=NOON - timedelta(days=1), model="o3")  # the day before: not touched

    assert rollups.usage_rollup_recent.apply().get() == {"2026-03-10": 1, "2026-03-11": 1}
    assert sorted(UsageRollup.objects.values_list("day", "model")) == [
        (date(2026, 3, 10), "gpt-4o-mini"),
        (date(2026, 3, 11), "gpt-4o"),
    ]


@pytest.mark.django_db
def test_the_retention_task_reports_what_it_deleted(key: APIKey, now: datetime) -> None:
    make_record(key, created_at=NOON - timedelta(days=1))

    assert rollups.usage_retention_apply.apply().get() == {"days": 1, "deleted": 1, "held": 0}


# --- on PostgreSQL: exact sums and concurrent builders -----------------------------------


@pytest.mark.postgres
@pytest.mark.django_db
def test_sums_are_exact_decimals_at_ten_places(key: APIKey) -> None:
    costs = ["12345678.1234567891", "0.0000000001", "7.7777777777"]
    for cost in costs:
        make_record(key, cost=cost)

    usage_rollup_build(day=DAY)

    assert rollup_rows()[0][-1] == sum(Decimal(c) for c in costs) == Decimal("12345685.9012345669")


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_concurrent_builds_of_one_day_leave_one_set_of_rollups(organization: Organization, owner: User) -> None:
    key = issue_key(organization, created_by=owner).api_key
    for minute in range(20):
        make_record(key, created_at=NOON + timedelta(minutes=minute), model=f"m{minute % 4}")
    errors: list[BaseException] = []
    start = threading.Barrier(4)

    def build() -> None:
        try:
            start.wait()
            usage_rollup_build(day=DAY)
        except BaseException as exc:  # collected and asserted below
            errors.append(exc)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=build) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert errors == []
    assert [(r[3], r[5]) for r in rollup_rows()] == [("m0", 5), ("m1", 5), ("m2", 5), ("m3", 5)]
