"""Tenant bravo tries every endpoint and method against tenant alpha: zero successes.

(a) bravo's owner on alpha's organization: 404, and nothing of alpha's changes;
(b) bravo's owner and admin key on bravo's own organization, naming alpha's objects: 404;
(c) bravo's admin-scope and proxy-only keys on alpha's organization: 404, nothing changed;
(d) every read on bravo's organization shows none of alpha's data (and does show bravo's where it lists rows);
and the ``/v1/`` DRF views with bravo's proxy key never reveal alpha's data.
"""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from django.db import models
from django.test import Client
from rest_framework.test import APIClient

from accounts.models import APIKey, Invitation, Membership, Role, Team, User
from accounts.permissions import SCOPE_ROLES, role_can
from audit.models import AuditEvent
from billing.models import Budget, Notification

from .endpoints import (
    CALLS,
    ID_FACTORIES,
    Answer,
    Endpoint,
    World,
    call,
    console_pages,
    discover,
    org_scoped_calls,
    tenant_snapshot,
)

pytestmark = pytest.mark.django_db

CALLS_ON_ORG = org_scoped_calls()
WITH_FOREIGN_IDS = [
    (endpoint, method)
    for endpoint, method in CALLS_ON_ORG
    if any(ID_FACTORIES[name].tenant_owned for name in endpoint.object_kwargs)
]
READS = [(endpoint, method) for endpoint, method in CALLS_ON_ORG if method == "GET" and not endpoint.object_kwargs]
# Each read by bravo's owner, and by bravo's admin-scope key where an admin may read it (not the owners' export).
READ_CASES = [
    (endpoint, method, principal)
    for endpoint, method in READS
    for principal, role in (("owner", Role.OWNER), ("key:admin", SCOPE_ROLES["admin"]))
    if role_can(role, endpoint.view.perms[method])  # type: ignore[attr-defined]
]


def case_id(value: Any) -> str:
    return f"{value.name}" if isinstance(value, Endpoint) else str(value)


def assert_not_found(answer: Answer, what: str) -> None:
    assert answer.status == 404, f"{what}: expected 404, got {answer.status}: {answer.text[:300]}"
    assert answer.error_code == "not_found", answer.text[:300]


def leaked(text: str, victim: World) -> list[str]:
    return sorted(marker for marker in victim.markers() if marker in text)


@pytest.mark.parametrize(("endpoint", "method"), CALLS_ON_ORG, ids=case_id)
def test_other_owner_on_our_org_gets_404_and_changes_nothing(
    endpoint: Endpoint, method: str, alpha: World, bravo: World
) -> None:
    before = tenant_snapshot(alpha.organization)
    answer = call(endpoint, method, bearer=bravo.bearer("owner"), slug=alpha.slug, ids=alpha.ids, body_for=alpha)
    assert_not_found(answer, f"bravo's owner: {method} {endpoint} on alpha")
    assert not leaked(answer.text, alpha)
    assert tenant_snapshot(alpha.organization) == before


@pytest.mark.parametrize("key", ["key:admin", "key:proxy"])
@pytest.mark.parametrize(("endpoint", "method"), CALLS_ON_ORG, ids=case_id)
def test_other_key_on_our_org_gets_404_and_changes_nothing(
    endpoint: Endpoint, method: str, key: str, alpha: World, bravo: World
) -> None:
    before = tenant_snapshot(alpha.organization)
    answer = call(endpoint, method, bearer=bravo.bearer(key), slug=alpha.slug, ids=alpha.ids, body_for=alpha)
    assert_not_found(answer, f"bravo's {key}: {method} {endpoint} on alpha")
    assert not leaked(answer.text, alpha)
    assert tenant_snapshot(alpha.organization) == before


@pytest.mark.parametrize("principal", ["owner", "key:admin"])
@pytest.mark.parametrize(("endpoint", "method"), WITH_FOREIGN_IDS, ids=case_id)
def test_our_ids_on_their_own_org_get_404_and_change_nothing(
    endpoint: Endpoint, method: str, principal: str, alpha: World, bravo: World
) -> None:
    # Only the ids that name a tenant's row come from alpha; a global one (a provider) stays bravo's.
    ids = {
        name: alpha.ids[name] if ID_FACTORIES[name].tenant_owned else bravo.ids[name] for name in endpoint.object_kwargs
    }
    before = tenant_snapshot(alpha.organization)
    answer = call(endpoint, method, bearer=bravo.bearer(principal), slug=bravo.slug, ids=ids, body_for=bravo)
    assert_not_found(answer, f"bravo's {principal}: {method} {endpoint} on bravo with alpha's ids {ids}")
    assert not leaked(answer.text, alpha)
    assert tenant_snapshot(alpha.organization) == before


# Fields of a list's rows that hold a row id, and the model the id belongs to.
ID_FIELDS: dict[str, type[models.Model]] = {"api_key": APIKey, "team": Team, "user": User}
LIST_ROW_MODELS: dict[str, type[models.Model]] = {
    "key-list": APIKey,
    "team-list": Team,
    "member-list": Membership,
    "invitation-list": Invitation,
    "audit-event-list": AuditEvent,
    "budget-list": Budget,
    "notification-list": Notification,
}


def ids_in(data: Any, field: str) -> set[int]:
    found: set[int] = set()
    if isinstance(data, dict):
        for key, value in data.items():
            if key == field and isinstance(value, int) and not isinstance(value, bool):
                found.add(value)
            found |= ids_in(value, field)
    elif isinstance(data, list):
        for item in data:
            found |= ids_in(item, field)
    return found


def alpha_ids(model: type[models.Model], alpha: World) -> set[int]:
    if model is User:
        return set(alpha.organization.memberships.values_list("user_id", flat=True))
    return set(model._default_manager.filter(organization=alpha.organization).values_list("pk", flat=True))


@pytest.mark.parametrize(("endpoint", "method", "principal"), READ_CASES, ids=case_id)
def test_reads_on_their_org_show_none_of_ours(
    endpoint: Endpoint, method: str, principal: str, alpha: World, bravo: World
) -> None:
    answer = call(endpoint, method, bearer=bravo.bearer(principal), slug=bravo.slug, ids=bravo.ids, body_for=bravo)
    assert 200 <= answer.status < 300, answer.text[:300]
    assert not leaked(answer.text, alpha), f"{endpoint} shows alpha's {leaked(answer.text, alpha)}"
    if CALLS[(endpoint.name, method)].shows_own_rows:
        assert bravo.label in answer.text, f"{endpoint} should list bravo's own rows: {answer.text[:300]}"
    try:
        body = answer.json()
    except json.JSONDecodeError:
        return  # CSV: the markers above cover it
    for field, model in ID_FIELDS.items():
        assert not ids_in(body, field) & alpha_ids(model, alpha), f"{endpoint} shows alpha's {field} ids"
    if endpoint.name in LIST_ROW_MODELS:
        model = LIST_ROW_MODELS[endpoint.name]
        assert not ids_in(body, "id") & alpha_ids(model, alpha), f"{endpoint} lists alpha's {model.__name__} rows"


def test_org_list_shows_only_own(alpha: World, bravo: World) -> None:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=bravo.bearer("owner"))
    response = client.get("/api/orgs/")
    assert response.status_code == 200
    assert [row["slug"] for row in response.json()["data"]] == [bravo.slug]


def console_path(route: str, slug: str, ids: dict[str, str]) -> str:
    """The route with the organization's slug and the world's ids (key_id, budget_id, ...) filled in."""
    path = "/" + route

    def fill(match: re.Match[str]) -> str:
        return slug if match.group(1) == "org" else str(ids[match.group(1)])

    return re.sub(r"<(?:[^>:]+:)?(\w+)>", fill, path)


@pytest.mark.parametrize(("name", "route"), console_pages())
def test_console_pages_of_our_org_are_404_to_them(name: str, route: str, alpha: World, bravo: World) -> None:
    """Bravo's owner, on alpha's pages and on their own pages with alpha's ids: 404 to GET and POST, nothing changed."""
    client = Client()
    client.force_login(bravo.users["owner"])
    foreign = [console_path(route, alpha.slug, alpha.ids)]
    int_ids = re.findall(r"<int:(\w+)>", route)
    if int_ids:
        foreign.append(console_path(route, bravo.slug, {**bravo.ids, **{k: alpha.ids[k] for k in int_ids}}))
    events = AuditEvent.objects.filter(organization=alpha.organization).count()
    for path in foreign:
        for answer in (client.get(path), client.post(path, {})):
            assert answer.status_code == 404, f"{name}: {path} answered {answer.status_code}"
            assert not leaked(answer.content.decode(), alpha)
    assert AuditEvent.objects.filter(organization=alpha.organization).count() == events
    own = client.get(console_path(route, bravo.slug, bravo.ids))
    # The control: bravo's own page opens (a POST-only action sends a GET back to its page).
    assert own.status_code in (200, 302), f"{name}: the control (bravo's own page) answered {own.status_code}"
    assert not leaked(own.content.decode(), alpha)


def test_my_export_shows_only_own(alpha: World, bravo: World) -> None:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=bravo.bearer("owner"))
    response = client.get("/api/me/export/")
    assert response.status_code == 200
    text = response.content.decode()
    assert bravo.label in text
    assert not leaked(text, alpha)


# --- the /v1/ DRF views, with a proxy key ----------------------------------------------------


def proxy_client(world: World) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=world.bearer("key:proxy"))
    return client


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("get", "/v1/models", None),
        ("get", "/v1/models/gpt-4o-mini", None),
        ("post", "/v1/route", {"model": "auto", "messages": [{"role": "user", "content": "hi"}]}),
    ],
)
def test_proxy_endpoints_show_none_of_ours(method: str, path: str, body: Any, alpha: World, bravo: World) -> None:
    client = proxy_client(bravo)
    response = getattr(client, method)(path, body, format="json") if body else getattr(client, method)(path)
    assert response.status_code == 200, response.content[:300]
    assert not leaked(response.content.decode(), alpha)


def test_feedback_on_our_request_with_their_key_is_404(alpha: World, bravo: World) -> None:
    response = proxy_client(bravo).post("/v1/feedback", {"request_id": "req_tenantalpha_1", "rating": 1}, format="json")
    assert response.status_code == 404, response.content
    assert response.json()["error"]["code"] == "request_not_found"
    assert not leaked(response.content.decode(), alpha)


def test_feedback_on_own_request_is_accepted(alpha: World, bravo: World) -> None:
    # The control: the same call with the request's own tenant succeeds, so the 404 above is isolation.
    response = proxy_client(alpha).post("/v1/feedback", {"request_id": "req_tenantalpha_1", "rating": 5}, format="json")
    assert response.status_code == 201, response.content


def test_the_matrix_is_not_empty() -> None:
    # Guards against a discovery that quietly finds nothing, which would make every case above vacuous.
    assert len(CALLS_ON_ORG) >= 20
    assert len(WITH_FOREIGN_IDS) >= 6
    assert len(READS) >= 6
    assert len(console_pages()) >= 2
    assert discover()
