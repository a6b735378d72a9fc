"""Console pages: budgets, alert settings and budget notifications.

Budgets are changed through the billing API's views, alert settings through
the organization PATCH and ``webhook-secret/`` (whose new secret is shown once,
in the response), all by way of ``console.bridge``.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from functools import partial

from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import URLPattern, path

from accounts.api import OrganizationDetailView, WebhookSecretView
from accounts.permissions import Perm
from accounts.services import masked_url
from billing import services
from billing.api_budgets import BudgetDetailView, BudgetListView, NotificationReadView
from billing.budgets import BudgetUsage, budget_usage
from billing.models import Budget

from ..access import OrgAccess, org_page
from ..bridge import APIResult
from ..forms_manage import AlertSettingsForm, BudgetCreateForm, BudgetEditForm
from ..submit import done, no_store, submit

LIST_TEMPLATE = "console/budgets/list.html"
DETAIL_TEMPLATE = "console/budgets/detail.html"
RECENT_NOTIFICATIONS = 20


@dataclass(frozen=True)
class BudgetRow:
    budget: Budget
    usage: BudgetUsage
    target: str

    @property
    def percent(self) -> Decimal:
        """Spent as a percent of the limit; a zero limit with any spend is full."""
        if self.budget.limit_usd <= 0:
            return Decimal(100) if self.usage.spent_usd > 0 else Decimal(0)
        return (self.usage.spent_usd / self.budget.limit_usd * 100).quantize(Decimal("0.1"))

    @property
    def bar_width(self) -> Decimal:
        return min(self.percent, Decimal(100))

    @property
    def over(self) -> bool:
        return self.percent >= 100


def target_label(budget: Budget) -> str:
    if budget.team is not None:
        return budget.team.name
    if budget.api_key is not None:
        return f"{budget.api_key.name} ({budget.api_key.prefix}…)"
    if budget.user is not None:
        return budget.user.email
    return "whole organization"


def budget_row(budget: Budget) -> BudgetRow:
    return BudgetRow(budget=budget, usage=budget_usage(budget), target=target_label(budget))


def get_budget(access: OrgAccess, budget_id: int) -> Budget:
    budget = services.budget_get(organization=access.organization, budget_id=budget_id)
    if budget is None:
        raise Http404("No such budget.")
    return budget


def alert_form_for(access: OrgAccess) -> AlertSettingsForm:
    organization = access.organization
    return AlertSettingsForm(initial={"alert_email": organization.alert_email, "webhook_url": organization.webhook_url})


def list_page(
    request: HttpRequest,
    access: OrgAccess,
    *,
    form: BudgetCreateForm | None = None,
    alert_form: AlertSettingsForm | None = None,
    webhook_secret: str = "",
    error: str = "",
    status: int = 200,
) -> HttpResponse:
    organization = access.organization
    budgets = services.budgets_for_org(organization=organization).select_related("team", "api_key", "user")
    if form is None and access.can(Perm.BUDGETS_MANAGE):
        form = BudgetCreateForm(organization=organization)
    if alert_form is None and access.can(Perm.ORG_UPDATE):
        alert_form = alert_form_for(access)
    context = access.context(
        rows=[budget_row(budget) for budget in budgets],
        form=form,
        alert_form=alert_form,
        webhook_url_shown=organization.webhook_url
        if access.can(Perm.ORG_UPDATE)
        else masked_url(organization.webhook_url),
        webhook_secret_set=bool(organization.webhook_secret),
        webhook_secret=webhook_secret,
        notifications=services.notifications_for_org(organization=organization)[:RECENT_NOTIFICATIONS],
        error=error,
    )
    return render(request, LIST_TEMPLATE, context, status=status)


@org_page(Perm.BUDGETS_VIEW, post=Perm.BUDGETS_MANAGE)
def budgets_page(request: HttpRequest, access: OrgAccess) -> HttpResponse:
    """Budgets with this period's spend; POST creates one."""
    if request.method != "POST":
        return list_page(request, access)
    form = BudgetCreateForm(request.POST, organization=access.organization)
    slug = access.organization.slug
    return submit(
        request,
        BudgetListView,
        method="POST",
        form=form,
        page=partial(list_page, request, access, form=form),
        success=lambda result: done(request, f"Budget {result.data['id']} created.", "console-budgets", slug),
        org=slug,
    )


def detail_page(
    request: HttpRequest,
    access: OrgAccess,
    budget: Budget,
    *,
    form: BudgetEditForm | None = None,
    status: int = 200,
) -> HttpResponse:
    if form is None and access.can(Perm.BUDGETS_MANAGE):
        form = BudgetEditForm(budget=budget)
    context = access.context(row=budget_row(budget), budget=budget, form=form)
    return render(request, DETAIL_TEMPLATE, context, status=status)


@org_page(Perm.BUDGETS_VIEW, post=Perm.BUDGETS_MANAGE)
def budget_detail_page(request: HttpRequest, access: OrgAccess, budget_id: int) -> HttpResponse:
    """One budget; POST changes what the API lets change (name, limit, hard limit, thresholds, enabled)."""
    budget = get_budget(access, budget_id)
    if request.method != "POST":
        return detail_page(request, access, budget)
    form = BudgetEditForm(request.POST, budget=budget)
    slug = access.organization.slug
    return submit(
        request,
        BudgetDetailView,
        method="PATCH",
        form=form,
        page=partial(detail_page, request, access, budget, form=form),
        success=lambda _: done(request, f"Budget {budget.pk} saved.", "console-budgets", slug),
        org=slug,
        budget_id=budget.pk,
    )


@org_page(Perm.BUDGETS_VIEW, post=Perm.BUDGETS_MANAGE)
def budget_delete_page(request: HttpRequest, access: OrgAccess, budget_id: int) -> HttpResponse:
    budget = get_budget(access, budget_id)
    if request.method != "POST":
        return redirect("console-budget-detail", access.organization.slug, budget.pk)
    slug = access.organization.slug
    return submit(
        request,
        BudgetDetailView,
        method="DELETE",
        page=partial(list_page, request, access),
        success=lambda _: done(request, f"Budget {budget_id} deleted.", "console-budgets", slug),
        org=slug,
        budget_id=budget.pk,
    )


@org_page(Perm.BUDGETS_VIEW, post=Perm.ORG_UPDATE)
def alert_settings_page(request: HttpRequest, access: OrgAccess) -> HttpResponse:
    """Where budget alerts go: an email address and a signed webhook."""
    if request.method != "POST":
        return redirect("console-budgets", access.organization.slug)
    form = AlertSettingsForm(request.POST)
    slug = access.organization.slug
    return submit(
        request,
        OrganizationDetailView,
        method="PATCH",
        form=form,
        page=partial(list_page, request, access, alert_form=form),
        success=lambda _: done(request, "Alert settings saved.", "console-budgets", slug),
        org=slug,
    )


@org_page(Perm.BUDGETS_VIEW, post=Perm.ORG_UPDATE)
def webhook_secret_page(request: HttpRequest, access: OrgAccess) -> HttpResponse:
    """A new webhook signing secret, shown in this response only."""
    if request.method != "POST":
        return redirect("console-budgets", access.organization.slug)

    def show_secret(result: APIResult) -> HttpResponse:
        access.organization.refresh_from_db()
        return no_store(list_page(request, access, webhook_secret=str(result.data["webhook_secret"]), status=201))

    return submit(
        request,
        WebhookSecretView,
        method="POST",
        page=partial(list_page, request, access),
        success=show_secret,
        org=access.organization.slug,
    )


@org_page(Perm.BUDGETS_VIEW, post=Perm.ORG_VIEW)
def notification_read_page(request: HttpRequest, access: OrgAccess, notification_id: int) -> HttpResponse:
    if services.notification_get(organization=access.organization, notification_id=notification_id) is None:
        raise Http404("No such notification.")
    if request.method != "POST":
        return redirect("console-budgets", access.organization.slug)
    return submit(
        request,
        NotificationReadView,
        method="POST",
        page=partial(list_page, request, access),
        success=lambda _: redirect("console-budgets", access.organization.slug),
        org=access.organization.slug,
        notification_id=notification_id,
    )


urlpatterns: list[URLPattern] = [
    path("<slug:org>/budgets/", budgets_page, name="console-budgets"),
    path("<slug:org>/budgets/alerts/", alert_settings_page, name="console-budget-alerts"),
    path("<slug:org>/budgets/webhook-secret/", webhook_secret_page, name="console-webhook-secret"),
    path(
        "<slug:org>/budgets/notifications/<int:notification_id>/read/",
        notification_read_page,
        name="console-notification-read",
    ),
    path("<slug:org>/budgets/<int:budget_id>/", budget_detail_page, name="console-budget-detail"),
    path("<slug:org>/budgets/<int:budget_id>/delete/", budget_delete_page, name="console-budget-delete"),
]
