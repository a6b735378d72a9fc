"""Brute-force protection for every password login: the console, the admin and the JWT endpoint.

Failures are counted in the Django cache (Redis in production, so every
instance shares them) per account and per client IP. After
``MUXER_LOGIN_MAX_FAILURES`` failures for one account, or
``MUXER_LOGIN_MAX_FAILURES_PER_IP`` from one address, within
``MUXER_LOGIN_LOCKOUT_SECONDS``, that account or address is locked for that
long: attempts are refused without the password being checked, so even the
right one fails. A successful login clears the account's count.

Counters and locks are keyed by an HMAC of the normalised email or the IP, so
neither appears in the cache or in the logs.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import math
import time
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.backends import ModelBackend
from django.core.cache import cache
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest

from accounts.models import User
from audit import context as audit_context
from muxer_project import metrics

logger = logging.getLogger(__name__)

_PREFIX = "muxer:login"


def _digest(value: str) -> str:
    return hmac.new(settings.SECRET_KEY.encode(), value.encode(), hashlib.sha256).hexdigest()[:32]


def normalise_username(username: str) -> str:
    return username.strip().lower()


def client_ip(request: HttpRequest | None) -> str | None:
    """The client's address as the audit log records it (``MUXER_TRUSTED_PROXY_COUNT`` decides
    how much of ``X-Forwarded-For`` to believe); ``None`` without a request."""
    if request is None:
        return None
    return audit_context.client_ip(request)


def _subjects(username: str | None, ip: str | None) -> list[tuple[str, str, int]]:
    """(what, key id, limit) for each counter an attempt touches."""
    subjects: list[tuple[str, str, int]] = []
    if username:
        subjects.append(("account", _digest("u:" + normalise_username(username)), settings.MUXER_LOGIN_MAX_FAILURES))
    if ip:
        subjects.append(("ip", _digest("ip:" + ip), settings.MUXER_LOGIN_MAX_FAILURES_PER_IP))
    return subjects


def _count_key(key_id: str) -> str:
    return f"{_PREFIX}:fails:{key_id}"


def _lock_key(key_id: str) -> str:
    return f"{_PREFIX}:lock:{key_id}"


def lockout_seconds(*, username: str | None, ip: str | None) -> int:
    """How long attempts for this account or from this address stay refused; 0 when they are not."""
    subjects = _subjects(username, ip)
    if not subjects:
        return 0
    locks = cache.get_many([_lock_key(key_id) for _, key_id, _ in subjects])
    now = time.time()
    remaining = max((float(until) - now for until in locks.values()), default=0.0)
    return max(0, math.ceil(remaining))


def failure_record(*, username: str | None, ip: str | None) -> None:
    """Count one failed attempt; lock the account or the address once it reaches its limit."""
    window: int = settings.MUXER_LOGIN_LOCKOUT_SECONDS
    metrics.auth_failures.labels("login").inc()
    for what, key_id, limit in _subjects(username, ip):
        key = _count_key(key_id)
        # The window opens at the first failure; incr keeps the key's expiry.
        cache.add(key, 0, timeout=window)
        try:
            failures = cache.incr(key)
        except ValueError:  # expired between add and incr
            cache.set(key, 1, timeout=window)
            failures = 1
        if failures >= limit:
            cache.set(_lock_key(key_id), time.time() + window, timeout=window)
            cache.delete(key)
            logger.warning("login locked for %ss: %s %s after %s failures", window, what, key_id[:12], failures)


def signup_admitted(*, ip: str | None) -> bool:
    """Count one sign-up from ``ip``; False once the address has made ``MUXER_SIGNUPS_PER_IP_PER_HOUR``."""
    limit: int = settings.MUXER_SIGNUPS_PER_IP_PER_HOUR
    if not limit or ip is None:
        return True
    key = f"{_PREFIX}:signup:{_digest('ip:' + ip)}"
    cache.add(key, 0, timeout=3600)
    try:
        count = cache.incr(key)
    except ValueError:  # expired between add and incr
        cache.set(key, 1, timeout=3600)
        count = 1
    if count > limit:
        logger.warning("sign-up refused: %s accounts from address %s this hour", count, _digest("ip:" + ip)[:12])
        return False
    return True


def success_record(*, username: str) -> None:
    """A successful login clears the account's failures (the address's stay)."""
    key_id = _digest("u:" + normalise_username(username))
    cache.delete_many([_count_key(key_id), _lock_key(key_id)])


def lockout_message(seconds: int) -> str:
    minutes = max(1, math.ceil(seconds / 60))
    unit = "minute" if minutes == 1 else "minutes"
    return f"Too many failed sign-in attempts. Try again in {minutes} {unit}."


class LockoutModelBackend(ModelBackend):
    """``ModelBackend`` that refuses locked accounts and addresses before checking the password.

    Raising ``PermissionDenied`` stops Django's backend chain, and
    ``django.contrib.auth.authenticate`` then reports the attempt as failed
    (``user_login_failed``), like any wrong password.
    """

    def authenticate(  # type: ignore[override]
        self,
        request: HttpRequest | None,
        username: str | None = None,
        password: str | None = None,
        **kwargs: Any,
    ) -> User | None:
        if username is None:
            username = kwargs.get(get_user_model().USERNAME_FIELD)
        if username is None or password is None:
            return None
        ip = client_ip(request)
        if lockout_seconds(username=username, ip=ip) > 0:
            raise PermissionDenied("too many failed sign-in attempts")
        user = super().authenticate(request, username=username, password=password, **kwargs)
        if user is None:
            failure_record(username=username, ip=ip)
        else:
            success_record(username=username)
        return user


def forget_login_failures() -> None:
    """Drop every failure count and lock (tests: counters would otherwise carry over between them)."""
    delete_pattern = getattr(cache, "delete_pattern", None)
    if delete_pattern is not None:  # django-redis
        delete_pattern(f"{_PREFIX}:*")
    else:
        cache.clear()
