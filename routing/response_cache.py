"""The exact-match response cache for chat completions.

An answer is served again only to the same organization, for the same request:
the normalised body (``request_fingerprint``: everything but the fields that do
not change an answer), the requested model, and what steers the route (the cost
cap, named fallbacks; for ``auto`` and the strategy aliases also the strategy,
quality floor and the key's routing preference). The key is a SHA-256 of all of
that with the organization's id, so no prompt text is ever part of it.

A request is looked up only when repeating its answer is safe: ``temperature``
is explicitly 0, or the client asks with ``X-Muxer-Cache: use``; ``X-Muxer-Cache:
bypass`` neither reads nor writes. Nothing is cached for an organization whose
``response_cache_ttl_seconds`` is 0, for ``n`` above 1, for errors, for streams
that failed or ended early, or for answers larger than
``MUXER_RESPONSE_CACHE_MAX_BYTES``. A streamed answer is assembled and kept as a
``chat.completion``, so a plain request can hit it and the other way round.

The lookup runs after the input limits, the PII guard and the rate limits, so it
keys the masked request, and what is kept is the answer as the provider sent it,
placeholders and all: a hit gets the originals of its own request put back.

A hit is served at $0 without a route, a budget hold or a provider call (the
rate limits still count it), as long as the key may use the model that gave the
answer; it gets a fresh completion id. The response says what happened in
``x-muxer-cache``: ``hit``, ``miss`` (looked up; the answer is kept) or
``bypass``; without the header the cache did not apply. A cascade keeps only an
answer its judge accepted. ``/v1/messages`` is not cached.

Entries live in Django's cache under the ``responses`` alias (Redis when
configured, else process memory). The cache is an optimisation: any failure of
its backend is logged and the request is answered as a miss; while the process
has marked the gateway's Redis down (``muxer_project/outage.py``) a cache on that
Redis is not asked at all.
"""

from __future__ import annotations

import hashlib
import logging
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson
from django.conf import settings
from django.core.cache import caches

from accounts.auth import KeyIdentity
from muxer_project.errors import invalid_request
from muxer_project.redis import redis_usable
from providers.adapters import Usage

from .schema import STRATEGY_ALIASES, ChatRequest, RoutingOptions

logger = logging.getLogger(__name__)

ALIAS = "responses"
HEADER = "X-Muxer-Cache"
# Fields that do not change an answer: two requests differing only in these share a cached response
# (and a usage record's request_fingerprint).
FINGERPRINT_IGNORES = frozenset(
    {"stream", "stream_options", "user", "metadata", "store", "safety_identifier", "prompt_cache_key"}
)
# Bumped when what an entry holds, or what its key covers, changes: old entries are then never read.
_FORMAT = 1

# What the response cache did for a request: answered it, missed (and may store the answer), was told to stay
# out of the way, or did not apply (not eligible, or off for the organization).
CacheResult = Literal["hit", "miss", "bypass", "off"]
CacheDirective = Literal["use", "bypass"]


def request_fingerprint(request: ChatRequest) -> str:
    """A hash of the request as the cache keys it: the body without the fields that do not change an answer."""
    cacheable = {k: v for k, v in request.payload.items() if k not in FINGERPRINT_IGNORES}
    cacheable["model"] = request.model
    return hashlib.sha256(orjson.dumps(cacheable, option=orjson.OPT_SORT_KEYS)).hexdigest()


def cache_directive(raw: str | None) -> CacheDirective | None:
    """The ``X-Muxer-Cache`` request header: ``use`` or ``bypass`` (any case); absent is None."""
    if raw is None:
        return None
    value = raw.strip().lower()
    if value == "use":
        return "use"
    if value == "bypass":
        return "bypass"
    raise invalid_request(f"'{HEADER}' must be 'use' or 'bypass'; got {raw[:40]!r}.", param=HEADER)


def cache_applies(request: ChatRequest, *, ttl: int, directive: CacheDirective | None) -> CacheResult | None:
    """Whether this request may be answered from (and its answer kept in) the cache: None if so, else the reason
    it is not (``bypass`` or ``off``)."""
    if ttl <= 0:
        return "off"
    if directive == "bypass":
        return "bypass"
    n = request.payload.get("n")
    if n is not None and n != 1:
        return "off"
    temperature = request.payload.get("temperature")
    if directive == "use" or (temperature is not None and temperature == 0):
        return None
    return "off"


def response_cache_key(
    *,
    identity: KeyIdentity,
    request: ChatRequest,
    fingerprint: str,
    options: RoutingOptions,
    fallbacks: tuple[str, ...],
) -> str:
    """The cache key of a request for one organization; the organization's id is readable, the rest a hash."""
    caps = [c for c in (request.options.max_cost_usd, options.max_cost_usd) if c is not None]
    route: dict[str, Any] = {
        # A cost cap turns into max_tokens, and fallbacks decide which model answers when the first fails.
        "max_cost": format(min(caps), "f") if caps else None,
        "fallbacks": list(fallbacks),
    }
    if request.routed:
        # The same resolution as the router's (routing/selection.py): the answer is the routed model's.
        route["strategy"] = (
            STRATEGY_ALIASES.get(request.model) or request.options.strategy or options.strategy or identity.strategy
        )
        route["quality_floor"] = request.options.quality_floor or options.quality_floor
        route["preference"] = identity.preference
    material = orjson.dumps([_FORMAT, identity.organization_id, fingerprint, route], option=orjson.OPT_SORT_KEYS)
    return f"chat:{identity.organization_id}:{hashlib.sha256(material).hexdigest()}"


# --- entries ----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CachedAnswer:
    """A kept answer: which model gave it, the ``chat.completion`` body as the provider sent it, its usage."""

    model: str
    provider: str
    body: dict[str, Any]
    usage: Usage = field(default_factory=Usage)

    def to_bytes(self) -> bytes:
        u = self.usage
        usage = [u.input_tokens, u.output_tokens, u.cached_input_tokens, u.reasoning_tokens, u.estimated]
        return orjson.dumps({"model": self.model, "provider": self.provider, "body": self.body, "usage": usage})

    @classmethod
    def from_bytes(cls, raw: bytes) -> CachedAnswer:
        data = orjson.loads(raw)
        i, o, c, r, estimated = data["usage"]
        body = data["body"]
        if not isinstance(body, dict) or not isinstance(data["model"], str) or not isinstance(data["provider"], str):
            raise ValueError("not a cached answer")
        return cls(
            model=data["model"],
            provider=data["provider"],
            body=body,
            usage=Usage(
                input_tokens=int(i),
                output_tokens=int(o),
                cached_input_tokens=int(c),
                reasoning_tokens=int(r),
                estimated=bool(estimated),
            ),
        )


def cache_entry(*, model: str, provider: str, body: dict[str, Any], usage: Usage) -> bytes | None:
    """An answer ready to keep (a copy: later changes to ``body`` do not reach it), or None when it must not be:
    not exactly one finished choice, or too large."""
    choices = body.get("choices")
    if not isinstance(choices, list) or len(choices) != 1:
        return None
    choice = choices[0]
    if not isinstance(choice, dict) or not isinstance(choice.get("message"), dict) or not choice.get("finish_reason"):
        return None
    raw = CachedAnswer(model=model, provider=provider, body=body, usage=usage).to_bytes()
    if len(raw) > settings.MUXER_RESPONSE_CACHE_MAX_BYTES:
        return None
    return raw


def fresh_completion(body: dict[str, Any]) -> None:
    """Give a served copy an id and time of its own, so clients that dedupe by id see a new completion."""
    body["id"] = f"chatcmpl-{uuid.uuid4().hex}"
    body["created"] = int(time.time())


def _backend_usable() -> bool:
    """False while the cache lives on the gateway's Redis and this process has marked that Redis down: skipping
    it costs a miss, where asking it would cost every eligible request a timeout."""
    return settings.MUXER_RESPONSE_CACHE_URL != settings.REDIS_URL or redis_usable()


async def cached_answer_get(key: str) -> CachedAnswer | None:
    if not _backend_usable():
        return None
    try:
        raw = await caches[ALIAS].aget(key)
    except Exception as exc:  # noqa: BLE001 - the cache is an optimisation; a broken one is a miss
        logger.warning("response cache read failed (%s); answering without it", type(exc).__name__)
        return None
    if raw is None:
        return None
    try:
        return CachedAnswer.from_bytes(raw)
    except (TypeError, ValueError, KeyError) as exc:
        logger.warning("response cache entry unreadable (%s); treated as a miss", type(exc).__name__)
        return None


async def cached_answer_store(key: str, entry: bytes, *, ttl: int) -> None:
    if not _backend_usable():
        return
    try:
        await caches[ALIAS].aset(key, entry, timeout=ttl)
    except Exception as exc:  # noqa: BLE001 - a lost entry only costs a later miss
        logger.warning("response cache write failed (%s); answer not kept", type(exc).__name__)


def forget_cached_answers() -> None:
    """Drop every kept answer (tests; an operator after changing what answers mean)."""
    cache = caches[ALIAS]
    delete_pattern = getattr(cache, "delete_pattern", None)
    if delete_pattern is not None:
        delete_pattern("*")  # only this alias's prefix: the rest of a shared Redis stays
    else:
        cache.clear()


# --- streamed answers -------------------------------------------------------------------------------


class AnswerAssembler:
    """Builds the ``chat.completion`` a stream of ``chat.completion.chunk`` objects adds up to.

    Covers what the gateway replays (role, content, refusal, tool calls, a legacy
    function call, finish reason). Anything else in a delta (audio, annotations,
    logprobs, a second choice) makes the assembly ``lossy``: kept whole it would
    not be what the client was sent, so it is not cached.
    """

    _TEXT_KEYS = ("content", "refusal")

    def __init__(self) -> None:
        self.lossy = False
        self._head: dict[str, Any] | None = None
        self._texts: dict[str, list[str]] = {"content": [], "refusal": []}
        self._calls: dict[int, dict[str, Any]] = {}
        self._function: dict[str, str] | None = None
        self._finish_reason: str | None = None

    def feed(self, chunk: dict[str, Any]) -> None:
        choices = chunk.get("choices")
        if not isinstance(choices, list):
            return
        if self._head is None:
            self._head = {k: chunk.get(k) for k in ("id", "created", "model", "system_fingerprint")}
        for choice in choices:
            if not isinstance(choice, dict) or choice.get("index", 0) != 0 or choice.get("logprobs"):
                self.lossy = True
                continue
            delta = choice.get("delta")
            for key, value in (delta if isinstance(delta, dict) else {}).items():
                if value is None or key == "role":
                    continue
                if key in self._TEXT_KEYS and isinstance(value, str):
                    self._texts[key].append(value)
                elif key == "tool_calls" and isinstance(value, list):
                    self._feed_calls(value)
                elif key == "function_call" and isinstance(value, dict):
                    function = self._function = self._function or {"name": "", "arguments": ""}
                    function["name"] += value.get("name") or ""
                    function["arguments"] += value.get("arguments") or ""
                else:
                    self.lossy = True
            if choice.get("finish_reason"):
                self._finish_reason = choice["finish_reason"]

    def _feed_calls(self, calls: list[Any]) -> None:
        for position, call in enumerate(calls):
            if not isinstance(call, dict):
                self.lossy = True
                continue
            index = call.get("index", position)
            kept = self._calls.setdefault(
                index, {"id": None, "type": "function", "function": {"name": "", "arguments": ""}}
            )
            if call.get("id"):
                kept["id"] = call["id"]
            if call.get("type"):
                kept["type"] = call["type"]
            function = call.get("function") or {}
            kept["function"]["name"] += function.get("name") or ""
            kept["function"]["arguments"] += function.get("arguments") or ""

    @property
    def finished(self) -> bool:
        return self._finish_reason is not None

    def completion(self, *, model: str, usage: dict[str, Any] | None) -> dict[str, Any]:
        """The answer as one ``chat.completion`` body."""
        head = self._head or {}
        content = self._texts["content"]
        message: dict[str, Any] = {"role": "assistant", "content": "".join(content) if content else None}
        if self._texts["refusal"]:
            message["refusal"] = "".join(self._texts["refusal"])
        if self._calls:
            message["tool_calls"] = [self._calls[i] for i in sorted(self._calls)]
        if self._function is not None:
            message["function_call"] = self._function
        body: dict[str, Any] = {
            "id": head.get("id"),
            "object": "chat.completion",
            "created": head.get("created"),
            "model": head.get("model") or model,
            "system_fingerprint": head.get("system_fingerprint"),
            "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": self._finish_reason}],
        }
        if usage is not None:
            body["usage"] = usage
        return body
