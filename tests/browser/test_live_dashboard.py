"""The dashboard's counters and budget alerts arrive live, through the channel layer, without a reload."""

from __future__ import annotations

from decimal import Decimal

from playwright.sync_api import Page, expect

from billing.models import BudgetPeriod, BudgetScope
from billing.services import budget_create

from .conftest import LiveServer, screenshot
from .flows import new_key, owner_with_org, proxy, sign_in


def test_a_request_and_its_budget_alert_show_up_on_an_open_dashboard(page: Page, live: LiveServer) -> None:
    owner, organization = owner_with_org()
    _, secret = new_key(organization, owner)
    # A soft budget so small that one request crosses its first alert threshold.
    budget_create(
        organization=organization, actor=owner, scope=BudgetScope.ORGANIZATION, period=BudgetPeriod.DAILY,
        limit_usd=Decimal("0.0000001"), name="tiny daily", hard_limit=False, alert_thresholds=[50],
    )  # fmt: skip
    sign_in(page, owner)
    page.goto(f"/console/{organization.slug}/")
    expect(page.locator("#live-status")).to_have_attribute("data-state", "connected")
    expect(page.locator("#requests-today")).to_contain_text("0")
    page_loads: list[str] = []
    page.on("load", lambda p: page_loads.append(p.url))

    assert proxy(live, secret).status_code == 200

    expect(page.locator("#requests-today")).to_contain_text("1", timeout=15_000)
    expect(page.locator("#alerts")).to_contain_text("tiny daily", timeout=15_000)
    assert page_loads == [], "the page reloaded instead of updating in place"
    screenshot(page, "dashboard-live-alert")
