"""Fixtures for the in-process proxy tests."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta

import pytest
from django.utils import timezone
from pytest_django.fixtures import Settings as SettingsWrapper

from accounts.models import Organization, User
from accounts.services import api_key_revoke
from muxer_project import redis as muxer_redis
from providers.http import close_http_client
from tests.factories import issue_key


@pytest.fixture(autouse=True)
def usage_stream(settings: SettingsWrapper) -> Iterator[str]:
    """A stream of this test's own, shared by the in-process consumer and the drain."""
    name = f"muxer:usage:test:{uuid.uuid4().hex}"
    settings.MUXER_USAGE_STREAM = name
    yield name
    if settings.REDIS_URL:
        muxer_redis.sync_redis().delete(name)


@pytest.fixture(autouse=True)
async def _close_loop_clients() -> AsyncIterator[None]:
    """Each test has its own event loop; close the clients the gateway opened on it."""
    yield
    await close_http_client()
    client = muxer_redis._async_clients.pop(asyncio.get_running_loop(), None)
    if client is not None:
        await client.aclose()


@pytest.fixture
def limited_key(organization: Organization, owner: User, catalog: None) -> str:
    return issue_key(organization, created_by=owner, allowed_models=("fake-large",)).secret


@pytest.fixture
def revoked_key(organization: Organization, owner: User, catalog: None) -> str:
    issued = issue_key(organization, created_by=owner)
    api_key_revoke(api_key=issued.api_key, actor=owner)
    return issued.secret


@pytest.fixture
def expired_key(organization: Organization, owner: User, catalog: None) -> str:
    return issue_key(organization, created_by=owner, expires_at=timezone.now() - timedelta(minutes=1)).secret
