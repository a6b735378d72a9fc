"""Console pages of the billing app (server-rendered)."""

from __future__ import annotations

from decimal import Decimal

from django import forms
from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import render

from accounts import selectors
from accounts.models import User

from .recommendations import recommendations_for


class RecommendationWindowForm(forms.Form):
    days = forms.IntegerField(min_value=1, max_value=365, required=False)


@login_required
def recommendations_page(request: HttpRequest, org: str) -> HttpResponse:
    """The organization's savings recommendations; a non-member gets 404, as in the API."""
    user = request.user
    membership = selectors.membership_for(user=user, organization_slug=org) if isinstance(user, User) else None
    if membership is None:
        raise Http404("No such organization.")
    form = RecommendationWindowForm(request.GET)
    if not form.is_valid():
        return render(request, "console/recommendations.html", {"organization": membership.organization,
                      "form": form, "days": None, "recommendations": []}, status=400)  # fmt: skip
    days = form.cleaned_data["days"] or 30
    found = recommendations_for(organization=membership.organization, days=days)
    context = {
        "organization": membership.organization,
        "form": form,
        "days": days,
        "recommendations": found,
        "total": sum((r.monthly_saving_usd for r in found), start=Decimal(0)),
    }
    return render(request, "console/recommendations.html", context)
