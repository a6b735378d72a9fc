"""Resolving a presented API key to the identity behind it, on the hot path.

Each process keeps a short-lived copy of every key it has seen, keyed by the
lookup prefix, so a busy key costs no database work. The copy lives for
``MUXER_KEY_CACHE_SECONDS``, which bounds how long a revoked key keeps working
on any process. Unknown prefixes are cached too, so a flood of forged keys
does not become a flood of queries.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass, field
from datetime import datetime

from django.conf import settings
from django.utils import timezone

from muxer_project.cached_loader import CachedLoader
from muxer_project.errors import APIError, invalid_api_key, permission_denied
from routing.pii import PIIPolicy

from . import keys
from .models import APIKey, RoutingPreference, RoutingStrategy

_MAX_CACHED = 100_000


@dataclass(frozen=True, slots=True)
class KeyIdentity:
    key_id: int
    prefix: str
    digest: str
    organization_id: int
    team_id: int | None
    user_id: int | None
    allowed_models: frozenset[str]
    org_allowed_models: frozenset[str]
    expires_at: datetime | None
    revoked: bool
    allowed_providers: frozenset[str] = frozenset()
    org_allowed_providers: frozenset[str] = frozenset()
    # Already resolved: the key's own setting, else its organization's.
    strategy: str = RoutingStrategy.HYBRID.value
    preference: str = RoutingPreference.COST.value
    # Requests and tokens per minute: (key, team, organization); None where no limit is set.
    rpm_limits: tuple[int | None, int | None, int | None] = (None, None, None)
    tpm_limits: tuple[int | None, int | None, int | None] = (None, None, None)
    scopes: frozenset[str] = frozenset({"proxy"})
    pii_policy: PIIPolicy = field(default_factory=PIIPolicy)
    # The organization's response-cache lifetime (0: off) and whether it keeps request and response bodies.
    response_cache_ttl: int = 0
    request_log: bool = False

    def may_use(self, model_name: str) -> bool:
        if self.allowed_models and model_name not in self.allowed_models:
            return False
        return not self.org_allowed_models or model_name in self.org_allowed_models

    def allows_provider(self, slug: str) -> bool:
        if self.allowed_providers and slug not in self.allowed_providers:
            return False
        return not self.org_allowed_providers or slug in self.org_allowed_providers


def forget_cached_keys() -> None:
    _identities.forget()


def _query(prefix: str) -> KeyIdentity | None:
    row = (
        APIKey.objects.filter(prefix=prefix)
        .select_related("organization", "team")
        .only(
            "id",
            "prefix",
            "digest",
            "organization_id",
            "team_id",
            "created_by_id",
            "allowed_models",
            "allowed_providers",
            "routing_strategy",
            "routing_preference",
            "expires_at",
            "revoked_at",
            "organization__allowed_models",
            "organization__allowed_providers",
            "organization__routing_strategy",
            "organization__routing_preference",
            "rpm_limit",
            "tpm_limit",
            "organization__rpm_limit",
            "organization__tpm_limit",
            "team__rpm_limit",
            "team__tpm_limit",
            "scopes",
            "organization__pii_policy",
            "organization__response_cache_ttl_seconds",
            "organization__request_log_enabled",
        )
        .first()
    )
    if row is None:
        return None
    org = row.organization
    return KeyIdentity(
        key_id=row.pk,
        prefix=row.prefix,
        digest=row.digest,
        organization_id=row.organization_id,
        team_id=row.team_id,
        user_id=row.created_by_id,
        allowed_models=frozenset(row.allowed_models or ()),
        org_allowed_models=frozenset(org.allowed_models or ()),
        expires_at=row.expires_at,
        revoked=row.revoked_at is not None,
        allowed_providers=frozenset(row.allowed_providers or ()),
        org_allowed_providers=frozenset(org.allowed_providers or ()),
        strategy=row.routing_strategy or org.routing_strategy,
        preference=row.routing_preference or org.routing_preference,
        rpm_limits=(row.rpm_limit, row.team.rpm_limit if row.team else None, org.rpm_limit),
        tpm_limits=(row.tpm_limit, row.team.tpm_limit if row.team else None, org.tpm_limit),
        scopes=frozenset(row.scopes or ()),
        pii_policy=_pii_policy(org.pii_policy),
        response_cache_ttl=org.response_cache_ttl_seconds,
        request_log=org.request_log_enabled,
    )


def _pii_policy(raw: object) -> PIIPolicy:
    """The organization's stored policy; one that no longer parses guards nothing rather than failing every call."""
    try:
        return PIIPolicy.from_dict(raw or {})
    except ValueError:
        return PIIPolicy()


# Unknown prefixes are cached too (as None), so a flood of forged keys is not a flood of queries.
_identities: CachedLoader[str, KeyIdentity | None] = CachedLoader(
    "api-keys", _query, lambda: settings.MUXER_KEY_CACHE_SECONDS, max_entries=_MAX_CACHED
)


def _parse_bearer(header: str | None) -> str:
    if not header:
        raise invalid_api_key(
            "You didn't provide an API key. Send it in the Authorization header as 'Bearer mm_live_...'."
        )
    scheme, _, token = header.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise invalid_api_key("The Authorization header must be 'Bearer <API key>'.")
    if not keys.is_well_formed(token):
        raise invalid_api_key("The API key is malformed. ModelMuxer keys look like 'mm_live_...'.")
    return token


def _check(token: str, identity: KeyIdentity | None, scope: str | None) -> KeyIdentity:
    if identity is None or not hmac.compare_digest(identity.digest, keys.key_digest(token)):
        raise invalid_api_key("Incorrect API key provided.")
    return _usable(identity, scope)


def _usable(identity: KeyIdentity, scope: str | None) -> KeyIdentity:
    if identity.revoked:
        raise invalid_api_key("This API key has been revoked.")
    if identity.expires_at is not None and identity.expires_at <= timezone.now():
        raise invalid_api_key("This API key has expired.")
    if scope is not None and scope not in identity.scopes:
        raise permission_denied(f"This API key lacks the '{scope}' scope.")
    return identity


async def authenticate(authorization: str | None, scope: str | None = "proxy") -> KeyIdentity:
    """The identity of a valid key holding ``scope``; else a 401 :class:`APIError` (403 for a missing scope)."""
    token = _parse_bearer(authorization)
    prefix = keys.lookup_prefix(token)
    return _check(token, await _identities.get(prefix), scope)


async def identity_for_key(*, organization_id: int, key_id: int, scope: str | None = "proxy") -> KeyIdentity:
    """A key's identity without its secret, for a signed-in member acting through the console.

    The same checks as :func:`authenticate` (revoked, expired, scope) apply; a
    key of another organization does not exist (401 as an unknown key).
    """
    prefix = (
        await APIKey.objects.filter(pk=key_id, organization_id=organization_id)
        .values_list("prefix", flat=True)
        .afirst()
    )
    identity = None if prefix is None else await _identities.get(prefix)
    if identity is None:
        raise invalid_api_key("No such API key in this organization.")
    return _usable(identity, scope)


def authenticate_sync(authorization: str | None, scope: str | None = "proxy") -> KeyIdentity:
    token = _parse_bearer(authorization)
    prefix = keys.lookup_prefix(token)
    return _check(token, _identities.get_sync(prefix), scope)


__all__ = ["APIError", "KeyIdentity", "authenticate", "authenticate_sync", "forget_cached_keys", "identity_for_key"]
