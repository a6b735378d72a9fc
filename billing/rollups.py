"""Daily usage rollups and the retention of raw usage records.

A rollup row is one UTC day of one (organization, team, key, model, provider):
requests that succeeded, the rest as errors, and the tokens and dollars of every
row, cascade attempts included (each attempt was paid for). Building a day
replaces its rollups with a fresh aggregate of its usage records, in one
transaction, so it can run as often as needed.

Raw records older than ``MUXER_USAGE_RETENTION_DAYS`` are deleted, a day at a
time and in batches, once that day's rollups count every one of them. From then
on the rollups are the only record of the day, so a rebuild never replaces
rollups with fewer requests than they already count. An organization's records
within the current period of any of its budgets are kept whatever their age:
the budgets' ledger (billing/budgets.py) sums them to rebuild its counters, so
a yearly budget keeps the year, and a lifetime budget keeps everything.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from celery import shared_task
from django.conf import settings
from django.db import connection, transaction
from django.db.models import Count, F, Q, QuerySet, Sum
from django.utils import timezone

from .models import Budget, UsageRecord, UsageRollup, UsageStatus

logger = logging.getLogger(__name__)

GROUP_FIELDS = ("organization_id", "team_id", "api_key_id", "model", "provider")
TOKEN_FIELDS = ("input_tokens", "output_tokens", "cached_input_tokens", "reasoning_tokens")
RETENTION_BATCH_SIZE = 5000


def day_bounds(day: date) -> tuple[datetime, datetime]:
    """The UTC instants a day starts and ends (exclusive)."""
    start = datetime.combine(day, time.min, tzinfo=UTC)
    return start, start + timedelta(days=1)


def _lock_day(day: date) -> None:
    """Serialize builders of one day (PostgreSQL; SQLite transactions already take the write lock)."""
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            # Two-key advisory lock, released at commit: (rollups, the day's ordinal).
            cursor.execute("SELECT pg_advisory_xact_lock(%s, %s)", [0x0B11, day.toordinal()])


def _requests_counted(day: date) -> int:
    counted = UsageRollup.objects.filter(day=day).aggregate(n=Sum(F("requests") + F("errors")))["n"]
    return int(counted or 0)


def _raw_rows(day: date) -> int:
    start, end = day_bounds(day)
    return UsageRecord.objects.filter(created_at__gte=start, created_at__lt=end).count()


@transaction.atomic
def usage_rollup_build(*, day: date) -> int:
    """(Re)build the rollups of one UTC day from its usage records; returns the rollup rows it holds.

    One aggregate query reads the day. If its records are fewer than the rollups
    already count, retention has aged them out and the rollups are kept as they are.
    """
    _lock_day(day)
    start, end = day_bounds(day)
    groups = list(
        UsageRecord.objects.filter(created_at__gte=start, created_at__lt=end)
        .values(*GROUP_FIELDS)
        .annotate(
            ok=Count("id", filter=Q(status=UsageStatus.OK)),
            not_ok=Count("id", filter=~Q(status=UsageStatus.OK)),
            cost=Sum("cost_usd"),
            **{f"sum_{name}": Sum(name) for name in TOKEN_FIELDS},
        )
        .order_by()
    )
    records = sum(g["ok"] + g["not_ok"] for g in groups)
    counted = _requests_counted(day)
    if records < counted:
        logger.warning(
            "usage rollup %s kept: its rollups count %d requests, only %d raw records remain", day, counted, records
        )
        return UsageRollup.objects.filter(day=day).count()
    UsageRollup.objects.filter(day=day).delete()
    UsageRollup.objects.bulk_create(
        [
            UsageRollup(
                day=day,
                organization_id=g["organization_id"],
                team_id=g["team_id"] or 0,
                api_key_id=g["api_key_id"],
                model=g["model"],
                provider=g["provider"],
                requests=g["ok"],
                errors=g["not_ok"],
                cost_usd=g["cost"] or 0,
                **{name: g[f"sum_{name}"] or 0 for name in TOKEN_FIELDS},
            )
            for g in groups
        ],
        batch_size=1000,
    )
    return len(groups)


def retention_cutoff(*, now: datetime | None = None) -> date | None:
    """The first UTC day whose raw records are kept, or None when they are kept forever."""
    days = settings.MUXER_USAGE_RETENTION_DAYS
    if days <= 0:
        return None
    return (now or timezone.now()).astimezone(UTC).date() - timedelta(days=days)


@dataclass(frozen=True)
class RetentionResult:
    days: int = 0
    deleted: int = 0
    # Organizations with records past the cutoff kept for a budget's current period.
    held: int = 0


def budget_periods_start(*, now: datetime) -> dict[int, datetime]:
    """Per organization, the earliest start of any of its budgets' current period."""
    from .budgets import period_bounds

    starts: dict[int, datetime] = {}
    for organization_id, period, tz_name in Budget.objects.values_list(
        "organization_id", "period", "organization__timezone"
    ):
        start = period_bounds(period, tz_name, now)[0]
        starts[organization_id] = min(start, starts.get(organization_id, start))
    return starts


def _kept_for_budgets(budgets_from: dict[int, datetime]) -> Q | None:
    """Records a budget's current period still needs: one term per distinct period start, not per organization."""
    by_start: dict[datetime, list[int]] = {}
    for organization_id, since in budgets_from.items():
        by_start.setdefault(since, []).append(organization_id)
    kept = None
    for since, organizations in by_start.items():
        term = Q(organization_id__in=organizations, created_at__gte=since)
        kept = term if kept is None else kept | term
    return kept


def usage_records_expire(*, now: datetime | None = None, batch_size: int = RETENTION_BATCH_SIZE) -> RetentionResult:
    """Delete raw usage records of the days before the retention cutoff, each day once its rollups count them all."""
    moment = now or timezone.now()
    cutoff = retention_cutoff(now=moment)
    if cutoff is None:
        return RetentionResult()
    before_cutoff = UsageRecord.objects.filter(created_at__lt=day_bounds(cutoff)[0])
    kept = _kept_for_budgets(budget_periods_start(now=moment))
    deletable = before_cutoff if kept is None else before_cutoff.exclude(kept)
    days = deleted = 0
    after: datetime | None = None
    while True:
        # Straight to the next day with something to delete.
        remaining = deletable if after is None else deletable.filter(created_at__gte=after)
        first = remaining.order_by("created_at").values_list("created_at", flat=True).first()
        if first is None:
            break
        day = first.astimezone(UTC).date()
        after = day_bounds(day)[1]
        raw = _raw_rows(day)
        # Records the rollups have not seen yet (written late, or never rolled up) are rolled up first.
        if raw > _requests_counted(day):
            usage_rollup_build(day=day)
        if raw > _requests_counted(day):
            logger.error("usage retention skipped %s: its rollups do not count all %d records", day, raw)
            continue
        deleted += _delete_day(deletable, day, batch_size=batch_size)
        days += 1
    held = 0 if kept is None else before_cutoff.filter(kept).values("organization_id").distinct().count()
    return RetentionResult(days=days, deleted=deleted, held=held)


def _delete_day(deletable: QuerySet[UsageRecord], day: date, *, batch_size: int) -> int:
    """Delete one day's deletable records in batches, each its own short transaction."""
    start, end = day_bounds(day)
    deleted = 0
    while True:
        ids = list(
            deletable.filter(created_at__gte=start, created_at__lt=end)
            .order_by()
            .values_list("id", flat=True)[:batch_size]
        )
        if not ids:
            return deleted
        # Kept request bodies (billing.RequestLog) cascade with their records; loading only the ids keeps
        # that to one more statement, and the count is of usage records alone.
        _total, per_model = UsageRecord.objects.filter(id__in=ids).only("id").delete()
        deleted += per_model.get(UsageRecord._meta.label, 0)


# --- Celery tasks (registered by name; CELERY_BEAT_SCHEDULE runs the last two) -----------------------


@shared_task(name="billing.usage_rollup_day", acks_late=True)
def usage_rollup_day(day_iso: str) -> int:
    """Rebuild one UTC day's rollups (``YYYY-MM-DD``)."""
    return usage_rollup_build(day=date.fromisoformat(day_iso))


@shared_task(name="billing.usage_rollup_recent", acks_late=True)
def usage_rollup_recent() -> dict[str, int]:
    """Rebuild yesterday's and today's rollups (UTC): today's grow all day, and late records land in yesterday."""
    today = timezone.now().astimezone(UTC).date()
    return {day.isoformat(): usage_rollup_build(day=day) for day in (today - timedelta(days=1), today)}


@shared_task(name="billing.usage_retention_apply", acks_late=True)
def usage_retention_apply() -> dict[str, Any]:
    """Age out raw usage records past ``MUXER_USAGE_RETENTION_DAYS`` (0 keeps them forever)."""
    result = usage_records_expire()
    return {"days": result.days, "deleted": result.deleted, "held": result.held}
