"""The registry knows every endpoint the URLconf serves, and every view guards every method it implements."""

from __future__ import annotations

import pytest

from accounts.permissions import Perm

from .endpoints import CALLS, ID_FACTORIES, NOT_ORG_SCOPED, discover

HOW_TO = "register it in tests/governance/endpoints.py (see its docstring)"


def test_discovery_finds_the_management_api() -> None:
    names = {endpoint.name for endpoint in discover()}
    # A walk that found nothing would make every matrix vacuous.
    assert {"org-detail", "key-list", "key-detail", "budget-list", "v1-feedback", "token-obtain"} <= names


def test_every_endpoint_is_named() -> None:
    unnamed = [endpoint.route for endpoint in discover() if not endpoint.name]
    assert not unnamed, f"give these routes a name= so the proofs can register them: {unnamed}"


def test_every_org_scoped_method_has_a_call() -> None:
    missing = [
        f"{endpoint} {method}"
        for endpoint in discover()
        if endpoint.org_scoped
        for method in endpoint.methods
        if (endpoint.name, method) not in CALLS
    ]
    assert not missing, f"no Call for {missing}: {HOW_TO}"


def test_every_id_in_a_url_has_a_factory() -> None:
    missing = sorted(
        {
            f"{name} (in {endpoint})"
            for endpoint in discover()
            if endpoint.org_scoped
            for name in endpoint.object_kwargs
            if name not in ID_FACTORIES
        }
    )
    assert not missing, f"no ID_FACTORIES entry for {missing}: {HOW_TO}"


def test_every_endpoint_outside_an_org_is_declared() -> None:
    undeclared = [str(e) for e in discover() if not e.org_scoped and e.name not in NOT_ORG_SCOPED]
    assert not undeclared, f"not under an organization and not in NOT_ORG_SCOPED: {undeclared}: {HOW_TO}"


def test_org_scoped_means_an_org_in_the_url() -> None:
    for endpoint in discover():
        assert endpoint.org_scoped == ("org" in endpoint.kwargs), endpoint
        assert not (endpoint.org_scoped and endpoint.name in NOT_ORG_SCOPED), endpoint


def test_the_registry_has_no_stale_entries() -> None:
    live = {(endpoint.name, method) for endpoint in discover() for method in endpoint.methods}
    names = {endpoint.name for endpoint in discover()}
    assert set(CALLS) <= live, sorted(set(CALLS) - live)
    assert set(NOT_ORG_SCOPED) <= names, sorted(set(NOT_ORG_SCOPED) - names)


@pytest.mark.parametrize("endpoint", [e for e in discover() if e.org_scoped], ids=str)
def test_every_method_a_view_implements_is_guarded(endpoint: object) -> None:
    from .endpoints import Endpoint

    assert isinstance(endpoint, Endpoint)
    perms = dict(endpoint.view.perms)  # type: ignore[attr-defined]
    assert set(perms) == set(endpoint.methods), (
        f"{endpoint.view.__name__}.perms covers {sorted(perms)} but it implements {sorted(endpoint.methods)}"
    )
    assert all(isinstance(perm, Perm) for perm in perms.values())
