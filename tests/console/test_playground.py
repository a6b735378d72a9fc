"""The playground: the page and its no-JavaScript form, and the WebSocket that streams the answer."""

from __future__ import annotations

import asyncio
from decimal import Decimal
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from channels.routing import URLRouter
from channels.testing import WebsocketCommunicator
from django.conf import settings
from django.test import Client
from django.urls import reverse

from accounts.models import KeyScope, Organization, Role, User
from accounts.services import api_key_revoke
from billing.models import UsageRecord
from console.routing import websocket_urlpatterns
from tests.conftest import FakeUpstream
from tests.factories import OrganizationFactory, issue_key

from .conftest import drain_usage, signed_in, user_with_role


def page(organization: Organization) -> str:
    return reverse("console-playground", args=[organization.slug])


def as_user(user: Any) -> Any:
    """The WebSocket routes with ``scope["user"]`` set, as AuthMiddlewareStack sets it from the session."""
    router = URLRouter(websocket_urlpatterns)

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await router({**scope, "user": user}, receive, send)

    return app


def socket(user: Any, organization: Organization) -> WebsocketCommunicator:
    return WebsocketCommunicator(as_user(user), f"/ws/console/{organization.slug}/playground/")


def ask(key_id: int, text: str = "Hello playground", **extra: Any) -> dict[str, Any]:
    return {"key_id": key_id, "model": "fake-small", "messages": [{"role": "user", "content": text}], **extra}


async def until_done(communicator: WebsocketCommunicator) -> list[dict[str, Any]]:
    messages = []
    while True:
        message = await communicator.receive_json_from(timeout=10)
        messages.append(message)
        if message["type"] in ("done", "error"):
            return messages


async def drain() -> None:
    """What the usage writer does with Redis; without it usage is written directly."""
    if settings.REDIS_URL:
        await sync_to_async(drain_usage, thread_sensitive=False)()


async def usage_rows(count: int) -> list[UsageRecord]:
    for _ in range(200):
        await drain()
        rows = await sync_to_async(lambda: list(UsageRecord.objects.order_by("id")))()
        if len(rows) >= count:
            return rows
        await asyncio.sleep(0.05)
    return rows


# --- the page ---------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_the_page_offers_the_keys_and_models(
    owner_client: Client, organization: Organization, owner: User, catalog: None
) -> None:
    issue_key(organization, created_by=owner, name="chat key")
    issue_key(organization, created_by=owner, name="read only", scopes=[KeyScope.READ])

    response = owner_client.get(page(organization))

    assert response.status_code == 200
    html = response.content.decode()
    for element in ("playground-form", "playground-send", "playground-answer", "playground-model",
                    "playground-reason", "playground-tokens", "playground-cost"):  # fmt: skip
        assert f'id="{element}"' in html
    assert "chat key" in html
    assert "read only" not in html
    assert '<option value="auto"' in html
    assert '<option value="muxer/cascade"' in html
    assert '<option value="fake-large"' in html
    assert f'data-socket="/ws/console/{organization.slug}/playground/"' in html


@pytest.mark.django_db
def test_a_member_may_only_use_keys_they_created(
    member_client: Client, organization: Organization, owner: User, member: User
) -> None:
    issue_key(organization, created_by=owner, name="owners key")
    issue_key(organization, created_by=member, name="members key")

    html = member_client.get(page(organization)).content.decode()

    assert "members key" in html
    assert "owners key" not in html


@pytest.mark.django_db
def test_without_a_usable_key_it_says_so(member_client: Client, organization: Organization) -> None:
    html = member_client.get(page(organization)).content.decode()

    assert 'id="playground-no-keys"' in html
    assert 'id="playground-form"' not in html


@pytest.mark.django_db
@pytest.mark.parametrize("role", [Role.VIEWER, Role.BILLING])
def test_viewers_and_billing_get_403(organization: Organization, role: str) -> None:
    assert signed_in(user_with_role(organization, role)).get(page(organization)).status_code == 403


@pytest.mark.django_db
def test_an_outsider_gets_404(outsider_client: Client, organization: Organization) -> None:
    assert outsider_client.get(page(organization)).status_code == 404


@pytest.mark.django_db(transaction=True)
def test_without_javascript_the_form_posts_and_shows_the_whole_answer(
    owner_client: Client, organization: Organization, owner: User, catalog: None, upstream: FakeUpstream
) -> None:
    key = issue_key(organization, created_by=owner).api_key

    response = owner_client.post(
        page(organization), {"key_id": key.pk, "model": "fake-small", "system": "Be brief.", "message": "Hello form"}
    )

    assert response.status_code == 200
    html = response.content.decode()
    assert "Fake reply to: Hello form" in html
    assert '<dd id="playground-model">fake-small</dd>' in html
    assert "USD</dd>" in html


@pytest.mark.django_db
def test_a_form_without_a_message_is_a_400(owner_client: Client, organization: Organization, owner: User) -> None:
    key = issue_key(organization, created_by=owner).api_key

    response = owner_client.post(page(organization), {"key_id": key.pk, "model": "auto", "message": " "})

    assert response.status_code == 400
    assert "Write a message." in response.content.decode()


@pytest.mark.django_db
def test_another_organizations_key_is_refused_by_the_form(owner_client: Client, organization: Organization) -> None:
    foreign = issue_key(OrganizationFactory.create()).api_key

    response = owner_client.post(page(organization), {"key_id": foreign.pk, "model": "auto", "message": "Hi"})

    assert response.status_code == 400
    assert "Choose one of your organization" in response.content.decode()


# --- the WebSocket ---------------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
async def test_the_answer_streams_delta_by_delta_then_done(
    organization: Organization, owner: User, catalog: None, upstream: FakeUpstream
) -> None:
    key = (await sync_to_async(issue_key)(organization, created_by=owner)).api_key
    communicator = socket(owner, organization)
    assert (await communicator.connect())[0]

    await communicator.send_json_to(ask(key.pk, "Hello playground"))
    messages = await until_done(communicator)
    await communicator.disconnect()

    deltas = [m["text"] for m in messages if m["type"] == "delta"]
    assert len(deltas) > 1
    assert "".join(deltas) == "Fake reply to: Hello playground"
    done = messages[-1]
    assert done["type"] == "done"
    assert done["model"] == "fake-small"
    assert done["route_reason"]
    assert done["input_tokens"] > 0
    assert done["output_tokens"] > 0
    rows = await usage_rows(1)
    assert len(rows) == 1
    assert rows[0].api_key_id == key.pk
    assert rows[0].stream is True
    assert Decimal(done["cost_usd"]) == rows[0].cost_usd
    assert (rows[0].input_tokens, rows[0].output_tokens) == (done["input_tokens"], done["output_tokens"])


@pytest.mark.django_db(transaction=True)
async def test_a_non_member_is_closed_with_4404(organization: Organization, outsider: User) -> None:
    communicator = socket(outsider, organization)

    assert await communicator.connect() == (False, 4404)


@pytest.mark.django_db(transaction=True)
async def test_a_viewer_is_closed_with_4403(organization: Organization) -> None:
    viewer = await sync_to_async(user_with_role)(organization, Role.VIEWER)

    assert await socket(viewer, organization).connect() == (False, 4403)


@pytest.mark.django_db(transaction=True)
async def test_an_anonymous_socket_is_closed(organization: Organization) -> None:
    from django.contrib.auth.models import AnonymousUser

    connected, code = await socket(AnonymousUser(), organization).connect()

    assert not connected
    assert code == 4401


@pytest.mark.django_db(transaction=True)
async def test_keys_the_member_may_not_use_are_refused(
    organization: Organization, owner: User, member: User, catalog: None, upstream: FakeUpstream
) -> None:
    foreign = (await sync_to_async(issue_key)(await sync_to_async(OrganizationFactory.create)())).api_key
    owners = (await sync_to_async(issue_key)(organization, created_by=owner)).api_key
    revoked = (await sync_to_async(issue_key)(organization, created_by=member)).api_key
    await sync_to_async(api_key_revoke)(api_key=revoked, actor=member)
    communicator = socket(member, organization)
    assert (await communicator.connect())[0]

    for key_id in (foreign.pk, owners.pk, revoked.pk):
        await communicator.send_json_to(ask(key_id))
        reply = await communicator.receive_json_from(timeout=5)
        assert reply["type"] == "error"
        assert reply["status"] == 400
        assert "Choose one of your organization" in reply["message"]
    await communicator.disconnect()
    assert await usage_rows(0) == []


@pytest.mark.django_db(transaction=True)
async def test_a_bad_message_gets_an_error(organization: Organization, owner: User) -> None:
    key = (await sync_to_async(issue_key)(organization, created_by=owner)).api_key
    communicator = socket(owner, organization)
    assert (await communicator.connect())[0]

    await communicator.send_json_to({"key_id": key.pk, "model": "auto", "messages": []})
    empty = await communicator.receive_json_from()
    await communicator.send_to(text_data="not json")
    garbage = await communicator.receive_json_from()
    await communicator.disconnect()

    assert empty == {"type": "error", "status": 400, "message": "messages must be a non-empty list."}
    assert garbage["type"] == "error"


@pytest.mark.django_db(transaction=True)
async def test_a_gateway_refusal_is_an_error_message(
    organization: Organization, owner: User, catalog: None, upstream: FakeUpstream
) -> None:
    key = (await sync_to_async(issue_key)(organization, created_by=owner, allowed_models=("fake-medium",))).api_key
    communicator = socket(owner, organization)
    assert (await communicator.connect())[0]

    await communicator.send_json_to(ask(key.pk))
    reply = await communicator.receive_json_from(timeout=10)
    await communicator.disconnect()

    assert reply["type"] == "error"
    assert reply["status"] in (400, 403, 404)
    assert reply["message"]


@pytest.mark.django_db(transaction=True)
async def test_closing_mid_answer_cancels_and_records_the_usage(
    organization: Organization, owner: User, catalog: None, upstream: FakeUpstream
) -> None:
    key = (await sync_to_async(issue_key)(organization, created_by=owner)).api_key
    communicator = socket(owner, organization)
    assert (await communicator.connect())[0]

    await communicator.send_json_to(ask(key.pk, "[fake words=200 chunk_delay_ms=50] Tell me a long story"))
    first = await communicator.receive_json_from(timeout=10)
    await communicator.disconnect()

    assert first["type"] == "delta"
    rows = await usage_rows(1)
    assert [row.status for row in rows] == ["client_disconnected"]
