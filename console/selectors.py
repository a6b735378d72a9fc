"""The console's reads: the dashboard's figures, the usage explorer's rows and the playground's choices.

Every figure is summed by the database (one aggregate or one GROUP BY per
question); Python only arranges the few rows that come back. Days follow the
organization's calendar (``Organization.timezone``), as its budgets do.
"""

from __future__ import annotations

import zoneinfo
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from decimal import Decimal

from django.db.models import Count, Q, QuerySet, Sum
from django.db.models.functions import TruncDate
from django.utils import timezone

from accounts.models import APIKey, KeyScope, Organization, Role, User
from billing.budgets import period_bounds
from billing.models import Budget, BudgetPeriod, BudgetScope, UsageRecord, UsageStatus
from billing.pricing import COST_QUANTUM
from billing.recommendations import Tally, price_usd
from billing.selectors import UsageQuery, usage_records
from providers.catalog import CatalogModel, get_catalog_sync
from routing.schema import STRATEGY_ALIASES

FAKE_PROVIDER = "fake"
HISTORY_DAYS = 30
TOP_MODELS = 5


def org_zone(organization: Organization) -> zoneinfo.ZoneInfo:
    try:
        return zoneinfo.ZoneInfo(organization.timezone or "UTC")
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        return zoneinfo.ZoneInfo("UTC")


def period_window(organization: Organization, period: str, now: datetime) -> tuple[datetime, datetime]:
    """The organization's calendar day or month containing ``now``, as UTC instants."""
    start, end = period_bounds(period, organization.timezone, now)
    assert end is not None
    return start, end


# --- totals ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PeriodTotals:
    """Every usage record of a window: ``requests`` counts them all, ``errors`` those not answered OK."""

    requests: int = 0
    errors: int = 0
    cost_usd: Decimal = Decimal(0)

    @property
    def error_rate(self) -> Decimal | None:
        """Percent of requests not answered OK, to one place; None without requests."""
        if not self.requests:
            return None
        return (Decimal(self.errors) * 100 / self.requests).quantize(Decimal("0.1"))


def _usage(organization: Organization, since: datetime, until: datetime) -> QuerySet[UsageRecord]:
    return UsageRecord.objects.filter(organization=organization, created_at__gte=since, created_at__lt=until)


def period_totals(*, organization: Organization, since: datetime, until: datetime) -> PeriodTotals:
    row = _usage(organization, since, until).aggregate(
        requests=Count("id"), errors=Count("id", filter=~Q(status=UsageStatus.OK)), cost=Sum("cost_usd")
    )
    return PeriodTotals(requests=row["requests"], errors=row["errors"], cost_usd=row["cost"] or Decimal(0))


@dataclass(frozen=True)
class ModelShare:
    model: str
    requests: int
    cost_usd: Decimal


def top_models(
    *, organization: Organization, since: datetime, until: datetime, by: str = "cost", limit: int = TOP_MODELS
) -> list[ModelShare]:
    """The models with the most spend (``by="cost"``) or requests (``by="requests"``), largest first."""
    order = ("-cost", "-requests", "model") if by == "cost" else ("-requests", "-cost", "model")
    rows = (
        _usage(organization, since, until)
        .values("model")
        .annotate(requests=Count("id"), cost=Sum("cost_usd"))
        .order_by(*order)[:limit]
    )
    return [ModelShare(r["model"], r["requests"], r["cost"] or Decimal(0)) for r in rows]


@dataclass(frozen=True)
class DayUsage:
    day: date
    requests: int
    cost_usd: Decimal


def daily_usage(*, organization: Organization, now: datetime, days: int = HISTORY_DAYS) -> list[DayUsage]:
    """Spend and requests for each of the last ``days`` days of the organization's calendar, today last."""
    zone = org_zone(organization)
    today = now.astimezone(zone).date()
    first = today - timedelta(days=days - 1)
    since = datetime(first.year, first.month, first.day, tzinfo=zone)
    rows = (
        _usage(organization, since, period_window(organization, BudgetPeriod.DAILY, now)[1])
        .annotate(day=TruncDate("created_at", tzinfo=zone))
        .values("day")
        .annotate(requests=Count("id"), cost=Sum("cost_usd"))
        .order_by()
    )
    found = {r["day"]: r for r in rows}
    series = []
    for offset in range(days):
        day = first + timedelta(days=offset)
        row = found.get(day)
        series.append(DayUsage(day, row["requests"] if row else 0, (row["cost"] or Decimal(0)) if row else Decimal(0)))
    return series


def org_budget(*, organization: Organization, period: str) -> Budget | None:
    """The organization-wide, every-model budget for ``period``; the tightest when there are several."""
    return (
        Budget.objects.filter(
            organization=organization, scope=BudgetScope.ORGANIZATION, model="", period=period, enabled=True
        )
        .order_by("limit_usd", "id")
        .first()
    )


# --- savings -----------------------------------------------------------------------------------

SAVINGS_DEFINITION = (
    "Savings compare what you paid with what the same requests would have cost on the reference strong model: "
    "the most capable (highest quality tier) enabled chat model your organization may use, and the most expensive "
    "of that tier by list price per million input plus output tokens. Successful requests' input, cached-input and "
    "output tokens are priced at its current list prices; what you paid counts every attempt, failed and "
    "escalated ones too. Traffic on the development fake provider is compared with the fake provider's own models."
)


@dataclass(frozen=True)
class RoutingSavings:
    reference_models: list[str]
    reference_cost_usd: Decimal
    actual_cost_usd: Decimal

    @property
    def saving_usd(self) -> Decimal:
        return self.reference_cost_usd - self.actual_cost_usd

    @property
    def saving_percent(self) -> Decimal | None:
        if self.reference_cost_usd <= 0:
            return None
        return (self.saving_usd * 100 / self.reference_cost_usd).quantize(Decimal("0.1"))


def _offered(organization: Organization, model: CatalogModel) -> bool:
    if organization.allowed_models and model.name not in organization.allowed_models:
        return False
    return not (organization.allowed_providers and model.provider not in organization.allowed_providers)


def reference_model(*, organization: Organization, fake: bool = False) -> CatalogModel | None:
    """The reference strong model (see ``SAVINGS_DEFINITION``) among real models, or among the fake ones."""
    candidates = [
        m
        for m in get_catalog_sync().chat_models()
        if _offered(organization, m) and (m.provider == FAKE_PROVIDER) == fake
    ]
    if not candidates:
        return None
    return max(
        candidates,
        key=lambda m: (m.quality_tier, m.input_price_per_mtok_usd + m.output_price_per_mtok_usd, m.name),
    )


def routing_savings(*, organization: Organization, since: datetime, until: datetime) -> RoutingSavings | None:
    """What routing saved over the window against the reference strong model; None without usage."""
    records = _usage(organization, since, until)
    actual = records.aggregate(cost=Sum("cost_usd"))["cost"]
    if actual is None:
        return None
    rows = (
        records.filter(status=UsageStatus.OK)
        .annotate(fake=Q(provider=FAKE_PROVIDER))
        .values("fake")
        .annotate(
            requests=Count("id"),
            input_tokens=Sum("input_tokens"),
            cached=Sum("cached_input_tokens"),
            output_tokens=Sum("output_tokens"),
        )
        .order_by()
    )
    reference_cost = Decimal(0)
    names: list[str] = []
    for row in rows:
        reference = reference_model(organization=organization, fake=bool(row["fake"]))
        if reference is None:
            continue
        tally = Tally(
            requests=row["requests"],
            input_tokens=row["input_tokens"] or 0,
            cached_input_tokens=row["cached"] or 0,
            output_tokens=row["output_tokens"] or 0,
        )
        reference_cost += price_usd(reference, tally)
        names.append(reference.name)
    return RoutingSavings(
        reference_models=sorted(names),
        reference_cost_usd=reference_cost.quantize(COST_QUANTUM),
        actual_cost_usd=actual,
    )


# --- the dashboard -----------------------------------------------------------------------------


@dataclass(frozen=True)
class BudgetGauge:
    """Spend of a period against the organization's budget for it (when there is one)."""

    spent_usd: Decimal
    budget: Budget | None

    @property
    def limit_usd(self) -> Decimal | None:
        return self.budget.limit_usd if self.budget is not None else None

    @property
    def percent(self) -> Decimal | None:
        """Share of the limit spent, capped at 100 for drawing; None without a budget."""
        if self.budget is None:
            return None
        if self.budget.limit_usd <= 0:
            return Decimal(100) if self.spent_usd > 0 else Decimal(0)
        return min(Decimal(100), (self.spent_usd * 100 / self.budget.limit_usd).quantize(Decimal("0.1")))

    @property
    def over(self) -> bool:
        return self.budget is not None and self.spent_usd >= self.budget.limit_usd > 0


@dataclass(frozen=True)
class Dashboard:
    today: PeriodTotals
    month: PeriodTotals
    last_30_days: PeriodTotals
    spend_today: BudgetGauge
    spend_month: BudgetGauge
    top_by_cost: list[ModelShare]
    top_by_requests: list[ModelShare]
    savings: RoutingSavings | None
    days: list[DayUsage] = field(default_factory=list)

    @property
    def has_usage(self) -> bool:
        return self.last_30_days.requests > 0 or self.month.requests > 0


def dashboard(*, organization: Organization, now: datetime | None = None) -> Dashboard:
    moment = now or timezone.now()
    day_start, day_end = period_window(organization, BudgetPeriod.DAILY, moment)
    month_start, month_end = period_window(organization, BudgetPeriod.MONTHLY, moment)
    history_start = day_end - timedelta(days=HISTORY_DAYS)
    today = period_totals(organization=organization, since=day_start, until=day_end)
    month = period_totals(organization=organization, since=month_start, until=month_end)
    recent = period_totals(organization=organization, since=history_start, until=day_end)
    return Dashboard(
        today=today,
        month=month,
        last_30_days=recent,
        spend_today=BudgetGauge(today.cost_usd, org_budget(organization=organization, period=BudgetPeriod.DAILY)),
        spend_month=BudgetGauge(month.cost_usd, org_budget(organization=organization, period=BudgetPeriod.MONTHLY)),
        top_by_cost=top_models(organization=organization, since=history_start, until=day_end, by="cost"),
        top_by_requests=top_models(organization=organization, since=history_start, until=day_end, by="requests"),
        savings=routing_savings(organization=organization, since=history_start, until=day_end),
        days=daily_usage(organization=organization, now=moment),
    )


# --- the usage explorer ------------------------------------------------------------------------


def usage_rows(*, organization: Organization, query: UsageQuery) -> QuerySet[UsageRecord]:
    """The raw records of ``query``, newest first (the explorer's pages)."""
    records = usage_records(organization=organization, query=query)
    return records.select_related("api_key", "team").order_by("-created_at", "-id")


def chat_model_names(*, organization: Organization) -> list[str]:
    """Enabled chat models the organization's policy allows, by name."""
    return sorted(m.name for m in get_catalog_sync().chat_models() if _offered(organization, m))


def provider_slugs() -> list[str]:
    return sorted({m.provider for m in get_catalog_sync().models.values()})


# --- the playground ----------------------------------------------------------------------------


def playground_keys(*, organization: Organization, user: User, role: str) -> list[APIKey]:
    """Active keys with the proxy scope this member may send as: owners and admins any, others their own."""
    keys = APIKey.objects.filter(organization=organization, revoked_at__isnull=True).filter(
        Q(expires_at__isnull=True) | Q(expires_at__gt=timezone.now())
    )
    if role not in (Role.OWNER, Role.ADMIN):
        keys = keys.filter(created_by=user)
    # Scopes are a short JSON list; not every database can search one, so check it here.
    return [key for key in keys.order_by("name", "id") if KeyScope.PROXY in (key.scopes or [])]


def playground_models(*, organization: Organization) -> list[str]:
    """``auto``, the ``muxer/<strategy>`` aliases, then the chat models the organization may use."""
    return ["auto", *STRATEGY_ALIASES, *chat_model_names(organization=organization)]
