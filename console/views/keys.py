"""Console pages: API keys (list, create, edit, rotate, revoke).

Writes go through the management API's own views (``console.bridge``), which
apply the scope ceiling and the rule that a member changes only the keys they
created. A new or rotated key's secret is rendered once, in the response to
the POST that made it (never stored, redirected with or put in a message).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Any

from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import URLPattern, path
from django.utils import timezone

from accounts import selectors
from accounts.api import APIKeyDetailView, APIKeyListView, APIKeyRevokeView, APIKeyRotateView
from accounts.models import APIKey
from accounts.permissions import Perm

from ..access import OrgAccess, org_page
from ..bridge import APIResult, api_call
from ..forms_manage import KeyCreateForm, KeyEditForm, KeyRotateForm
from ..submit import done, no_store, not_found_or, submit

LIST_TEMPLATE = "console/keys/list.html"
DETAIL_TEMPLATE = "console/keys/detail.html"


@dataclass(frozen=True)
class KeyRow:
    key: APIKey
    status: str
    may_change: bool


def key_status(key: APIKey) -> str:
    """What the table says: rotated keys keep working until their grace period ends."""
    if key.revoked_at is not None:
        return "revoked"
    if key.expires_at is not None and key.expires_at <= timezone.now():
        return "expired"
    if getattr(key, "rotated_to", None) is not None:
        return "expiring after rotation"
    return "active"


def may_change(access: OrgAccess, key: APIKey) -> bool:
    """The API's rule (``APIKeyScopedView.get_key_to_change``): any key with KEYS_MANAGE, else one's own."""
    if access.can(Perm.KEYS_MANAGE):
        return True
    return access.can(Perm.KEYS_CREATE) and key.created_by_id == access.user.pk


def key_row(access: OrgAccess, key: APIKey) -> KeyRow:
    status = key_status(key)
    return KeyRow(key=key, status=status, may_change=may_change(access, key))


def list_page(
    request: HttpRequest,
    access: OrgAccess,
    *,
    form: KeyCreateForm | None = None,
    issued: dict[str, Any] | None = None,
    error: str = "",
    status: int = 200,
) -> HttpResponse:
    rows = [key_row(access, key) for key in selectors.api_keys_for_org(organization=access.organization)]
    if form is None and access.can(Perm.KEYS_CREATE):
        form = KeyCreateForm(organization=access.organization, role=access.role)
    context = access.context(rows=rows, form=form, issued=issued, error=error)
    return render(request, LIST_TEMPLATE, context, status=status)


@org_page(Perm.KEYS_VIEW, post=Perm.KEYS_CREATE)
def keys_page(request: HttpRequest, access: OrgAccess) -> HttpResponse:
    """The organization's keys; POST creates one and shows its secret this once."""
    if request.method != "POST":
        return list_page(request, access)
    form = KeyCreateForm(request.POST, organization=access.organization, role=access.role)

    def show_secret(result: APIResult) -> HttpResponse:
        fresh = KeyCreateForm(organization=access.organization, role=access.role)
        return no_store(list_page(request, access, form=fresh, issued=result.data, status=201))

    return submit(
        request,
        APIKeyListView,
        method="POST",
        form=form,
        page=partial(list_page, request, access, form=form),
        success=show_secret,
        org=access.organization.slug,
    )


def get_key(access: OrgAccess, key_id: int) -> APIKey:
    key = selectors.api_key_get(organization=access.organization, key_id=key_id)
    if key is None:
        raise Http404("No such API key.")
    return key


def detail_page(
    request: HttpRequest,
    access: OrgAccess,
    key: APIKey,
    *,
    edit_form: KeyEditForm | None = None,
    rotate_form: KeyRotateForm | None = None,
    issued: dict[str, Any] | None = None,
    error: str = "",
    status: int = 200,
) -> HttpResponse:
    row = key_row(access, key)
    changeable = row.may_change and row.status not in ("revoked", "expired")
    if changeable:
        edit_form = edit_form or KeyEditForm(organization=access.organization, api_key=key)
        rotate_form = rotate_form or KeyRotateForm()
    context = access.context(
        row=row,
        key=key,
        changeable=changeable,
        rotatable=changeable and row.status == "active",
        edit_form=edit_form if changeable else None,
        rotate_form=rotate_form if changeable else None,
        issued=issued,
        error=error,
    )
    return render(request, DETAIL_TEMPLATE, context, status=status)


@org_page(Perm.KEYS_VIEW, post=Perm.KEYS_CREATE)
def key_detail_page(request: HttpRequest, access: OrgAccess, key_id: int) -> HttpResponse:
    """One key's settings; POST changes its name, expiry, limits and model allowlist."""
    key = get_key(access, key_id)
    if request.method != "POST":
        return detail_page(request, access, key)
    form = KeyEditForm(request.POST, organization=access.organization, api_key=key)
    back = ("console-key-detail", access.organization.slug, key.pk)
    if form.is_valid() and not form.api_body():
        return done(request, "Nothing to change.", *back)
    return submit(
        request,
        APIKeyDetailView,
        method="PATCH",
        form=form,
        page=partial(detail_page, request, access, key, edit_form=form),
        success=lambda _: done(request, f"Key “{form.cleaned_data['name']}” saved.", *back),
        org=access.organization.slug,
        key_id=key.pk,
    )


@org_page(Perm.KEYS_VIEW, post=Perm.KEYS_CREATE)
def key_rotate_page(request: HttpRequest, access: OrgAccess, key_id: int) -> HttpResponse:
    """A replacement secret, shown once; the old key keeps working for the grace period."""
    key = get_key(access, key_id)
    if request.method != "POST":
        return redirect("console-key-detail", access.organization.slug, key.pk)
    form = KeyRotateForm(request.POST)
    if not form.is_valid():
        return detail_page(request, access, key, rotate_form=form, status=400)
    result = not_found_or(
        api_call(
            request,
            APIKeyRotateView,
            method="POST",
            data={"grace_seconds": form.cleaned_data["grace_seconds"]},
            org=access.organization.slug,
            key_id=key.pk,
        )
    )
    if not result.ok:
        if result.param:
            form.add_api_error(result)
        # A key that can no longer be rotated has no rotate form to carry the message.
        return detail_page(
            request, access, key, rotate_form=form, error="" if result.param else result.message, status=result.status
        )
    successor = get_key(access, result.data["id"])
    return no_store(detail_page(request, access, successor, issued=result.data, status=201))


@org_page(Perm.KEYS_VIEW, post=Perm.KEYS_CREATE)
def key_revoke_page(request: HttpRequest, access: OrgAccess, key_id: int) -> HttpResponse:
    key = get_key(access, key_id)
    if request.method != "POST":
        return redirect("console-key-detail", access.organization.slug, key.pk)
    return submit(
        request,
        APIKeyRevokeView,
        method="POST",
        page=partial(list_page, request, access),
        success=lambda _: done(
            request, f"Key “{key.name}” ({key.prefix}…) revoked.", "console-keys", access.organization.slug
        ),
        org=access.organization.slug,
        key_id=key.pk,
    )


urlpatterns: list[URLPattern] = [
    path("<slug:org>/keys/", keys_page, name="console-keys"),
    path("<slug:org>/keys/<int:key_id>/", key_detail_page, name="console-key-detail"),
    path("<slug:org>/keys/<int:key_id>/rotate/", key_rotate_page, name="console-key-rotate"),
    path("<slug:org>/keys/<int:key_id>/revoke/", key_revoke_page, name="console-key-revoke"),
]
