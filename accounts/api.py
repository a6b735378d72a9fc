"""The management API for organizations and API keys (DRF)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from django.utils import timezone
from drf_spectacular.utils import extend_schema
from rest_framework import serializers, status
from rest_framework.authentication import BaseAuthentication
from rest_framework.exceptions import NotFound, PermissionDenied
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from . import keys, selectors, services
from .auth import KeyIdentity, authenticate_sync
from .models import APIKey, KeyScope, Membership, Organization, RoutingPreference, RoutingStrategy, Team, User
from .permissions import SCOPE_ROLES, Perm, role_can


class KeyPrincipal:
    """``request.user`` for a request authenticated by a ModelMuxer API key."""

    is_authenticated = True
    is_anonymous = False

    def __init__(self, identity: KeyIdentity) -> None:
        self.identity = identity


class APIKeyAuthentication(BaseAuthentication):
    """A key with the ``proxy`` scope, for the ``/v1/`` endpoints served by DRF."""

    scope: str | None = KeyScope.PROXY

    def authenticate(self, request: Request) -> tuple[KeyPrincipal, KeyIdentity] | None:
        header = request.META.get("HTTP_AUTHORIZATION")
        if self.scope is None and not _bears_api_key(header):
            return None  # a JWT, or no credentials: the next authenticator's turn
        identity = authenticate_sync(header, scope=self.scope)
        return KeyPrincipal(identity), identity

    def authenticate_header(self, request: Request) -> str:
        return 'Bearer realm="modelmuxer"'


class ManagementKeyAuthentication(APIKeyAuthentication):
    """A key on the management API: its scopes decide its role there (see ``permissions.SCOPE_ROLES``)."""

    scope = None


def _bears_api_key(header: str | None) -> bool:
    scheme, _, token = (header or "").partition(" ")
    return scheme.lower() == "bearer" and token.strip().startswith(keys.TYPE_PREFIXES)


def signed_in_user(request: Request) -> User:
    """The user behind a session or JWT (IsAuthenticated has already run)."""
    user = request.user
    if not isinstance(user, User):
        raise PermissionDenied("Sign in as a user to do this.")
    return user


def acting_user(request: Request) -> User | None:
    """The user to record as the actor: ``None`` when an API key acts."""
    return request.user if isinstance(request.user, User) else None


def key_role(identity: KeyIdentity) -> str | None:
    """The strongest role a key's scopes give it on the management API, or ``None``."""
    for scope in (KeyScope.ADMIN, KeyScope.READ):
        if scope in identity.scopes:
            return SCOPE_ROLES[scope]
    return None


class OrganizationScopedView(APIView):
    """Resolves ``<org>`` from the URL through the caller's membership, or its API key.

    ``perms`` maps each HTTP method to the permission it needs (HEAD and
    OPTIONS use GET's). A non-member, or a key of another organization, gets
    404 as if the organization did not exist; a member whose role lacks the
    permission gets 403. Subclasses read ``self.organization`` and
    ``self.role`` and never look tenants up themselves.
    """

    perms: Mapping[str, Perm] = {"GET": Perm.ORG_VIEW}
    organization: Organization
    role: str
    membership: Membership | None = None

    def get_authenticators(self) -> list[BaseAuthentication]:
        return [ManagementKeyAuthentication(), *super().get_authenticators()]

    def initial(self, request: Request, *args: Any, **kwargs: Any) -> None:
        super().initial(request, *args, **kwargs)
        if isinstance(request.user, KeyPrincipal):
            identity = request.user.identity
            role = key_role(identity)
            organization = Organization.objects.filter(pk=identity.organization_id, slug=kwargs["org"]).first()
            if organization is None:
                raise NotFound("No such organization.")
            if role is None:
                raise PermissionDenied("This API key has neither the 'read' nor the 'admin' scope.")
            self.organization, self.role = organization, role
        else:
            membership = selectors.membership_for(user=signed_in_user(request), organization_slug=kwargs["org"])
            if membership is None:
                raise NotFound("No such organization.")
            self.membership, self.organization, self.role = membership, membership.organization, membership.role
        method = "GET" if request.method in ("HEAD", "OPTIONS") else (request.method or "GET")
        perm = self.perms.get(method)
        if perm is not None and not role_can(self.role, perm):
            raise PermissionDenied(f"Your role ({self.role}) cannot do this.")

    def require(self, perm: Perm) -> None:
        """Check a further permission inside a handler (e.g. managing someone else's key)."""
        if not role_can(self.role, perm):
            raise PermissionDenied(f"Your role ({self.role}) cannot do this.")


POLICY_FIELDS = ["allowed_models", "allowed_providers", "routing_strategy", "routing_preference"]


class OrganizationSerializer(serializers.ModelSerializer[Organization]):
    class Meta:
        model = Organization
        fields = ["id", "name", "slug", *POLICY_FIELDS, "created_at"]


class RoutingPolicySerializer(serializers.ModelSerializer[Organization]):
    class Meta:
        model = Organization
        fields = POLICY_FIELDS


class APIKeySerializer(serializers.ModelSerializer[APIKey]):
    created_by: serializers.SlugRelatedField[User] = serializers.SlugRelatedField(slug_field="email", read_only=True)
    status = serializers.SerializerMethodField()

    class Meta:
        model = APIKey
        fields = [
            "id", "name", "prefix", "team", "created_by", "created_at", "last_used_at",
            "expires_at", "revoked_at", "allowed_models", "allowed_providers", "routing_strategy",
            "routing_preference", "status",
        ]  # fmt: skip

    def get_status(self, obj: APIKey) -> str:
        if obj.revoked_at is not None:
            return "revoked"
        if obj.expires_at is not None and obj.expires_at <= timezone.now():
            return "expired"
        return "active"


def model_names() -> serializers.ListField:
    return serializers.ListField(child=serializers.CharField(max_length=120), required=False, max_length=500)


def provider_slugs() -> serializers.ListField:
    return serializers.ListField(child=serializers.CharField(max_length=40), required=False, max_length=50)


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


class StrictRoutingPolicyInput(RoutingPolicyInput):
    """A PATCH body: only the policy's own fields, so a misspelt one is an error, not a no-op."""

    def to_internal_value(self, data: Any) -> dict[str, Any]:
        if isinstance(data, Mapping):
            extra = sorted(set(data) - set(self.fields))
            if extra:
                raise serializers.ValidationError({extra[0]: ["is not a routing policy field."]})
        return super().to_internal_value(data)


class OrganizationRoutingPolicyUpdateSerializer(StrictRoutingPolicyInput):
    allowed_models = model_names()
    allowed_providers = provider_slugs()
    routing_strategy = serializers.ChoiceField(choices=RoutingStrategy.choices, required=False)
    routing_preference = serializers.ChoiceField(choices=RoutingPreference.choices, required=False)


class APIKeyRoutingPolicyUpdateSerializer(StrictRoutingPolicyInput):
    """Blank strategy or preference: use the organization's."""

    allowed_models = model_names()
    allowed_providers = provider_slugs()
    routing_strategy = serializers.ChoiceField(choices=RoutingStrategy.choices, required=False, allow_blank=True)
    routing_preference = serializers.ChoiceField(choices=RoutingPreference.choices, required=False, allow_blank=True)


class APIKeyCreateSerializer(RoutingPolicyInput):
    name = serializers.CharField(max_length=200)
    team = serializers.IntegerField(required=False, allow_null=True)
    expires_at = serializers.DateTimeField(required=False, allow_null=True)
    allowed_models = model_names()
    allowed_providers = provider_slugs()
    routing_strategy = serializers.ChoiceField(choices=RoutingStrategy.choices, required=False, allow_blank=True)
    routing_preference = serializers.ChoiceField(choices=RoutingPreference.choices, required=False, allow_blank=True)

    def validate_expires_at(self, value: Any) -> Any:
        if value is not None and value <= timezone.now():
            raise serializers.ValidationError("must be in the future.")
        return value


class OrganizationListView(APIView):
    @extend_schema(operation_id="orgs_list", responses=OrganizationSerializer(many=True))
    def get(self, request: Request) -> Response:
        organizations = selectors.organizations_for_user(user=signed_in_user(request))
        return Response({"object": "list", "data": OrganizationSerializer(organizations, many=True).data})


class OrganizationDetailView(OrganizationScopedView):
    @extend_schema(operation_id="orgs_retrieve", responses=OrganizationSerializer)
    def get(self, request: Request, org: str) -> Response:
        data = OrganizationSerializer(self.organization).data
        return Response({**data, "role": self.role})


class APIKeyListView(OrganizationScopedView):
    perms = {"GET": Perm.KEYS_VIEW, "POST": Perm.KEYS_CREATE}

    @extend_schema(responses=APIKeySerializer(many=True))
    def get(self, request: Request, org: str) -> Response:
        keys = selectors.api_keys_for_org(organization=self.organization)
        return Response({"object": "list", "data": APIKeySerializer(keys, many=True).data})

    @extend_schema(request=APIKeyCreateSerializer, responses={201: APIKeySerializer})
    def post(self, request: Request, org: str) -> Response:
        serializer = APIKeyCreateSerializer(data=request.data, context={"within": self.organization})
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        team = None
        if data.get("team") is not None:
            team = Team.objects.filter(organization=self.organization, pk=data["team"]).first()
            if team is None:
                raise serializers.ValidationError({"team": ["No such team in this organization."]})
        issued = services.api_key_create(
            organization=self.organization,
            name=data["name"],
            created_by=acting_user(request),
            team=team,
            expires_at=data.get("expires_at"),
            allowed_models=data.get("allowed_models", ()),
            allowed_providers=data.get("allowed_providers", ()),
            routing_strategy=data.get("routing_strategy", ""),
            routing_preference=data.get("routing_preference", ""),
        )
        body = {**APIKeySerializer(issued.api_key).data, "key": issued.secret}
        return Response(body, status=status.HTTP_201_CREATED)


class RoutingPolicyView(OrganizationScopedView):
    """The organization's routing policy: any member reads it, owners and admins change it."""

    perms = {"GET": Perm.POLICY_VIEW, "PATCH": Perm.POLICY_MANAGE}

    @extend_schema(operation_id="org_routing_policy_retrieve", responses=RoutingPolicySerializer)
    def get(self, request: Request, org: str) -> Response:
        return Response(RoutingPolicySerializer(self.organization).data)

    @extend_schema(
        operation_id="org_routing_policy_update",
        request=OrganizationRoutingPolicyUpdateSerializer,
        responses=RoutingPolicySerializer,
    )
    def patch(self, request: Request, org: str) -> Response:
        serializer = OrganizationRoutingPolicyUpdateSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        updated = services.organization_routing_policy_update(
            organization=self.organization, actor=acting_user(request), **serializer.validated_data
        )
        return Response(RoutingPolicySerializer(updated).data)


class APIKeyScopedView(OrganizationScopedView):
    def get_key(self, key_id: int) -> APIKey:
        api_key = selectors.api_key_get(organization=self.organization, key_id=key_id)
        if api_key is None:
            raise NotFound("No such API key.")
        return api_key


class APIKeyDetailView(APIKeyScopedView):
    perms = {"GET": Perm.KEYS_VIEW, "PATCH": Perm.KEYS_MANAGE}

    @extend_schema(responses=APIKeySerializer)
    def get(self, request: Request, org: str, key_id: int) -> Response:
        return Response(APIKeySerializer(self.get_key(key_id)).data)

    @extend_schema(request=APIKeyRoutingPolicyUpdateSerializer, responses=APIKeySerializer)
    def patch(self, request: Request, org: str, key_id: int) -> Response:
        api_key = self.get_key(key_id)
        serializer = APIKeyRoutingPolicyUpdateSerializer(data=request.data, context={"within": self.organization})
        serializer.is_valid(raise_exception=True)
        updated = services.api_key_routing_policy_update(
            api_key=api_key, actor=acting_user(request), **serializer.validated_data
        )
        return Response(APIKeySerializer(updated).data)


class APIKeyRevokeView(APIKeyScopedView):
    perms = {"POST": Perm.KEYS_MANAGE}

    @extend_schema(request=None, responses=APIKeySerializer)
    def post(self, request: Request, org: str, key_id: int) -> Response:
        revoked = services.api_key_revoke(api_key=self.get_key(key_id), actor=acting_user(request))
        return Response(APIKeySerializer(revoked).data)
