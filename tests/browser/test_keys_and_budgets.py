"""Key revocation and budget edits in the console take effect on the proxy."""

from __future__ import annotations

from decimal import Decimal

from playwright.sync_api import Page

from billing.models import Budget, BudgetPeriod, BudgetScope
from billing.services import budget_create

from .conftest import LiveServer, screenshot
from .flows import eventually, new_key, owner_with_org, proxy, revoke_in_console, set_budget_limit_in_console, sign_in


def test_a_key_revoked_in_the_console_gets_401(page: Page, live: LiveServer) -> None:
    owner, organization = owner_with_org()
    key_id, secret = new_key(organization, owner)
    assert proxy(live, secret).status_code == 200
    sign_in(page, owner)
    page.goto(f"/console/{organization.slug}/keys/")
    screenshot(page, "keys")
    revoke_in_console(page, organization, key_id)
    screenshot(page, "keys-revoked")
    eventually(lambda: proxy(live, secret).status_code == 401)
    refused = proxy(live, secret)
    assert refused.json()["error"]["code"] == "invalid_api_key"


def test_a_budget_lowered_in_the_console_refuses_the_next_request(page: Page, live: LiveServer) -> None:
    owner, organization = owner_with_org()
    _, secret = new_key(organization, owner)
    budget: Budget = budget_create(
        organization=organization, actor=owner, scope=BudgetScope.ORGANIZATION, period=BudgetPeriod.MONTHLY,
        limit_usd=Decimal("100"), name="monthly cap",
    )  # fmt: skip
    assert proxy(live, secret).status_code == 200
    sign_in(page, owner)
    page.goto(f"/console/{organization.slug}/budgets/")
    screenshot(page, "budgets")
    set_budget_limit_in_console(page, organization, budget, "0.000001")
    screenshot(page, "budgets-edited")
    eventually(lambda: proxy(live, secret).status_code == 429)
    refused = proxy(live, secret)
    assert refused.json()["error"]["code"] == "budget_exceeded"
