"""Console pages: the organization's dashboard (spend against budgets, requests, top models, savings, charts)."""

from __future__ import annotations

from decimal import Decimal

from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.urls import NoReverseMatch, URLPattern, path, reverse

from accounts.permissions import Perm
from billing.models import Notification

from .. import charts, selectors
from ..access import OrgAccess, org_page

ALERT_KIND = "budget.threshold_crossed"
RECENT_ALERTS = 3


def usd(amount: Decimal | None) -> str:
    """Dollars for people, with the unit: cents, or more places under a cent."""
    if amount is None:
        return "—"
    return f"{charts.usd_label(amount)} USD"


def _url(name: str, slug: str) -> str:
    try:
        return reverse(name, args=[slug])
    except NoReverseMatch:  # that page is not built yet
        return ""


def spend_chart(days: list[selectors.DayUsage]) -> str:
    points = [
        charts.Point(
            label=f"{day.day:%b %d}",
            value=day.cost_usd,
            title=f"{day.day:%a %d %b %Y}: {usd(day.cost_usd)}, {day.requests:,} requests",
        )
        for day in days
    ]
    return charts.bar_chart(points, label="Spend per day in USD, last 30 days", fmt=charts.usd_label)


def requests_chart(days: list[selectors.DayUsage]) -> str:
    points = [
        charts.Point(
            label=f"{day.day:%b %d}", value=day.requests, title=f"{day.day:%a %d %b %Y}: {day.requests:,} requests"
        )
        for day in days
    ]
    return charts.line_chart(points, label="Requests per day, last 30 days", fmt=charts.count_label)


@org_page(Perm.ORG_VIEW)
def dashboard_page(request: HttpRequest, access: OrgAccess) -> HttpResponse:
    organization = access.organization
    figures = selectors.dashboard(organization=organization)
    alerts = Notification.objects.filter(organization=organization, kind=ALERT_KIND, read_at__isnull=True).order_by(
        "-created_at"
    )[:RECENT_ALERTS]
    context = access.context(
        figures=figures,
        alerts=list(alerts),
        spend_today=usd(figures.spend_today.spent_usd),
        spend_today_limit=usd(figures.spend_today.limit_usd),
        spend_month=usd(figures.spend_month.spent_usd),
        spend_month_limit=usd(figures.spend_month.limit_usd),
        top_by_cost=[(share, usd(share.cost_usd)) for share in figures.top_by_cost],
        top_by_requests=[(share, usd(share.cost_usd)) for share in figures.top_by_requests],
        savings=figures.savings,
        savings_text={
            "saving": usd(figures.savings.saving_usd),
            "reference": usd(figures.savings.reference_cost_usd),
            "actual": usd(figures.savings.actual_cost_usd),
        }
        if figures.savings is not None
        else None,
        savings_definition=selectors.SAVINGS_DEFINITION,
        spend_chart=spend_chart(figures.days),
        requests_chart=requests_chart(figures.days),
        playground_url=_url("console-playground", organization.slug) if access.can(Perm.KEYS_CREATE) else "",
        budgets_url=_url("console-budgets", organization.slug),
        usage_url=_url("console-usage", organization.slug),
        events_socket=f"/ws/console/{organization.slug}/events/",
    )
    return render(request, "console/dashboard/page.html", context)


urlpatterns: list[URLPattern] = [
    path("<slug:org>/", dashboard_page, name="console-dashboard"),
]
