"""Reads of an organization's usage: grouped sums for the usage API, and raw records for its CSV export.

Raw usage records answer every day still within ``MUXER_USAGE_RETENTION_DAYS``;
earlier days come from the daily rollups, which keep the organization, team,
key, model and provider of each request but not its user or status. A query
over both adds the two up, so totals stay whole after retention.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

from django.db.models import Count, F, Q, QuerySet, Sum
from django.db.models.functions import TruncDate

from accounts.models import APIKey, Organization, Team

from .models import UsageRecord, UsageRollup, UsageStatus
from .rollups import day_bounds, retention_cutoff

GROUPS = ("day", "model", "provider", "api_key", "team", "user", "status")
# Dimensions the daily rollups do not keep.
RECORD_ONLY_GROUPS = frozenset({"user", "status"})
METRICS = ("requests", "errors", "input_tokens", "output_tokens", "cached_input_tokens", "reasoning_tokens")
TOKEN_FIELDS = METRICS[2:]

# The CSV export's columns, in order; never the prompt's features.
EXPORT_COLUMNS = (
    "created_at", "request_id", "attempt", "api_key_id", "team_id", "user_id", "model", "provider", "status",
    "http_status", "input_tokens", "output_tokens", "cached_input_tokens", "reasoning_tokens", "cost_usd",
    "latency_ms", "stream", "route_strategy",
)  # fmt: skip


@dataclass(frozen=True)
class UsageQuery:
    """Which usage to read: ``since`` inclusive, ``until`` exclusive, both aware."""

    since: datetime
    until: datetime
    model: str | None = None
    provider: str | None = None
    api_key: APIKey | None = None
    team: Team | None = None
    status: str | None = None
    group_by: tuple[str, ...] = ()

    @property
    def needs_records(self) -> bool:
        """Whether only raw records can answer it (per-user or per-status detail)."""
        return self.status is not None or bool(RECORD_ONLY_GROUPS & set(self.group_by))


@dataclass
class UsageTotals:
    requests: int = 0
    errors: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cached_input_tokens: int = 0
    reasoning_tokens: int = 0
    cost_usd: Decimal = field(default_factory=Decimal)

    def add(self, row: dict[str, Any]) -> None:
        for name in METRICS:
            setattr(self, name, getattr(self, name) + int(row[f"m_{name}"] or 0))
        self.cost_usd += row["m_cost_usd"] or Decimal(0)


@dataclass
class UsageSummary:
    groups: list[tuple[dict[str, Any], UsageTotals]]
    totals: UsageTotals
    # Days before this one were read from the daily rollups; None when none were.
    rollups_before: date | None


class RecordsAgedOut(ValueError):
    """The query asks for detail the rollups do not keep, over days whose records are gone."""

    def __init__(self, cutoff: date) -> None:
        super().__init__(
            f"usage before {cutoff.isoformat()} is kept only as daily rollups, without users or statuses; "
            f"filter or group by user or status from {cutoff.isoformat()} on."
        )
        self.cutoff = cutoff


def team_get(*, organization: Organization, team_id: int) -> Team | None:
    return Team.objects.filter(organization=organization, pk=team_id).first()


def usage_records(
    *, organization: Organization, query: UsageQuery, since: datetime | None = None
) -> QuerySet[UsageRecord]:
    """The raw records ``query``'s filters select, from ``since`` (default: the query's own start)."""
    records = UsageRecord.objects.filter(
        organization=organization, created_at__gte=since or query.since, created_at__lt=query.until
    )
    if query.model is not None:
        records = records.filter(model=query.model)
    if query.provider is not None:
        records = records.filter(provider=query.provider)
    if query.api_key is not None:
        records = records.filter(api_key=query.api_key)
    if query.team is not None:
        records = records.filter(team=query.team)
    if query.status is not None:
        records = records.filter(status=query.status)
    return records


def _aggregate(rows: QuerySet[Any], groups: dict[str, Any], metrics: dict[str, Any]) -> list[dict[str, Any]]:
    """One GROUP BY query (or one plain aggregate when nothing is grouped)."""
    if not groups:
        return [rows.aggregate(**metrics)]
    return list(
        rows.values(**{f"g_{name}": expression for name, expression in groups.items()}).annotate(**metrics).order_by()
    )


def _record_groups(records: QuerySet[UsageRecord], group_by: Sequence[str]) -> list[dict[str, Any]]:
    expressions = {
        "day": TruncDate("created_at", tzinfo=UTC),
        "model": F("model"),
        "provider": F("provider"),
        "api_key": F("api_key_id"),
        "team": F("team_id"),
        "user": F("user_id"),
        "status": F("status"),
    }
    metrics = {
        "m_requests": Count("id", filter=Q(status=UsageStatus.OK)),
        "m_errors": Count("id", filter=~Q(status=UsageStatus.OK)),
        "m_cost_usd": Sum("cost_usd"),
        **{f"m_{name}": Sum(name) for name in TOKEN_FIELDS},
    }
    return _aggregate(records, {name: expressions[name] for name in group_by}, metrics)


def _rollup_groups(
    *, organization: Organization, query: UsageQuery, first_day: date, end_day: date
) -> list[dict[str, Any]]:
    rollups = UsageRollup.objects.filter(organization=organization, day__gte=first_day, day__lt=end_day)
    if query.model is not None:
        rollups = rollups.filter(model=query.model)
    if query.provider is not None:
        rollups = rollups.filter(provider=query.provider)
    if query.api_key is not None:
        rollups = rollups.filter(api_key_id=query.api_key.pk)
    if query.team is not None:
        rollups = rollups.filter(team_id=query.team.pk)
    expressions = {
        "day": F("day"),
        "model": F("model"),
        "provider": F("provider"),
        "api_key": F("api_key_id"),
        "team": F("team_id"),
    }
    metrics = {"m_cost_usd": Sum("cost_usd"), **{f"m_{name}": Sum(name) for name in METRICS}}
    return _aggregate(rollups, {name: expressions[name] for name in query.group_by}, metrics)


def _group_key(row: dict[str, Any], group_by: Sequence[str]) -> tuple[Any, ...]:
    key = []
    for name in group_by:
        value = row[f"g_{name}"]
        if name == "team" and value == 0:
            value = None  # the rollups' "no team"
        elif name == "day" and isinstance(value, datetime):
            value = value.date()
        key.append(value)
    return tuple(key)


def _sort_key(key: tuple[Any, ...]) -> tuple[tuple[bool, Any], ...]:
    # Nones (no team, no user) last; otherwise the natural order of each value.
    return tuple((value is None, "" if value is None else value) for value in key)


def usage_summary(*, organization: Organization, query: UsageQuery, now: datetime | None = None) -> UsageSummary:
    """Requests, errors, tokens and dollars of ``query``, per group and in total.

    Raises RecordsAgedOut when the query needs per-user or per-status detail
    over days that only the rollups still describe.
    """
    cutoff = retention_cutoff(now=now)
    records_since = query.since
    rollup_rows: list[dict[str, Any]] = []
    rollups_before: date | None = None
    if cutoff is not None and query.since < day_bounds(cutoff)[0]:
        if query.needs_records:
            raise RecordsAgedOut(cutoff)
        end_day = min(cutoff, (query.until - timedelta(microseconds=1)).astimezone(UTC).date() + timedelta(days=1))
        first_day = query.since.astimezone(UTC).date()
        rollup_rows = _rollup_groups(organization=organization, query=query, first_day=first_day, end_day=end_day)
        rollups_before = cutoff
        records_since = max(query.since, day_bounds(cutoff)[0])
    record_rows: list[dict[str, Any]] = []
    if records_since < query.until:
        records = usage_records(organization=organization, query=query, since=records_since)
        record_rows = _record_groups(records, query.group_by)

    grouped: dict[tuple[Any, ...], UsageTotals] = {}
    totals = UsageTotals()
    for row in (*rollup_rows, *record_rows):
        if not row["m_requests"] and not row["m_errors"]:
            continue  # an aggregate over no rows
        grouped.setdefault(_group_key(row, query.group_by), UsageTotals()).add(row)
        totals.add(row)
    groups = [(dict(zip(query.group_by, key, strict=True)), grouped[key]) for key in sorted(grouped, key=_sort_key)]
    return UsageSummary(groups=groups, totals=totals, rollups_before=rollups_before)


def usage_records_pages(
    *, organization: Organization, query: UsageQuery, page_size: int = 2000
) -> Iterator[list[tuple[Any, ...]]]:
    """The raw records of ``query`` as export rows, oldest first, a page (one query) at a time.

    Pages continue after the last (created_at, id) seen, so a long export holds
    neither a cursor nor more than a page in memory.
    """
    records = usage_records(organization=organization, query=query).order_by("created_at", "id")
    after: tuple[datetime, int] | None = None
    while True:
        page = records
        if after is not None:
            page = page.filter(Q(created_at__gt=after[0]) | Q(created_at=after[0], id__gt=after[1]))
        rows = list(page.values_list(*EXPORT_COLUMNS, "id")[:page_size])
        if not rows:
            return
        yield [row[:-1] for row in rows]
        if len(rows) < page_size:
            return
        after = (rows[-1][0], rows[-1][-1])
