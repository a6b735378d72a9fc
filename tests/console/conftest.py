"""Console fixtures: Django test clients signed in as the standard cast."""

from __future__ import annotations

import pytest
from django.test import Client

from accounts.models import Organization, Role, User
from tests.factories import MembershipFactory, UserFactory


def signed_in(user: User) -> Client:
    client = Client()
    client.force_login(user)
    return client


def user_with_role(organization: Organization, role: str) -> User:
    return MembershipFactory.create(organization=organization, role=role, user=UserFactory.create()).user


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
