from __future__ import annotations

from collections.abc import Collection

from django.db.models import QuerySet

from providers.models import Model, Provider

from . import keys
from .models import APIKey, Invitation, Membership, Organization, Team, User


def organizations_for_user(*, user: User) -> QuerySet[Organization]:
    return Organization.objects.filter(memberships__user=user).order_by("name")


def membership_for(*, user: User, organization_slug: str) -> Membership | None:
    return (
        Membership.objects.select_related("organization")
        .filter(user=user, organization__slug=organization_slug)
        .first()
    )


def api_keys_for_org(*, organization: Organization) -> QuerySet[APIKey]:
    return (
        APIKey.objects.filter(organization=organization)
        .select_related("team", "created_by", "rotated_to")
        .order_by("-id")
    )


def api_key_get(*, organization: Organization, key_id: int) -> APIKey | None:
    return api_keys_for_org(organization=organization).filter(pk=key_id).first()


def teams_for_org(*, organization: Organization) -> QuerySet[Team]:
    return Team.objects.filter(organization=organization).order_by("name", "id")


def team_get(*, organization: Organization, team_id: int) -> Team | None:
    return teams_for_org(organization=organization).filter(pk=team_id).first()


def members_for_org(*, organization: Organization) -> QuerySet[Membership]:
    return Membership.objects.filter(organization=organization).select_related("user", "team").order_by("id")


def membership_get(*, organization: Organization, membership_id: int) -> Membership | None:
    return members_for_org(organization=organization).filter(pk=membership_id).first()


def invitations_for_org(*, organization: Organization) -> QuerySet[Invitation]:
    return Invitation.objects.filter(organization=organization).select_related("team").order_by("-id")


def invitation_get(*, organization: Organization, invitation_id: int) -> Invitation | None:
    return invitations_for_org(organization=organization).filter(pk=invitation_id).first()


def invitation_for_token(*, token: str) -> Invitation | None:
    """The invitation a token opens; only its HMAC digest is stored, so look that up."""
    if not token.startswith(keys.INVITATION_PREFIX):
        return None
    return (
        Invitation.objects.select_related("organization", "team").filter(digest=keys.invitation_digest(token)).first()
    )


def routing_policy_problems(
    *,
    allowed_models: Collection[str] | None = None,
    allowed_providers: Collection[str] | None = None,
    within: Organization | None = None,
) -> dict[str, list[str]]:
    """What is wrong with a routing policy's lists, by field; empty when nothing is.

    Names must exist in the catalog. With ``within`` (a key's policy inside its
    organization's), the lists may only narrow the organization's: no model or
    provider it leaves out, and no model served by a provider it leaves out.
    ``None`` skips a list.
    """
    problems: dict[str, list[str]] = {}
    if allowed_models is not None:
        provider_of = dict(Model.objects.filter(name__in=allowed_models).values_list("name", "provider__slug"))
        unknown = sorted(set(allowed_models) - set(provider_of))
        if unknown:
            problems["allowed_models"] = [f"unknown model(s): {', '.join(unknown)}."]
        elif within is not None:
            outside = sorted(
                name
                for name, slug in provider_of.items()
                if (within.allowed_models and name not in within.allowed_models)
                or (within.allowed_providers and slug not in within.allowed_providers)
            )
            if outside:
                problems["allowed_models"] = [f"not allowed by the organization: {', '.join(outside)}."]
    if allowed_providers is not None:
        known = set(Provider.objects.filter(slug__in=allowed_providers).values_list("slug", flat=True))
        unknown = sorted(set(allowed_providers) - known)
        if unknown:
            problems["allowed_providers"] = [f"unknown provider(s): {', '.join(unknown)}."]
        elif within is not None and within.allowed_providers:
            outside = sorted(set(allowed_providers) - set(within.allowed_providers))
            if outside:
                problems["allowed_providers"] = [f"not allowed by the organization: {', '.join(outside)}."]
    return problems


def active_user_get(*, user_id: int) -> User | None:
    return User.objects.filter(pk=user_id, is_active=True).first()


def memberships_for_user(*, user: User) -> QuerySet[Membership]:
    return Membership.objects.filter(user=user).select_related("organization", "team").order_by("organization__name")
