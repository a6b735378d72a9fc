"""``Idempotency-Key`` on ``POST /v1/chat/completions``, the way Stripe's API does it.

A client that may send a request twice (a retry after a timeout, a job run
again) names it with a key of its choosing. The first request with that key
is answered as usual, and what the client got (status, body, content type and
the ``x-muxer-*`` and ``x-ratelimit-*`` headers) is kept for
``MUXER_IDEMPOTENCY_TTL_SECONDS``. A later request with the same key and the
same body gets that response again, byte for byte, with
``Idempotent-Replayed: true``: no provider call, no usage record, no charge,
and it is not counted against the rate limits. Status codes follow the IETF
draft "The Idempotency-Key HTTP Header Field":

- the same key with another body: 422 ``idempotency_key_reused``;
- the same key while its first request is still running: the duplicate waits
  up to ``MUXER_IDEMPOTENCY_WAIT_SECONDS`` for the answer and replays it, or
  gets 409 ``idempotency_key_in_flight`` with ``Retry-After``;
- a key that is not 1 to 255 printable ASCII characters, or a key on a
  streamed request (a stream cannot be replayed as it was sent): 400.

Keys are scoped to the API key (and so to its organization): another key
sending the same ``Idempotency-Key`` makes a request of its own. The body is
compared as canonical JSON (keys sorted), so whitespace and key order do not
make two requests different.

What is kept: every answer except a retryable failure (429 and 5xx, which
includes "every provider failed"), so a retry can succeed, and deterministic
errors (a 400 from the provider, a PII block) come back the same. A request
the client abandons, or that fails inside the gateway, releases its key. The
claim itself (a "pending" record with the body's hash) is taken atomically
with ``SET NX PX`` in Redis (``REDIS_URL``; the main Redis, never the response
cache's, which may evict), or in this process's memory without Redis. A claim
whose worker died expires after ``MUXER_IDEMPOTENCY_PENDING_SECONDS``.

If Redis cannot be reached, a request with a key is refused with a 503
``idempotency_unavailable`` rather than answered without the guarantee the
client asked for; requests without a key are not affected.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
from django.conf import settings

from accounts.auth import KeyIdentity
from muxer_project import metrics
from muxer_project.errors import APIError, invalid_request
from muxer_project.redis import redis_state

logger = logging.getLogger(__name__)

HEADER = "Idempotency-Key"
REPLAYED = (b"idempotent-replayed", b"true")
_VALID_KEY = re.compile(r"[\x20-\x7e]{1,255}")
_PREFIX = "muxer:idem"
# Response headers kept with an answer and replayed; the rest (request id, CORS) belong to each request.
_KEPT_HEADER_PREFIXES = (b"x-muxer-", b"x-ratelimit-")
# Without Redis: the most records one process keeps; past it the oldest go first.
_LOCAL_ENTRIES = 10_000
# How often a duplicate looks whether its first request has finished: quickly at first, then less often.
_FIRST_POLL_SECONDS = 0.01
_MAX_POLL_SECONDS = 0.25

Send = Callable[[dict[str, Any]], Awaitable[None]]
Headers = list[tuple[bytes, bytes]]


def idempotency_key_from(raw: str | None, *, stream: bool) -> str | None:
    """The request's ``Idempotency-Key``, or None without one; a 400 for a malformed key or a streamed request."""
    if raw is None:
        return None
    if not _VALID_KEY.fullmatch(raw):
        raise invalid_request(f"'{HEADER}' must be 1 to 255 printable ASCII characters.", param=HEADER)
    if stream:
        raise invalid_request(
            f"'{HEADER}' applies to requests without 'stream': true; a stream cannot be replayed. "
            "Send the request without streaming, or without the header.",
            param=HEADER,
        )
    return raw


def request_hash(body: bytes) -> str:
    """A hash of the body as canonical JSON: the same request however it is spaced or its keys ordered."""
    return hashlib.sha256(orjson.dumps(orjson.loads(body), option=orjson.OPT_SORT_KEYS)).hexdigest()


def record_key(identity: KeyIdentity, idempotency_key: str) -> str:
    """The store's key: scoped to the organization and API key; the client's key is hashed (any printable text)."""
    digest = hashlib.sha256(idempotency_key.encode()).hexdigest()
    return f"{_PREFIX}:{identity.organization_id}:{identity.key_id}:{digest}"


# --- records -----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StoredResponse:
    """The response a key's first request got, as it is replayed."""

    request_hash: str
    status: int
    content_type: bytes
    headers: tuple[tuple[bytes, bytes], ...]
    body: bytes

    def to_bytes(self) -> bytes:
        # JSON metadata on one line (orjson writes no newlines), then the body's exact bytes.
        meta = {
            "state": "done",
            "hash": self.request_hash,
            "status": self.status,
            "content_type": self.content_type.decode("latin-1"),
            "headers": [[k.decode("latin-1"), v.decode("latin-1")] for k, v in self.headers],
        }
        return orjson.dumps(meta) + b"\n" + self.body

    def header(self, name: bytes) -> str:
        return next((v.decode("latin-1") for k, v in self.headers if k == name), "")


@dataclass(frozen=True, slots=True)
class Pending:
    """A key whose first request is still running."""

    request_hash: str


def parse_record(raw: bytes) -> StoredResponse | Pending:
    meta_raw, _, body = raw.partition(b"\n")
    meta = orjson.loads(meta_raw)
    if meta["state"] == "pending":
        return Pending(request_hash=meta["hash"])
    return StoredResponse(
        request_hash=meta["hash"],
        status=int(meta["status"]),
        content_type=meta["content_type"].encode("latin-1"),
        headers=tuple((k.encode("latin-1"), v.encode("latin-1")) for k, v in meta["headers"]),
        body=body,
    )


def pending_record(request_hash: str) -> bytes:
    """A claim: the body's hash, and a token of this request's own, so that only its owner replaces or releases
    it (a claim that expired and was taken again belongs to the new owner)."""
    return orjson.dumps({"state": "pending", "hash": request_hash, "token": uuid.uuid4().hex})


def kept(status: int) -> bool:
    """Whether a response is kept for replay: not a failure worth retrying (429, 5xx)."""
    return status < 500 and status != 429


# --- stores ------------------------------------------------------------------------------------------

# Take the key if it is free (1); else return what it holds (0 if it expired meanwhile: try again).
_CLAIM = """
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return 1 end
local current = redis.call('GET', KEYS[1])
if current then return current end
return 0
"""
# Replace the claim ARGV[1] with the answer ARGV[2], if the claim is still this request's.
_FINISH = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
  return 1
end
return 0
"""
# Delete the claim ARGV[1], if it is still this request's.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


def _ms(seconds: float) -> int:
    return max(1, int(seconds * 1000))


class RedisRecords:
    """Records shared by every process and instance."""

    async def claim(self, key: str, record: bytes, ttl: float) -> bytes | None:
        """Take ``key`` with ``record`` (None) unless it is taken; then what it holds."""
        from muxer_project.redis import async_redis

        while True:
            found = await async_redis().eval(_CLAIM, 1, key, record, _ms(ttl))
            if found == 1:
                return None
            if isinstance(found, bytes):
                return found

    async def finish(self, key: str, claim: bytes, record: bytes, ttl: float) -> bool:
        from muxer_project.redis import async_redis

        return bool(await async_redis().eval(_FINISH, 1, key, claim, record, _ms(ttl)))

    async def release(self, key: str, claim: bytes) -> bool:
        from muxer_project.redis import async_redis

        return bool(await async_redis().eval(_RELEASE, 1, key, claim))

    def forget(self) -> None:
        from muxer_project.redis import sync_redis

        client = sync_redis()
        stale = list(client.scan_iter(match=f"{_PREFIX}:*", count=1000))
        if stale:
            client.delete(*stale)


class MemoryRecords:
    """The same records in this process's memory (the embedded default): one process's requests only."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.lock = threading.Lock()
        # key -> (expires at, on the monotonic clock; record), oldest claim first.
        self.entries: OrderedDict[str, tuple[float, bytes]] = OrderedDict()

    def _live(self, key: str, now: float) -> bytes | None:
        entry = self.entries.get(key)
        if entry is None:
            return None
        if entry[0] <= now:
            del self.entries[key]
            return None
        return entry[1]

    def _make_room(self, now: float) -> None:
        if len(self.entries) < self.capacity:
            return
        for key in [k for k, (expires, _) in self.entries.items() if expires <= now]:
            del self.entries[key]
        while len(self.entries) >= self.capacity:
            self.entries.popitem(last=False)

    async def claim(self, key: str, record: bytes, ttl: float) -> bytes | None:
        with self.lock:
            now = time.monotonic()
            current = self._live(key, now)
            if current is not None:
                return current
            self._make_room(now)
            self.entries[key] = (now + ttl, record)
            return None

    async def finish(self, key: str, claim: bytes, record: bytes, ttl: float) -> bool:
        with self.lock:
            now = time.monotonic()
            if self._live(key, now) != claim:
                return False
            self.entries[key] = (now + ttl, record)
            return True

    async def release(self, key: str, claim: bytes) -> bool:
        with self.lock:
            if self._live(key, time.monotonic()) != claim:
                return False
            del self.entries[key]
            return True

    def forget(self) -> None:
        with self.lock:
            self.entries.clear()


_memory = MemoryRecords(_LOCAL_ENTRIES)
_redis = RedisRecords()


def _records() -> RedisRecords | MemoryRecords | None:
    """The records to use now; None while this process holds Redis to be down (muxer_project/outage.py), so that
    an outage costs one timeout, not one per request."""
    if not settings.REDIS_URL:
        return _memory
    return _redis if redis_state.usable() else None


def _store_failed(error: Exception, what: str) -> None:
    if settings.REDIS_URL:
        redis_state.failed("idempotency", error)  # counted, and logged once per outage
    else:
        metrics.store_errors.labels("memory", "idempotency").inc()
    logger.warning("idempotency store failed (%s): %s", type(error).__name__, what)


def forget_idempotency() -> None:
    """Drop every record (tests)."""
    _memory.forget()
    if settings.REDIS_URL:
        _redis.forget()


# --- claiming and keeping ----------------------------------------------------------------------------


@dataclass(slots=True)
class _Recorded:
    status: int = 0
    headers: Headers = field(default_factory=list)
    parts: list[bytes] = field(default_factory=list)


@dataclass(slots=True)
class Claim:
    """This request holds its key: it answers, and :meth:`settle` keeps the answer or frees the key."""

    key: str
    record: bytes
    request_hash: str
    held: bool = True

    async def settle(self, status: int, content_type: bytes, headers: Headers, body: bytes) -> None:
        """Keep the response the client is about to get, or release the key when it is worth retrying."""
        if not self.held:
            return
        if not kept(status):
            await self.release()
            return
        self.held = False
        stored = StoredResponse(
            request_hash=self.request_hash,
            status=status,
            content_type=content_type,
            headers=tuple((k, v) for k, v in headers if k.startswith(_KEPT_HEADER_PREFIXES)),
            body=body,
        )
        records = _records()
        if records is None:
            logger.warning(
                "idempotency: Redis is down; an answer was not kept and its key frees when the claim expires"
            )
            return
        try:
            await records.finish(self.key, self.record, stored.to_bytes(), settings.MUXER_IDEMPOTENCY_TTL_SECONDS)
        except Exception as exc:  # noqa: BLE001 - the answer still goes out; the claim expires on its own
            _store_failed(exc, "an answer was not kept; its key frees when the claim expires")

    async def release(self) -> None:
        """Free the key, so that a retry runs the request again; nothing once the answer is kept."""
        if not self.held:
            return
        self.held = False
        records = _records()
        if records is None:
            logger.warning("idempotency: Redis is down; a key was not released and frees when its claim expires")
            return
        try:
            await records.release(self.key, self.record)
        except Exception as exc:  # noqa: BLE001 - the claim expires on its own
            _store_failed(exc, "a key was not released; it frees when its claim expires")

    def recording(self, send: Send) -> Send:
        """``send`` that also settles this claim with the response, just before its last part goes out: a client
        that has its answer and sends the request again always finds it kept."""
        response = _Recorded()

        async def recording_send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                response.status = message["status"]
                response.headers = list(message.get("headers") or ())
            elif message["type"] == "http.response.body":
                response.parts.append(message.get("body", b""))
                if not message.get("more_body", False):
                    content_type = next((v for k, v in response.headers if k == b"content-type"), b"")
                    await self.settle(response.status, content_type, response.headers, b"".join(response.parts))
            await send(message)

        return recording_send


def _unavailable() -> APIError:
    return APIError(
        503,
        f"Requests with an {HEADER} cannot be checked right now; retry shortly with the same key.",
        type="server_error",
        code="idempotency_unavailable",
        headers={"retry-after": "1"},
    )


async def idempotency_claim(*, identity: KeyIdentity, idempotency_key: str, body: bytes) -> Claim | StoredResponse:
    """Claim the key for this request, or find the response of the request that claimed it first.

    A duplicate of a request still running waits for its answer, up to
    ``MUXER_IDEMPOTENCY_WAIT_SECONDS``; if the first request releases its key
    meanwhile (a failure worth retrying), the duplicate claims it and runs.
    Raises 422 for the same key with another body, 409 when the wait runs out,
    503 when the store cannot be reached.
    """
    key = record_key(identity, idempotency_key)
    digest = request_hash(body)
    record = pending_record(digest)
    deadline = time.monotonic() + settings.MUXER_IDEMPOTENCY_WAIT_SECONDS
    pause = _FIRST_POLL_SECONDS
    while True:
        records = _records()
        if records is None:
            raise _unavailable()
        try:
            found = await records.claim(key, record, settings.MUXER_IDEMPOTENCY_PENDING_SECONDS)
        except Exception as exc:  # noqa: BLE001 - any store failure refuses the request; retrying it is safe
            _store_failed(exc, f"refusing a request with an {HEADER}")
            raise _unavailable() from None
        if found is None:
            return Claim(key=key, record=record, request_hash=digest)
        existing = parse_record(found)
        if existing.request_hash != digest:
            raise APIError(
                422,
                f"This {HEADER} was already used with a different request body. "
                "Use a new key for a new request; a key can be reused only to retry the same request.",
                code="idempotency_key_reused",
                param=HEADER,
            )
        if isinstance(existing, StoredResponse):
            return existing
        left = deadline - time.monotonic()
        if left <= 0:
            raise APIError(
                409,
                f"A request with this {HEADER} is still being answered. Retry shortly with the same key "
                "to get its response.",
                code="idempotency_key_in_flight",
                param=HEADER,
                headers={"retry-after": "1"},
            )
        await asyncio.sleep(min(pause, left))
        pause = min(pause * 2, _MAX_POLL_SECONDS)
