from __future__ import annotations

from django.db.models import QuerySet

from .models import APIKey, Membership, Organization, User


def organizations_for_user(*, user: User) -> QuerySet[Organization]:
    return Organization.objects.filter(memberships__user=user).order_by("name")


def membership_for(*, user: User, organization_slug: str) -> Membership | None:
    return (
        Membership.objects.select_related("organization")
        .filter(user=user, organization__slug=organization_slug)
        .first()
    )


def api_keys_for_org(*, organization: Organization) -> QuerySet[APIKey]:
    return APIKey.objects.filter(organization=organization).select_related("team", "created_by").order_by("-id")


def api_key_get(*, organization: Organization, key_id: int) -> APIKey | None:
    return api_keys_for_org(organization=organization).filter(pk=key_id).first()
