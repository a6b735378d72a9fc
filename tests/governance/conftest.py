"""Two tenants, alpha and bravo, each with a user in every role, a key of every scope and one of each object."""

from __future__ import annotations

import pytest

from .endpoints import World, build_world


@pytest.fixture
def alpha(catalog: None) -> World:
    return build_world("tenantalpha")


@pytest.fixture
def bravo(catalog: None) -> World:
    return build_world("tenantbravo")
