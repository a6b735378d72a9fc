"""GDPR: export everything an organization owns, export a person's own data, and erase a person.

Erasure anonymises the user row instead of deleting it: usage records, API
keys and audit events point at users by id, so the ledger and the audit chain
stay intact and keep verifying, while the person's email and name are gone and
the account can never sign in again.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal
from typing import Any

import orjson
from django.db import models, transaction
from django.db.models import F, QuerySet
from django.utils import timezone
from rest_framework_simplejwt.token_blacklist.models import BlacklistedToken, OutstandingToken

from audit.models import AuditEvent
from audit.services import audit_event_record
from billing.models import Budget, BudgetAlert, Notification, RequestLog, UsageRecord, UsageRollup
from providers.models import ProviderCredential
from routing.models import Feedback, TrainedRouter

from .models import APIKey, Invitation, Membership, Organization, Role, Team, User

# A field whose name says it holds a secret is never exported; tests hold every section to this.
SECRET_FIELD = re.compile(r"(^|_)(digest|secret|encrypted|password|token|weights)($|_)")
PAGE_SIZE = 1000


@dataclass(frozen=True)
class ExportSection:
    """One model's rows in an organization's export.

    Every concrete field is exported except ``omit`` (secrets, and binary blobs
    that are not personal data), so a field added later is exported by default;
    a new field named like a secret fails the export's tests until it is omitted.
    """

    name: str
    model: type[models.Model]
    rows: Callable[[Organization], QuerySet[Any]]
    omit: frozenset[str] = frozenset()
    extra: Mapping[str, Any] = field(default_factory=dict)

    def columns(self) -> list[str]:
        return [f.attname for f in self.model._meta.concrete_fields if f.attname not in self.omit]


def _owned(model: type[models.Model]) -> Callable[[Organization], QuerySet[Any]]:
    return lambda organization: model._default_manager.filter(organization=organization)


SECTIONS: tuple[ExportSection, ...] = (
    ExportSection("teams", Team, _owned(Team)),
    ExportSection(
        "memberships",
        Membership,
        _owned(Membership),
        extra={"user_email": F("user__email"), "user_name": F("user__name")},
    ),
    ExportSection("invitations", Invitation, _owned(Invitation), omit=frozenset({"digest"})),
    ExportSection("api_keys", APIKey, _owned(APIKey), omit=frozenset({"digest"})),
    ExportSection(
        "provider_credentials",
        ProviderCredential,
        _owned(ProviderCredential),
        omit=frozenset({"encrypted_key"}),
        extra={"provider_slug": F("provider__slug")},
    ),
    ExportSection("budgets", Budget, _owned(Budget)),
    ExportSection(
        "budget_alerts", BudgetAlert, lambda organization: BudgetAlert.objects.filter(budget__organization=organization)
    ),
    ExportSection("notifications", Notification, _owned(Notification)),
    ExportSection("feedback", Feedback, _owned(Feedback)),
    # The trained router's weights are model arrays, not personal data; its metadata is exported.
    ExportSection("trained_routers", TrainedRouter, _owned(TrainedRouter), omit=frozenset({"weights"})),
    ExportSection("usage_rollups", UsageRollup, _owned(UsageRollup)),
    ExportSection("usage_records", UsageRecord, _owned(UsageRecord)),
    # Kept request and response bodies (the opt-in request log), PII already masked.
    ExportSection("request_logs", RequestLog, _owned(RequestLog)),
    ExportSection("audit_events", AuditEvent, _owned(AuditEvent)),
)

ORGANIZATION_OMIT = frozenset({"webhook_secret"})


def _json_default(value: Any) -> Any:
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, (bytes, memoryview)):
        raise TypeError("binary fields are not exported")
    raise TypeError(f"cannot export {type(value).__name__}")


def _dumps(value: Any) -> bytes:
    return orjson.dumps(value, default=_json_default, option=orjson.OPT_NON_STR_KEYS)


def _plain(row: Mapping[str, Any]) -> dict[str, Any]:
    return {k: (v.isoformat() if isinstance(v, (datetime, date)) else v) for k, v in row.items()}


def organization_settings(organization: Organization) -> dict[str, Any]:
    columns = [f.attname for f in Organization._meta.concrete_fields if f.attname not in ORGANIZATION_OMIT]
    row = Organization.objects.filter(pk=organization.pk).values(*columns).get()
    return {**_plain(row), "webhook_signing_enabled": bool(organization.webhook_secret)}


def section_pages(section: ExportSection, organization: Organization) -> Iterator[list[dict[str, Any]]]:
    """The section's rows, by primary key, a page (one query) at a time."""
    queryset = section.rows(organization).order_by("pk").values(*section.columns(), "pk", **section.extra)
    after: Any = None
    while True:
        page = queryset if after is None else queryset.filter(pk__gt=after)
        rows = list(page[:PAGE_SIZE])
        if not rows:
            return
        after = rows[-1]["pk"]
        yield [_plain({k: v for k, v in row.items() if k != "pk"}) for row in rows]
        if len(rows) < PAGE_SIZE:
            return


def organization_export_chunks(organization: Organization) -> Iterator[bytes]:
    """The organization's export as one JSON document, in chunks of at most a page of rows."""
    head = {
        "object": "organization.export",
        "exported_at": timezone.now().isoformat(),
        "organization": organization_settings(organization),
    }
    yield _dumps(head)[:-1]  # the object stays open for the sections
    for section in SECTIONS:
        yield b',"' + section.name.encode() + b'":['
        first = True
        for page in section_pages(section, organization):
            body = b",".join(_dumps(row) for row in page)
            yield body if first else b"," + body
            first = False
        yield b"]"
    yield b"}"


def user_export(user: User) -> dict[str, Any]:
    """What ModelMuxer holds about one person: their profile, memberships and the keys they created."""
    keys = APIKey.objects.filter(created_by=user).order_by("pk")
    key_columns = [f.attname for f in APIKey._meta.concrete_fields if f.attname != "digest"]
    return {
        "object": "user.export",
        "exported_at": timezone.now().isoformat(),
        "profile": {
            "id": user.pk,
            "email": user.email,
            "name": user.name,
            "date_joined": user.date_joined.isoformat(),
            "email_verified_at": user.email_verified_at.isoformat() if user.email_verified_at else None,
            "last_login": user.last_login.isoformat() if user.last_login else None,
            "is_staff": user.is_staff,
        },
        "memberships": [
            _plain(row)
            for row in Membership.objects.filter(user=user)
            .order_by("pk")
            .values(
                "id",
                "role",
                "team_id",
                "created_at",
                organization_slug=F("organization__slug"),
                organization_name=F("organization__name"),
            )
        ],
        "api_keys": [_plain(row) for row in keys.values(*key_columns, organization_slug=F("organization__slug"))],
    }


# --- erasure ---------------------------------------------------------------------------


class LastOwnerError(Exception):
    """Erasing the user would leave organizations that still have members without an owner."""

    def __init__(self, organizations: list[Organization]) -> None:
        self.organizations = organizations
        slugs = ", ".join(o.slug for o in organizations)
        super().__init__(
            f"This user is the last owner of {slugs}, which still has other members. "
            "Make another member an owner first (or remove the other members)."
        )


@dataclass(frozen=True)
class ErasedUser:
    user_id: int
    organizations_left: list[int]


def erased_email(user_id: int) -> str:
    return f"erased-{user_id}@erased.invalid"


@transaction.atomic
def user_erase(*, user: User, actor: User | None) -> ErasedUser:
    """Anonymise a person: email and name gone, no password, inactive, no memberships, tokens blacklisted.

    Refused (``LastOwnerError``) while they are the last owner of an
    organization that has other members. A sole member leaves their
    organization behind with no members: its usage and audit rows must stay,
    and platform staff can delete or hand it over. The usage records, API keys
    and audit events that refer to them by id are kept as they are.
    """
    user = User.objects.select_for_update().get(pk=user.pk)
    organization_ids = list(Membership.objects.filter(user=user).values_list("organization_id", flat=True))
    # Lock the organizations in a fixed order, so two owners erased at once cannot both leave.
    organizations = list(Organization.objects.select_for_update().filter(pk__in=organization_ids).order_by("pk"))
    memberships = list(Membership.objects.filter(user=user, organization__in=organizations))
    orphaned = [
        m.organization
        for m in memberships
        if m.role == Role.OWNER
        and not Membership.objects.filter(organization=m.organization, role=Role.OWNER).exclude(user=user).exists()
        and Membership.objects.filter(organization=m.organization).exclude(user=user).exists()
    ]
    if orphaned:
        raise LastOwnerError(orphaned)

    old_email = user.email
    now = timezone.now()
    user.email = erased_email(user.pk)
    user.name = ""
    user.set_unusable_password()  # also ends their sessions: the session hash covers the password
    user.is_active = False
    user.is_staff = False
    user.is_superuser = False
    user.save()
    user.groups.clear()
    user.user_permissions.clear()
    Membership.objects.filter(user=user).delete()
    # Invitations name the person by email: anonymise them, and withdraw any still pending.
    Invitation.objects.filter(email__iexact=old_email, accepted_at__isnull=True, revoked_at__isnull=True).update(
        revoked_at=now
    )
    Invitation.objects.filter(email__iexact=old_email).update(email=user.email)
    Organization.objects.filter(alert_email__iexact=old_email).update(alert_email="")
    outstanding = OutstandingToken.objects.filter(user=user).exclude(blacklistedtoken__isnull=False)
    BlacklistedToken.objects.bulk_create([BlacklistedToken(token=token) for token in outstanding])

    # People are referred to by id, never email, so the record itself names no one. Each
    # organization they left sees it in its own log; with none, the event has no organization.
    left = {m.organization_id: m for m in memberships}
    audited: list[Organization | None] = [*organizations] or [None]
    for organization in audited:
        membership = left.get(organization.pk) if organization is not None else None
        audit_event_record(
            action="user.erased",
            organization=organization,
            actor=actor,
            target_type="user",
            target_id=user.pk,
            metadata={
                "self": actor is not None and actor.pk == user.pk,
                **({"membership_id": membership.pk, "role": membership.role} if membership is not None else {}),
            },
        )
    return ErasedUser(user_id=user.pk, organizations_left=[o.pk for o in organizations])
