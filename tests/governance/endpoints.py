"""Every endpoint of the management API and of the ``/v1/`` DRF views, found in the URLconf, and how to call each.

The governance proofs (cross-tenant, role matrix) iterate over :func:`discover`,
not over a hand-written list, and ``test_endpoints`` fails for an endpoint or
method that this registry cannot exercise. To register a new endpoint:

- an id in its URL (``<int:thing_id>``): add a factory to :data:`ID_FACTORIES`
  that creates the object in a tenant and returns the value for the URL;
- each method it implements: add a :class:`Call` to :data:`CALLS` under
  ``(url name, METHOD)``, with a minimal valid body for writes;
- an endpoint outside ``/api/orgs/<org>/`` (no tenant in its URL): add it to
  :data:`NOT_ORG_SCOPED` with the reason, and prove its isolation in its own test.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from decimal import Decimal
from typing import Any

from django.apps import apps
from django.core.exceptions import FieldDoesNotExist
from django.db import models
from django.urls import URLPattern, URLResolver, get_resolver
from django.utils import timezone
from rest_framework.test import APIClient
from rest_framework_simplejwt.tokens import AccessToken

from accounts import services as accounts_services
from accounts.api import OrganizationScopedView
from accounts.models import APIKey, Invitation, KeyScope, Membership, Organization, Role, Team, User
from billing.models import Budget, Notification, RequestLog, UsageRecord, UsageStatus
from providers.models import Provider
from providers.services import provider_credential_set
from tests.factories import MembershipFactory, OrganizationFactory, TeamFactory, UserFactory, issue_key

HTTP_METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")
ROLES = tuple(Role)
KEY_PRINCIPALS = tuple(f"key:{scope}" for scope in (KeyScope.READ, KeyScope.ADMIN, KeyScope.PROXY))
PRINCIPALS: tuple[str, ...] = (*(role.value for role in ROLES), *KEY_PRINCIPALS)
KEY_SCOPES = {principal: [principal.removeprefix("key:")] for principal in KEY_PRINCIPALS}


# --- discovery ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Endpoint:
    name: str
    route: str
    view: type
    methods: tuple[str, ...]
    kwargs: tuple[str, ...]

    @property
    def org_scoped(self) -> bool:
        return issubclass(self.view, OrganizationScopedView)

    @property
    def object_kwargs(self) -> tuple[str, ...]:
        return tuple(name for name in self.kwargs if name != "org")

    def path(self, **values: str) -> str:
        def value(match: re.Match[str]) -> str:
            return values[match.group("name")]

        return "/" + re.sub(r"<(?:(?P<converter>[^>:]+):)?(?P<name>\w+)>", value, self.route)

    def __str__(self) -> str:
        return f"/{self.route} ({self.name})"


def _view_class(callback: Callable[..., Any]) -> type | None:
    return getattr(callback, "cls", None) or getattr(callback, "view_class", None)


def _walk(patterns: list[Any], prefix: str = "") -> Iterator[tuple[str, URLPattern]]:
    for entry in patterns:
        if isinstance(entry, URLResolver):
            yield from _walk(entry.url_patterns, prefix + str(entry.pattern))
        elif isinstance(entry, URLPattern):
            yield prefix + str(entry.pattern), entry


def governed(route: str) -> bool:
    """The management API, and the ``/v1/`` endpoints Django serves (the rest are Channels consumers)."""
    return route.startswith(("api/", "v1/"))


def discover() -> list[Endpoint]:
    """Every route under ``/api/`` and ``/v1/`` in the URLconf, with its view class, methods and URL kwargs."""
    found: list[Endpoint] = []
    for route, pattern in _walk(get_resolver().url_patterns):
        if not governed(route):
            continue
        view = _view_class(pattern.callback)
        if view is None:
            raise AssertionError(f"/{route} is served by a function, not a view class; the proofs need its class")
        methods = tuple(method for method in HTTP_METHODS if callable(getattr(view, method.lower(), None)))
        kwargs = tuple(re.findall(r"<(?:[^>:]+:)?(\w+)>", route))
        found.append(Endpoint(name=pattern.name or "", route=route, view=view, methods=methods, kwargs=kwargs))
    return found


def console_pages() -> list[tuple[str, str]]:
    """The console's pages of one organization, as (url name, route): Django views behind the session login."""
    return [
        (pattern.name or route, route)
        for route, pattern in _walk(get_resolver().url_patterns)
        if route.startswith("console/") and re.search(r"<(?:[^>:]+:)?org>", route)
    ]


def org_scoped_calls() -> list[tuple[Endpoint, str]]:
    return [(endpoint, method) for endpoint in discover() if endpoint.org_scoped for method in endpoint.methods]


# --- the tenants ---------------------------------------------------------------------------------


@dataclass
class World:
    """One tenant with a user in every role, a key of every scope, and one object behind every id kwarg.

    Everything it names carries ``label`` (``tenantalpha``), so a response that
    shows another tenant's data is recognisable by the label alone.
    """

    label: str
    organization: Organization
    users: dict[str, User]
    key_secrets: dict[str, str]
    ids: dict[str, str] = field(default_factory=dict)

    @property
    def slug(self) -> str:
        return self.organization.slug

    def bearer(self, principal: str) -> str:
        if principal in self.key_secrets:
            return f"Bearer {self.key_secrets[principal]}"
        return f"Bearer {AccessToken.for_user(self.users[principal])}"

    def markers(self) -> set[str]:
        """Strings that appear only in this tenant's data."""
        prefixes = set(APIKey.objects.filter(organization=self.organization).values_list("prefix", flat=True))
        return {self.label, *prefixes}


def build_world(label: str) -> World:
    organization = OrganizationFactory.create(name=f"{label} Inc", slug=f"{label}-org")
    users = {
        role.value: MembershipFactory.create(
            organization=organization, role=role, user=UserFactory.create(email=f"{role.value}@{label}.example")
        ).user
        for role in ROLES
    }
    secrets: dict[str, str] = {}
    for principal, scopes in KEY_SCOPES.items():
        issued = issue_key(organization, created_by=users["owner"], name=f"{label} {principal}")
        APIKey.objects.filter(pk=issued.api_key.pk).update(scopes=scopes)
        secrets[principal] = issued.secret
    world = World(label=label, organization=organization, users=users, key_secrets=secrets)
    # Usage, so the usage and recommendation reports and /v1/feedback have rows to show or refuse.
    key = APIKey.objects.get(organization=organization, name=f"{label} key:proxy")
    UsageRecord.objects.create(
        request_id=f"req_{label}_1", organization=organization, api_key=key, user=users["member"],
        model="gpt-4o-mini", provider="openai", input_tokens=10, output_tokens=5, cost_usd=Decimal("0.001"),
        status=UsageStatus.OK, http_status=200, created_at=timezone.now() - timedelta(hours=1),
    )  # fmt: skip
    for kwarg, factory in ID_FACTORIES.items():
        world.ids[kwarg] = factory.create(world)
    return world


@dataclass(frozen=True)
class IdFactory:
    """Creates the object an id kwarg names, in a tenant, and returns the URL value.

    ``tenant_owned``: the value names a row of that tenant (another tenant
    using it must get 404). A global value (a provider's slug) names the
    caller's own row for it instead, so it has no foreign form.
    """

    create: Callable[[World], str]
    model: type[models.Model] | None
    tenant_owned: bool = True


def _key(world: World) -> str:
    return str(issue_key(world.organization, created_by=world.users["owner"], name=f"{world.label} target").api_key.pk)


def _budget(world: World) -> str:
    budget = Budget.objects.create(
        organization=world.organization, name=f"{world.label} budget", scope="organization", period="monthly",
        limit_usd=Decimal("100"),
    )  # fmt: skip
    return str(budget.pk)


def _notification(world: World) -> str:
    notification = Notification.objects.create(
        organization=world.organization, kind="budget_alert", title=f"{world.label} notice"
    )
    return str(notification.pk)


def _credential(world: World) -> str:
    provider = Provider.objects.get(slug="openai")
    provider_credential_set(
        organization=world.organization, provider=provider, api_key=f"sk-{world.label}-byok-0001", actor=None
    )
    return provider.slug


def _team(world: World) -> str:
    return str(TeamFactory.create(organization=world.organization, name=f"{world.label} team").pk)


def _membership(world: World) -> str:
    # Someone other than the caller, in a role an admin may manage.
    user = UserFactory.create(email=f"colleague@{world.label}.example")
    return str(MembershipFactory.create(organization=world.organization, role=Role.MEMBER, user=user).pk)


def _invitation(world: World) -> str:
    issued = accounts_services.invitation_create(
        organization=world.organization, email=f"invitee@{world.label}.example", role=Role.MEMBER, team=None,
        invited_by=world.users["owner"], accept_url="http://testserver/api/invitations/accept/",
    )  # fmt: skip
    return str(issued.invitation.pk)


def _usage_with_bodies(world: World) -> str:
    # A record whose request log holds the tenant's label, so a page that shows another tenant's bodies is caught.
    key = APIKey.objects.get(organization=world.organization, name=f"{world.label} key:proxy")
    record = UsageRecord.objects.create(
        request_id=f"req_{world.label}_logged", organization=world.organization, api_key=key, model="gpt-4o-mini",
        provider="openai", status=UsageStatus.OK, http_status=200, created_at=timezone.now() - timedelta(minutes=5),
    )  # fmt: skip
    RequestLog.objects.create(
        usage=record, organization=world.organization, created_at=record.created_at,
        request_body={"messages": [{"role": "user", "content": f"question from {world.label}"}]},
        response_body={"choices": [{"message": {"role": "assistant", "content": f"answer for {world.label}"}}]},
    )  # fmt: skip
    return str(record.pk)


ID_FACTORIES: dict[str, IdFactory] = {
    "key_id": IdFactory(_key, APIKey),
    "budget_id": IdFactory(_budget, Budget),
    "notification_id": IdFactory(_notification, Notification),
    "provider": IdFactory(_credential, None, tenant_owned=False),
    "team_id": IdFactory(_team, Team),
    "membership_id": IdFactory(_membership, Membership),
    "invitation_id": IdFactory(_invitation, Invitation),
    "usage_id": IdFactory(_usage_with_bodies, UsageRecord),
}


# --- how to call each endpoint -------------------------------------------------------------------


def no_body(world: World) -> dict[str, Any] | None:
    return None


@dataclass(frozen=True)
class Call:
    """One method of one endpoint: its minimal valid body, query and the status of an allowed call."""

    body: Callable[[World], dict[str, Any] | None] = no_body
    query: str = ""
    ok: int = 200
    # A list: the caller's own rows appear in it (so the other tenant's being absent means something).
    shows_own_rows: bool = False


CALLS: dict[tuple[str, str], Call] = {
    ("org-detail", "GET"): Call(shows_own_rows=True),
    ("org-detail", "PATCH"): Call(body=lambda w: {"name": f"{w.label} renamed", "timezone": "Europe/Paris"}),
    ("org-webhook-secret", "POST"): Call(ok=201),
    ("team-list", "GET"): Call(shows_own_rows=True),
    ("team-list", "POST"): Call(body=lambda w: {"name": f"{w.label} new team"}, ok=201),
    ("team-detail", "GET"): Call(),
    ("team-detail", "PATCH"): Call(body=lambda w: {"name": f"{w.label} renamed team"}),
    ("team-detail", "DELETE"): Call(ok=204),
    ("member-list", "GET"): Call(shows_own_rows=True),
    ("member-detail", "GET"): Call(),
    ("member-detail", "PATCH"): Call(body=lambda w: {"role": Role.VIEWER.value}),
    ("member-detail", "DELETE"): Call(ok=204),
    ("invitation-list", "GET"): Call(shows_own_rows=True),
    ("invitation-list", "POST"): Call(body=lambda w: {"email": f"new@{w.label}.example", "role": "member"}, ok=201),
    ("invitation-detail", "GET"): Call(),
    ("invitation-detail", "DELETE"): Call(ok=204),
    ("key-rotate", "POST"): Call(ok=201),
    ("routing-policy", "GET"): Call(),
    ("routing-policy", "PATCH"): Call(body=lambda w: {"routing_preference": "quality"}),
    ("key-list", "GET"): Call(shows_own_rows=True),
    ("key-list", "POST"): Call(body=lambda w: {"name": f"{w.label} new key"}, ok=201),
    ("key-detail", "GET"): Call(),
    ("key-detail", "PATCH"): Call(body=lambda w: {"routing_preference": "quality"}),
    ("key-revoke", "POST"): Call(),
    ("credential-list", "GET"): Call(),
    ("credential-detail", "GET"): Call(),
    ("credential-detail", "PUT"): Call(body=lambda w: {"api_key": f"sk-{w.label}-byok-0002"}),
    ("credential-detail", "DELETE"): Call(ok=204),
    ("usage", "GET"): Call(query="group_by=api_key,team,user,model"),
    ("usage-export", "GET"): Call(shows_own_rows=True),
    ("usage-bodies", "GET"): Call(),
    ("budget-list", "GET"): Call(shows_own_rows=True),
    ("budget-list", "POST"): Call(
        body=lambda w: {"name": f"{w.label} daily", "scope": "organization", "period": "daily", "limit_usd": "5"},
        ok=201,
    ),
    ("budget-detail", "GET"): Call(),
    ("budget-detail", "PATCH"): Call(body=lambda w: {"limit_usd": "20"}),
    ("budget-detail", "DELETE"): Call(ok=204),
    ("notification-list", "GET"): Call(shows_own_rows=True),
    ("notification-read", "POST"): Call(),
    ("recommendation-list", "GET"): Call(),
    ("audit-event-list", "GET"): Call(shows_own_rows=True),
    ("audit-events-export", "GET"): Call(query="format=jsonl", shows_own_rows=True),
    ("org-export", "GET"): Call(shows_own_rows=True),
}

# Endpoints without a tenant in their URL: each is isolated by other means, proved where the reason says.
NOT_ORG_SCOPED: dict[str, str] = {
    "token-obtain": "signs in with email and password; no tenant data (tests/accounts/test_auth.py)",
    "token-refresh": "exchanges a refresh token; no tenant data (tests/accounts/test_auth.py)",
    "token-verify": "checks a token's signature; no tenant data (tests/security)",
    "token-logout": "blacklists the caller's own refresh token; no tenant data (tests/security)",
    "me-export": "the signed-in person's own data (test_cross_tenant: test_my_export_shows_only_own)",
    "me-erase": "erases the signed-in person only (tests/security)",
    "api-docs": "the API's documentation page; no tenant data",
    "api-redoc": "the API's documentation page; no tenant data",
    "invitation-accept": "the signed-in user redeems a token sent to their own address (tests/accounts)",
    "org-list": "lists the caller's own organizations (test_cross_tenant: test_org_list_shows_only_own)",
    "schema": "the OpenAPI document; no tenant data (test_fuzz)",
    "v1-models": "proxy key: its own organization's catalog (test_cross_tenant: test_proxy_endpoints)",
    "v1-model-detail": "proxy key: its own organization's catalog (test_cross_tenant: test_proxy_endpoints)",
    "v1-route": "proxy key: a routing decision for its own organization (test_cross_tenant: test_proxy_endpoints)",
    "v1-feedback": "proxy key: rates its own organization's requests (test_cross_tenant: test_feedback_*)",
}


# --- calling ------------------------------------------------------------------------------------


@dataclass
class Answer:
    status: int
    text: str

    def json(self) -> Any:
        return json.loads(self.text)

    @property
    def error_code(self) -> str | None:
        try:
            body = self.json()
        except ValueError:
            return None
        return body.get("error", {}).get("code") if isinstance(body, dict) else None


def call(endpoint: Endpoint, method: str, *, bearer: str, slug: str, ids: dict[str, str], body_for: World) -> Answer:
    """Call ``endpoint`` as the holder of ``bearer``, on organization ``slug``, naming objects by ``ids``.

    The body is built for ``body_for`` (the tenant whose objects a write names).
    """
    spec = CALLS.get((endpoint.name, method))
    if spec is None:
        raise AssertionError(f"no Call for {method} {endpoint}: register it in tests/governance/endpoints.py")
    url = endpoint.path(org=slug, **{name: ids[name] for name in endpoint.object_kwargs})
    if spec.query:
        url = f"{url}?{spec.query}"
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=bearer)
    body = spec.body(body_for)
    response = getattr(client, method.lower())(url, body, format="json") if body is not None else None
    if response is None:
        response = getattr(client, method.lower())(url)
    content = b"".join(response.streaming_content) if response.streaming else response.content
    return Answer(status=response.status_code, text=content.decode(errors="replace"))


def organization_models() -> list[type[models.Model]]:
    """Every model with a foreign key named ``organization`` to the tenant."""
    found = []
    for model in apps.get_models():
        try:
            fk = model._meta.get_field("organization")
        except FieldDoesNotExist:
            continue
        if getattr(fk, "related_model", None) is Organization:
            found.append(model)
    return found


def tenant_snapshot(organization: Organization) -> dict[str, list[dict[str, Any]]]:
    """All of a tenant's rows, field by field: equal before and after means nothing of it changed."""
    rows = {
        model._meta.label: list(model._default_manager.filter(organization=organization).order_by("pk").values())
        for model in organization_models()
    }
    rows["accounts.Organization"] = [dict(row) for row in Organization.objects.filter(pk=organization.pk).values()]
    return rows
