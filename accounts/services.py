"""Every write to organizations, teams, members, invitations and API keys.

Each service runs in one transaction and records one audit event with the
target's state before and after. Audit rows name people by user id and never
hold a secret or an email address. A write the rules refuse raises an
:class:`~muxer_project.errors.APIError`, which rolls the transaction back and
reaches the client in the OpenAI error shape.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TypedDict
from urllib.parse import urlsplit

from django.conf import settings
from django.core.mail import send_mail
from django.db import IntegrityError, models, transaction
from django.utils import timezone
from django.utils.text import slugify

from audit.services import audit_event_record
from muxer_project.errors import APIError, invalid_request, not_found, permission_denied

from . import bruteforce, keys, selectors
from .models import APIKey, Invitation, Membership, Organization, Role, Team, User

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class IssuedKey:
    """A freshly created key. ``secret`` exists only here and is never stored."""

    api_key: APIKey
    secret: str


@dataclass(frozen=True)
class IssuedInvitation:
    """A freshly created invitation. ``token`` exists only here (and in the email) and is never stored."""

    invitation: Invitation
    token: str


class OrganizationChanges(TypedDict, total=False):
    name: str
    timezone: str
    alert_email: str
    webhook_url: str
    max_output_tokens_cap: int | None
    pii_policy: dict[str, str]
    rpm_limit: int | None
    tpm_limit: int | None
    response_cache_ttl_seconds: int
    request_log_enabled: bool
    request_log_retention_days: int


class TeamChanges(TypedDict, total=False):
    name: str
    rpm_limit: int | None
    tpm_limit: int | None


class MembershipChanges(TypedDict, total=False):
    role: str
    team: Team | None


class APIKeyChanges(TypedDict, total=False):
    name: str
    allowed_models: list[str]
    allowed_providers: list[str]
    routing_strategy: str
    routing_preference: str
    rpm_limit: int | None
    tpm_limit: int | None
    expires_at: datetime | None
    scopes: list[str]


def conflict(message: str, *, code: str) -> APIError:
    return APIError(409, message, code=code)


# --- audit states: plain JSON, no secrets, no email addresses ------------------------------------


def _jsonable(value: object) -> object:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, models.Model):
        return value.pk
    return value


def _masked_email(address: str) -> str:
    """Enough to see that an alert address changed, and to which domain, without the person."""
    return f"***@{address.rpartition('@')[2]}" if address else ""


def masked_url(url: str) -> str:
    """Webhook URLs often carry a token in their path or query (Slack's do): keep the scheme and host only."""
    if not url:
        return ""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname or ''}/…"


_AUDIT_MASKS = {"alert_email": _masked_email, "webhook_url": masked_url}


def _audit_value(field: str, value: object) -> object:
    mask = _AUDIT_MASKS.get(field)
    if mask is not None and isinstance(value, str):
        return mask(value)
    return _jsonable(value)


def _state(row: models.Model, fields: Iterable[str]) -> dict[str, object]:
    return {field: _audit_value(field, getattr(row, field)) for field in fields}


def _apply(row: models.Model, changes: Mapping[str, object]) -> tuple[dict[str, object], dict[str, object]]:
    """Set the fields of ``changes`` that differ on ``row`` and save them; returns (before, after) of those.

    A foreign key may be given a row or ``None``; the states name it by its column (``team_id``).
    """
    before: dict[str, object] = {}
    after: dict[str, object] = {}
    changed: list[str] = []
    for field, new in changes.items():
        attribute = f"{field}_id" if isinstance(row._meta.get_field(field), models.ForeignKey) else field
        old = getattr(row, attribute)
        new_value = new.pk if isinstance(new, models.Model) else new
        if old != new_value:
            before[attribute] = _audit_value(field, old)
            setattr(row, attribute, new_value)
            after[attribute] = _audit_value(field, new_value)
            changed.append(attribute)
    if changed:
        row.save(update_fields=changed)
    return before, after


# --- organizations ------------------------------------------------------------------------------


# The console's own paths under /console/: an organization with one of these slugs could not be reached there.
RESERVED_ORGANIZATION_SLUGS = frozenset(
    {"signup", "login", "logout", "onboarding", "password-reset", "verify-email", "invitations", "account"}
)


@transaction.atomic
def organization_create(*, name: str, owner: User, slug: str = "", timezone: str = "UTC") -> Organization:
    """A new organization with ``owner`` as its owner; a taken or reserved slug gets a number (``acme-2``)."""
    base = slugify(slug or name)[:70] or "org"
    organization, n = None, 1
    while organization is None:
        candidate = base if n == 1 else f"{base}-{n}"
        n += 1
        if candidate in RESERVED_ORGANIZATION_SLUGS or Organization.objects.filter(slug=candidate).exists():
            continue
        try:
            with transaction.atomic():  # another request may take the slug between the check and the insert
                organization = Organization.objects.create(name=name, slug=candidate, timezone=timezone)
        except IntegrityError:
            continue
    Membership.objects.create(user=owner, organization=organization, role=Role.OWNER)
    audit_event_record(
        action="organization.created",
        organization=organization,
        actor=owner,
        target_type="organization",
        target_id=organization.pk,
        metadata={"name": name, "slug": organization.slug},
        after={"name": name, "slug": organization.slug, "timezone": timezone},
    )
    return organization


@transaction.atomic
def organization_update(
    *, organization: Organization, actor: User | None, changes: OrganizationChanges
) -> Organization:
    """Change the organization's settings; fields left out of ``changes`` stay as they are.

    Callers validate first (the time zone exists, the PII policy parses). Keys
    pick up new rate limits, PII policy, cache lifetime and request-log switch
    within ``MUXER_KEY_CACHE_SECONDS``.
    """
    locked = Organization.objects.select_for_update().get(pk=organization.pk)
    before, after = _apply(locked, changes)
    if after:
        audit_event_record(
            action="organization.updated",
            organization=locked,
            actor=actor,
            target_type="organization",
            target_id=locked.pk,
            metadata={"fields": sorted(after)},
            before=before,
            after=after,
        )
    return locked


@transaction.atomic
def organization_webhook_secret_rotate(*, organization: Organization, actor: User | None) -> str:
    """Set a new signing secret for budget-alert webhooks and return it; it is never shown again."""
    locked = Organization.objects.select_for_update().get(pk=organization.pk)
    had_secret = bool(locked.webhook_secret)
    secret = "whsec_" + secrets.token_urlsafe(32)
    locked.webhook_secret = secret
    locked.save(update_fields=["webhook_secret"])
    audit_event_record(
        action="organization.webhook_secret_rotated",
        organization=locked,
        actor=actor,
        target_type="organization",
        target_id=locked.pk,
        before={"webhook_secret_set": had_secret},
        after={"webhook_secret_set": True},
    )
    return secret


# --- teams --------------------------------------------------------------------------------------

TEAM_FIELDS = ("name", "rpm_limit", "tpm_limit")


def _refuse_duplicate_team(organization: Organization, name: str, *, exclude: int | None = None) -> None:
    clash = Team.objects.filter(organization=organization, name__iexact=name)
    if exclude is not None:
        clash = clash.exclude(pk=exclude)
    if clash.exists():
        raise invalid_request(f"A team named {name!r} already exists in this organization.", param="name")


@transaction.atomic
def team_create(
    *,
    organization: Organization,
    name: str,
    actor: User | None = None,
    rpm_limit: int | None = None,
    tpm_limit: int | None = None,
) -> Team:
    _refuse_duplicate_team(organization, name)
    try:
        with transaction.atomic():
            team = Team.objects.create(organization=organization, name=name, rpm_limit=rpm_limit, tpm_limit=tpm_limit)
    except IntegrityError:  # created by a concurrent request since the check
        raise invalid_request(f"A team named {name!r} already exists in this organization.", param="name") from None
    audit_event_record(
        action="team.created",
        organization=organization,
        actor=actor,
        target_type="team",
        target_id=team.pk,
        metadata={"name": name},
        after=_state(team, TEAM_FIELDS),
    )
    return team


@transaction.atomic
def team_update(*, team: Team, actor: User | None, changes: TeamChanges) -> Team:
    locked = Team.objects.select_for_update().get(pk=team.pk)
    if "name" in changes:
        _refuse_duplicate_team(locked.organization, changes["name"], exclude=locked.pk)
    try:
        with transaction.atomic():
            before, after = _apply(locked, changes)
    except IntegrityError:
        raise invalid_request("A team with this name already exists in this organization.", param="name") from None
    if after:
        audit_event_record(
            action="team.updated",
            organization=locked.organization,
            actor=actor,
            target_type="team",
            target_id=locked.pk,
            metadata={"name": locked.name},
            before=before,
            after=after,
        )
    return locked


@transaction.atomic
def team_delete(*, team: Team, actor: User | None) -> None:
    """Delete a team. Its members and keys stay, without a team (so without the team's rate limits).

    A team with budgets is refused: deleting it would delete its budgets, and
    a hard limit must not vanish as a side effect.
    """
    from billing.models import Budget  # billing builds on accounts, not the other way round

    locked = Team.objects.select_for_update().get(pk=team.pk)
    budgets = Budget.objects.filter(team=locked).count()
    if budgets:
        raise conflict(
            f"This team has {budgets} budget(s); delete or move them before deleting the team.",
            code="team_has_budgets",
        )
    key_ids = sorted(APIKey.objects.filter(team=locked).values_list("pk", flat=True))
    membership_ids = sorted(Membership.objects.filter(team=locked).values_list("pk", flat=True))
    before = {"id": locked.pk, **_state(locked, TEAM_FIELDS)}
    organization = locked.organization
    team_id = locked.pk
    locked.delete()
    audit_event_record(
        action="team.deleted",
        organization=organization,
        actor=actor,
        target_type="team",
        target_id=team_id,
        metadata={"detached_key_ids": key_ids, "detached_membership_ids": membership_ids},
        before=before,
        after=None,
    )


# --- members ------------------------------------------------------------------------------------

MEMBERSHIP_FIELDS = ("user_id", "role", "team_id")


def _lock_memberships(organization: Organization) -> None:
    """Serialise membership changes per organization, so two owners cannot demote each other at once."""
    Organization.objects.select_for_update().filter(pk=organization.pk).first()


def _refuse_losing_the_last_owner(membership: Membership) -> None:
    owners = Membership.objects.filter(organization_id=membership.organization_id, role=Role.OWNER)
    if membership.role == Role.OWNER and not owners.exclude(pk=membership.pk).exists():
        raise conflict("An organization needs at least one owner; make someone else an owner first.", code="last_owner")


@transaction.atomic
def membership_add(
    *, organization: Organization, user: User, role: str, team: Team | None = None, actor: User | None = None
) -> Membership:
    if team is not None and team.organization_id != organization.pk:
        raise ValueError("The team belongs to another organization.")
    membership = Membership.objects.create(organization=organization, user=user, role=role, team=team)
    audit_event_record(
        action="membership.created",
        organization=organization,
        actor=actor,
        target_type="membership",
        target_id=membership.pk,
        metadata={"user_id": user.pk, "role": role},
        after=_state(membership, MEMBERSHIP_FIELDS),
    )
    return membership


@transaction.atomic
def membership_update(*, membership: Membership, actor: User | None, changes: MembershipChanges) -> Membership:
    """Change a member's role or team. The last owner keeps the owner role (409 ``last_owner``).

    Callers check that the actor may give and take the roles involved
    (``permissions.assignable_roles``) and that the team is the organization's.
    """
    _lock_memberships(membership.organization)
    locked = Membership.objects.select_for_update(of=("self",)).select_related("organization").get(pk=membership.pk)
    team = changes.get("team")
    if team is not None and team.organization_id != locked.organization_id:
        raise ValueError("The team belongs to another organization.")
    if "role" in changes and changes["role"] != Role.OWNER:
        _refuse_losing_the_last_owner(locked)
    before, after = _apply(locked, changes)
    if after:
        audit_event_record(
            action="membership.updated",
            organization=locked.organization,
            actor=actor,
            target_type="membership",
            target_id=locked.pk,
            metadata={"user_id": locked.user_id},
            before=before,
            after=after,
        )
    return locked


@transaction.atomic
def membership_remove(*, membership: Membership, actor: User | None, revoke_keys: bool = False) -> None:
    """Remove someone from the organization (or let them leave). The last owner cannot go (409 ``last_owner``).

    Keys they created belong to the organization and keep working unless
    ``revoke_keys``: production traffic should not stop because a person left.
    The audit event lists them either way, so an admin can review or rotate them.
    """
    _lock_memberships(membership.organization)
    locked = Membership.objects.select_for_update(of=("self",)).select_related("organization").get(pk=membership.pk)
    _refuse_losing_the_last_owner(locked)
    organization = locked.organization
    their_keys = [
        key
        for key in APIKey.objects.filter(organization=organization, created_by_id=locked.user_id, revoked_at=None)
        if key.is_active
    ]
    if revoke_keys:
        for key in their_keys:
            api_key_revoke(api_key=key, actor=actor)
    before = {"id": locked.pk, **_state(locked, MEMBERSHIP_FIELDS)}
    membership_id, user_id = locked.pk, locked.user_id
    locked.delete()
    audit_event_record(
        action="membership.removed",
        organization=organization,
        actor=actor,
        target_type="membership",
        target_id=membership_id,
        metadata={
            "user_id": user_id,
            "left": actor is not None and actor.pk == user_id,
            # Named so the audit redactor (which hides values under "key" names) keeps them: ids are no secret.
            ("revoked_key_ids" if revoke_keys else "kept_key_ids"): [key.pk for key in their_keys],
        },
        before=before,
        after=None,
    )


# --- invitations --------------------------------------------------------------------------------

INVITATION_FIELDS = ("role", "team_id", "expires_at")


def _invitation_state(invitation: Invitation) -> dict[str, object]:
    return {**_state(invitation, INVITATION_FIELDS), "status": invitation.status}


@transaction.atomic
def invitation_create(
    *,
    organization: Organization,
    email: str,
    role: str,
    team: Team | None,
    invited_by: User | None,
    accept_url: str,
) -> IssuedInvitation:
    """Invite ``email`` to join with ``role``, and email them ``accept_url?token=…`` once the row is committed.

    Callers check that the inviter may give ``role``. The token is returned
    here and sent in the email; only its HMAC digest is stored.
    """
    if team is not None and team.organization_id != organization.pk:
        raise ValueError("The team belongs to another organization.")
    email = email.strip()
    if Membership.objects.filter(organization=organization, user__email__iexact=email).exists():
        raise invalid_request("This person is already a member of the organization.", param="email")
    now = timezone.now()
    pending = Invitation.objects.filter(
        organization=organization, email__iexact=email, accepted_at=None, revoked_at=None, expires_at__gt=now
    )
    if pending.exists():
        raise invalid_request(
            "A pending invitation to this address exists; revoke it first to send a new one.", param="email"
        )
    token = keys.generate_invitation_token()
    invitation = Invitation.objects.create(
        organization=organization,
        email=email,
        role=role,
        team=team,
        digest=keys.invitation_digest(token),
        invited_by=invited_by,
        expires_at=now + timedelta(days=settings.MUXER_INVITATION_DAYS),
    )
    audit_event_record(
        action="invitation.created",
        organization=organization,
        actor=invited_by,
        target_type="invitation",
        target_id=invitation.pk,
        metadata={"role": role},
        after=_invitation_state(invitation),
    )
    link = f"{accept_url}?token={token}"
    inviter = (invited_by.name or invited_by.email) if invited_by is not None else "An administrator"
    transaction.on_commit(
        lambda: _send_invitation_email(
            invitation_id=invitation.pk, to=email, organization_name=organization.name, inviter=inviter, link=link
        )
    )
    return IssuedInvitation(invitation=invitation, token=token)


def _send_invitation_email(*, invitation_id: int, to: str, organization_name: str, inviter: str, link: str) -> None:
    """Best effort: the inviter also gets the token in the API response and can pass the link on."""
    days = settings.MUXER_INVITATION_DAYS
    body = (
        f"{inviter} invited you to join {organization_name} on ModelMuxer.\n\n"
        f"Accept the invitation (sign in with this email address first):\n{link}\n\n"
        f"The link works once and expires in {days} day{'s' if days != 1 else ''}. "
        "If you did not expect this, ignore this email.\n"
    )
    try:
        send_mail(f"Join {organization_name} on ModelMuxer", body, None, [to])
    except Exception as exc:  # noqa: BLE001 — any mail failure; the message may name the recipient, so log its type
        logger.warning("invitation %s: the email could not be sent (%s)", invitation_id, type(exc).__name__)


@transaction.atomic
def invitation_revoke(*, invitation: Invitation, actor: User | None) -> Invitation:
    locked = Invitation.objects.select_for_update().get(pk=invitation.pk)
    if locked.accepted_at is not None:
        raise invalid_request("This invitation has already been accepted; remove the member instead.")
    if locked.revoked_at is not None:
        return locked
    before = _invitation_state(locked)
    locked.revoked_at = timezone.now()
    locked.save(update_fields=["revoked_at"])
    audit_event_record(
        action="invitation.revoked",
        organization=locked.organization,
        actor=actor,
        target_type="invitation",
        target_id=locked.pk,
        before=before,
        after=_invitation_state(locked),
    )
    return locked


@transaction.atomic
def invitation_accept(*, token: str, user: User) -> Membership:
    """Join the organization the token invites to, with the invitation's role and team.

    404 for an unknown token; 400 when it was used, revoked or has expired, or
    the user is already a member; 403 when the user's email is not the one invited.
    """
    found = selectors.invitation_for_token(token=token)
    if found is None:
        raise not_found("No such invitation; check the link, or ask for a new one.")
    invitation = (
        Invitation.objects.select_for_update(of=("self",)).select_related("organization", "team").get(pk=found.pk)
    )
    status = invitation.status
    if status == "accepted":
        raise invalid_request("This invitation has already been accepted.", param="token")
    if status == "revoked":
        raise invalid_request("This invitation has been revoked.", param="token")
    if status == "expired":
        raise invalid_request("This invitation has expired; ask for a new one.", param="token")
    if invitation.email.casefold() != user.email.casefold():
        raise permission_denied("This invitation was sent to a different email address than yours.")
    organization = invitation.organization
    if Membership.objects.filter(organization=organization, user=user).exists():
        raise invalid_request("You are already a member of this organization.", param="token")
    team = (
        invitation.team if invitation.team is not None and invitation.team.organization_id == organization.pk else None
    )
    try:
        with transaction.atomic():
            membership = membership_add(
                organization=organization, user=user, role=invitation.role, team=team, actor=user
            )
    except IntegrityError:  # joined by a concurrent request since the check
        raise invalid_request("You are already a member of this organization.", param="token") from None
    if user.email_verified_at is None:
        # The token reached this address's mailbox: that proves it as well as our own link would.
        user.email_verified_at = timezone.now()
        user.save(update_fields=["email_verified_at"])
    before = _invitation_state(invitation)
    invitation.accepted_at = timezone.now()
    invitation.accepted_by = user
    invitation.save(update_fields=["accepted_at", "accepted_by"])
    audit_event_record(
        action="invitation.accepted",
        organization=organization,
        actor=user,
        target_type="invitation",
        target_id=invitation.pk,
        metadata={"membership_id": membership.pk, "user_id": user.pk},
        before=before,
        after=_invitation_state(invitation),
    )
    return membership


# --- API keys -----------------------------------------------------------------------------------

KEY_FIELDS = (
    "name", "team_id", "expires_at", "scopes", "allowed_models", "allowed_providers",
    "routing_strategy", "routing_preference", "rpm_limit", "tpm_limit",
)  # fmt: skip
SCOPE_ORDER = ("proxy", "read", "admin")


def _ordered_scopes(scopes: Iterable[str]) -> list[str]:
    wanted = set(scopes)
    unknown = wanted - set(SCOPE_ORDER)
    if unknown:
        raise ValueError(f"Unknown key scope(s): {', '.join(sorted(unknown))}.")
    return [scope for scope in SCOPE_ORDER if scope in wanted]


def _key_state(api_key: APIKey) -> dict[str, object]:
    return {"prefix": api_key.prefix, **_state(api_key, KEY_FIELDS)}


def _issue_key(
    *,
    organization: Organization,
    name: str,
    created_by: User | None,
    team: Team | None,
    expires_at: datetime | None,
    allowed_models: Iterable[str],
    allowed_providers: Iterable[str],
    routing_strategy: str,
    routing_preference: str,
    scopes: Iterable[str],
    rpm_limit: int | None,
    tpm_limit: int | None,
    rotated_from: APIKey | None = None,
    secret: str | None = None,
) -> IssuedKey:
    if team is not None and team.organization_id != organization.pk:
        raise ValueError("The team belongs to another organization.")
    ordered = _ordered_scopes(scopes)
    if not ordered:
        raise ValueError("A key needs at least one scope.")
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
        scopes=ordered,
        rpm_limit=rpm_limit,
        tpm_limit=tpm_limit,
        rotated_from=rotated_from,
    )
    return IssuedKey(api_key=api_key, secret=secret)


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
    scopes: Iterable[str] = ("proxy",),
    rpm_limit: int | None = None,
    tpm_limit: int | None = None,
    secret: str | None = None,
) -> IssuedKey:
    """Issue a key. Pass ``secret`` only to adopt a known, well-formed key (the demo key).

    Callers check that the creator may grant ``scopes``.
    """
    issued = _issue_key(
        organization=organization,
        name=name,
        created_by=created_by,
        team=team,
        expires_at=expires_at,
        allowed_models=allowed_models,
        allowed_providers=allowed_providers,
        routing_strategy=routing_strategy,
        routing_preference=routing_preference,
        scopes=scopes,
        rpm_limit=rpm_limit,
        tpm_limit=tpm_limit,
        secret=secret,
    )
    api_key = issued.api_key
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
        after=_key_state(api_key),
    )
    return issued


@transaction.atomic
def api_key_update(*, api_key: APIKey, actor: User | None, changes: APIKeyChanges) -> APIKey:
    """Change a key's name, policy, limits, expiry or scopes; fields left out stay as they are.

    A blank strategy or preference falls back to the organization's. Callers
    validate first (``selectors.routing_policy_problems`` with ``within``, and
    that the actor may grant the scopes). Every process sees the change within
    ``MUXER_KEY_CACHE_SECONDS``.
    """
    locked = APIKey.objects.select_for_update().get(pk=api_key.pk)
    if locked.revoked_at is not None:
        raise invalid_request("This API key has been revoked; it cannot be changed.")
    if "expires_at" in changes and APIKey.objects.filter(rotated_from=locked).exists():
        new_expiry = changes["expires_at"]
        if new_expiry is None or (locked.expires_at is not None and new_expiry > locked.expires_at):
            raise invalid_request(
                "This API key was rotated; its grace period can be shortened, not extended.", param="expires_at"
            )
    normalized: dict[str, object] = dict(changes)
    if "allowed_models" in changes:
        normalized["allowed_models"] = sorted(set(changes["allowed_models"]))
    if "allowed_providers" in changes:
        normalized["allowed_providers"] = sorted(set(changes["allowed_providers"]))
    if "scopes" in changes:
        normalized["scopes"] = _ordered_scopes(changes["scopes"])
        if not normalized["scopes"]:
            raise invalid_request("A key needs at least one scope.", param="scopes")
    before, after = _apply(locked, normalized)
    if after:
        audit_event_record(
            action="api_key.updated",
            organization=locked.organization,
            actor=actor,
            target_type="api_key",
            target_id=locked.pk,
            metadata={"name": locked.name, "prefix": locked.prefix},
            before=before,
            after=after,
        )
    return locked


@transaction.atomic
def api_key_rotate(*, api_key: APIKey, actor: User | None, grace_seconds: int) -> IssuedKey:
    """Issue a replacement with the same settings, and let the old key work ``grace_seconds`` more.

    The new key keeps the old one's creator, team, policy, limits, scopes and
    expiry (rotation changes the secret, not what it may do). The old key then
    expires at the earlier of its own expiry and now + grace. A revoked,
    expired or already rotated key is refused (400).
    """
    locked = (
        APIKey.objects.select_for_update(of=("self",))
        .select_related("organization", "team", "created_by")
        .get(pk=api_key.pk)
    )
    now = timezone.now()
    if locked.revoked_at is not None:
        raise invalid_request("This API key has been revoked; a revoked key cannot be rotated.")
    if locked.expires_at is not None and locked.expires_at <= now:
        raise invalid_request("This API key has expired; an expired key cannot be rotated.")
    successor = APIKey.objects.filter(rotated_from=locked).values_list("pk", flat=True).first()
    if successor is not None:
        raise invalid_request(f"This API key has already been rotated; rotate its replacement (id {successor}).")
    try:
        with transaction.atomic():
            issued = _issue_key(
                organization=locked.organization,
                name=locked.name,
                created_by=locked.created_by,
                team=locked.team,
                expires_at=locked.expires_at,
                allowed_models=locked.allowed_models,
                allowed_providers=locked.allowed_providers,
                routing_strategy=locked.routing_strategy,
                routing_preference=locked.routing_preference,
                scopes=locked.scopes,
                rpm_limit=locked.rpm_limit,
                tpm_limit=locked.tpm_limit,
                rotated_from=locked,
            )
    except IntegrityError:  # rotated by a concurrent request (databases without row locks)
        raise invalid_request("This API key has already been rotated; rotate its replacement.") from None
    grace_end = now + timedelta(seconds=grace_seconds)
    old_expiry = locked.expires_at
    locked.expires_at = grace_end if old_expiry is None else min(old_expiry, grace_end)
    locked.save(update_fields=["expires_at"])
    audit_event_record(
        action="api_key.rotated",
        organization=locked.organization,
        actor=actor,
        target_type="api_key",
        target_id=locked.pk,
        metadata={
            "name": locked.name,
            "prefix": locked.prefix,
            "new_key_id": issued.api_key.pk,
            "new_prefix": issued.api_key.prefix,
            "grace_seconds": grace_seconds,
        },
        before={"expires_at": _jsonable(old_expiry)},
        after={"expires_at": _jsonable(locked.expires_at)},
    )
    return issued


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
        before={"revoked_at": None},
        after={"revoked_at": _jsonable(locked.revoked_at)},
    )
    return locked


# --- the organization's routing policy -----------------------------------------------------------


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

    Callers validate first (``selectors.routing_policy_problems``). Keys pick up the
    change within ``MUXER_KEY_CACHE_SECONDS``, like a revocation.
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
            before={field: change["old"] for field, change in diff.items()},
            after={field: change["new"] for field, change in diff.items()},
        )
    return locked


# --- people: sign-up, email verification, password reset ----------------------------------------


@transaction.atomic
def user_signup(*, email: str, name: str, password: str) -> User:
    """A new account, not yet verified. Callers validate the password; a taken email is refused (400)."""
    email = email.strip().lower()
    if User.objects.filter(email__iexact=email).exists():
        raise invalid_request("An account with this email address already exists.", param="email")
    try:
        with transaction.atomic():
            user = User.objects.create_user(email=email, password=password, name=name.strip())
    except IntegrityError:  # taken by a concurrent sign-up since the check
        raise invalid_request("An account with this email address already exists.", param="email") from None
    audit_event_record(
        action="user.signed_up",
        organization=None,
        actor=user,
        target_type="user",
        target_id=user.pk,
        metadata={"email_domain": _masked_email(email)},
    )
    return user


def user_verification_email_send(*, user: User, link: str) -> None:
    """Email ``user`` the link that verifies their address, once the current transaction commits."""
    days = max(1, settings.MUXER_EMAIL_VERIFICATION_SECONDS // 86400)
    body = (
        f"Hello{' ' + user.name if user.name else ''},\n\n"
        f"Confirm that this is your email address for ModelMuxer:\n{link}\n\n"
        f"The link works once and expires in {days} day{'s' if days != 1 else ''}. "
        "If you did not create a ModelMuxer account, ignore this email.\n"
    )
    user_id, to = user.pk, user.email

    def send() -> None:
        try:
            send_mail("Verify your email address for ModelMuxer", body, None, [to])
        except Exception as exc:  # noqa: BLE001 — the person can ask for another one from the console
            logger.warning("user %s: the verification email could not be sent (%s)", user_id, type(exc).__name__)

    transaction.on_commit(send)


@transaction.atomic
def user_email_verify(*, user: User) -> User:
    """Mark the user's address as verified (the caller checked the emailed token); verifying twice changes nothing."""
    locked = User.objects.select_for_update().get(pk=user.pk)
    if locked.email_verified_at is not None:
        return locked
    locked.email_verified_at = timezone.now()
    locked.save(update_fields=["email_verified_at"])
    audit_event_record(
        action="user.email_verified",
        organization=None,
        actor=locked,
        target_type="user",
        target_id=locked.pk,
        after={"email_verified_at": _jsonable(locked.email_verified_at)},
    )
    return locked


def user_password_reset_record(*, user: User) -> None:
    """After a password was reset through the emailed link: audit it and lift the account's sign-in lockout.

    Opening the link proves the mailbox, so the address counts as verified too.
    """
    bruteforce.success_record(username=user.email)
    if user.email_verified_at is None:
        user_email_verify(user=user)
    audit_event_record(
        action="user.password_reset",
        organization=None,
        actor=user,
        target_type="user",
        target_id=user.pk,
    )
