"""What the management API accepts and returns for organizations, teams, members, invitations and keys.

Input serializers only validate; the views pass their output to a service.
Bodies that change something are strict: a field the endpoint does not know
is a 400 naming it, not a silent no-op.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import lru_cache
from typing import Any
from urllib.parse import urlsplit
from zoneinfo import available_timezones

from django.utils import timezone
from rest_framework import serializers

from routing.pii import PIIPolicy

from . import selectors
from .models import (
    APIKey,
    Invitation,
    KeyScope,
    Membership,
    Organization,
    Role,
    RoutingPreference,
    RoutingStrategy,
    Team,
)
from .services import masked_url

# The largest value a PositiveIntegerField holds on every database we run on.
MAX_INT = 2_147_483_647
MAX_GRACE_SECONDS = 7 * 24 * 3600
# Bounds of the response cache's lifetime (0: off) and of how long kept request bodies stay.
MAX_RESPONSE_CACHE_TTL_SECONDS = 30 * 24 * 3600
MAX_REQUEST_LOG_RETENTION_DAYS = 3650
POLICY_FIELDS = ["allowed_models", "allowed_providers", "routing_strategy", "routing_preference"]


@lru_cache(maxsize=1)
def _time_zones() -> frozenset[str]:
    """IANA zone names. The system's zone directory also holds aliases of the machine's own zone
    (``localtime``) and duplicate trees (``posix/``, ``right/``), which are no place's calendar."""
    return frozenset(
        name
        for name in available_timezones()
        if name not in {"localtime", "posixrules"} and not name.startswith(("posix/", "right/"))
    )


class StrictInput(serializers.Serializer[Any]):
    """A body with only this serializer's fields."""

    unknown_field_message = "is not a field of this request."

    def to_internal_value(self, data: Any) -> dict[str, Any]:
        if isinstance(data, Mapping):
            extra = sorted(set(data) - set(self.fields))
            if extra:
                raise serializers.ValidationError({extra[0]: [self.unknown_field_message]})
        return super().to_internal_value(data)


def valid_timezone(value: str) -> str:
    if value not in _time_zones():
        raise serializers.ValidationError(f"{value!r} is not an IANA time zone (like 'Europe/Paris' or 'UTC').")
    return value


def per_minute_limit() -> serializers.IntegerField:
    """A requests- or tokens-per-minute limit: a positive number, or null for no limit."""
    return serializers.IntegerField(min_value=1, max_value=MAX_INT, required=False, allow_null=True)


def model_names() -> serializers.ListField:
    return serializers.ListField(child=serializers.CharField(max_length=120), required=False, max_length=500)


def provider_slugs() -> serializers.ListField:
    return serializers.ListField(child=serializers.CharField(max_length=40), required=False, max_length=50)


def key_scopes() -> serializers.ListField:
    return serializers.ListField(
        child=serializers.ChoiceField(choices=KeyScope.choices), required=False, allow_empty=False, max_length=3
    )


def future_or_null(value: Any) -> Any:
    if value is not None and value <= timezone.now():
        raise serializers.ValidationError("must be in the future.")
    return value


# --- organizations ------------------------------------------------------------------------------


class OrganizationSerializer(serializers.ModelSerializer[Organization]):
    """With ``reveal_webhook_url`` in the context (owners and admins), the whole webhook URL; else its
    scheme and host only, since such URLs often carry a token."""

    webhook_url = serializers.SerializerMethodField()
    webhook_secret_set = serializers.SerializerMethodField()

    class Meta:
        model = Organization
        fields = [
            "id", "name", "slug", *POLICY_FIELDS, "rpm_limit", "tpm_limit", "timezone", "max_output_tokens_cap",
            "alert_email", "webhook_url", "webhook_secret_set", "pii_policy", "response_cache_ttl_seconds",
            "request_log_enabled", "request_log_retention_days", "created_at",
        ]  # fmt: skip

    def get_webhook_url(self, obj: Organization) -> str:
        return obj.webhook_url if self.context.get("reveal_webhook_url") else masked_url(obj.webhook_url)

    def get_webhook_secret_set(self, obj: Organization) -> bool:
        return bool(obj.webhook_secret)


class OrganizationUpdateSerializer(StrictInput):
    """The organization's settings. The webhook secret has an endpoint of its own, and is never shown."""

    unknown_field_message = "is not an organization setting (the routing policy and webhook secret have their own)."

    name = serializers.CharField(max_length=200, required=False)
    timezone = serializers.CharField(max_length=64, required=False)
    alert_email = serializers.EmailField(max_length=254, required=False, allow_blank=True)
    webhook_url = serializers.URLField(max_length=200, required=False, allow_blank=True)
    max_output_tokens_cap = serializers.IntegerField(min_value=1, max_value=MAX_INT, required=False, allow_null=True)
    pii_policy = serializers.JSONField(required=False)
    rpm_limit = per_minute_limit()
    tpm_limit = per_minute_limit()
    response_cache_ttl_seconds = serializers.IntegerField(
        min_value=0,
        max_value=MAX_RESPONSE_CACHE_TTL_SECONDS,
        required=False,
        help_text="How long an exact-match cached answer is served, in seconds (at most 30 days); 0 turns it off.",
    )
    request_log_enabled = serializers.BooleanField(
        required=False, help_text="Keep each request's and response's bodies, PII masked, with its usage record."
    )
    request_log_retention_days = serializers.IntegerField(
        min_value=1,
        max_value=MAX_REQUEST_LOG_RETENTION_DAYS,
        required=False,
        help_text="Kept bodies are deleted after this many days (1 to 3650); applies even once the log is off.",
    )

    def validate_timezone(self, value: str) -> str:
        return valid_timezone(value)

    def validate_webhook_url(self, value: str) -> str:
        if value and urlsplit(value).scheme not in ("http", "https"):
            raise serializers.ValidationError("must be an http or https URL.")
        return value

    def validate_pii_policy(self, value: Any) -> dict[str, str]:
        try:
            return PIIPolicy.from_dict(value).to_dict()
        except ValueError as exc:
            raise serializers.ValidationError(str(exc)) from None


class WebhookSecretSerializer(serializers.Serializer[Any]):
    webhook_secret = serializers.CharField(help_text="Shown this once; budget-alert webhooks are signed with it.")


class RoutingPolicySerializer(serializers.ModelSerializer[Organization]):
    class Meta:
        model = Organization
        fields = POLICY_FIELDS


class RoutingPolicyInput(serializers.Serializer[Any]):
    """Checks a policy's lists against the catalog and, with ``within`` in the
    context, against the organization's policy (a key may narrow it, never widen it)."""

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        problems = selectors.routing_policy_problems(
            allowed_models=attrs.get("allowed_models"),
            allowed_providers=attrs.get("allowed_providers"),
            within=self.context.get("within"),
        )
        if problems:
            raise serializers.ValidationError(problems)
        return attrs


class StrictRoutingPolicyInput(RoutingPolicyInput, StrictInput):
    """A PATCH body: only the policy's own fields, so a misspelt one is an error, not a no-op."""

    unknown_field_message = "is not a routing policy field."


class OrganizationRoutingPolicyUpdateSerializer(StrictRoutingPolicyInput):
    allowed_models = model_names()
    allowed_providers = provider_slugs()
    routing_strategy = serializers.ChoiceField(choices=RoutingStrategy.choices, required=False)
    routing_preference = serializers.ChoiceField(choices=RoutingPreference.choices, required=False)


# --- teams --------------------------------------------------------------------------------------


class TeamSerializer(serializers.ModelSerializer[Team]):
    class Meta:
        model = Team
        fields = ["id", "name", "rpm_limit", "tpm_limit", "created_at"]


class OrganizationCreateSerializer(StrictInput):
    name = serializers.CharField(max_length=200)
    slug = serializers.SlugField(max_length=70, required=False, help_text="Taken from the name when left out.")
    timezone = serializers.CharField(max_length=64, required=False)

    def validate_timezone(self, value: str) -> str:
        return valid_timezone(value)


class TeamCreateSerializer(StrictInput):
    name = serializers.CharField(max_length=200)
    rpm_limit = per_minute_limit()
    tpm_limit = per_minute_limit()


class TeamUpdateSerializer(StrictInput):
    name = serializers.CharField(max_length=200, required=False)
    rpm_limit = per_minute_limit()
    tpm_limit = per_minute_limit()


# --- members ------------------------------------------------------------------------------------


class MemberSerializer(serializers.ModelSerializer[Membership]):
    email = serializers.EmailField(source="user.email", read_only=True)
    name = serializers.CharField(source="user.name", read_only=True)

    class Meta:
        model = Membership
        fields = ["id", "user", "email", "name", "role", "team", "created_at"]


class MembershipUpdateSerializer(StrictInput):
    role = serializers.ChoiceField(choices=Role.choices, required=False)
    team = serializers.IntegerField(required=False, allow_null=True, help_text="A team id, or null for none.")


class MemberRemoveQuerySerializer(serializers.Serializer[Any]):
    revoke_keys = serializers.BooleanField(
        default=False, help_text="Also revoke the active keys this member created (they keep working otherwise)."
    )


# --- invitations --------------------------------------------------------------------------------


class InvitationSerializer(serializers.ModelSerializer[Invitation]):
    status = serializers.CharField(read_only=True)

    class Meta:
        model = Invitation
        fields = [
            "id", "email", "role", "team", "status", "invited_by", "created_at", "expires_at", "accepted_at",
            "revoked_at",
        ]  # fmt: skip


class IssuedInvitationSerializer(InvitationSerializer):
    token = serializers.CharField(read_only=True, help_text="Shown this once, and sent in the invitation email.")

    class Meta(InvitationSerializer.Meta):
        fields = [*InvitationSerializer.Meta.fields, "token"]


class InvitationCreateSerializer(StrictInput):
    email = serializers.EmailField(max_length=254)
    role = serializers.ChoiceField(choices=Role.choices, default=Role.MEMBER)
    team = serializers.IntegerField(required=False, allow_null=True)


class InvitationAcceptSerializer(StrictInput):
    token = serializers.CharField(max_length=200, trim_whitespace=True)


class AcceptedInvitationSerializer(serializers.Serializer[Any]):
    organization = serializers.SlugField(help_text="The organization joined (its slug).")
    membership = MemberSerializer()


# --- API keys -----------------------------------------------------------------------------------


class APIKeySerializer(serializers.ModelSerializer[APIKey]):
    created_by: serializers.SlugRelatedField[Any] = serializers.SlugRelatedField(slug_field="email", read_only=True)
    status = serializers.SerializerMethodField()
    rotated_to = serializers.SerializerMethodField()

    class Meta:
        model = APIKey
        fields = [
            "id", "name", "prefix", "team", "created_by", "created_at", "last_used_at",
            "expires_at", "revoked_at", "allowed_models", "allowed_providers", "routing_strategy",
            "routing_preference", "scopes", "rpm_limit", "tpm_limit", "rotated_from", "rotated_to", "status",
        ]  # fmt: skip

    def get_status(self, obj: APIKey) -> str:
        if obj.revoked_at is not None:
            return "revoked"
        if obj.expires_at is not None and obj.expires_at <= timezone.now():
            return "expired"
        return "active"

    def get_rotated_to(self, obj: APIKey) -> int | None:
        """The key that replaced this one, if it was rotated."""
        successor = getattr(obj, "rotated_to", None)
        return successor.pk if successor is not None else None


class IssuedKeySerializer(APIKeySerializer):
    key = serializers.CharField(read_only=True, help_text="The secret, shown this once.")

    class Meta(APIKeySerializer.Meta):
        fields = [*APIKeySerializer.Meta.fields, "key"]


class APIKeyCreateSerializer(RoutingPolicyInput, StrictInput):
    name = serializers.CharField(max_length=200)
    team = serializers.IntegerField(required=False, allow_null=True)
    expires_at = serializers.DateTimeField(required=False, allow_null=True, validators=[future_or_null])
    allowed_models = model_names()
    allowed_providers = provider_slugs()
    routing_strategy = serializers.ChoiceField(choices=RoutingStrategy.choices, required=False, allow_blank=True)
    routing_preference = serializers.ChoiceField(choices=RoutingPreference.choices, required=False, allow_blank=True)
    scopes = key_scopes()
    rpm_limit = per_minute_limit()
    tpm_limit = per_minute_limit()


class APIKeyUpdateSerializer(RoutingPolicyInput, StrictInput):
    """Blank strategy or preference: use the organization's. Null expiry: never expires."""

    name = serializers.CharField(max_length=200, required=False)
    allowed_models = model_names()
    allowed_providers = provider_slugs()
    routing_strategy = serializers.ChoiceField(choices=RoutingStrategy.choices, required=False, allow_blank=True)
    routing_preference = serializers.ChoiceField(choices=RoutingPreference.choices, required=False, allow_blank=True)
    rpm_limit = per_minute_limit()
    tpm_limit = per_minute_limit()
    expires_at = serializers.DateTimeField(required=False, allow_null=True, validators=[future_or_null])
    scopes = key_scopes()


class APIKeyRotateSerializer(StrictInput):
    grace_seconds = serializers.IntegerField(
        min_value=0,
        max_value=MAX_GRACE_SECONDS,
        required=False,
        help_text="How long the old key keeps working (default MUXER_KEY_ROTATION_GRACE_SECONDS).",
    )
