"""The browser harness itself: chromium reaches the live server and the console's sign-in page works."""

from __future__ import annotations

from playwright.sync_api import Page, expect

from accounts.models import User
from tests.factories import UserFactory

from .conftest import LiveServer, screenshot, set_password


def test_a_user_signs_in_and_out(page: Page, live: LiveServer) -> None:
    user: User = UserFactory.create(email="ada@example.com")
    set_password(user, "correct horse battery")
    page.goto("/console/login/")
    screenshot(page, "login")
    page.fill("input[name=username]", "ada@example.com")
    page.fill("input[name=password]", "correct horse battery")
    page.click("button[type=submit]")
    expect(page.locator("header")).to_contain_text("ada@example.com")
    page.click("text=Sign out")
    expect(page).to_have_url(f"{live.url}/console/login/")
