"""The management API (DRF): organizations, teams, members, invitations and API keys.

Callers authenticate with a JWT, the console session, or an API key with the
``read`` or ``admin`` scope (acting as a viewer or an admin). Each view names
the permission every method needs (``accounts.permissions``); a non-member
gets 404 for everything under ``/api/orgs/<org>/``, and every object is looked
up inside the caller's organization, so another tenant's id is a 404 too.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, cast

from django.conf import settings
from drf_spectacular.extensions import OpenApiAuthenticationExtension
from drf_spectacular.utils import extend_schema
from rest_framework import serializers, status
from rest_framework.authentication import BaseAuthentication
from rest_framework.exceptions import NotFound, PermissionDenied
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from routing.openapi import ORG_ERRORS, error_responses, list_of

from . import keys, selectors, services
from .auth import KeyIdentity, authenticate_sync
from .models import APIKey, Invitation, KeyScope, Membership, Organization, Role, Team, User
from .permissions import SCOPE_ROLES, Perm, assignable_roles, role_can
from .serializers import (
    AcceptedInvitationSerializer,
    APIKeyCreateSerializer,
    APIKeyRotateSerializer,
    APIKeySerializer,
    APIKeyUpdateSerializer,
    InvitationAcceptSerializer,
    InvitationCreateSerializer,
    InvitationSerializer,
    IssuedInvitationSerializer,
    IssuedKeySerializer,
    MemberRemoveQuerySerializer,
    MemberSerializer,
    MembershipUpdateSerializer,
    OrganizationCreateSerializer,
    OrganizationRoutingPolicyUpdateSerializer,
    OrganizationSerializer,
    OrganizationUpdateSerializer,
    RoutingPolicySerializer,
    TeamCreateSerializer,
    TeamSerializer,
    TeamUpdateSerializer,
    WebhookSecretSerializer,
)

LAST_OWNER = "The organization would lose its last owner (code last_owner)."

# Where the console accepts an invitation; the email links here with ``?token=``.
INVITATION_ACCEPT_PATH = "/invitations/accept/"


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


class ManagementKeyAuthenticationScheme(OpenApiAuthenticationExtension):  # type: ignore[no-untyped-call]
    target_class = "accounts.api.ManagementKeyAuthentication"
    name = "ModelMuxerManagementKey"

    def get_security_definition(self, auto_schema: Any) -> dict[str, str]:
        return {
            "type": "http",
            "scheme": "bearer",
            "description": "A ModelMuxer API key with the 'read' (viewer) or 'admin' (admin) scope, mm_live_...",
        }


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


def key_acting_role(identity: KeyIdentity, scope_role: str) -> tuple[str, str | None]:
    """The role a key acts with, and the ceiling its creator's current role sets.

    A key never does more than the person who created it may do now: an
    admin-scope key made by an admin acts as a member once they are demoted, and
    as nobody once they leave. A key with no creator (made by another key, or
    the demo) acts with its scope's role.
    """
    if identity.user_id is None:
        return scope_role, None
    creator_role = (
        Membership.objects.filter(user_id=identity.user_id, organization_id=identity.organization_id)
        .values_list("role", flat=True)
        .first()
    )
    if creator_role is None:
        raise PermissionDenied("This API key's creator is no longer a member of the organization.")
    if scope_role == SCOPE_ROLES[KeyScope.ADMIN] and creator_role != Role.OWNER:
        return creator_role, creator_role
    return scope_role, creator_role


class OrganizationScopedView(APIView):
    """Resolves ``<org>`` from the URL through the caller's membership, or its API key.

    ``perms`` maps each HTTP method to the permission it needs (HEAD and
    OPTIONS use GET's); a handler missing from it is refused. A non-member, or a key of another organization, gets
    404 as if the organization did not exist; a member whose role lacks the
    permission gets 403. Subclasses read ``self.organization`` and
    ``self.role`` and never look tenants up themselves.
    """

    perms: Mapping[str, Perm] = {"GET": Perm.ORG_VIEW}
    organization: Organization
    role: str
    # For a key: its creator's current role, which bounds what the key may do (None: no creator to bound it).
    ceiling: str | None = None
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
            self.organization = organization
            self.role, self.ceiling = key_acting_role(identity, role)
        else:
            membership = selectors.membership_for(user=signed_in_user(request), organization_slug=kwargs["org"])
            if membership is None:
                raise NotFound("No such organization.")
            self.membership, self.organization, self.role = membership, membership.organization, membership.role
        method = "GET" if request.method in ("HEAD", "OPTIONS") else (request.method or "GET")
        perm = self.perms.get(method)
        if perm is None and hasattr(self, method.lower()):
            # A handler without a permission is a mistake: refuse rather than let every member in.
            raise PermissionDenied("This action is not available.")
        if perm is not None:
            self.require(perm)

    def can(self, perm: Perm) -> bool:
        return role_can(self.role, perm) and (self.ceiling is None or role_can(self.ceiling, perm))

    def require(self, perm: Perm) -> None:
        """Check a further permission inside a handler (e.g. managing someone else's key)."""
        if not self.can(perm):
            raise PermissionDenied(f"Your role ({self.role}) cannot do this.")


def grantable_scopes(role: str) -> frozenset[str]:
    """The key scopes ``role`` may give: proxy and read with KEYS_CREATE, admin only for owners and admins."""
    scopes: set[str] = set()
    if role_can(role, Perm.KEYS_CREATE):
        scopes |= {KeyScope.PROXY.value, KeyScope.READ.value}
    if role_can(role, Perm.ORG_UPDATE):
        scopes.add(KeyScope.ADMIN.value)
    return frozenset(scopes)


# --- organizations ------------------------------------------------------------------------------


class OrganizationListView(APIView):
    @extend_schema(
        operation_id="orgs_list",
        responses={200: list_of(OrganizationSerializer, name="OrganizationList"), **error_responses(401)},
    )
    def get(self, request: Request) -> Response:
        organizations = selectors.organizations_for_user(user=signed_in_user(request))
        return Response({"object": "list", "data": OrganizationSerializer(organizations, many=True).data})

    @extend_schema(
        operation_id="orgs_create",
        request=OrganizationCreateSerializer,
        responses={201: OrganizationSerializer, **error_responses(400, 401, 403)},
    )
    def post(self, request: Request) -> Response:
        """Create an organization; the signed-in user becomes its owner. API keys cannot (403)."""
        user = signed_in_user(request)
        serializer = OrganizationCreateSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        organization = services.organization_create(owner=user, **serializer.validated_data)
        body = {**OrganizationSerializer(organization).data, "role": Role.OWNER.value}
        return Response(body, status=status.HTTP_201_CREATED)


class OrganizationDetailView(OrganizationScopedView):
    """The organization and its settings: every member reads them, owners and admins change them.

    The webhook URL is shown whole only to owners and admins (it often embeds a token); the
    webhook secret is never shown (``webhook-secret/`` rotates it and returns it once).
    """

    perms = {"GET": Perm.ORG_VIEW, "PATCH": Perm.ORG_UPDATE}

    def serializer_context(self) -> dict[str, bool]:
        return {"reveal_webhook_url": self.can(Perm.ORG_UPDATE)}

    @extend_schema(
        operation_id="orgs_retrieve", responses={200: OrganizationSerializer, **error_responses(*ORG_ERRORS)}
    )
    def get(self, request: Request, org: str) -> Response:
        data = OrganizationSerializer(self.organization, context=self.serializer_context()).data
        return Response({**data, "role": self.role})

    @extend_schema(
        operation_id="orgs_update",
        request=OrganizationUpdateSerializer,
        responses={200: OrganizationSerializer, **error_responses(400, *ORG_ERRORS, 413)},
    )
    def patch(self, request: Request, org: str) -> Response:
        serializer = OrganizationUpdateSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        updated = services.organization_update(
            organization=self.organization,
            actor=acting_user(request),
            changes=cast(services.OrganizationChanges, serializer.validated_data),
        )
        return Response({**OrganizationSerializer(updated, context=self.serializer_context()).data, "role": self.role})


class WebhookSecretView(OrganizationScopedView):
    """A new signing secret for budget-alert webhooks, shown once; the old one stops signing at once."""

    perms = {"POST": Perm.ORG_UPDATE}

    @extend_schema(
        operation_id="org_webhook_secret_rotate",
        request=None,
        responses={201: WebhookSecretSerializer, **error_responses(*ORG_ERRORS)},
    )
    def post(self, request: Request, org: str) -> Response:
        secret = services.organization_webhook_secret_rotate(organization=self.organization, actor=acting_user(request))
        return Response({"webhook_secret": secret}, status=status.HTTP_201_CREATED)


class RoutingPolicyView(OrganizationScopedView):
    """The organization's routing policy: any member reads it, owners and admins change it."""

    perms = {"GET": Perm.POLICY_VIEW, "PATCH": Perm.POLICY_MANAGE}

    @extend_schema(
        operation_id="org_routing_policy_retrieve",
        responses={200: RoutingPolicySerializer, **error_responses(*ORG_ERRORS)},
    )
    def get(self, request: Request, org: str) -> Response:
        return Response(RoutingPolicySerializer(self.organization).data)

    @extend_schema(
        operation_id="org_routing_policy_update",
        request=OrganizationRoutingPolicyUpdateSerializer,
        responses={200: RoutingPolicySerializer, **error_responses(400, *ORG_ERRORS, 413)},
    )
    def patch(self, request: Request, org: str) -> Response:
        serializer = OrganizationRoutingPolicyUpdateSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        updated = services.organization_routing_policy_update(
            organization=self.organization, actor=acting_user(request), **serializer.validated_data
        )
        return Response(RoutingPolicySerializer(updated).data)


# --- teams --------------------------------------------------------------------------------------


class TeamScopedView(OrganizationScopedView):
    def get_team(self, team_id: int) -> Team:
        team = selectors.team_get(organization=self.organization, team_id=team_id)
        if team is None:
            raise NotFound("No such team.")
        return team

    def team_or_none(self, team_id: int | None, *, param: str = "team") -> Team | None:
        """A team id from a request body: ``None`` stays ``None``; another organization's team is a 400."""
        if team_id is None:
            return None
        team = selectors.team_get(organization=self.organization, team_id=team_id)
        if team is None:
            raise serializers.ValidationError({param: ["No such team in this organization."]})
        return team


class TeamListView(TeamScopedView):
    perms = {"GET": Perm.ORG_VIEW, "POST": Perm.TEAMS_MANAGE}

    @extend_schema(
        operation_id="teams_list",
        responses={200: list_of(TeamSerializer, name="TeamList"), **error_responses(*ORG_ERRORS)},
    )
    def get(self, request: Request, org: str) -> Response:
        teams = selectors.teams_for_org(organization=self.organization)
        return Response({"object": "list", "data": TeamSerializer(teams, many=True).data})

    @extend_schema(
        operation_id="teams_create",
        request=TeamCreateSerializer,
        responses={201: TeamSerializer, **error_responses(400, *ORG_ERRORS, 413)},
    )
    def post(self, request: Request, org: str) -> Response:
        serializer = TeamCreateSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        team = services.team_create(
            organization=self.organization, actor=acting_user(request), **serializer.validated_data
        )
        return Response(TeamSerializer(team).data, status=status.HTTP_201_CREATED)


class TeamDetailView(TeamScopedView):
    """Deleting a team keeps its members and keys (teamless); a team with budgets is refused (409)."""

    perms = {"GET": Perm.ORG_VIEW, "PATCH": Perm.TEAMS_MANAGE, "DELETE": Perm.TEAMS_MANAGE}

    @extend_schema(operation_id="teams_retrieve", responses={200: TeamSerializer, **error_responses(*ORG_ERRORS)})
    def get(self, request: Request, org: str, team_id: int) -> Response:
        return Response(TeamSerializer(self.get_team(team_id)).data)

    @extend_schema(
        operation_id="teams_update",
        request=TeamUpdateSerializer,
        responses={200: TeamSerializer, **error_responses(400, *ORG_ERRORS, 413)},
    )
    def patch(self, request: Request, org: str, team_id: int) -> Response:
        team = self.get_team(team_id)
        serializer = TeamUpdateSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        updated = services.team_update(
            team=team, actor=acting_user(request), changes=cast(services.TeamChanges, serializer.validated_data)
        )
        return Response(TeamSerializer(updated).data)

    @extend_schema(
        operation_id="teams_destroy",
        responses={
            204: None,
            **error_responses(*ORG_ERRORS, described={409: "The team has budgets; delete them first."}),
        },
    )
    def delete(self, request: Request, org: str, team_id: int) -> Response:
        services.team_delete(team=self.get_team(team_id), actor=acting_user(request))
        return Response(status=status.HTTP_204_NO_CONTENT)


# --- members ------------------------------------------------------------------------------------


class MemberListView(OrganizationScopedView):
    perms = {"GET": Perm.MEMBERS_VIEW}

    @extend_schema(
        operation_id="members_list",
        responses={200: list_of(MemberSerializer, name="MemberList"), **error_responses(*ORG_ERRORS)},
    )
    def get(self, request: Request, org: str) -> Response:
        members = selectors.members_for_org(organization=self.organization)
        return Response({"object": "list", "data": MemberSerializer(members, many=True).data})


class MemberDetailView(TeamScopedView):
    """Owners and admins change roles and teams and remove members; anyone may leave (DELETE themself).

    Only an owner gives or takes the owner role or touches an owner, and the
    last owner can neither be demoted nor leave (409 ``last_owner``). Removing
    someone keeps the keys they created working unless ``?revoke_keys=true``.
    """

    perms = {"GET": Perm.MEMBERS_VIEW, "PATCH": Perm.MEMBERS_MANAGE, "DELETE": Perm.MEMBERS_VIEW}

    def get_membership(self, membership_id: int) -> Membership:
        membership = selectors.membership_get(organization=self.organization, membership_id=membership_id)
        if membership is None:
            raise NotFound("No such member.")
        return membership

    def require_may_manage(self, membership: Membership) -> None:
        if membership.role not in assignable_roles(self.role):
            raise PermissionDenied(f"Your role ({self.role}) cannot change or remove an {membership.role}.")

    @extend_schema(operation_id="members_retrieve", responses={200: MemberSerializer, **error_responses(*ORG_ERRORS)})
    def get(self, request: Request, org: str, membership_id: int) -> Response:
        return Response(MemberSerializer(self.get_membership(membership_id)).data)

    @extend_schema(
        operation_id="members_update",
        request=MembershipUpdateSerializer,
        responses={
            200: MemberSerializer,
            **error_responses(400, *ORG_ERRORS, 413, described={409: LAST_OWNER}),
        },
    )
    def patch(self, request: Request, org: str, membership_id: int) -> Response:
        membership = self.get_membership(membership_id)
        serializer = MembershipUpdateSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        self.require_may_manage(membership)
        changes: services.MembershipChanges = {}
        if "role" in data:
            if data["role"] not in assignable_roles(self.role):
                raise PermissionDenied(f"Your role ({self.role}) cannot give the {data['role']} role.")
            changes["role"] = data["role"]
        if "team" in data:
            changes["team"] = self.team_or_none(data["team"])
        updated = services.membership_update(membership=membership, actor=acting_user(request), changes=changes)
        return Response(MemberSerializer(updated).data)

    @extend_schema(
        operation_id="members_destroy",
        parameters=[MemberRemoveQuerySerializer],
        responses={204: None, **error_responses(400, *ORG_ERRORS, described={409: LAST_OWNER})},
    )
    def delete(self, request: Request, org: str, membership_id: int) -> Response:
        membership = self.get_membership(membership_id)
        query = MemberRemoveQuerySerializer(data=request.query_params)
        query.is_valid(raise_exception=True)
        leaving = self.membership is not None and membership.pk == self.membership.pk
        if not leaving:
            self.require(Perm.MEMBERS_MANAGE)
            self.require_may_manage(membership)
        services.membership_remove(
            membership=membership, actor=acting_user(request), revoke_keys=query.validated_data["revoke_keys"]
        )
        return Response(status=status.HTTP_204_NO_CONTENT)


# --- invitations --------------------------------------------------------------------------------


class InvitationListView(TeamScopedView):
    perms = {"GET": Perm.MEMBERS_VIEW, "POST": Perm.MEMBERS_MANAGE}

    @extend_schema(
        operation_id="invitations_list",
        responses={200: list_of(InvitationSerializer, name="InvitationList"), **error_responses(*ORG_ERRORS)},
    )
    def get(self, request: Request, org: str) -> Response:
        invitations = selectors.invitations_for_org(organization=self.organization)
        return Response({"object": "list", "data": InvitationSerializer(invitations, many=True).data})

    @extend_schema(
        operation_id="invitations_create",
        request=InvitationCreateSerializer,
        responses={201: IssuedInvitationSerializer, **error_responses(400, *ORG_ERRORS, 413)},
        description="Emails the invitee a link to accept; the token is in this response once and never again.",
    )
    def post(self, request: Request, org: str) -> Response:
        serializer = InvitationCreateSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        if data["role"] not in assignable_roles(self.role):
            raise PermissionDenied(f"Your role ({self.role}) cannot invite someone as {data['role']}.")
        inviter = acting_user(request)
        if inviter is not None and inviter.email_verified_at is None:
            # The platform would be emailing strangers on behalf of an address nobody has proved.
            raise PermissionDenied("Verify your email address before inviting anyone.")
        issued = services.invitation_create(
            organization=self.organization,
            email=data["email"],
            role=data["role"],
            team=self.team_or_none(data.get("team")),
            invited_by=acting_user(request),
            accept_url=request.build_absolute_uri(INVITATION_ACCEPT_PATH),
        )
        body = {**InvitationSerializer(issued.invitation).data, "token": issued.token}
        return Response(body, status=status.HTTP_201_CREATED)


class InvitationDetailView(OrganizationScopedView):
    perms = {"GET": Perm.MEMBERS_VIEW, "DELETE": Perm.MEMBERS_MANAGE}

    def get_invitation(self, invitation_id: int) -> Invitation:
        invitation = selectors.invitation_get(organization=self.organization, invitation_id=invitation_id)
        if invitation is None:
            raise NotFound("No such invitation.")
        return invitation

    @extend_schema(
        operation_id="invitations_retrieve",
        responses={200: InvitationSerializer, **error_responses(*ORG_ERRORS)},
    )
    def get(self, request: Request, org: str, invitation_id: int) -> Response:
        return Response(InvitationSerializer(self.get_invitation(invitation_id)).data)

    @extend_schema(
        operation_id="invitations_revoke",
        responses={
            204: None,
            **error_responses(*ORG_ERRORS, described={400: "The invitation has already been accepted."}),
        },
    )
    def delete(self, request: Request, org: str, invitation_id: int) -> Response:
        invitation = self.get_invitation(invitation_id)
        if invitation.role not in assignable_roles(self.role):
            raise PermissionDenied(f"Your role ({self.role}) cannot revoke an invitation as {invitation.role}.")
        services.invitation_revoke(invitation=invitation, actor=acting_user(request))
        return Response(status=status.HTTP_204_NO_CONTENT)


class InvitationAcceptView(APIView):
    """The signed-in user (JWT or console session) accepts an invitation sent to their email address."""

    @extend_schema(
        operation_id="invitations_accept",
        request=InvitationAcceptSerializer,
        responses={
            201: AcceptedInvitationSerializer,
            **error_responses(
                401,
                413,
                described={
                    400: "The invitation was accepted, revoked or has expired, or you are already a member.",
                    403: "The invitation was sent to another email address, or an API key is not a user.",
                    404: "No such invitation.",
                },
            ),
        },
    )
    def post(self, request: Request) -> Response:
        user = signed_in_user(request)
        serializer = InvitationAcceptSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        membership = services.invitation_accept(token=serializer.validated_data["token"], user=user)
        body = {"organization": membership.organization.slug, "membership": MemberSerializer(membership).data}
        return Response(body, status=status.HTTP_201_CREATED)


# --- API keys -----------------------------------------------------------------------------------


class APIKeyScopedView(TeamScopedView):
    def get_key(self, key_id: int) -> APIKey:
        api_key = selectors.api_key_get(organization=self.organization, key_id=key_id)
        if api_key is None:
            raise NotFound("No such API key.")
        return api_key

    def get_key_to_change(self, key_id: int) -> APIKey:
        """The key, if the caller may change it: any key with KEYS_MANAGE, else only the ones they created."""
        api_key = self.get_key(key_id)
        if not self.can(Perm.KEYS_MANAGE):
            user_id = self.membership.user_id if self.membership is not None else None
            if user_id is None or api_key.created_by_id != user_id:
                raise PermissionDenied(f"Your role ({self.role}) can only change the API keys you created.")
        return api_key

    def require_grantable(self, scopes: set[str]) -> None:
        refused = sorted(scopes - grantable_scopes(self.role))
        if refused:
            names = ", ".join(f"'{scope}'" for scope in refused)
            raise PermissionDenied(f"Your role ({self.role}) cannot give a key the {names} scope.")


class APIKeyListView(APIKeyScopedView):
    """Members create keys with the proxy and read scopes; the admin scope takes an owner or admin.

    A key created by another (admin-scope) key has no ``created_by``.
    """

    perms = {"GET": Perm.KEYS_VIEW, "POST": Perm.KEYS_CREATE}

    @extend_schema(
        operation_id="api_orgs_keys_list",
        responses={200: list_of(APIKeySerializer, name="APIKeyList"), **error_responses(*ORG_ERRORS)},
    )
    def get(self, request: Request, org: str) -> Response:
        keys = selectors.api_keys_for_org(organization=self.organization)
        return Response({"object": "list", "data": APIKeySerializer(keys, many=True).data})

    @extend_schema(
        request=APIKeyCreateSerializer, responses={201: IssuedKeySerializer, **error_responses(400, *ORG_ERRORS, 413)}
    )
    def post(self, request: Request, org: str) -> Response:
        serializer = APIKeyCreateSerializer(data=request.data, context={"within": self.organization})
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        scopes = data.get("scopes", [KeyScope.PROXY.value])
        self.require_grantable(set(scopes))
        issued = services.api_key_create(
            organization=self.organization,
            name=data["name"],
            created_by=acting_user(request),
            team=self.team_or_none(data.get("team")),
            expires_at=data.get("expires_at"),
            allowed_models=data.get("allowed_models", ()),
            allowed_providers=data.get("allowed_providers", ()),
            routing_strategy=data.get("routing_strategy", ""),
            routing_preference=data.get("routing_preference", ""),
            scopes=scopes,
            rpm_limit=data.get("rpm_limit"),
            tpm_limit=data.get("tpm_limit"),
        )
        body = {**APIKeySerializer(issued.api_key).data, "key": issued.secret}
        return Response(body, status=status.HTTP_201_CREATED)


class APIKeyDetailView(APIKeyScopedView):
    """Members change only the keys they created; owners and admins any key."""

    perms = {"GET": Perm.KEYS_VIEW, "PATCH": Perm.KEYS_CREATE}

    @extend_schema(responses={200: APIKeySerializer, **error_responses(*ORG_ERRORS)})
    def get(self, request: Request, org: str, key_id: int) -> Response:
        return Response(APIKeySerializer(self.get_key(key_id)).data)

    @extend_schema(
        request=APIKeyUpdateSerializer, responses={200: APIKeySerializer, **error_responses(400, *ORG_ERRORS, 413)}
    )
    def patch(self, request: Request, org: str, key_id: int) -> Response:
        api_key = self.get_key_to_change(key_id)
        serializer = APIKeyUpdateSerializer(data=request.data, context={"within": self.organization})
        serializer.is_valid(raise_exception=True)
        changes = cast(services.APIKeyChanges, serializer.validated_data)
        if "scopes" in changes:
            self.require_grantable(set(changes["scopes"]) - set(api_key.scopes))
        updated = services.api_key_update(api_key=api_key, actor=acting_user(request), changes=changes)
        return Response(APIKeySerializer(selectors.api_key_get(organization=self.organization, key_id=updated.pk)).data)


class APIKeyRotateView(APIKeyScopedView):
    """A new secret with the same settings; the old key keeps working for the grace period, then expires."""

    perms = {"POST": Perm.KEYS_CREATE}

    @extend_schema(
        operation_id="keys_rotate",
        request=APIKeyRotateSerializer,
        responses={201: IssuedKeySerializer, **error_responses(400, *ORG_ERRORS, 413)},
    )
    def post(self, request: Request, org: str, key_id: int) -> Response:
        api_key = self.get_key_to_change(key_id)
        serializer = APIKeyRotateSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        grace = serializer.validated_data.get("grace_seconds", settings.MUXER_KEY_ROTATION_GRACE_SECONDS)
        issued = services.api_key_rotate(api_key=api_key, actor=acting_user(request), grace_seconds=grace)
        body = {**APIKeySerializer(issued.api_key).data, "key": issued.secret}
        return Response(body, status=status.HTTP_201_CREATED)


class APIKeyRevokeView(APIKeyScopedView):
    """Every instance refuses the key within ``MUXER_KEY_CACHE_SECONDS`` (2 s by default)."""

    perms = {"POST": Perm.KEYS_CREATE}

    @extend_schema(request=None, responses={200: APIKeySerializer, **error_responses(*ORG_ERRORS)})
    def post(self, request: Request, org: str, key_id: int) -> Response:
        revoked = services.api_key_revoke(api_key=self.get_key_to_change(key_id), actor=acting_user(request))
        return Response(APIKeySerializer(revoked).data)
