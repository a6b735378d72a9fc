"""Steps the browser tests share: signing in, and the console actions an operator later reviews."""

from __future__ import annotations

import time
from collections.abc import Callable
from decimal import Decimal

import httpx
from playwright.sync_api import Page, expect

from accounts.models import Organization, Role, User
from billing.models import Budget
from tests.factories import MembershipFactory, OrganizationFactory, UserFactory, issue_key

from .conftest import LiveServer, set_password

PASSWORD = "a long browser password"
HELLO = {"model": "auto", "messages": [{"role": "user", "content": "Hello from the browser test"}]}


def owner_with_org(email: str = "owner@example.com") -> tuple[User, Organization]:
    organization = OrganizationFactory.create(name="Acme")
    user: User = UserFactory.create(email=email)
    set_password(user, PASSWORD)
    MembershipFactory.create(organization=organization, user=user, role=Role.OWNER)
    return user, organization


def sign_in(page: Page, user: User, *, path: str = "/console/login/") -> None:
    page.goto(path)
    page.fill("input[name=username]", user.email)
    page.fill("input[name=password]", PASSWORD)
    page.click("form [type=submit]")
    expect(page.locator("header").first).to_contain_text(user.email)


def proxy(live: LiveServer, secret: str, payload: dict[str, object] | None = None) -> httpx.Response:
    return httpx.post(
        f"{live.url}/v1/chat/completions",
        json=payload or HELLO,
        headers={"Authorization": f"Bearer {secret}"},
        timeout=30,
    )


def eventually(check: Callable[[], bool], *, timeout: float = 10.0, interval: float = 0.1) -> None:
    """Wait until ``check()`` holds: the server's caches take a moment to see a change."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("the condition did not hold in time")
        time.sleep(interval)


def new_key(organization: Organization, owner: User, name: str = "backend") -> tuple[int, str]:
    issued = issue_key(organization, created_by=owner, name=name)
    return issued.api_key.pk, issued.secret


def revoke_in_console(page: Page, organization: Organization, key_id: int) -> None:
    page.goto(f"/console/{organization.slug}/keys/")
    page.once("dialog", lambda dialog: dialog.accept())
    page.locator(f'form[data-testid="revoke-{key_id}"] button[type=submit]').click()
    expect(page.locator(f'tr[data-key-id="{key_id}"]')).to_contain_text("revoked", ignore_case=True)


def set_budget_limit_in_console(page: Page, organization: Organization, budget: Budget, limit_usd: str) -> None:
    page.goto(f"/console/{organization.slug}/budgets/{budget.pk}/")
    form = page.locator("#budget-edit-form")
    form.locator("input[name=limit_usd]").fill(limit_usd)
    form.locator("button[type=submit]").click()
    expect(page.locator(f'tr[data-budget-id="{budget.pk}"]')).to_be_visible()
    assert Budget.objects.get(pk=budget.pk).limit_usd == Decimal(limit_usd)
