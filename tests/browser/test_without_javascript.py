"""The core forms work with JavaScript turned off: plain posts and redirects, the same answers."""

from __future__ import annotations

from playwright.sync_api import Browser, expect

from accounts.models import APIKey

from .conftest import LiveServer, screenshot
from .flows import owner_with_org, proxy, sign_in


def test_a_key_is_created_and_revoked_without_javascript(chromium: Browser, live: LiveServer) -> None:
    owner, organization = owner_with_org()
    context = chromium.new_context(base_url=live.url, java_script_enabled=False)
    try:
        page = context.new_page()
        sign_in(page, owner)
        page.goto(f"/console/{organization.slug}/keys/")
        form = page.locator("#key-create-form")
        form.locator("input[name=name]").fill("")
        form.locator("button[type=submit]").click()
        expect(page.locator("#key-create-form")).to_contain_text("required")  # the server's own message

        page.locator("#key-create-form input[name=name]").fill("no-js key")
        page.locator("#key-create-form button[type=submit]").click()
        secret = page.locator("#new-key-secret").inner_text().strip()
        assert proxy(live, secret).status_code == 200
        screenshot(page, "keys-created-without-javascript")

        key = APIKey.objects.get(name="no-js key")
        page.goto(f"/console/{organization.slug}/keys/")
        page.locator(f'form[data-testid="revoke-{key.pk}"] button[type=submit]').click()  # no confirm() without JS
        expect(page.locator(f'tr[data-key-id="{key.pk}"]')).to_contain_text("revoked", ignore_case=True)
        key.refresh_from_db()
        assert key.revoked_at is not None
    finally:
        context.close()
