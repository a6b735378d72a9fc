"""The console menu: only what the role may open, and exactly one current item."""

from __future__ import annotations

import re

import pytest
from django.test import Client

from accounts.models import Organization

pytestmark = pytest.mark.django_db


def menu(client: Client, path: str) -> tuple[list[str], list[str]]:
    html = client.get(path).content.decode()
    nav = html.split('<nav class="sidenav"', 1)[1].split("</nav>", 1)[0]
    labels = re.findall(r'<a href="[^"]+"[^>]*>([^<]+)</a>', nav)
    current = re.findall(r'aria-current="page">([^<]+)</a>', nav)
    return labels, current


def test_the_dashboard_is_current_only_on_the_dashboard(owner_client: Client, organization: Organization) -> None:
    assert menu(owner_client, f"/console/{organization.slug}/")[1] == ["Dashboard"]
    assert menu(owner_client, f"/console/{organization.slug}/keys/")[1] == ["API keys"]
    assert menu(owner_client, f"/console/{organization.slug}/onboarding/test/")[1] == []


def test_each_role_sees_only_the_pages_it_may_open(
    owner_client: Client, member_client: Client, viewer_client: Client, organization: Organization
) -> None:
    path = f"/console/{organization.slug}/"
    owner, _ = menu(owner_client, path)
    member, _ = menu(member_client, path)
    viewer, _ = menu(viewer_client, path)
    assert {"Playground", "Audit log", "API keys"} <= set(owner)
    assert "Playground" in member
    assert "Audit log" not in member
    assert "Playground" not in viewer
    assert "API keys" in viewer
