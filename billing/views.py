"""Console pages of the billing app (server-rendered)."""

from __future__ import annotations

from decimal import Decimal

from django import forms
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

from accounts.permissions import Perm
from console.access import OrgAccess, org_page

from .recommendations import recommendations_for


class RecommendationWindowForm(forms.Form):
    days = forms.IntegerField(min_value=1, max_value=365, required=False)


@org_page(Perm.BUDGETS_VIEW)
def recommendations_page(request: HttpRequest, access: OrgAccess) -> HttpResponse:
    """The organization's savings recommendations; a non-member gets 404, as in the API."""
    form = RecommendationWindowForm(request.GET)
    if not form.is_valid():
        return render(request, "console/recommendations.html",
                      access.context(form=form, days=None, recommendations=[]), status=400)  # fmt: skip
    days = form.cleaned_data["days"] or 30
    found = recommendations_for(organization=access.organization, days=days)
    context = access.context(
        form=form,
        days=days,
        recommendations=found,
        total=sum((r.monthly_saving_usd for r in found), start=Decimal(0)),
    )
    return render(request, "console/recommendations.html", context)
