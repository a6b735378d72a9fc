"""Every endpoint and method against every role and key scope: the view's ``perms`` and ``role_can`` decide.

Allowed means the call succeeds (its :class:`~.endpoints.Call` has a valid body,
so the status is the endpoint's 2xx); refused means 403 ``permission_denied``.
Rules a handler adds on top of the matrix are listed in :data:`EXCEPTIONS`.
"""

from __future__ import annotations

import io
import re
from pathlib import Path

import pytest
from django.core.management import call_command

from accounts.permissions import SCOPE_ROLES, Perm, permission_table, role_can

from .endpoints import CALLS, PRINCIPALS, Endpoint, World, call, org_scoped_calls

ROOT = Path(__file__).resolve().parents[2]

# (url name, method, principal) -> the status a handler's own rule gives instead of the matrix's answer, and why.
# The target objects are ID_FACTORIES': a key the owner created, a membership in the member role.
EXCEPTIONS: dict[tuple[str, str, str], tuple[int, str]] = {
    **{
        (name, method, "member"): (403, "keys.create lets a member change only the keys they created")
        for name, method in [("key-detail", "PATCH"), ("key-rotate", "POST"), ("key-revoke", "POST")]
    },
    **{
        ("member-detail", "DELETE", principal): (403, "members.view lets anyone leave; removing another takes manage")
        for principal in ("member", "viewer", "billing", "key:read")
    },
}


def role_of(principal: str) -> str | None:
    """The role a principal acts with; ``None`` for a proxy-only key, which has no management rights."""
    if principal.startswith("key:"):
        return SCOPE_ROLES.get(principal.removeprefix("key:"))
    return principal


def required_perm(endpoint: Endpoint, method: str) -> Perm:
    perms = endpoint.view.perms  # type: ignore[attr-defined]
    return perms["GET" if method in ("HEAD", "OPTIONS") else method]  # type: ignore[no-any-return]


def expected_status(endpoint: Endpoint, method: str, principal: str) -> int:
    if (endpoint.name, method, principal) in EXCEPTIONS:
        return EXCEPTIONS[(endpoint.name, method, principal)][0]
    role = role_of(principal)
    if role is not None and role_can(role, required_perm(endpoint, method)):
        return CALLS[(endpoint.name, method)].ok
    return 403


def case_id(value: object) -> str:
    return value.name if isinstance(value, Endpoint) else str(value)


@pytest.mark.django_db
@pytest.mark.parametrize("principal", PRINCIPALS)
@pytest.mark.parametrize(("endpoint", "method"), org_scoped_calls(), ids=case_id)
def test_role_matrix(endpoint: Endpoint, method: str, principal: str, alpha: World) -> None:
    expected = expected_status(endpoint, method, principal)
    answer = call(endpoint, method, bearer=alpha.bearer(principal), slug=alpha.slug, ids=alpha.ids, body_for=alpha)
    assert answer.status == expected, f"{principal}: {method} {endpoint}: {answer.text[:400]}"
    if expected == 403:
        assert answer.error_code == "permission_denied", answer.text[:400]


def test_every_principal_is_both_allowed_and_refused_somewhere() -> None:
    # A principal that never met a refusal (or never a success) would prove little about it. Owners and
    # admins may be refused nothing the table does not reserve for owners alone.
    calls = org_scoped_calls()
    for principal in PRINCIPALS:
        refused = {expected_status(endpoint, method, principal) == 403 for endpoint, method in calls}
        if principal == "key:proxy":
            assert refused == {True}
        elif principal in ("owner", "admin", "key:admin"):
            assert False in refused, principal
        else:
            assert refused == {True, False}, principal


def test_the_exceptions_name_live_calls() -> None:
    live = {(endpoint.name, method) for endpoint, method in org_scoped_calls()}
    assert {(name, method) for name, method, _ in EXCEPTIONS} <= live


MATRIX_BLOCK = re.compile(r"<!-- permission-matrix -->\n(.*?)\n<!-- /permission-matrix -->", re.DOTALL)


def test_readme_shows_the_permission_matrix() -> None:
    found = MATRIX_BLOCK.findall((ROOT / "README.md").read_text())
    assert len(found) == 1, "README.md needs one <!-- permission-matrix --> ... <!-- /permission-matrix --> block"
    assert found[0] == permission_table(), (
        "README.md's permission table is out of date: paste `manage.py permission_matrix` between its markers"
    )


def test_permission_matrix_command_prints_the_table() -> None:
    out = io.StringIO()
    call_command("permission_matrix", stdout=out)
    assert out.getvalue().strip() == permission_table()
    assert out.getvalue().count("\n| `") == len(Perm)
