from __future__ import annotations

from collections.abc import Iterator

import pytest

from accounts.bruteforce import forget_login_failures
from accounts.models import User
from tests.conftest import Tenant

PASSWORD = "correct horse battery staple"


@pytest.fixture(autouse=True)
def _no_login_failures() -> Iterator[None]:
    forget_login_failures()
    yield
    forget_login_failures()


@pytest.fixture
def can_log_in(tenant: Tenant) -> User:
    """The owner, with the factory's password stored (the factory skips saving it)."""
    tenant.owner.save(update_fields=["password"])
    return tenant.owner


@pytest.fixture
def member_can_log_in(tenant: Tenant) -> User:
    tenant.member.save(update_fields=["password"])
    return tenant.member
