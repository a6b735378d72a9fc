"""Console pages: onboarding, the path a new tenant takes.

1. create the organization (``/console/onboarding/``), then, in it,
2. invite teammates (optional; only with a verified email address),
3. create the first API key, whose secret is shown once, on the response page, with
4. copy-paste snippets (later visits show them with an environment variable instead), and
5. send a test request through the real gateway as that key.

Writes go through the management API's own views (``console.bridge``), so the
wizard applies exactly the API's rules and shows its messages. The key's
secret is never stored: the session remembers only the key's id, per
organization, for the test request.
"""

from __future__ import annotations

from typing import Any

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import NoReverseMatch, URLPattern, path, reverse

from accounts import selectors
from accounts.api import APIKeyListView, InvitationListView, OrganizationListView
from accounts.models import APIKey, Organization
from accounts.permissions import Perm, assignable_roles

from ..access import OrgAccess, org_page
from ..bridge import APIResult, api_call
from ..onboarding_forms import FirstRequestForm, InviteForm, KeyForm, OrganizationForm
from ..onboarding_snippets import KEY_VARIABLE, gateway_base_url, snippets
from ..onboarding_trial import first_request_send

STEPS = (
    ("organization", "Organization"),
    ("invite", "Invite teammates"),
    ("key", "API key"),
    ("snippets", "Code snippets"),
    ("test", "Test request"),
)
SESSION_KEYS = "onboarding_key_ids"  # {organization id: id of the key created in the wizard}


def wizard_steps(current: str, organization: Organization | None = None) -> list[dict[str, Any]]:
    """The step indicator: each step's label, state (done, current or upcoming) and URL once reachable."""
    position = [slug for slug, _ in STEPS].index(current)
    steps = []
    for index, (slug, label) in enumerate(STEPS):
        url = None
        if slug != "organization" and organization is not None and index != position:
            url = reverse(f"console-onboarding-{slug}", args=[organization.slug])
        state = "done" if index < position else "current" if index == position else ""
        steps.append({"slug": slug, "label": label, "state": state, "url": url})
    return steps


def dashboard_url(organization: Organization) -> str | None:
    try:
        return reverse("console-dashboard", args=[organization.slug])
    except NoReverseMatch:
        return None


def _apply_api_error(form: Any, result: APIResult) -> None:
    param = result.param if result.param in form.fields else None
    form.add_error(param, result.message or f"The request was refused ({result.status}).")


def _remember_key(request: HttpRequest, organization: Organization, key_id: int) -> None:
    remembered = dict(request.session.get(SESSION_KEYS) or {})
    remembered[str(organization.pk)] = key_id
    request.session[SESSION_KEYS] = remembered


def _remembered_key(request: HttpRequest, organization: Organization) -> APIKey | None:
    key_id = (request.session.get(SESSION_KEYS) or {}).get(str(organization.pk))
    if not isinstance(key_id, int):
        return None
    api_key = selectors.api_key_get(organization=organization, key_id=key_id)
    return api_key if api_key is not None and api_key.is_active else None


@login_required
def organization_step(request: HttpRequest) -> HttpResponse:
    """Step 1: a new organization, owned by the signed-in user."""
    form = OrganizationForm(request.POST if request.method == "POST" else None)
    if form.is_valid():
        data = {"name": form.cleaned_data["name"], "timezone": form.cleaned_data["timezone"]}
        result = api_call(request, OrganizationListView, method="POST", data=data)
        if result.ok:
            messages.success(request, f"{result.data['name']} is ready. You are its owner.")
            return redirect("console-onboarding-invite", result.data["slug"])
        _apply_api_error(form, result)
    context = {"form": form, "steps": wizard_steps("organization")}
    return render(request, "console/onboarding/organization.html", context, status=400 if form.errors else 200)


@org_page(Perm.ORG_VIEW, post=Perm.MEMBERS_MANAGE)
def invite_step(request: HttpRequest, access: OrgAccess) -> HttpResponse:
    """Step 2 (optional): invitations, one per address. The inviter's email address must be verified."""
    organization = access.organization
    verified = access.user.email_verified_at is not None
    form = InviteForm(request.POST if request.method == "POST" else None, roles=assignable_roles(access.role))
    status, sent = 200, []
    if request.method == "POST" and not verified:
        form = InviteForm(roles=assignable_roles(access.role))
        status = 403
    elif form.is_valid():
        failed = []
        for email in form.cleaned_data["emails"]:
            data = {"email": email, "role": form.cleaned_data["role"]}
            result = api_call(request, InvitationListView, method="POST", data=data, org=organization.slug)
            if result.ok:
                sent.append(email)
            else:
                failed.append(f"{email}: {result.message or 'refused'}")
        if not failed:
            messages.success(request, f"Invitation{'s' if len(sent) != 1 else ''} sent to {', '.join(sent)}.")
            return redirect("console-onboarding-key", organization.slug)
        form.add_error("emails", failed)
    if form.errors:
        status = 400
    context = access.context(
        form=form,
        sent=sent,
        verified=verified,
        steps=wizard_steps("invite", organization),
    )
    return render(request, "console/onboarding/invite.html", context, status=status)


@org_page(Perm.ORG_VIEW, post=Perm.KEYS_CREATE)
def key_step(request: HttpRequest, access: OrgAccess) -> HttpResponse:
    """Step 3: the first API key. Its secret is in this POST's response only, with the snippets (step 4)."""
    organization = access.organization
    form = KeyForm(request.POST if request.method == "POST" else None)
    if form.is_valid():
        data = {"name": form.cleaned_data["name"]}
        result = api_call(request, APIKeyListView, method="POST", data=data, org=organization.slug)
        if result.ok:
            _remember_key(request, organization, result.data["id"])
            secret = result.data["key"]
            context = access.context(
                key=result.data,
                secret=secret,
                snippets=snippets(base_url=gateway_base_url(request), secret=secret),
                steps=wizard_steps("snippets", organization),
            )
            response = render(request, "console/onboarding/key_created.html", context)
            response["Cache-Control"] = "no-store"
            return response
        _apply_api_error(form, result)
    context = access.context(
        form=form,
        remembered=_remembered_key(request, organization),
        steps=wizard_steps("key", organization),
    )
    return render(request, "console/onboarding/key.html", context, status=400 if form.errors else 200)


@org_page(Perm.ORG_VIEW)
def snippets_step(request: HttpRequest, access: OrgAccess) -> HttpResponse:
    """Step 4 on a later visit: the snippets read the key from an environment variable."""
    context = access.context(
        snippets=snippets(base_url=gateway_base_url(request)),
        key_variable=KEY_VARIABLE,
        remembered=_remembered_key(request, access.organization),
        steps=wizard_steps("snippets", access.organization),
    )
    return render(request, "console/onboarding/snippets.html", context)


@org_page(Perm.ORG_VIEW, post=Perm.KEYS_CREATE)
def test_step(request: HttpRequest, access: OrgAccess) -> HttpResponse:
    """Step 5: one chat completion through the gateway as the wizard's key; its answer, model, tokens and cost."""
    organization = access.organization
    api_key = _remembered_key(request, organization)
    form = FirstRequestForm(request.POST if request.method == "POST" else None)
    reply = None
    if form.is_valid():
        if api_key is None:
            form.add_error(None, "Create an API key first: the test request is sent as that key.")
        else:
            reply = first_request_send(
                organization_id=organization.pk, key_id=api_key.pk, text=form.cleaned_data["text"]
            )
    context = access.context(
        form=form,
        api_key=api_key,
        reply=reply,
        dashboard_url=dashboard_url(organization),
        steps=wizard_steps("test", organization),
    )
    return render(request, "console/onboarding/test.html", context, status=400 if form.errors else 200)


urlpatterns: list[URLPattern] = [
    path("onboarding/", organization_step, name="console-onboarding"),
    path("<slug:org>/onboarding/invite/", invite_step, name="console-onboarding-invite"),
    path("<slug:org>/onboarding/key/", key_step, name="console-onboarding-key"),
    path("<slug:org>/onboarding/snippets/", snippets_step, name="console-onboarding-snippets"),
    path("<slug:org>/onboarding/test/", test_step, name="console-onboarding-test"),
]
