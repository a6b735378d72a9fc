"""A new user, from the home page to a first proxied request and its usage on the dashboard, in a real browser."""

from __future__ import annotations

import re

from playwright.sync_api import Page, expect

from accounts.models import User
from billing.models import UsageRecord

from .conftest import LiveServer, screenshot
from .flows import eventually, proxy


def test_a_new_user_signs_up_and_sends_a_first_request(page: Page, live: LiveServer) -> None:
    page.goto("/")
    screenshot(page, "home")
    page.click("#start-signup")
    form = page.locator("#signup-form")
    form.locator("input[name=email]").fill("Grace@Example.com")
    form.locator("input[name=name]").fill("Grace Hopper")
    form.locator("input[name=password]").fill("short")
    form.locator("button[type=submit]").click()
    expect(page.locator("#signup-form")).to_contain_text("too short")  # the form says what is wrong
    screenshot(page, "signup-error")
    page.locator("#signup-form input[name=password]").fill("compilers all the way down")
    page.locator("#signup-form button[type=submit]").click()

    # The verification link arrives by mail; following it verifies the address.
    link = live.link_in_mail(to="grace@example.com", path_part="/console/verify-email/")
    page.goto(link)
    assert User.objects.get(email="grace@example.com").email_verified_at is not None

    page.goto("/console/onboarding/")
    screenshot(page, "onboarding-organization")
    page.locator("#org-form input[name=name]").fill("Hopper Labs")
    page.locator("#org-form button[type=submit]").click()
    expect(page).to_have_url(re.compile(r"/onboarding/invite/$"))
    screenshot(page, "onboarding-invite")
    page.get_by_role("link", name=re.compile("skip", re.I)).or_(
        page.get_by_role("button", name=re.compile("skip", re.I))
    ).first.click()

    expect(page).to_have_url(re.compile(r"/onboarding/key/$"))
    page.locator("#key-form input[name=name]").fill("my first key")
    page.locator("#key-form button[type=submit]").click()
    secret = page.locator("#new-key-secret").inner_text().strip()
    assert secret.startswith("mm_")
    for snippet in ("#snippet-curl", "#snippet-python", "#snippet-js"):
        expect(page.locator(snippet)).to_contain_text(secret)
        expect(page.locator(snippet)).to_contain_text(f"{live.url}/v1")
    screenshot(page, "onboarding-key-created")

    page.click("#to-test-step")
    page.locator("#test-request-form button[type=submit]").click()
    expect(page.locator("#test-answer")).to_contain_text("Fake reply to:")
    expect(page.locator("#test-model")).not_to_have_text("—")
    expect(page.locator("#test-cost")).to_contain_text("$")
    screenshot(page, "onboarding-test-request")

    # The key works from outside the console too, as the snippets say.
    assert proxy(live, secret).status_code == 200

    eventually(lambda: UsageRecord.objects.filter(organization__slug="hopper-labs").count() == 2)
    page.click("#to-dashboard")
    expect(page.locator("#requests-today")).to_contain_text("2")
    screenshot(page, "dashboard-first-requests")
