"""Console pages: the usage explorer (filters, totals per group, the raw records, and their CSV export),
and one record's kept request and response bodies for the roles that may read them.

The filters mean what the usage API's do: dates are UTC days, ``until``
included, so the export link (the API's own ``usage-export`` view, with the
same parameters) gives exactly the records the page lists.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from urllib.parse import urlencode

from django import forms
from django.core.paginator import Page, Paginator
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseNotAllowed
from django.shortcuts import render
from django.urls import URLPattern, path, reverse
from django.utils import timezone

from accounts.models import Organization
from accounts.permissions import Perm
from accounts.selectors import api_keys_for_org, teams_for_org
from billing.models import UsageStatus
from billing.request_log import request_log_for_usage, request_logged_usage_ids
from billing.selectors import RecordsAgedOut, UsageQuery, UsageTotals, usage_summary

from .. import selectors
from ..access import OrgAccess, org_page
from .dashboard import usd

PAGE_SIZE = 50
DEFAULT_DAYS = 30
GROUP_CHOICES = (
    ("day", "Day (UTC)"),
    ("model", "Model"),
    ("api_key", "API key"),
    ("team", "Team"),
    ("provider", "Provider"),
    ("status", "Status"),
)
# The form's filters, by the usage API's parameter names.
FILTERS = ("since", "until", "model", "provider", "api_key", "team", "status")


class UsageFilterForm(forms.Form):
    since = forms.DateField(required=False, label="From (UTC day)", widget=forms.DateInput(attrs={"type": "date"}))
    until = forms.DateField(
        required=False, label="Until (UTC day, included)", widget=forms.DateInput(attrs={"type": "date"})
    )
    model = forms.CharField(required=False, max_length=120, widget=forms.TextInput(attrs={"list": "usage-models"}))
    provider = forms.ChoiceField(required=False)
    api_key = forms.TypedChoiceField(required=False, coerce=int, empty_value=None, label="API key")
    team = forms.TypedChoiceField(required=False, coerce=int, empty_value=None)
    status = forms.ChoiceField(required=False, choices=[("", "Any"), *UsageStatus.choices])
    group_by = forms.ChoiceField(required=False, choices=GROUP_CHOICES, label="Group by")
    page = forms.IntegerField(required=False, min_value=1, widget=forms.HiddenInput)

    def __init__(self, *args: Any, organization: Organization, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.key_names = {key.pk: key.name for key in api_keys_for_org(organization=organization)}
        self.team_names = {team.pk: team.name for team in teams_for_org(organization=organization)}
        self._choices("api_key", [("", "Any"), *self.key_names.items()])
        self._choices("team", [("", "Any"), *self.team_names.items()])
        self._choices("provider", [("", "Any"), *((slug, slug) for slug in selectors.provider_slugs())])

    def _choices(self, name: str, choices: list[tuple[Any, str]]) -> None:
        field = self.fields[name]
        assert isinstance(field, forms.ChoiceField)
        field.choices = choices

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        today = timezone.now().astimezone(UTC).date()
        until: date = data.get("until") or today
        since: date = data.get("since") or until - timedelta(days=DEFAULT_DAYS - 1)
        if since > until:
            raise forms.ValidationError("'From' must not be after 'until'.")
        data["since"], data["until"] = since, until
        data["group_by"] = data.get("group_by") or "day"
        return data

    def usage_query(self, organization: Organization) -> UsageQuery:
        data = self.cleaned_data
        return UsageQuery(
            since=datetime.combine(data["since"], time.min, tzinfo=UTC),
            until=datetime.combine(data["until"], time.min, tzinfo=UTC) + timedelta(days=1),
            model=data.get("model") or None,
            provider=data.get("provider") or None,
            api_key=api_keys_for_org(organization=organization).filter(pk=data["api_key"]).first()
            if data.get("api_key")
            else None,
            team=teams_for_org(organization=organization).filter(pk=data["team"]).first() if data.get("team") else None,
            status=data.get("status") or None,
            group_by=(data["group_by"],),
        )

    def filter_params(self) -> dict[str, str]:
        """The filters as the usage API's query parameters."""
        return {name: str(self.cleaned_data[name]) for name in FILTERS if self.cleaned_data.get(name)}

    def first_error(self) -> str:
        for name, errors in self.errors.items():
            label = "" if name == "__all__" else f"{self.fields[name].label or name.replace('_', ' ').title()}: "
            return f"{label}{errors[0]}"
        return ""

    def group_label(self, name: str, value: Any) -> str:
        if value is None:
            return "(none)"
        if name == "api_key":
            return self.key_names.get(value, f"key {value}")
        if name == "team":
            return self.team_names.get(value, f"team {value}")
        if name == "status":
            return str(UsageStatus(value).label) if value in UsageStatus.values else str(value)
        return str(value)


@dataclass(frozen=True)
class GroupRow:
    label: str
    requests: int
    errors: int
    input_tokens: int
    output_tokens: int
    cost: str


def _row(label: str, totals: UsageTotals) -> GroupRow:
    return GroupRow(
        label=label,
        requests=totals.requests + totals.errors,
        errors=totals.errors,
        input_tokens=totals.input_tokens,
        output_tokens=totals.output_tokens,
        cost=usd(totals.cost_usd),
    )


@org_page(Perm.USAGE_VIEW)
def usage_page(request: HttpRequest, access: OrgAccess) -> HttpResponse:
    organization = access.organization
    form = UsageFilterForm(request.GET or None, organization=organization)
    context = access.context(
        form=form, models=selectors.chat_model_names(organization=organization), groups=[], totals=None, page=None
    )
    if request.GET and not form.is_valid():
        context["error"] = form.first_error()
        return render(request, "console/usage/page.html", context, status=400)
    if not request.GET:
        form = UsageFilterForm({}, organization=organization)
        form.is_valid()
        context["form"] = form
    query = form.usage_query(organization)
    try:
        summary = usage_summary(organization=organization, query=query)
    except RecordsAgedOut as exc:
        context["error"] = str(exc)
        return render(request, "console/usage/page.html", context, status=400)
    group_by = query.group_by[0]
    params = form.filter_params()
    rows: Page[Any] = Paginator(selectors.usage_rows(organization=organization, query=query), PAGE_SIZE).get_page(
        form.cleaned_data.get("page") or 1
    )
    export = reverse("usage-export", args=[organization.slug])
    logged = (
        request_logged_usage_ids(organization=organization, usage_ids=(record.pk for record in rows.object_list))
        if access.can(Perm.REQUEST_LOG_VIEW)
        else set()
    )
    base = {**params, "group_by": group_by}
    context.update(
        group_by=group_by,
        group_title=dict(GROUP_CHOICES)[group_by],
        groups=[_row(form.group_label(group_by, keys[group_by]), totals) for keys, totals in summary.groups],
        totals=_row("Total", summary.totals),
        page=rows,
        logged=logged,
        export_url=f"{export}?{urlencode(params)}",
        previous_url=f"?{urlencode({**base, 'page': rows.previous_page_number()})}" if rows.has_previous() else "",
        next_url=f"?{urlencode({**base, 'page': rows.next_page_number()})}" if rows.has_next() else "",
        rollups_before=summary.rollups_before,
    )
    return render(request, "console/usage/page.html", context)


def pretty_json(body: object) -> str:
    return json.dumps(body, indent=2, ensure_ascii=False, sort_keys=False)


@org_page(Perm.REQUEST_LOG_VIEW)
def usage_bodies_page(request: HttpRequest, access: OrgAccess, usage_id: int) -> HttpResponse:
    """One usage record's kept bodies; 404 for another organization's record or one without bodies."""
    log = request_log_for_usage(organization=access.organization, usage_id=usage_id)
    if log is None:
        raise Http404("No bodies are kept for this record.")
    if request.method != "GET":
        return HttpResponseNotAllowed(["GET"])
    context = access.context(
        record=log.usage,
        log=log,
        request_json=pretty_json(log.request_body),
        response_json=pretty_json(log.response_body) if log.response_body is not None else "",
        retention_days=access.organization.request_log_retention_days,
    )
    return render(request, "console/usage/bodies.html", context)


urlpatterns: list[URLPattern] = [
    path("<slug:org>/usage/", usage_page, name="console-usage"),
    path("<slug:org>/usage/<int:usage_id>/bodies/", usage_bodies_page, name="console-usage-bodies"),
]
