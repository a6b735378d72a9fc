"""Every main page, as an owner with a month of traffic and as an operator: it renders, runs its scripts
without an error (a Content-Security-Policy violation is one), and is screenshotted for review."""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal

import pytest
from playwright.sync_api import Browser, ConsoleMessage, Page, expect

from accounts.management.commands.demo_setup import demo_usage_create
from accounts.models import Organization, User
from billing.models import BudgetPeriod, BudgetScope, RequestLog, UsageRecord
from billing.services import budget_create
from tests.factories import UserFactory

from .conftest import LiveServer, screenshot, set_password
from .flows import PASSWORD, new_key, owner_with_org, sign_in

CONSOLE_PAGES = {
    "dashboard": "",
    "usage": "usage/?group_by=model",
    "keys": "keys/",
    "budgets": "budgets/",
    "members": "members/",
    "routing": "routing/",
    "settings": "settings/",
    "savings": "recommendations/",
    "audit": "audit/",
    "playground": "playground/",
}
ADMIN_PAGES = {
    "admin-organizations": "/admin/accounts/organization/",
    "admin-keys": "/admin/accounts/apikey/",
    "admin-catalog": "/admin/providers/model/",
    "admin-providers": "/admin/providers/provider/",
    "admin-usage": "/admin/billing/usagerecord/",
}


@pytest.fixture
def errors(page: Page) -> Iterator[list[str]]:
    """Script errors and console errors the pages log; each test ends with none."""
    found: list[str] = []

    def on_console(message: ConsoleMessage) -> None:
        if message.type == "error":
            found.append(f"{page.url}: {message.text}")

    page.on("console", on_console)
    page.on("pageerror", lambda error: found.append(f"{page.url}: {error}"))
    yield found
    assert found == []


@pytest.fixture
def busy_org(live: LiveServer) -> tuple[User, Organization]:
    owner, organization = owner_with_org()
    new_key(organization, owner, name="backend")
    demo_usage_create(organization=organization, user=owner)
    # One record with kept bodies, for the request log's page.
    record = UsageRecord.objects.filter(organization=organization).latest("created_at")
    RequestLog.objects.create(
        usage=record,
        organization=organization,
        request_body={"model": record.model, "messages": [{"role": "user", "content": "Mail [EMAIL_1] the report"}]},
        response_body={"choices": [{"message": {"role": "assistant", "content": "Sent to [EMAIL_1]."}}]},
        created_at=record.created_at,
    )
    budget_create(
        organization=organization, actor=owner, scope=BudgetScope.ORGANIZATION, period=BudgetPeriod.MONTHLY,
        limit_usd=Decimal("500"), name="monthly cap",
    )  # fmt: skip
    return owner, organization


def test_every_console_page_renders_cleanly(page: Page, errors: list[str], busy_org: tuple[User, Organization]) -> None:
    owner, organization = busy_org
    sign_in(page, owner)
    for name, path in CONSOLE_PAGES.items():
        response = page.goto(f"/console/{organization.slug}/{path}")
        assert response is not None, name
        assert response.status == 200, (name, response.status)
        expect(page.locator("nav.sidenav a[aria-current=page]")).to_have_count(1)
        if name == "dashboard":
            expect(page.locator("#spend-chart")).to_be_visible()
            expect(page.locator("#spend-chart rect").first).to_be_attached()
        screenshot(page, f"console-{name}")
    record = UsageRecord.objects.get(organization=organization, request_log__isnull=False)
    response = page.goto(f"/console/{organization.slug}/usage/{record.pk}/bodies/")
    assert response is not None
    assert response.status == 200
    expect(page.locator("nav.sidenav a[aria-current=page]")).to_have_count(1)
    expect(page.get_by_text("Mail [EMAIL_1] the report")).to_be_visible()
    screenshot(page, "console-usage-bodies")


def test_the_console_fits_a_phone(chromium: Browser, live: LiveServer, busy_org: tuple[User, Organization]) -> None:
    owner, organization = busy_org
    context = chromium.new_context(base_url=live.url, viewport={"width": 375, "height": 740}, is_mobile=True)
    try:
        page = context.new_page()
        sign_in(page, owner)
        for name in ("dashboard", "keys", "playground"):
            page.goto(f"/console/{organization.slug}/{CONSOLE_PAGES[name]}")
            # Nothing wider than the screen but the tables, which scroll inside their own box.
            overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
            assert overflow <= 0, f"{name} is {overflow}px wider than the phone"
            screenshot(page, f"phone-{name}")
    finally:
        context.close()


def test_every_operator_page_renders_cleanly(
    page: Page, errors: list[str], busy_org: tuple[User, Organization]
) -> None:
    operator: User = UserFactory.create(email="ops@modelmuxer.example", is_staff=True, is_superuser=True)
    set_password(operator, PASSWORD)
    sign_in(page, operator, path="/admin/login/?next=/admin/")
    for name, path in ADMIN_PAGES.items():
        response = page.goto(path)
        assert response is not None, name
        assert response.status == 200, (name, response.status)
        screenshot(page, name)
