"""Retry timing and the circuit breaker, per provider and model.

The breaker's state lives in Redis so every instance sees a model trip at
once (in process memory on the embedded default). Each model's breaker is
closed, open or half-open:

- it opens after ``failure_threshold`` consecutive failures (counted across
  instances, with no success on any instance in between), or when this
  process saw an error rate of ``error_rate`` or
  more over at least ``min_requests`` calls in the last ``window_seconds``;
- after ``cooldown_seconds`` open, one caller (across all instances) is let
  through as a probe: success closes the breaker, failure re-opens it.

Only provider trouble counts: retryable errors and rejected credentials, not
a client's bad request.

While Redis is down (``muxer_project/outage.py``) each process keeps its
breakers in its own memory, as on the embedded default, and goes back to the
shared state once Redis answers.
"""

from __future__ import annotations

import contextlib
import random
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

from django.conf import settings

from muxer_project.redis import REDIS_ERRORS, async_redis, redis_state, redis_usable

from .adapters.base import ProviderError
from .catalog import CatalogModel

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"
_KEY = "muxer:cb:{}"
_PROBE_KEY = "muxer:cb-probe:{}"
_STATE_CACHE_SECONDS = 1.0
# How often an instance notes a success in Redis; the failure count treats successes this close as "between".
_SUCCESS_NOTE_SECONDS = 0.5

# A failure counts as consecutive only if no instance has succeeded since the previous one (each instance
# notes its latest success in 'last_ok', at most every _SUCCESS_NOTE_SECONDS): failures of some requests
# among many successes are the error-rate rule's business, not a sign the model is down.
_RECORD_FAILURE = """
local failures = redis.call('HINCRBY', KEYS[1], 'failures', 1)
local state = redis.call('HGET', KEYS[1], 'state') or 'closed'
local last_ok = tonumber(redis.call('HGET', KEYS[1], 'last_ok') or '0')
local last_failure = tonumber(redis.call('HGET', KEYS[1], 'last_failure') or '0')
redis.call('HSET', KEYS[1], 'last_failure', ARGV[2])
if state == 'closed' and failures > 1 and last_ok >= last_failure - tonumber(ARGV[4]) then
  failures = 1
  redis.call('HSET', KEYS[1], 'failures', 1)
end
if state ~= 'closed' or failures >= tonumber(ARGV[1]) or ARGV[3] == '1' then
  redis.call('HSET', KEYS[1], 'state', 'open', 'opened_at', ARGV[2])
  redis.call('DEL', KEYS[2])
  state = 'open'
end
redis.call('EXPIRE', KEYS[1], 86400)
return state
"""


def backoff_seconds(attempt: int, retry_after: str | None) -> float:
    """Exponential backoff with full jitter; a provider's Retry-After (seconds) is a floor."""
    ceiling = min(settings.MUXER_RETRY_MAX_DELAY_SECONDS, settings.MUXER_RETRY_BASE_DELAY_SECONDS * 2**attempt)
    delay = random.uniform(0, ceiling)  # noqa: S311 - jitter, not secrecy
    if retry_after:
        # An HTTP date is rare from LLM APIs; then our own backoff stands.
        with contextlib.suppress(ValueError):
            delay = max(delay, float(retry_after))
    return delay


def counts_against_provider(error: ProviderError) -> bool:
    """Provider trouble (retryable, or our credentials refused) rather than a bad request."""
    return error.retryable or error.status >= 500


@dataclass(frozen=True, slots=True)
class BreakerState:
    state: str
    failures: int
    opened_at: float


def _from_hash(raw: Any) -> BreakerState:
    return BreakerState(
        state=bytes(raw.get(b"state", b"closed")).decode(),
        failures=int(raw.get(b"failures", 0)),
        opened_at=float(raw.get(b"opened_at", 0)),
    )


def breaker_key(model: CatalogModel) -> str:
    return f"{model.provider}/{model.name}"


class CircuitBreaker:
    def __init__(self) -> None:
        self._cache: dict[str, tuple[float, BreakerState]] = {}
        self._memory: dict[str, BreakerState] = {}
        self._memory_probes: dict[str, float] = {}
        self._windows: dict[str, deque[tuple[float, bool]]] = {}
        self._success_noted: dict[str, float] = {}

    # --- storage -------------------------------------------------------------
    async def _load(self, key: str) -> BreakerState:
        now = time.monotonic()
        hit = self._cache.get(key)
        if hit is not None and now - hit[0] < _STATE_CACHE_SECONDS:
            return hit[1]
        state = None
        if redis_usable():
            with redis_state.absorbing("circuit_breaker", REDIS_ERRORS):
                state = _from_hash(await async_redis().hgetall(_KEY.format(key)))
        if state is None:
            state = self._memory.get(key, BreakerState(CLOSED, 0, 0.0))
        self._cache[key] = (now, state)
        return state

    async def _claim_probe(self, key: str, cooldown: float) -> bool:
        if redis_usable():
            with redis_state.absorbing("circuit_breaker", REDIS_ERRORS):
                return bool(await async_redis().set(_PROBE_KEY.format(key), b"1", nx=True, px=int(cooldown * 1000)))
        now = time.time()
        if self._memory_probes.get(key, 0.0) > now:
            return False
        self._memory_probes[key] = now + cooldown
        return True

    # --- decisions -----------------------------------------------------------
    def known_unavailable(self, model: CatalogModel) -> bool:
        """What this process last saw: the model's circuit is open and cooling down. No I/O, for routers."""
        hit = self._cache.get(breaker_key(model))
        if hit is None or hit[1].state == CLOSED:
            return False
        return time.time() - hit[1].opened_at < settings.MUXER_BREAKER_COOLDOWN_SECONDS

    async def allow(self, model: CatalogModel) -> bool:
        key = breaker_key(model)
        state = await self._load(key)
        if state.state == CLOSED:
            return True
        cooldown = settings.MUXER_BREAKER_COOLDOWN_SECONDS
        if time.time() - state.opened_at < cooldown:
            return False
        return await self._claim_probe(key, cooldown)

    async def record(self, model: CatalogModel, *, ok: bool) -> None:
        key = breaker_key(model)
        now = time.time()
        force_open = self._observe(key, now, ok)
        if ok:
            cached = self._cache.get(key)
            # Nothing to reset when this process last saw it closed and clean; still, now and then, tell the
            # other instances a call succeeded, so their failures are not taken for consecutive ones.
            if cached is not None and cached[1].state == CLOSED and cached[1].failures == 0:
                await self._note_success(key, now)
                return
            await self._reset(key)
            return
        threshold = settings.MUXER_BREAKER_FAILURE_THRESHOLD
        state_name = None
        if redis_usable():
            with redis_state.absorbing("circuit_breaker", REDIS_ERRORS):
                raw_state = await async_redis().eval(
                    _RECORD_FAILURE,
                    2,
                    _KEY.format(key),
                    _PROBE_KEY.format(key),
                    threshold,
                    now,
                    int(force_open),
                    _SUCCESS_NOTE_SECONDS * 2,
                )
                state_name = raw_state.decode() if isinstance(raw_state, bytes) else str(raw_state)
        if state_name is None:
            current = self._memory.get(key, BreakerState(CLOSED, 0, 0.0))
            failures = current.failures + 1
            tripped = current.state != CLOSED or failures >= threshold or force_open
            self._memory[key] = BreakerState(OPEN if tripped else CLOSED, failures, now if tripped else 0.0)
            state_name = self._memory[key].state
        if state_name == OPEN:
            # Remember it opened, so routers (which do no I/O) steer around it from the next request on.
            self._cache[key] = (time.monotonic(), BreakerState(OPEN, threshold, now))
            self._windows.pop(key, None)
        else:
            self._cache.pop(key, None)

    async def _note_success(self, key: str, now: float) -> None:
        if not redis_usable() or now - self._success_noted.get(key, 0.0) < _SUCCESS_NOTE_SECONDS:
            return
        self._success_noted[key] = now
        with redis_state.absorbing("circuit_breaker", REDIS_ERRORS):
            await async_redis().hset(_KEY.format(key), "last_ok", now)

    async def _reset(self, key: str) -> None:
        done = False
        if redis_usable():
            with redis_state.absorbing("circuit_breaker", REDIS_ERRORS):
                client = async_redis()
                await client.hset(
                    _KEY.format(key), mapping={"state": CLOSED, "failures": 0, "opened_at": 0, "last_ok": time.time()}
                )
                await client.delete(_PROBE_KEY.format(key))
                done = True
        if not done:
            self._memory[key] = BreakerState(CLOSED, 0, 0.0)
            self._memory_probes.pop(key, None)
        self._cache[key] = (time.monotonic(), BreakerState(CLOSED, 0, 0.0))

    def _observe(self, key: str, now: float, ok: bool) -> bool:
        """Track this process's recent outcomes; True when the error rate should trip the breaker."""
        window = self._windows.setdefault(key, deque())
        window.append((now, ok))
        horizon = now - settings.MUXER_BREAKER_WINDOW_SECONDS
        while window and window[0][0] < horizon:
            window.popleft()
        if ok or len(window) < settings.MUXER_BREAKER_MIN_REQUESTS:
            return False
        failures = sum(1 for _ts, good in window if not good)
        return failures / len(window) >= settings.MUXER_BREAKER_ERROR_RATE

    def forget(self) -> None:
        self._cache.clear()
        self._success_noted.clear()
        self._memory.clear()
        self._memory_probes.clear()
        self._windows.clear()


class LatencyTracker:
    """Each model's recent response time in this process (exponentially weighted), for the speed preference:
    until the whole answer for a plain call, until the first chunk for a stream."""

    def __init__(self, weight: float = 0.2) -> None:
        self.weight = weight
        self._seen: dict[str, float] = {}

    def record(self, model: CatalogModel, milliseconds: float) -> None:
        key = breaker_key(model)
        before = self._seen.get(key)
        self._seen[key] = milliseconds if before is None else before + self.weight * (milliseconds - before)

    def get(self, model: CatalogModel) -> float | None:
        return self._seen.get(breaker_key(model))

    def forget(self) -> None:
        self._seen.clear()


latency = LatencyTracker()


def describe(state: BreakerState, now: float | None = None) -> str:
    if state.state == CLOSED:
        return CLOSED
    now = time.time() if now is None else now
    return OPEN if now - state.opened_at < settings.MUXER_BREAKER_COOLDOWN_SECONDS else HALF_OPEN


def open_circuits() -> dict[str, str]:
    """Breakers that are not closed, for readiness and the admin (sync; Redis only)."""
    if not settings.REDIS_URL:
        return {key: describe(state) for key, state in breaker._memory.items() if state.state != CLOSED}
    from muxer_project.redis import sync_redis

    client = sync_redis()
    found: dict[str, str] = {}
    for raw_key in client.scan_iter(match=_KEY.format("*"), count=500):
        state = _from_hash(client.hgetall(raw_key))
        if state.state != CLOSED:
            found[raw_key.decode().removeprefix("muxer:cb:")] = describe(state)
    return found


breaker = CircuitBreaker()
