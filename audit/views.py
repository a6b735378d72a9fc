"""The console's audit log page (server-rendered): owners and admins of the organization."""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta
from typing import Any
from urllib.parse import urlencode

from django import forms
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.urls import reverse

from accounts.permissions import Perm
from console.access import OrgAccess, org_page

from . import exports, selectors
from .selectors import AuditQuery

PAGE_SIZE = 100


class AuditFilterForm(forms.Form):
    action = forms.CharField(required=False, max_length=64)
    actor = forms.IntegerField(required=False, min_value=1, label="Actor (user id)")
    target_type = forms.CharField(required=False, max_length=64)
    target_id = forms.CharField(required=False, max_length=64)
    since = forms.DateField(required=False, widget=forms.DateInput(attrs={"type": "date"}))
    until = forms.DateField(required=False, widget=forms.DateInput(attrs={"type": "date"}), label="Until (inclusive)")
    before = forms.IntegerField(required=False, min_value=1, widget=forms.HiddenInput)

    FILTERS = ("action", "actor", "target_type", "target_id", "since", "until")

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        if data.get("since") and data.get("until") and data["since"] > data["until"]:
            raise forms.ValidationError("'Since' must not be after 'until'.")
        return data

    def audit_query(self) -> AuditQuery:
        data = self.cleaned_data
        since, until = data.get("since"), data.get("until")
        return AuditQuery(
            action=data.get("action") or None,
            actor=data.get("actor"),
            target_type=data.get("target_type") or None,
            target_id=data.get("target_id") or None,
            since=datetime.combine(since, time.min, tzinfo=UTC) if since else None,
            until=datetime.combine(until, time.min, tzinfo=UTC) + timedelta(days=1) if until else None,
        )

    def filter_params(self) -> dict[str, str]:
        """The filters as the API's query parameters (its dates mean the same days)."""
        return {name: str(self.cleaned_data[name]) for name in self.FILTERS if self.cleaned_data.get(name)}


@org_page(Perm.AUDIT_VIEW)
def audit_events_page(request: HttpRequest, access: OrgAccess) -> HttpResponse:
    """The organization's recent audit events; a non-member gets 404, a member without the right 403."""
    organization = access.organization
    form = AuditFilterForm(request.GET)
    context: dict[str, Any] = access.context(form=form, events=[], formats=exports.FORMATS)
    if not form.is_valid():
        return render(request, "audit/events.html", context, status=400)
    events = list(
        selectors.audit_events_for_org(
            organization=organization, query=form.audit_query(), before=form.cleaned_data.get("before")
        )[: PAGE_SIZE + 1]
    )
    page = events[:PAGE_SIZE]
    params = form.filter_params()
    export_url = reverse("audit-events-export", args=[organization.slug])
    context.update(
        events=page,
        exports={fmt: f"{export_url}?{urlencode({**params, 'format': fmt})}" for fmt in exports.FORMATS},
        older=f"?{urlencode({**params, 'before': page[-1].pk})}" if len(events) > PAGE_SIZE else None,
    )
    return render(request, "audit/events.html", context)
