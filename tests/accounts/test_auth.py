"""Resolving a presented API key to its identity, and the per-process key cache."""

from __future__ import annotations

from datetime import timedelta

import pytest
from asgiref.sync import sync_to_async
from django.db import connection
from django.utils import timezone
from pytest_django import DjangoAssertNumQueries, Settings

from accounts import auth, keys, services
from accounts.auth import KeyIdentity, authenticate, authenticate_sync
from accounts.models import APIKey, Organization, User
from muxer_project import cached_loader
from muxer_project.errors import APIError
from tests.factories import TeamFactory, issue_key

REJECTED = ["missing", "empty", "not_bearer", "bearer_without_key", "malformed", "unknown", "revoked", "expired"]


def flip_one_character(key: str) -> str:
    position = 20
    return key[:position] + ("0" if key[position] != "0" else "1") + key[position + 1 :]


def rejected_header(case: str, organization: Organization, owner: User) -> tuple[str | None, str]:
    """An Authorization header that must be refused, and the key it presents (if any)."""
    if case == "missing":
        return None, ""
    if case == "empty":
        return "", ""
    if case == "not_bearer":
        key = issue_key(organization, created_by=owner).secret
        return f"Basic {key}", key
    if case == "bearer_without_key":
        return "Bearer ", ""
    if case == "malformed":
        key = flip_one_character(issue_key(organization, created_by=owner).secret)
        return f"Bearer {key}", key
    if case == "unknown":
        key = keys.generate_key()
        return f"Bearer {key}", key
    if case == "revoked":
        issued = issue_key(organization, created_by=owner)
        services.api_key_revoke(api_key=issued.api_key, actor=owner)
        return f"Bearer {issued.secret}", issued.secret
    if case == "expired":
        key = issue_key(organization, created_by=owner, expires_at=timezone.now() - timedelta(seconds=1)).secret
        return f"Bearer {key}", key
    raise AssertionError(case)


@pytest.fixture(params=REJECTED)
def rejected(request: pytest.FixtureRequest, organization: Organization, owner: User) -> tuple[str | None, str]:
    return rejected_header(request.param, organization, owner)


def assert_refused(error: APIError, presented_key: str) -> None:
    assert error.status == 401
    assert error.code == "invalid_api_key"
    assert error.message
    if presented_key:
        assert presented_key not in error.message
        assert presented_key[16:] not in error.message
        assert presented_key not in str(error.body())


@pytest.mark.django_db
def test_authenticate_sync_refuses_with_401(rejected: tuple[str | None, str]) -> None:
    header, key = rejected

    with pytest.raises(APIError) as excinfo:
        authenticate_sync(header)

    assert_refused(excinfo.value, key)


@pytest.mark.django_db(transaction=True)
async def test_authenticate_refuses_with_401(rejected: tuple[str | None, str]) -> None:
    header, key = rejected

    with pytest.raises(APIError) as excinfo:
        await authenticate(header)

    assert_refused(excinfo.value, key)


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("missing", "didn't provide an API key"),
        ("not_bearer", "must be 'Bearer <API key>'"),
        ("malformed", "malformed"),
        ("unknown", "Incorrect API key"),
        ("revoked", "revoked"),
        ("expired", "expired"),
    ],
)
def test_each_refusal_says_why(case: str, message: str, organization: Organization, owner: User) -> None:
    header, _ = rejected_header(case, organization, owner)

    with pytest.raises(APIError, match=message):
        authenticate_sync(header)


@pytest.mark.django_db
def test_a_known_prefix_with_the_wrong_secret_is_refused(organization: Organization, owner: User) -> None:
    issued = issue_key(organization, created_by=owner)
    # Same lookup prefix, different (but well-formed) remainder.
    body = issued.secret[:16] + ("A" if issued.secret[16] != "A" else "B") + issued.secret[17:40]
    forged = body + keys._checksum(body)
    assert keys.is_well_formed(forged)
    assert keys.lookup_prefix(forged) == issued.api_key.prefix

    with pytest.raises(APIError) as excinfo:
        authenticate_sync(f"Bearer {forged}")

    assert_refused(excinfo.value, forged)


@pytest.mark.django_db
def test_authenticate_sync_returns_the_identity_of_a_valid_key(organization: Organization, owner: User) -> None:
    team = TeamFactory.create(organization=organization)
    organization.allowed_models = ["fake-small", "fake-large"]
    organization.save()
    issued = issue_key(organization, created_by=owner, team=team, allowed_models=("fake-small",))

    identity = authenticate_sync(f"Bearer {issued.secret}")

    assert identity.key_id == issued.api_key.pk
    assert identity.organization_id == organization.pk
    assert identity.team_id == team.pk
    assert identity.user_id == owner.pk
    assert identity.prefix == issued.api_key.prefix
    assert identity.allowed_models == frozenset({"fake-small"})
    assert identity.org_allowed_models == frozenset({"fake-small", "fake-large"})
    assert identity.revoked is False


@pytest.mark.django_db
def test_the_bearer_scheme_is_case_insensitive(organization: Organization, owner: User) -> None:
    issued = issue_key(organization, created_by=owner)

    assert authenticate_sync(f"bearer {issued.secret}").key_id == issued.api_key.pk


@pytest.fixture
def issued(organization: Organization, owner: User) -> services.IssuedKey:
    return issue_key(organization, created_by=owner, allowed_models=("fake-large",))


@pytest.mark.django_db(transaction=True)
async def test_authenticate_returns_the_identity_of_a_valid_key(
    issued: services.IssuedKey, organization: Organization
) -> None:
    identity = await authenticate(f"Bearer {issued.secret}")

    assert identity.key_id == issued.api_key.pk
    assert identity.organization_id == organization.pk
    assert identity.allowed_models == frozenset({"fake-large"})


@pytest.mark.django_db
def test_a_key_not_yet_expired_is_accepted(organization: Organization, owner: User) -> None:
    issued = issue_key(organization, created_by=owner, expires_at=timezone.now() + timedelta(minutes=5))

    assert authenticate_sync(f"Bearer {issued.secret}").key_id == issued.api_key.pk


# --- KeyIdentity.may_use ----------------------------------------------------------


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("org_allows", "key_allows", "expected"),
    [
        ((), (), {"fake-small": True, "fake-large": True}),
        ((), ("fake-small",), {"fake-small": True, "fake-large": False}),
        (("fake-large",), (), {"fake-small": False, "fake-large": True}),
        (("fake-small", "fake-large"), ("fake-small",), {"fake-small": True, "fake-large": False}),
        # A key cannot widen what its organization allows.
        (("fake-large",), ("fake-small",), {"fake-small": False, "fake-large": False}),
    ],
)
def test_may_use_honours_the_key_and_organization_lists(
    org_allows: tuple[str, ...],
    key_allows: tuple[str, ...],
    expected: dict[str, bool],
    organization: Organization,
    owner: User,
) -> None:
    organization.allowed_models = list(org_allows)
    organization.save()
    issued = issue_key(organization, created_by=owner, allowed_models=key_allows)

    identity = authenticate_sync(f"Bearer {issued.secret}")

    assert {name: identity.may_use(name) for name in expected} == expected


# --- the per-process cache ----------------------------------------------------------


class FakeClock:
    def __init__(self, start: float) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch, settings: Settings) -> FakeClock:
    settings.MUXER_KEY_CACHE_SECONDS = 5.0
    fake = FakeClock(start=cached_loader.time.monotonic())
    monkeypatch.setattr(cached_loader.time, "monotonic", fake)
    return fake


@pytest.fixture
def cached_then_revoked(organization: Organization, owner: User, clock: FakeClock) -> tuple[str, KeyIdentity]:
    """A key that authenticated once (so it is cached), then was revoked in the database."""
    issued = issue_key(organization, created_by=owner)
    identity = authenticate_sync(f"Bearer {issued.secret}")
    services.api_key_revoke(api_key=issued.api_key, actor=owner)
    return issued.secret, identity


@pytest.mark.django_db
def test_a_revoked_key_is_served_from_cache_before_the_ttl(
    cached_then_revoked: tuple[str, KeyIdentity],
    clock: FakeClock,
    django_assert_num_queries: DjangoAssertNumQueries,
) -> None:
    secret, first = cached_then_revoked
    clock.advance(4.9)

    with django_assert_num_queries(0):
        identity = authenticate_sync(f"Bearer {secret}")

    assert identity == first
    assert identity.revoked is False


@pytest.mark.django_db
def test_revocation_takes_effect_once_the_ttl_passes(
    cached_then_revoked: tuple[str, KeyIdentity], clock: FakeClock
) -> None:
    secret, _ = cached_then_revoked
    clock.advance(5.0)

    with pytest.raises(APIError, match="revoked") as excinfo:
        authenticate_sync(f"Bearer {secret}")

    assert_refused(excinfo.value, secret)


@pytest.mark.django_db
def test_the_ttl_comes_from_the_setting(
    cached_then_revoked: tuple[str, KeyIdentity], clock: FakeClock, settings: Settings
) -> None:
    secret, _ = cached_then_revoked
    settings.MUXER_KEY_CACHE_SECONDS = 1.0
    clock.advance(1.5)

    with pytest.raises(APIError, match="revoked"):
        authenticate_sync(f"Bearer {secret}")


def revoke_and_disconnect(api_key: APIKey, actor: User) -> None:
    """Revoke from asgiref's executor thread, then close that thread's own connection.

    Nothing else retires it, and an open session stops the test database from being dropped.
    """
    try:
        services.api_key_revoke(api_key=api_key, actor=actor)
    finally:
        connection.close()


@pytest.mark.django_db(transaction=True)
async def test_the_async_path_also_honours_the_ttl(issued: services.IssuedKey, owner: User, clock: FakeClock) -> None:
    await authenticate(f"Bearer {issued.secret}")
    await sync_to_async(revoke_and_disconnect)(issued.api_key, owner)

    clock.advance(4.9)
    assert (await authenticate(f"Bearer {issued.secret}")).key_id == issued.api_key.pk

    clock.advance(0.2)
    with pytest.raises(APIError, match="revoked"):
        await authenticate(f"Bearer {issued.secret}")


@pytest.mark.django_db
def test_forget_cached_keys_makes_revocation_immediate(cached_then_revoked: tuple[str, KeyIdentity]) -> None:
    secret, _ = cached_then_revoked

    auth.forget_cached_keys()

    with pytest.raises(APIError, match="revoked"):
        authenticate_sync(f"Bearer {secret}")


@pytest.mark.django_db
def test_an_unknown_key_is_cached_too(clock: FakeClock, django_assert_num_queries: DjangoAssertNumQueries) -> None:
    forged = f"Bearer {keys.generate_key()}"
    with django_assert_num_queries(1), pytest.raises(APIError):
        authenticate_sync(forged)

    with django_assert_num_queries(0), pytest.raises(APIError, match="Incorrect API key"):
        authenticate_sync(forged)


@pytest.mark.django_db
def test_a_malformed_key_costs_no_query(
    organization: Organization, owner: User, django_assert_num_queries: DjangoAssertNumQueries
) -> None:
    header = f"Bearer {flip_one_character(issue_key(organization, created_by=owner).secret)}"

    with django_assert_num_queries(0), pytest.raises(APIError, match="malformed"):
        authenticate_sync(header)
