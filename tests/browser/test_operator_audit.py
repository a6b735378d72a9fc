"""An operator finds what tenants did in the console in the admin's audit review."""

from __future__ import annotations

from decimal import Decimal

from playwright.sync_api import Page, expect

from accounts.models import User
from billing.models import Budget, BudgetPeriod, BudgetScope
from billing.services import budget_create
from tests.factories import UserFactory

from .conftest import LiveServer, screenshot, set_password
from .flows import PASSWORD, new_key, owner_with_org, revoke_in_console, set_budget_limit_in_console, sign_in


def test_an_operator_reviews_a_tenants_console_actions_in_the_admin(page: Page, live: LiveServer) -> None:
    owner, organization = owner_with_org()
    key_id, _ = new_key(organization, owner)
    budget: Budget = budget_create(
        organization=organization, actor=owner, scope=BudgetScope.ORGANIZATION, period=BudgetPeriod.MONTHLY,
        limit_usd=Decimal("100"), name="monthly cap",
    )  # fmt: skip
    sign_in(page, owner)
    revoke_in_console(page, organization, key_id)
    set_budget_limit_in_console(page, organization, budget, "25")
    page.context.clear_cookies()

    operator: User = UserFactory.create(email="ops@modelmuxer.example", is_staff=True, is_superuser=True)
    set_password(operator, PASSWORD)
    page.goto("/admin/")
    page.fill("input[name=username]", operator.email)
    page.fill("input[name=password]", PASSWORD)
    page.click("input[type=submit], button[type=submit]")
    page.goto("/admin/audit/auditevent/")
    screenshot(page, "admin-audit-review")

    page.fill("#searchbar", "api_key.revoked")
    page.locator("#changelist-search").locator("input[type=submit], button[type=submit]").click()
    rows = page.locator("#result_list tbody tr")
    expect(rows).to_have_count(1)
    expect(rows.first).to_contain_text("api_key.revoked")
    expect(rows.first).to_contain_text(organization.name)

    page.fill("#searchbar", "budget.updated")
    page.locator("#changelist-search").locator("input[type=submit], button[type=submit]").click()
    expect(page.locator("#result_list tbody tr")).to_have_count(1)
    page.locator("#result_list tbody tr a").first.click()
    expect(page.locator("#content")).to_contain_text("25")
    screenshot(page, "admin-audit-event")

    # The review is read-only: no way to add, change or delete an event.
    expect(page.locator("input[name=_save]")).to_have_count(0)
    expect(page.locator("a.deletelink")).to_have_count(0)
