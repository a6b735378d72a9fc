"""`make run`'s demo organization comes with a console sign-in for its owner."""

from __future__ import annotations

import io

import pytest
from django.core.management import call_command
from django.test import Client

pytestmark = pytest.mark.django_db


def demo_login() -> tuple[str, str]:
    out = io.StringIO()
    call_command("demo_setup", stdout=out)
    (line,) = [line for line in out.getvalue().splitlines() if line.startswith("demo console login: ")]
    email, password = line.removeprefix("demo console login: ").split(" ", 1)
    return email, password


def test_the_printed_demo_login_signs_in_to_the_console() -> None:
    email, password = demo_login()
    client = Client()
    assert client.login(username=email, password=password)
    response = client.get("/console/")
    assert response.status_code == 200
    assert b"Demo" in response.content


def test_each_run_replaces_the_demo_password_unless_one_is_set(monkeypatch: pytest.MonkeyPatch) -> None:
    _, first = demo_login()
    _, second = demo_login()
    assert first != second
    assert not Client().login(username="demo@modelmuxer.local", password=first)
    monkeypatch.setenv("MUXER_DEMO_PASSWORD", "a chosen demo password")
    assert demo_login() == ("demo@modelmuxer.local", "a chosen demo password")
    assert Client().login(username="demo@modelmuxer.local", password="a chosen demo password")
