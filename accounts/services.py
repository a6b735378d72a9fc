from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from django.db import transaction
from django.utils import timezone
from django.utils.text import slugify

from audit.services import audit_event_record

from . import keys
from .models import APIKey, Membership, Organization, Role, Team, User


@dataclass(frozen=True)
class IssuedKey:
    """A freshly created key. ``secret`` exists only here and is never stored."""

    api_key: APIKey
    secret: str


@transaction.atomic
def organization_create(*, name: str, owner: User, slug: str = "") -> Organization:
    base = slugify(slug or name)[:70] or "org"
    candidate, n = base, 1
    while Organization.objects.filter(slug=candidate).exists():
        n += 1
        candidate = f"{base}-{n}"
    organization = Organization.objects.create(name=name, slug=candidate)
    Membership.objects.create(user=owner, organization=organization, role=Role.OWNER)
    audit_event_record(
        action="organization.created",
        organization=organization,
        actor=owner,
        target_type="organization",
        target_id=organization.pk,
        metadata={"name": name, "slug": candidate},
    )
    return organization


@transaction.atomic
def team_create(*, organization: Organization, name: str, actor: User | None = None) -> Team:
    team = Team.objects.create(organization=organization, name=name)
    audit_event_record(
        action="team.created",
        organization=organization,
        actor=actor,
        target_type="team",
        target_id=team.pk,
        metadata={"name": name},
    )
    return team


@transaction.atomic
def membership_add(
    *, organization: Organization, user: User, role: str, team: Team | None = None, actor: User | None = None
) -> Membership:
    membership = Membership.objects.create(organization=organization, user=user, role=role, team=team)
    audit_event_record(
        action="membership.created",
        organization=organization,
        actor=actor,
        target_type="membership",
        target_id=membership.pk,
        metadata={"user_id": user.pk, "role": role},
    )
    return membership


@transaction.atomic
def api_key_create(
    *,
    organization: Organization,
    name: str,
    created_by: User | None,
    team: Team | None = None,
    expires_at: datetime | None = None,
    allowed_models: Iterable[str] = (),
    secret: str | None = None,
) -> IssuedKey:
    """Issue a key. Pass ``secret`` only to adopt a known, well-formed key (the demo key)."""
    if team is not None and team.organization_id != organization.pk:
        raise ValueError("The team belongs to another organization.")
    if secret is None:
        secret = keys.generate_key()
    elif not keys.is_well_formed(secret):
        raise ValueError("The supplied key is not a well-formed ModelMuxer key.")
    api_key = APIKey.objects.create(
        organization=organization,
        team=team,
        name=name,
        prefix=keys.lookup_prefix(secret),
        digest=keys.key_digest(secret),
        created_by=created_by,
        expires_at=expires_at,
        allowed_models=sorted(set(allowed_models)),
    )
    audit_event_record(
        action="api_key.created",
        organization=organization,
        actor=created_by,
        target_type="api_key",
        target_id=api_key.pk,
        metadata={
            "name": name,
            "prefix": api_key.prefix,
            "team_id": team.pk if team else None,
            "expires_at": expires_at.isoformat() if expires_at else None,
            "allowed_models": api_key.allowed_models,
        },
    )
    return IssuedKey(api_key=api_key, secret=secret)


@transaction.atomic
def api_key_revoke(*, api_key: APIKey, actor: User | None) -> APIKey:
    """Revoke a key. Every process stops accepting it within ``MUXER_KEY_CACHE_SECONDS``."""
    locked = APIKey.objects.select_for_update().get(pk=api_key.pk)
    if locked.revoked_at is not None:
        return locked
    locked.revoked_at = timezone.now()
    locked.save(update_fields=["revoked_at"])
    audit_event_record(
        action="api_key.revoked",
        organization=locked.organization,
        actor=actor,
        target_type="api_key",
        target_id=locked.pk,
        metadata={"name": locked.name, "prefix": locked.prefix},
    )
    return locked
