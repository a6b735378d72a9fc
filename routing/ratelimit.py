"""Requests and tokens per minute, per API key, team and organization, atomic across every instance.

Each limit is a GCRA (generic cell rate algorithm) meter: one Redis key holds
the "theoretical arrival time", and a request costing ``n`` cells moves it by
``n`` emission intervals (a minute divided by the limit). It is admitted when
the new arrival time lies no more than a minute ahead of now, which allows a
burst of the whole minute's allowance and no more. One Lua script checks
every limit that applies and moves them all, or none; it reads Redis's clock,
so instances with skewed clocks agree. Without Redis (the embedded default)
the same arithmetic runs in process memory.

If Redis fails, ``MUXER_RATELIMIT_FAIL_OPEN`` decides. True (the default):
each process applies the same limits itself, in its own memory, until Redis
answers again, so with N processes up to N times a limit can be admitted during
an outage, never an unlimited number. False: the request is refused with a 503
(``rate_limit_unavailable``). The failure marks Redis down for the process
(``muxer_project/outage.py``), so later requests take that path at once instead
of each waiting on a timeout. When Redis comes back with its data lost, the
windows simply start again.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

from django.conf import settings

from accounts.auth import KeyIdentity
from muxer_project import metrics
from muxer_project.errors import APIError
from muxer_project.redis import redis_state

logger = logging.getLogger(__name__)

PERIOD_MS = 60_000
SCOPES = ("key", "team", "org")

_GCRA = """
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
local period = tonumber(ARGV[1])
local n = #KEYS
local tats = {}
local before = {}
local wait = 0
local refused = 0
for i = 1, n do
  local limit = tonumber(ARGV[i * 2])
  local cost = tonumber(ARGV[i * 2 + 1])
  local interval = period / limit
  local tat = tonumber(redis.call('GET', KEYS[i]) or '0')
  if tat < now then tat = now end
  before[i] = tat
  local new_tat = tat + cost * interval
  local allow_at = new_tat - period
  if allow_at > now then
    if allow_at - now > wait then
      wait = allow_at - now
      refused = i
    end
    tats[i] = tat
  else
    tats[i] = new_tat
  end
end
local out = {refused, tostring(wait)}
for i = 1, n do
  if refused == 0 then
    redis.call('SET', KEYS[i], tostring(tats[i]), 'PX', math.ceil(tats[i] - now) + 1000)
    out[#out + 1] = tostring(tats[i] - now)
  else
    out[#out + 1] = tostring(before[i] - now)
  end
end
return out
"""


@dataclass(frozen=True, slots=True)
class Meter:
    """One limit that applies to a request: its key, its per-minute allowance and what the request costs."""

    key: str
    kind: str  # "requests" or "tokens"
    limit: int
    cost: int


@dataclass(frozen=True, slots=True)
class Verdict:
    admitted: bool
    wait_ms: float
    # For each meter, how far its arrival time is ahead of now, in ms, after this request.
    ahead_ms: tuple[float, ...]
    refused: Meter | None = None


def meters_for(identity: KeyIdentity, tokens: int) -> list[Meter]:
    ids = (identity.key_id, identity.team_id, identity.organization_id)
    found = []
    for scope, owner, rpm, tpm in zip(SCOPES, ids, identity.rpm_limits, identity.tpm_limits, strict=True):
        if owner is None:
            continue
        if rpm:
            found.append(Meter(f"muxer:rl:{scope}:{owner}:rpm", "requests", rpm, 1))
        if tpm:
            found.append(Meter(f"muxer:rl:{scope}:{owner}:tpm", "tokens", tpm, tokens))
    return found


class MemoryMeters:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.tats: dict[str, float] = {}

    async def check(self, meters: list[Meter]) -> Verdict:
        with self.lock:
            now = time.time() * 1000
            proposed, before, wait, refused = [], [], 0.0, None
            for meter in meters:
                tat = max(self.tats.get(meter.key, 0.0), now)
                before.append(tat)
                new_tat = tat + meter.cost * PERIOD_MS / meter.limit
                allow_at = new_tat - PERIOD_MS
                if allow_at > now:
                    if allow_at - now > wait:
                        wait, refused = allow_at - now, meter
                    proposed.append(tat)
                else:
                    proposed.append(new_tat)
            if refused is not None:
                return Verdict(False, wait, tuple(t - now for t in before), refused)
            for meter, tat in zip(meters, proposed, strict=True):
                self.tats[meter.key] = tat
            return Verdict(True, 0.0, tuple(t - now for t in proposed))

    def forget(self) -> None:
        with self.lock:
            self.tats.clear()


class RedisMeters:
    async def check(self, meters: list[Meter]) -> Verdict:
        from muxer_project.redis import async_redis

        args: list[int] = [PERIOD_MS]
        for meter in meters:
            args += [meter.limit, meter.cost]
        raw = await async_redis().eval(_GCRA, len(meters), *(m.key for m in meters), *args)
        refused = int(raw[0])
        values = [float(v.decode() if isinstance(v, bytes) else v) for v in raw[1:]]
        return Verdict(refused == 0, values[0], tuple(values[1:]), meters[refused - 1] if refused else None)


_memory = MemoryMeters()
_redis = RedisMeters()


def forget_rate_limits() -> None:
    _memory.forget()


async def admit(identity: KeyIdentity, tokens: int) -> list[tuple[bytes, bytes]]:
    """Count the request against every limit that applies; returns the ``x-ratelimit-*`` headers, or raises a 429
    (with ``Retry-After``) when a limit is spent."""
    meters = meters_for(identity, tokens)
    if not meters:
        return []
    verdict = await _check(meters)
    if verdict is None:
        return []
    headers = _headers(meters, verdict)
    if not verdict.admitted:
        assert verdict.refused is not None
        meter = verdict.refused
        too_big = meter.cost > meter.limit
        retry_after = max(1, int(-(-verdict.wait_ms // 1000)))
        scope = meter.key.split(":")[2]
        message = (
            f"This request needs {meter.cost} tokens, more than the {scope} limit of {meter.limit} tokens per minute."
            if too_big
            else f"Rate limit reached for the {scope}: {meter.limit} {meter.kind} per minute. Retry in {retry_after} s."
        )
        raise APIError(
            429,
            message,
            type=meter.kind,
            code="rate_limit_exceeded",
            headers={"retry-after": str(retry_after), **{k.decode(): v.decode() for k, v in headers}},
        )
    return headers


async def _check(meters: list[Meter]) -> Verdict | None:
    """The verdict from Redis, or while it is down this process's own (None: admit without counting)."""
    if not settings.REDIS_URL:
        try:
            return await _memory.check(meters)
        except Exception as exc:  # noqa: BLE001 - any store failure takes the configured path
            metrics.store_errors.labels("memory", "rate_limit").inc()
            logger.warning("rate limit store failed (%s)", type(exc).__name__)
            if not settings.MUXER_RATELIMIT_FAIL_OPEN:
                raise _unavailable() from None
            return None
    if redis_state.usable():
        try:
            return await _redis.check(meters)
        except Exception as exc:  # noqa: BLE001 - any store failure takes the configured path
            redis_state.failed("rate_limit", exc)
    redis_state.fallback("rate_limit")
    if not settings.MUXER_RATELIMIT_FAIL_OPEN:
        raise _unavailable()
    try:
        return await _memory.check(meters)
    except Exception as exc:  # noqa: BLE001 - the fallback failing too: fail open is still the setting
        logger.warning("rate limit fallback failed (%s); admitting without limits", type(exc).__name__)
        return None


def _unavailable() -> APIError:
    """Fail closed: no store can count the request."""
    return APIError(
        503, "Rate limits cannot be checked right now; retry shortly.", type="server_error",
        code="rate_limit_unavailable", headers={"retry-after": "1"},
    )  # fmt: skip


def _duration(ms: float) -> str:
    """OpenAI's reset format: ``6ms``, ``1.5s``, ``1m2s``."""
    if ms < 1000:
        return f"{max(0, int(ms))}ms"
    seconds = ms / 1000
    if seconds < 60:
        return f"{seconds:.3g}s"
    return f"{int(seconds // 60)}m{int(seconds % 60)}s"


def _headers(meters: list[Meter], verdict: Verdict) -> list[tuple[bytes, bytes]]:
    """The tightest limit of each kind: its size, what is left of it and when it is whole again."""
    headers: list[tuple[bytes, bytes]] = []
    for kind in ("requests", "tokens"):
        tightest: tuple[int, int, float] | None = None
        for meter, ahead in zip(meters, verdict.ahead_ms, strict=True):
            if meter.kind != kind:
                continue
            remaining = max(0, int((PERIOD_MS - ahead) * meter.limit // PERIOD_MS))
            if tightest is None or remaining < tightest[1]:
                tightest = (meter.limit, remaining, ahead)
        if tightest is not None:
            limit, remaining, ahead = tightest
            headers += [
                (f"x-ratelimit-limit-{kind}".encode(), str(limit).encode()),
                (f"x-ratelimit-remaining-{kind}".encode(), str(remaining).encode()),
                (f"x-ratelimit-reset-{kind}".encode(), _duration(ahead).encode()),
            ]
    return headers
