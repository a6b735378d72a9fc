"""Who is asking, from where: the request context every audit event records.

The middleware binds one :class:`RequestContext` per request in a context
variable, so ``audit_event_record`` finds the client's IP, user agent and
request id without callers passing the request down. Context variables follow
the request through sync views, async views and ``sync_to_async`` hops alike.
"""

from __future__ import annotations

import ipaddress
import re
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings
from django.http import HttpRequest

USER_AGENT_MAX = 300
REQUEST_ID_HEADER = "X-Request-ID"
_REQUEST_ID = re.compile(r"[A-Za-z0-9._\-]{1,64}", re.ASCII)
# Control characters (NUL among them: PostgreSQL refuses it in text) never reach a row.
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


@dataclass(slots=True)
class RequestContext:
    ip: str | None
    user_agent: str
    request_id: str
    # Set on the admin site: saves there remember the row's state before, for the audit's before/after.
    is_admin: bool = False
    snapshots: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)


_current: ContextVar[RequestContext | None] = ContextVar("audit_request_context", default=None)


def current() -> RequestContext | None:
    return _current.get()


@contextmanager
def bound(context: RequestContext) -> Iterator[RequestContext]:
    """Make ``context`` the current one inside the block (tests and tasks use it too)."""
    token = _current.set(context)
    try:
        yield context
    finally:
        _current.reset(token)


def new_request_id() -> str:
    # The shape the proxy's consumers give their requests.
    return f"req_{uuid.uuid4().hex}"


def request_id_from(header: str | None) -> str:
    """The caller's ``X-Request-ID`` when it is a sane token (1-64 of ``[A-Za-z0-9._-]``), else a new one."""
    if header and _REQUEST_ID.fullmatch(header):
        return header
    return new_request_id()


def normalized_ip(raw: str | None) -> str | None:
    """``raw`` as a canonical address, or ``None`` when it is not one (a Unix socket, garbage)."""
    if not raw:
        return None
    text = raw.strip()
    if text.startswith("[") and "]" in text:  # "[2001:db8::1]:443"
        text = text[1 : text.index("]")]
    elif text.count(":") == 1:  # "203.0.113.9:51234"
        text = text.split(":", 1)[0]
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        return None


def client_ip(request: HttpRequest) -> str | None:
    """The peer's address; behind ``MUXER_TRUSTED_PROXY_COUNT`` proxies, the address the outermost one saw.

    Each trusted proxy appends the address it received the request from to
    ``X-Forwarded-For``, so with N of them the client is the N-th entry from
    the right. Anything further left was written by the client and is not trusted.
    """
    proxies = settings.MUXER_TRUSTED_PROXY_COUNT
    if proxies > 0:
        forwarded = [part.strip() for part in request.META.get("HTTP_X_FORWARDED_FOR", "").split(",") if part.strip()]
        if forwarded:
            # Fewer entries than proxies: every entry came from a trusted proxy, the leftmost is the farthest.
            chosen = forwarded[-proxies] if len(forwarded) >= proxies else forwarded[0]
            return normalized_ip(chosen)
    return normalized_ip(request.META.get("REMOTE_ADDR"))


def clean_user_agent(raw: str | None) -> str:
    return _CONTROL.sub("", raw or "")[:USER_AGENT_MAX]


def context_for(request: HttpRequest, *, is_admin: bool = False) -> RequestContext:
    return RequestContext(
        ip=client_ip(request),
        user_agent=clean_user_agent(request.META.get("HTTP_USER_AGENT")),
        request_id=request_id_from(request.META.get("HTTP_X_REQUEST_ID")),
        is_admin=is_admin,
    )
