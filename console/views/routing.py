"""Console pages: the organization's routing policy and its rate limits.

The policy (strategy, preference, allowed models and providers) goes to the
API's ``routing-policy/``; the limits and the output-token cap are
organization settings, so they go to the organization PATCH.
"""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.urls import URLPattern, path

from accounts.api import OrganizationDetailView, RoutingPolicyView
from accounts.permissions import Perm

from ..access import OrgAccess, org_page
from ..bridge import api_call
from ..forms_manage import RoutingPolicyForm
from ..submit import done, not_found_or

TEMPLATE = "console/routing/policy.html"


def render_page(
    request: HttpRequest, access: OrgAccess, *, form: RoutingPolicyForm | None = None, status: int = 200
) -> HttpResponse:
    if form is None and access.can(Perm.POLICY_MANAGE):
        form = RoutingPolicyForm(organization=access.organization)
    return render(request, TEMPLATE, access.context(form=form), status=status)


@org_page(Perm.POLICY_VIEW, post=Perm.POLICY_MANAGE)
def routing_page(request: HttpRequest, access: OrgAccess) -> HttpResponse:
    """Everyone reads the policy; owners and admins change it."""
    if request.method != "POST":
        return render_page(request, access)
    form = RoutingPolicyForm(request.POST, organization=access.organization)
    if not form.is_valid():
        return render_page(request, access, form=form, status=400)
    slug = access.organization.slug
    for view, body in ((RoutingPolicyView, form.policy_body()), (OrganizationDetailView, form.limits_body())):
        result = not_found_or(api_call(request, view, method="PATCH", data=body, org=slug))
        if not result.ok:
            form.add_api_error(result)
            return render_page(request, access, form=form, status=result.status)
    return done(request, "Routing policy saved.", "console-routing", slug)


urlpatterns: list[URLPattern] = [
    path("<slug:org>/routing/", routing_page, name="console-routing"),
]
