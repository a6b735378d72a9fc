"""Console fixtures: Django test clients signed in as the standard cast."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from django.conf import settings
from django.db import connection
from django.test import Client
from pytest_django.fixtures import Settings as SettingsWrapper

from accounts.models import Organization, Role, User
from billing.usage import usage_drain
from muxer_project.redis import sync_redis
from tests.accounts.helpers import user_with_role as user_with_role


def signed_in(user: User) -> Client:
    client = Client()
    client.force_login(user)
    return client


@pytest.fixture
def owner_client(owner: User) -> Client:
    return signed_in(owner)


@pytest.fixture
def member_client(member: User) -> Client:
    return signed_in(member)


@pytest.fixture
def outsider_client(outsider: User) -> Client:
    return signed_in(outsider)


@pytest.fixture
def viewer(organization: Organization) -> User:
    return user_with_role(organization, Role.VIEWER)


@pytest.fixture
def viewer_client(viewer: User) -> Client:
    return signed_in(viewer)


@pytest.fixture(autouse=True)
def usage_stream(settings: SettingsWrapper) -> Iterator[str]:
    """With Redis, usage goes to a stream of this test's own: nothing is left for another test's writer."""
    name = f"muxer:usage:test:console:{uuid.uuid4().hex}"
    settings.MUXER_USAGE_STREAM = name
    yield name
    if settings.REDIS_URL:
        sync_redis().delete(name)


def drain_usage() -> None:
    """What the usage writer does with Redis (without it, usage is written directly)."""
    if not settings.REDIS_URL:
        return
    try:
        while usage_drain(block_ms=0):
            pass
    finally:
        connection.close()
