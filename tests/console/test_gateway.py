"""The in-process gateway call (console/gateway.py): the proxy's own pipeline, acting as a key chosen by id."""

from __future__ import annotations

import asyncio

import pytest
from asgiref.sync import async_to_sync

from accounts.models import Organization, User
from accounts.services import api_key_revoke
from billing.models import UsageRecord
from console.gateway import GatewayReply, chat
from tests.conftest import FakeUpstream
from tests.factories import OrganizationFactory, issue_key

from .conftest import drain_usage

pytestmark = pytest.mark.django_db(transaction=True)

HELLO = {"model": "fake-small", "messages": [{"role": "user", "content": "Hello console"}]}


def wait_for_usage(count: int) -> None:
    for _ in range(100):
        drain_usage()
        if UsageRecord.objects.count() >= count:
            return
        asyncio.run(asyncio.sleep(0.05))


def test_it_answers_as_the_key_and_records_usage(
    organization: Organization, owner: User, catalog: None, upstream: FakeUpstream
) -> None:
    key = issue_key(organization, created_by=owner).api_key
    reply = async_to_sync(chat)(organization_id=organization.pk, key_id=key.pk, payload=HELLO)
    assert reply.status == 200, reply.body
    assert reply.json()["choices"][0]["message"]["content"] == "Fake reply to: Hello console"
    assert reply.headers["x-muxer-model"] == "fake-small"
    assert float(reply.headers["x-muxer-cost-usd"]) > 0
    wait_for_usage(1)
    assert UsageRecord.objects.get().api_key_id == key.pk


def test_it_streams_chunk_by_chunk(
    organization: Organization, owner: User, catalog: None, upstream: FakeUpstream
) -> None:
    key = issue_key(organization, created_by=owner).api_key
    chunks: list[bytes] = []

    async def collect(chunk: bytes) -> None:
        chunks.append(chunk)

    reply = async_to_sync(chat)(
        organization_id=organization.pk, key_id=key.pk, payload={**HELLO, "stream": True}, on_chunk=collect
    )
    assert reply.status == 200
    assert reply.headers["content-type"].startswith("text/event-stream")
    assert len(chunks) > 2
    assert chunks[-1].strip().endswith(b"data: [DONE]")


def test_a_revoked_key_or_another_organizations_key_is_refused(
    organization: Organization, owner: User, catalog: None, upstream: FakeUpstream
) -> None:
    revoked = issue_key(organization, created_by=owner).api_key
    api_key_revoke(api_key=revoked, actor=owner)
    foreign = issue_key(OrganizationFactory.create()).api_key
    for key_id in (revoked.pk, foreign.pk):
        reply: GatewayReply = async_to_sync(chat)(organization_id=organization.pk, key_id=key_id, payload=HELLO)
        assert reply.status == 401
        assert reply.error_message
