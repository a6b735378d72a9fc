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
    allowed_providers: Iterable[str] = (),
    routing_strategy: str = "",
    routing_preference: str = "",
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
        allowed_providers=sorted(set(allowed_providers)),
        routing_strategy=routing_strategy,
        routing_preference=routing_preference,
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
            "allowed_providers": api_key.allowed_providers,
            "routing_strategy": routing_strategy,
            "routing_preference": routing_preference,
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


def _apply_policy(row: Organization | APIKey, changes: dict[str, object]) -> dict[str, dict[str, object]]:
    """Set the fields that differ on ``row`` and return them as ``{field: {"old", "new"}}``."""
    diff: dict[str, dict[str, object]] = {}
    for field, new in changes.items():
        old = getattr(row, field)
        if old != new:
            setattr(row, field, new)
            diff[field] = {"old": old, "new": new}
    if diff:
        row.save(update_fields=list(diff))
    return diff


def _policy_changes(
    *,
    allowed_models: Iterable[str] | None,
    allowed_providers: Iterable[str] | None,
    routing_strategy: str | None,
    routing_preference: str | None,
) -> dict[str, object]:
    changes: dict[str, object] = {}
    if allowed_models is not None:
        changes["allowed_models"] = sorted(set(allowed_models))
    if allowed_providers is not None:
        changes["allowed_providers"] = sorted(set(allowed_providers))
    if routing_strategy is not None:
        changes["routing_strategy"] = routing_strategy
    if routing_preference is not None:
        changes["routing_preference"] = routing_preference
    return changes


@transaction.atomic
def organization_routing_policy_update(
    *,
    organization: Organization,
    actor: User | None,
    allowed_models: Iterable[str] | None = None,
    allowed_providers: Iterable[str] | None = None,
    routing_strategy: str | None = None,
    routing_preference: str | None = None,
) -> Organization:
    """Change the organization's routing policy; ``None`` leaves a field as it is.

    Callers validate first (``selectors.routing_policy_problems``). Keys pick the
    change up within ``MUXER_KEY_CACHE_SECONDS``, like a revocation.
    """
    locked = Organization.objects.select_for_update().get(pk=organization.pk)
    changes = _policy_changes(
        allowed_models=allowed_models,
        allowed_providers=allowed_providers,
        routing_strategy=routing_strategy,
        routing_preference=routing_preference,
    )
    diff = _apply_policy(locked, changes)
    if diff:
        audit_event_record(
            action="organization.routing_policy_updated",
            organization=locked,
            actor=actor,
            target_type="organization",
            target_id=locked.pk,
            metadata={"changes": diff},
        )
    return locked


@transaction.atomic
def api_key_routing_policy_update(
    *,
    api_key: APIKey,
    actor: User | None,
    allowed_models: Iterable[str] | None = None,
    allowed_providers: Iterable[str] | None = None,
    routing_strategy: str | None = None,
    routing_preference: str | None = None,
) -> APIKey:
    """Change a key's routing policy; ``None`` leaves a field as it is, and a blank
    strategy or preference falls back to the organization's.

    Callers validate first (``selectors.routing_policy_problems`` with ``within``).
    """
    locked = APIKey.objects.select_for_update().get(pk=api_key.pk)
    changes = _policy_changes(
        allowed_models=allowed_models,
        allowed_providers=allowed_providers,
        routing_strategy=routing_strategy,
        routing_preference=routing_preference,
    )
    diff = _apply_policy(locked, changes)
    if diff:
        audit_event_record(
            action="api_key.routing_policy_updated",
            organization=locked.organization,
            actor=actor,
            target_type="api_key",
            target_id=locked.pk,
            metadata={"name": locked.name, "prefix": locked.prefix, "changes": diff},
        )
    return locked
