"""Helpers for the audit tests: raw edits that go around the append-only guards, as an attacker would."""

from __future__ import annotations

from typing import Any

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection
from django.test import Client

from accounts.models import User


def tamper(sql: str, params: list[Any] | None = None) -> None:
    """Run ``sql`` around the append-only guards, as a database superuser could.

    PostgreSQL: triggers do not fire for the ``replica`` replication role (this
    transaction only). SQLite has no trigger.
    """
    with connection.cursor() as cursor:
        postgres = connection.vendor == "postgresql"
        if postgres:
            cursor.execute("SET LOCAL session_replication_role = replica")
        cursor.execute(sql, params or [])
        if postgres:
            cursor.execute("SET LOCAL session_replication_role = DEFAULT")


def verify_output() -> str:
    """``manage.py audit_verify``'s summary; raises ``CommandError`` when the chain is broken."""
    from io import StringIO

    out = StringIO()
    call_command("audit_verify", stdout=out)
    return out.getvalue().strip()


def verify_failure() -> str:
    with pytest.raises(CommandError) as excinfo:
        verify_output()
    return str(excinfo.value)


@pytest.fixture
def operator(db: None) -> User:
    return User.objects.create_superuser("operator@example.com", "operator password 123")


@pytest.fixture
def operator_client(operator: User) -> Client:
    client = Client()
    client.force_login(operator)
    return client
