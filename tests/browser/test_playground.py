"""The playground streams its answer over the WebSocket, token by token, then shows the route and the cost."""

from __future__ import annotations

import time

from playwright.sync_api import Page, expect

from billing.models import UsageRecord

from .conftest import LiveServer, screenshot
from .flows import eventually, new_key, owner_with_org, sign_in


def test_a_streamed_playground_answer_appears_token_by_token(page: Page, live: LiveServer) -> None:
    owner, organization = owner_with_org()
    key_id, _ = new_key(organization, owner, name="playground key")
    sign_in(page, owner)
    page.goto(f"/console/{organization.slug}/playground/")
    page.select_option("#playground-form select[name=key_id]", str(key_id))
    page.select_option("#playground-form select[name=model]", "fake-small")
    # Thirty words, 80 ms apart: the answer must be seen growing, not arrive whole.
    page.fill("#playground-form textarea[name=message]", "[fake words=30 chunk_delay_ms=80] Tell me a story")
    page.click("#playground-send")

    answer = page.locator("#playground-answer")
    seen: list[int] = []
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        length = len(answer.inner_text())
        if not seen or length != seen[-1]:
            seen.append(length)
        if page.locator("#playground-cost").inner_text() != "—":
            break
        time.sleep(0.03)
    growing = [n for n in seen if n > 0]
    assert len(growing) >= 5, f"the answer arrived in {len(growing)} steps: {seen}"
    assert growing == sorted(growing)
    assert len(answer.inner_text().split()) == 30

    expect(page.locator("#playground-model")).to_have_text("fake-small")
    expect(page.locator("#playground-tokens")).to_contain_text("/ 30")
    expect(page.locator("#playground-cost")).to_contain_text("$")
    screenshot(page, "playground")
    eventually(lambda: UsageRecord.objects.filter(api_key_id=key_id, stream=True).count() == 1)
