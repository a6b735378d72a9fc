"""Budgets enforced at the gateway: one atomic reservation per request, settled to the actual cost.

Each budget has a counter per period (``spent`` and ``reserved``, in units of
1e-10 USD, the ledger's precision). Before a provider is called, one Lua
script reserves the request's worst-case cost against every budget that
applies, or refuses if a hard limit would be crossed; nothing is reserved
unless all fit. After the call the reservation is settled to the actual cost
(or released, when nothing was spent). A reservation left by a worker that
died expires after ``MUXER_BUDGET_RESERVATION_SECONDS`` and its amount is
released by the next reservation that runs.

The PostgreSQL usage ledger is the truth: a counter that is missing (first
use in a period, or Redis lost its data) is rebuilt from the ledger (plus the
usage still queued on the stream) before the reservation, and the
``budget_counters_reconcile`` task corrects drift. Without Redis (the
embedded default) the same logic runs in process memory.

While Redis is down (``muxer_project/outage.py``), reservations are checked
against the ledger by each process (:class:`LedgerCounters`), and what could
not be told to Redis is kept (:class:`Unrecorded`) and told to it before the
process uses it again (``_recover_counters``).

The worst case is a true upper bound, so spend cannot pass a hard limit: the
prompt counts one token per byte (no tokenizer yields more), and the answer
its ``max_tokens`` (else the organization's cap, which is then sent to the
provider, else the model's maximum output).
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
import zoneinfo
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import ROUND_CEILING, Decimal
from typing import Any

import orjson
from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import DatabaseError, close_old_connections
from django.db.models import Q, Sum

from muxer_project.cached_loader import CachedLoader
from muxer_project.errors import APIError
from muxer_project.redis import REDIS_ERRORS, redis_state
from muxer_project.singleflight import SingleFlight
from providers.catalog import CatalogModel

from .models import Budget, BudgetPeriod, BudgetScope, UsageRecord

logger = logging.getLogger(__name__)

UNITS_PER_USD = 10**10
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_COUNTER = "muxer:budget:{}:{}"
_RESERVATION = "muxer:budget:resv:{}"
_EXPIRY = "muxer:budget:resv-expiry"
# Tokens assumed for an image part in the worst case; providers bill a large image at about this.
IMAGE_TOKENS = 2_000
TOKENS_PER_MESSAGE = 8


def to_units(usd: Decimal, *, up: bool = False) -> int:
    scaled = usd * UNITS_PER_USD
    return int(scaled.to_integral_value(rounding=ROUND_CEILING)) if up else int(scaled)


def from_units(units: int) -> Decimal:
    return Decimal(units) / UNITS_PER_USD


# --- periods -----------------------------------------------------------------------


def _zone(name: str) -> zoneinfo.ZoneInfo:
    try:
        return zoneinfo.ZoneInfo(name or "UTC")
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        return zoneinfo.ZoneInfo("UTC")


def _local_midnight(day: date, zone: zoneinfo.ZoneInfo) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=zone).astimezone(UTC)


def period_bounds(period: str, tz_name: str, now: datetime) -> tuple[datetime, datetime | None]:
    """The period containing ``now``, as UTC instants of the local calendar's boundaries."""
    if period == BudgetPeriod.LIFETIME:
        return EPOCH, None
    zone = _zone(tz_name)
    today = now.astimezone(zone).date()
    if period == BudgetPeriod.DAILY:
        first, after = today, today + timedelta(days=1)
    elif period == BudgetPeriod.WEEKLY:
        first = today - timedelta(days=today.weekday())
        after = first + timedelta(days=7)
    elif period == BudgetPeriod.MONTHLY:
        first = today.replace(day=1)
        after = (first + timedelta(days=32)).replace(day=1)
    elif period == BudgetPeriod.YEARLY:
        first, after = today.replace(month=1, day=1), today.replace(year=today.year + 1, month=1, day=1)
    else:
        raise ValueError(f"unknown budget period {period!r}")
    return _local_midnight(first, zone), _local_midnight(after, zone)


# --- the rules a request is checked against ---------------------------------------------


@dataclass(frozen=True, slots=True)
class BudgetRule:
    """A budget as the hot path holds it."""

    id: int
    organization_id: int
    scope: str
    target_id: int | None
    model: str
    period: str
    limit_units: int
    hard: bool
    thresholds: tuple[int, ...]
    tz_name: str

    def applies_to(self, *, team_id: int | None, api_key_id: int, user_id: int | None) -> bool:
        if self.scope == BudgetScope.ORGANIZATION:
            return True
        wanted = {BudgetScope.TEAM: team_id, BudgetScope.API_KEY: api_key_id, BudgetScope.USER: user_id}
        return self.target_id is not None and wanted.get(BudgetScope(self.scope)) == self.target_id

    def window(self, now: datetime) -> tuple[datetime, datetime | None]:
        return period_bounds(self.period, self.tz_name, now)

    def counter_key(self, period_start: datetime) -> str:
        return _COUNTER.format(self.id, int(period_start.timestamp()))


def rule_from(budget: Budget, tz_name: str) -> BudgetRule:
    target = {
        BudgetScope.ORGANIZATION: None,
        BudgetScope.TEAM: budget.team_id,
        BudgetScope.API_KEY: budget.api_key_id,
        BudgetScope.USER: budget.user_id,
    }[BudgetScope(budget.scope)]
    return BudgetRule(
        id=budget.pk,
        organization_id=budget.organization_id,
        scope=budget.scope,
        target_id=target,
        model=budget.model,
        period=budget.period,
        limit_units=to_units(budget.limit_usd),
        hard=budget.hard_limit,
        thresholds=tuple(sorted(int(t) for t in budget.alert_thresholds or ())),
        tz_name=tz_name,
    )


@dataclass(frozen=True, slots=True)
class OrganizationBudgets:
    rules: tuple[BudgetRule, ...]
    max_output_tokens_cap: int | None


def _load_rules(organization_id: int) -> OrganizationBudgets:
    from accounts.models import Organization

    org = Organization.objects.filter(pk=organization_id).only("timezone", "max_output_tokens_cap").first()
    if org is None:
        return OrganizationBudgets((), None)
    budgets = Budget.objects.filter(organization_id=organization_id, enabled=True)
    return OrganizationBudgets(tuple(rule_from(b, org.timezone) for b in budgets), org.max_output_tokens_cap)


_rules: CachedLoader[int, OrganizationBudgets] = CachedLoader(
    "budgets", _load_rules, lambda: settings.MUXER_BUDGET_CACHE_SECONDS
)


async def organization_budgets(organization_id: int) -> OrganizationBudgets:
    """The organization's enabled budgets, cached in process for ``MUXER_BUDGET_CACHE_SECONDS``."""
    return await _rules.get(organization_id)


def forget_budget_rules() -> None:
    _rules.forget()


# --- the ledger --------------------------------------------------------------------------


def ledger_filter(rule: BudgetRule, start: datetime, end: datetime | None) -> Q:
    query = Q(organization_id=rule.organization_id, created_at__gte=start)
    if end is not None:
        query &= Q(created_at__lt=end)
    if rule.scope == BudgetScope.TEAM:
        query &= Q(team_id=rule.target_id)
    elif rule.scope == BudgetScope.API_KEY:
        query &= Q(api_key_id=rule.target_id)
    elif rule.scope == BudgetScope.USER:
        query &= Q(user_id=rule.target_id)
    if rule.model:
        query &= Q(model=rule.model)
    return query


def ledger_spent_units(rule: BudgetRule, start: datetime, end: datetime | None) -> int:
    return to_units(_ledger_total(rule, start, end))


def _ledger_total(rule: BudgetRule, start: datetime, end: datetime | None) -> Decimal:
    total = UsageRecord.objects.filter(ledger_filter(rule, start, end)).aggregate(total=Sum("cost_usd"))["total"]
    return total or Decimal(0)


# The most usage events read off the stream to count what is on its way to the ledger.
_QUEUED_SCAN_LIMIT = 10_000
_LEDGER_PLACES = Decimal("1e-10")


def queued_usage() -> list[dict[str, Any]] | None:
    """Usage events on the Redis stream whose rows are not in the ledger yet (None: more than can be read).

    Read it before summing the ledger: an event written in between then counts
    twice (too much, until the next reconcile), never not at all.
    """
    if not settings.REDIS_URL:
        return []
    from muxer_project.redis import sync_redis

    client = sync_redis()
    stream = settings.MUXER_USAGE_STREAM
    if int(client.xlen(stream)) > _QUEUED_SCAN_LIMIT:
        return None
    events: list[dict[str, Any]] = []
    after = "-"
    while True:
        batch: Any = client.xrange(stream, min=after, count=1000)
        events.extend(orjson.loads(fields[b"e"]) for _id, fields in batch if b"e" in fields)
        if len(batch) < 1000:
            break
        after = "(" + batch[-1][0].decode()
    request_ids = sorted({event["request_id"] for event in events})
    written: set[tuple[str, int]] = set()
    for at in range(0, len(request_ids), 1000):
        rows = UsageRecord.objects.filter(request_id__in=request_ids[at : at + 1000])
        written.update(rows.values_list("request_id", "attempt"))
    return [event for event in events if (event["request_id"], event.get("attempt", 1)) not in written]


def _counts_toward(rule: BudgetRule, event: dict[str, Any], start: datetime, end: datetime | None) -> bool:
    """``ledger_filter`` for a usage event not written yet."""
    created = event["created_at"]
    if event["organization_id"] != rule.organization_id or created < start.timestamp():
        return False
    if end is not None and created >= end.timestamp():
        return False
    owner = {
        BudgetScope.TEAM: event["team_id"],
        BudgetScope.API_KEY: event["api_key_id"],
        BudgetScope.USER: event["user_id"],
    }.get(BudgetScope(rule.scope))
    if rule.scope != BudgetScope.ORGANIZATION and owner != rule.target_id:
        return False
    return not rule.model or event["model"] == rule.model


def settled_units(rule: BudgetRule, start: datetime, end: datetime | None, queued: list[dict[str, Any]]) -> int:
    """What the budget's period has settled: the ledger's sum plus the ``queued`` usage (``queued_usage``,
    read first) it counts."""
    total = _ledger_total(rule, start, end)
    for event in queued:
        if _counts_toward(rule, event, start, end):
            total += Decimal(event["cost_usd"]).quantize(_LEDGER_PLACES)
    return to_units(total)


# --- counters: Redis, or process memory --------------------------------------------------

_RESERVE = """
local now = tonumber(ARGV[1])
local stale = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, 20)
for _, id in ipairs(stale) do
  local rkey = ARGV[5] .. id
  local held = redis.call('HGETALL', rkey)
  for i = 1, #held, 2 do
    if redis.call('EXISTS', held[i]) == 1 then
      redis.call('HINCRBY', held[i], 'reserved', -tonumber(held[i + 1]))
    end
  end
  redis.call('DEL', rkey)
  redis.call('ZREM', KEYS[1], id)
end
local n = #KEYS - 2
local tightest = nil
for i = 1, n do
  local key = KEYS[i + 2]
  if redis.call('HEXISTS', key, 'spent') == 0 then
    return {-1, i}
  end
  local base = 6 + (i - 1) * 3
  local limit = tonumber(ARGV[base])
  local amount = tonumber(ARGV[base + 1])
  local spent = tonumber(redis.call('HGET', key, 'spent'))
  local reserved = tonumber(redis.call('HGET', key, 'reserved') or '0')
  local left = limit - spent - reserved - amount
  if ARGV[base + 2] == '1' and left < 0 then
    return {0, i, tostring(limit - spent - reserved)}
  end
  if ARGV[base + 2] == '1' and (tightest == nil or left < tightest) then
    tightest = left
  end
end
for i = 1, n do
  local amount = ARGV[6 + (i - 1) * 3 + 1]
  redis.call('HINCRBY', KEYS[i + 2], 'reserved', amount)
  redis.call('HSET', KEYS[2], KEYS[i + 2], amount)
end
redis.call('EXPIRE', KEYS[2], tonumber(ARGV[4]))
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[3])
return {1, 0, tightest and tostring(tightest) or ''}
"""

_SETTLE = """
local out = {}
for i = 1, #KEYS - 2 do
  local key = KEYS[i + 2]
  local held = tonumber(redis.call('HGET', KEYS[2], key) or '0')
  local actual = tonumber(ARGV[i + 1])
  if redis.call('HEXISTS', key, 'spent') == 1 then
    if held ~= 0 then
      redis.call('HINCRBY', key, 'reserved', -held)
    end
    local before = tonumber(redis.call('HGET', key, 'spent'))
    out[i] = {tostring(before), tostring(redis.call('HINCRBY', key, 'spent', actual))}
  else
    out[i] = {'', ''}
  end
end
redis.call('DEL', KEYS[2])
redis.call('ZREM', KEYS[1], ARGV[1])
return out
"""

_INIT = """
if redis.call('HSETNX', KEYS[1], 'spent', ARGV[1]) == 1 then
  redis.call('HSETNX', KEYS[1], 'reserved', 0)
  local built = tonumber(ARGV[3] or '0')
  if built == 0 then
    local clock = redis.call('TIME')
    built = clock[1] * 10 + math.floor(clock[2] / 100000)
  end
  redis.call('HSET', KEYS[1], 'built', built)
  if tonumber(ARGV[2]) > 0 then
    redis.call('EXPIREAT', KEYS[1], ARGV[2])
  end
  return 1
end
return 0
"""


_ADD = """
if redis.call('HEXISTS', KEYS[1], 'spent') == 1 then
  return redis.call('HINCRBY', KEYS[1], 'spent', ARGV[1])
end
return false
"""

# A settlement Redis may or may not have run (sent, then no answer): run it only if its hold is still there.
_SETTLE_IF_HELD = "if redis.call('EXISTS', KEYS[2]) == 0 then return false end\n" + _SETTLE

# Spend a process could not send while Redis was down, by the tenth of a second it was settled (ARGV: the
# tenth, then the spend settled from then on, ascending). A counter built since (from a ledger read that
# began at ``built``, in tenths of a second too, and so has the earlier spend) takes only what was settled
# from then on; a missing one takes nothing.
_ADD_MISSED = """
if redis.call('HEXISTS', KEYS[1], 'spent') == 0 then return false end
local built = tonumber(redis.call('HGET', KEYS[1], 'built') or '0')
local before = redis.call('HGET', KEYS[1], 'spent')
for i = 1, #ARGV, 2 do
  if tonumber(ARGV[i]) >= built then
    return {before, tostring(redis.call('HINCRBY', KEYS[1], 'spent', ARGV[i + 1]))}
  end
end
return {before, before}
"""


@dataclass(slots=True)
class Entry:
    """One budget a reservation holds against: its counter, limit and the amount held."""

    rule: BudgetRule
    key: str
    period_start: datetime
    period_end: datetime | None
    amount: int


@dataclass(slots=True)
class Outcome:
    """A reservation's result: refused (by which entry, with how much was left), or held."""

    ok: bool
    missing: int | None = None
    refused: int | None = None
    left_units: int | None = None


class MemoryCounters:
    """The Redis counters' semantics in one process, for the embedded default and tests."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.counters: dict[str, dict[str, int]] = {}
        self.reservations: dict[str, tuple[float, dict[str, int]]] = {}

    def _sweep(self, now: float) -> None:
        for rid, (expires, held) in list(self.reservations.items()):
            if expires <= now:
                for key, amount in held.items():
                    if key in self.counters:
                        self.counters[key]["reserved"] -= amount
                del self.reservations[rid]

    async def reserve(self, rid: str, entries: list[Entry], expires_at: float) -> Outcome:
        with self.lock:
            self._sweep(time.time())
            tightest: int | None = None
            for index, entry in enumerate(entries):
                counter = self.counters.get(entry.key)
                if counter is None:
                    return Outcome(ok=False, missing=index)
                left = entry.rule.limit_units - counter["spent"] - counter["reserved"] - entry.amount
                if entry.rule.hard and left < 0:
                    return Outcome(
                        ok=False,
                        refused=index,
                        left_units=entry.rule.limit_units - counter["spent"] - counter["reserved"],
                    )
                if entry.rule.hard and (tightest is None or left < tightest):
                    tightest = left
            for entry in entries:
                self.counters[entry.key]["reserved"] += entry.amount
            self.reservations[rid] = (expires_at, {e.key: e.amount for e in entries})
            return Outcome(ok=True, left_units=tightest)

    async def settle(self, rid: str, actuals: list[tuple[str, int]]) -> list[tuple[int, int] | None]:
        with self.lock:
            held = self.reservations.pop(rid, (0.0, {}))[1]
            out: list[tuple[int, int] | None] = []
            for key, actual in actuals:
                counter = self.counters.get(key)
                if counter is None:
                    out.append(None)
                    continue
                counter["reserved"] -= held.get(key, 0)
                before = counter["spent"]
                counter["spent"] += actual
                out.append((before, counter["spent"]))
            return out

    async def init(self, key: str, spent: int, expire_at: int, built: int = 0) -> None:
        with self.lock:
            self.counters.setdefault(key, {"spent": spent, "reserved": 0})

    def read(self, key: str) -> tuple[int, int] | None:
        counter = self.counters.get(key)
        return None if counter is None else (counter["spent"], counter["reserved"])

    def build(self, key: str, spent: int, expire_at: int, built: int = 0) -> bool:
        with self.lock:
            if key in self.counters:
                return False
            self.counters[key] = {"spent": spent, "reserved": 0}
            return True

    def add_spent(self, key: str, delta: int) -> None:
        with self.lock:
            if key in self.counters:
                self.counters[key]["spent"] += delta

    def forget(self) -> None:
        with self.lock:
            self.counters.clear()
            self.reservations.clear()


class RedisCounters:
    async def reserve(self, rid: str, entries: list[Entry], expires_at: float) -> Outcome:
        from muxer_project.redis import async_redis

        args: list[Any] = [
            time.time(),
            expires_at,
            rid,
            int(settings.MUXER_BUDGET_RESERVATION_SECONDS) + 86_400,
            _RESERVATION.format(""),
        ]
        for entry in entries:
            args += [entry.rule.limit_units, entry.amount, "1" if entry.rule.hard else "0"]
        keys = [_EXPIRY, _RESERVATION.format(rid), *(e.key for e in entries)]
        raw = await async_redis().eval(_RESERVE, len(keys), *keys, *args)
        status, index = int(raw[0]), int(raw[1])
        left = raw[2] if len(raw) > 2 else b""
        left = left.decode() if isinstance(left, bytes) else str(left)
        left_units = int(float(left)) if left else None
        if status == -1:
            return Outcome(ok=False, missing=index - 1)
        if status == 0:
            return Outcome(ok=False, refused=index - 1, left_units=left_units)
        return Outcome(ok=True, left_units=left_units)

    async def settle(self, rid: str, actuals: list[tuple[str, int]]) -> list[tuple[int, int] | None]:
        from muxer_project.redis import async_redis

        keys = [_EXPIRY, _RESERVATION.format(rid), *(k for k, _ in actuals)]
        raw = await async_redis().eval(_SETTLE, len(keys), *keys, rid, *(a for _, a in actuals))
        out: list[tuple[int, int] | None] = []
        for before, after in raw:
            before_s = before.decode() if isinstance(before, bytes) else str(before)
            after_s = after.decode() if isinstance(after, bytes) else str(after)
            out.append((int(float(before_s)), int(float(after_s))) if before_s else None)
        return out

    async def init(self, key: str, spent: int, expire_at: int, built: int = 0) -> None:
        """Create the counter with ``spent`` unless it exists. ``built``: when the ledger was read for it, in
        tenths of a second (0: now)."""
        from muxer_project.redis import async_redis

        await async_redis().eval(_INIT, 1, key, spent, expire_at, built)

    async def add(self, key: str, units: int) -> None:
        from muxer_project.redis import async_redis

        await async_redis().eval(_ADD, 1, key, units)

    async def settle_if_held(self, rid: str, actuals: list[tuple[str, int]]) -> bool:
        from muxer_project.redis import async_redis

        keys = [_EXPIRY, _RESERVATION.format(rid), *(k for k, _ in actuals)]
        return bool(await async_redis().eval(_SETTLE_IF_HELD, len(keys), *keys, rid, *(a for _, a in actuals)))

    async def built(self, key: str) -> int:
        """When the counter was last built, in tenths of a second (0: unknown or missing)."""
        from muxer_project.redis import async_redis

        return int(await async_redis().hget(key, "built") or 0)

    def add_missed(self, key: str, by_tenth: dict[int, int]) -> tuple[int, int] | None:
        """Add spend settled while Redis was down (see ``_ADD_MISSED``); the counter's spend before and after,
        or None when it is missing."""
        from muxer_project.redis import sync_redis

        args: list[int] = []
        left = sum(by_tenth.values())
        for tenth in sorted(by_tenth):
            args += [tenth, left]
            left -= by_tenth[tenth]
        raw = sync_redis().eval(_ADD_MISSED, 1, key, *args)
        if not raw:
            return None
        before, after = (int(float(v.decode() if isinstance(v, bytes) else v)) for v in raw)
        return before, after

    def read(self, key: str) -> tuple[int, int] | None:
        from muxer_project.redis import sync_redis

        raw = sync_redis().hgetall(key)
        if b"spent" not in raw:
            return None
        return int(raw[b"spent"]), int(raw.get(b"reserved", 0))

    def build(self, key: str, spent: int, expire_at: int, built: int = 0) -> bool:
        """``init`` from a synchronous caller; whether it created the counter."""
        from muxer_project.redis import sync_redis

        return bool(sync_redis().eval(_INIT, 1, key, spent, expire_at, built))

    def add_spent(self, key: str, delta: int) -> None:
        from muxer_project.redis import sync_redis

        client = sync_redis()
        if client.hexists(key, "spent"):
            client.hincrby(key, "spent", delta)

    def forget(self) -> None:
        from muxer_project.redis import sync_redis

        client = sync_redis()
        stale = [*client.scan_iter(match="muxer:budget:*", count=1000)]
        if stale:
            client.delete(*stale)


_memory = MemoryCounters()
_redis = RedisCounters()


def counters() -> MemoryCounters | RedisCounters:
    return _redis if settings.REDIS_URL else _memory


def _expire_at(period_end: datetime | None) -> int:
    # Old periods' counters are kept a week past their end, for reports; lifetime counters never expire.
    return 0 if period_end is None else int((period_end + timedelta(days=7)).timestamp())


# --- while Redis is down ---------------------------------------------------------------------

# A request's usage row reaches the ledger moments after it is settled (during an outage it is written
# directly). Its cost is counted from this process's memory until a ledger read that began this long after
# the settlement, so it is never missed; meanwhile it may count twice, which can only refuse earlier.
_UNWRITTEN_SECONDS = 10.0

Window = tuple[BudgetRule, datetime, datetime | None]
# Per counter key: its budget and period, and spend by the tenth of a second it was settled.
Missed = dict[str, tuple[Window, dict[int, int]]]


class LedgerCounters:
    """Budgets held against the PostgreSQL ledger while Redis is down, by this process alone.

    A budget's spend is the ledger's sum for its period (re-read at most every
    ``MUXER_BUDGET_LEDGER_REFRESH_SECONDS``), plus what this process settled that
    the ledger may not have yet, plus this process's holds for requests in flight.
    Other processes' requests in flight are not seen, nor usage events still on
    the Redis stream: that is how far an outage can overrun a hard budget.
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.readings: dict[str, tuple[float, int]] = {}  # counter key -> (when the read began, units)
        self.recent: dict[str, list[tuple[float, int]]] = {}  # counter key -> [(settled at, units)]
        self.held: dict[str, int] = {}
        self.reservations: dict[str, dict[str, int]] = {}
        self._flights = SingleFlight()

    async def _read(self, entry: Entry) -> None:
        reading = self.readings.get(entry.key)
        if reading is not None and time.monotonic() - reading[0] < settings.MUXER_BUDGET_LEDGER_REFRESH_SECONDS:
            return

        async def read() -> None:
            began = time.monotonic()
            units = await sync_to_async(_ledger_in_worker, thread_sensitive=False)(
                entry.rule, entry.period_start, entry.period_end
            )
            with self.lock:
                self.readings[entry.key] = (began, units)
                horizon = began - _UNWRITTEN_SECONDS
                self.recent[entry.key] = [(at, u) for at, u in self.recent.get(entry.key, ()) if at >= horizon]

        await self._flights.run(("budget-ledger", entry.key), read)

    def _used(self, key: str) -> int:
        began, units = self.readings[key]
        horizon = began - _UNWRITTEN_SECONDS
        return units + sum(u for at, u in self.recent.get(key, ()) if at >= horizon) + self.held.get(key, 0)

    async def reserve(self, rid: str, entries: list[Entry]) -> Outcome:
        for entry in entries:
            await self._read(entry)
        with self.lock:
            tightest: int | None = None
            for index, entry in enumerate(entries):
                used = self._used(entry.key)
                left = entry.rule.limit_units - used - entry.amount
                if entry.rule.hard and left < 0:
                    return Outcome(ok=False, refused=index, left_units=entry.rule.limit_units - used)
                if entry.rule.hard and (tightest is None or left < tightest):
                    tightest = left
            for entry in entries:
                self.held[entry.key] = self.held.get(entry.key, 0) + entry.amount
            self.reservations[rid] = {entry.key: entry.amount for entry in entries}
        return Outcome(ok=True, left_units=tightest)

    def release(self, rid: str) -> None:
        with self.lock:
            for key, amount in self.reservations.pop(rid, {}).items():
                left = self.held.get(key, 0) - amount
                if left > 0:
                    self.held[key] = left
                else:
                    self.held.pop(key, None)

    def record(self, actuals: list[tuple[str, int]]) -> None:
        now = time.monotonic()
        with self.lock:
            for key, units in actuals:
                if units:
                    self.recent.setdefault(key, []).append((now, units))

    def forget_readings(self) -> None:
        """Redis is back: the next outage starts from fresh ledger reads."""
        with self.lock:
            self.readings.clear()
            self.recent.clear()

    def forget(self) -> None:
        with self.lock:
            self.readings.clear()
            self.recent.clear()
            self.held.clear()
            self.reservations.clear()


def _tenth() -> int:
    return int(time.time() * 10)


@dataclass(frozen=True, slots=True)
class Unsure:
    entries: list[Entry]
    actuals: list[tuple[str, int]]
    made: int  # tenths of a second, as ``built``
    settled: int


class Unrecorded:
    """What this process could not tell Redis while it was down, told once it is back (``_recover_counters``).

    - ``holds``: holds it left in Redis and will not settle there (released then);
    - ``unsure``: settlements sent that got no answer: a frozen Redis runs them once it resumes, so each
      is run again only if its hold is still there. A hold gone because Redis lost its data (its counter
      was built again after the reservation) counts as missed spend instead;
    - ``missed``: spend never sent, per counter and by the tenth of a second it was settled, added then.
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.holds: dict[str, list[str]] = {}
        self.unsure: dict[str, Unsure] = {}
        self.missed: Missed = {}

    def hold(self, rid: str, entries: list[Entry]) -> None:
        with self.lock:
            self.holds[rid] = [entry.key for entry in entries]

    def sent_unanswered(self, reservation: Reservation, actuals: list[tuple[str, int]]) -> None:
        with self.lock:
            self.unsure[reservation.id] = Unsure(reservation.entries, actuals, reservation.made, _tenth())

    def miss(self, entries: list[Entry], actuals: list[tuple[str, int]], *, tenth: int | None = None) -> None:
        tenth = _tenth() if tenth is None else tenth
        with self.lock:
            for entry, (key, units) in zip(entries, actuals, strict=True):
                if units:
                    by_tenth = self.missed.setdefault(key, ((entry.rule, entry.period_start, entry.period_end), {}))[1]
                    by_tenth[tenth] = by_tenth.get(tenth, 0) + units

    def take(self) -> tuple[dict[str, list[str]], dict[str, Unsure], Missed]:
        with self.lock:
            taken = (self.holds, self.unsure, self.missed)
            self.holds, self.unsure, self.missed = {}, {}, {}
            return taken

    def put_back(
        self,
        holds: dict[str, list[str]],
        unsure: dict[str, Unsure],
        missed: Missed,
    ) -> None:
        with self.lock:
            self.holds.update(holds)
            self.unsure.update(unsure)
            for key, (window, by_tenth) in missed.items():
                mine = self.missed.setdefault(key, (window, {}))[1]
                for tenth, units in by_tenth.items():
                    mine[tenth] = mine.get(tenth, 0) + units

    def forget(self) -> None:
        self.take()


_ledger = LedgerCounters()
_unrecorded = Unrecorded()


def counter_rebuild(
    rule: BudgetRule, start: datetime, end: datetime | None, *, queued: list[dict[str, Any]] | None
) -> tuple[int | None, int]:
    """Bring one counter to what was settled (``settled_units``); returns its spend before (None: it was
    missing) and after. ``queued`` is ``queued_usage()``, read before this; when it is None (too much
    queued to read) the counter is only ever raised to the ledger, never lowered.

    The change is applied as an increment, and the counter is read before the
    ledger: spend another process settles meanwhile is kept (at worst counted
    twice until the next reconcile), never lost.
    """
    store = counters()
    key = rule.counter_key(start)
    found = store.read(key)
    read_at = _tenth()
    settled = settled_units(rule, start, end, queued or [])
    if found is None:
        store.build(key, settled, _expire_at(end), read_at)
        return None, settled
    current = found[0]
    wanted = max(current, settled) if queued is None else settled
    if wanted != current:
        store.add_spent(key, wanted - current)
    return current, wanted


def _replay_in_worker(missed: Missed) -> None:
    left = dict(missed)
    try:
        for key, ((rule, start, end), by_tenth) in missed.items():
            result = _redis.add_missed(key, by_tenth)
            if result is None:
                # Lost with Redis's data: rebuilt from the ledger, which has this spend already; unless another
                # process rebuilt it first, from an earlier read, which then takes what was settled after it.
                try:
                    read_at = _tenth()
                    spent = settled_units(rule, start, end, queued_usage() or [])
                    if not _redis.build(key, spent, _expire_at(end), read_at):
                        result = _redis.add_missed(key, by_tenth)
                except DatabaseError as exc:
                    logger.warning("budget counter not rebuilt (%s): it will be at its first use", type(exc).__name__)
            if result is not None and rule.thresholds and _crossed(rule, *result):
                # An alert that could not go out while Redis (the broker too) was down.
                _alert_in_worker(Entry(rule, key, start, end, 0), *result)
            del left[key]
    except REDIS_ERRORS:
        _unrecorded.put_back({}, {}, left)
        raise
    finally:
        close_old_connections()


_last_rebuild_request = 0.0


def counters_lost() -> None:
    """A hold this process took is gone from Redis: Redis lost its data (restarted without persistence) under
    requests in flight. Counters rebuilt meanwhile were built from a ledger that the usage of those requests had
    not reached yet (it was on its way, or on the stream Redis lost), so every budget is brought to the ledger
    once that usage has been written: ``budget_counters_reconcile`` is queued for the Celery workers, to run
    ``MUXER_BUDGET_REBUILD_DELAY_SECONDS`` from now; at most once per that delay per process."""
    global _last_rebuild_request
    now = time.monotonic()
    delay = settings.MUXER_BUDGET_REBUILD_DELAY_SECONDS
    if now - _last_rebuild_request < delay:
        return
    _last_rebuild_request = now
    logger.warning(
        "budget holds gone from Redis (settled, or lost with its data): reconciling to the ledger in %.0f s", delay
    )

    def enqueue() -> None:
        from .tasks import budget_counters_reconcile_task

        try:
            budget_counters_reconcile_task.apply_async(countdown=delay)
        except Exception as exc:  # noqa: BLE001 - the scheduled reconcile corrects it later
            logger.warning("budget reconcile could not be queued (%s)", type(exc).__name__)

    # Publishing waits on the broker: never on the event loop.
    threading.Thread(target=enqueue, name="budget-reconcile-enqueue", daemon=True).start()


_RECOVERY_ROUNDS = 20


async def _recover_counters() -> None:
    """Before this process uses Redis again: tell it what it missed (see :class:`Unrecorded`). A Redis error
    keeps Redis marked down, and what is not told yet for the next try."""
    # Requests still settle from the fallback meanwhile (Redis is marked up only after this): told too.
    for _ in range(_RECOVERY_ROUNDS):
        holds, unsure, missed = _unrecorded.take()
        if not (holds or unsure or missed):
            break
        try:
            for rid, sent in list(unsure.items()):
                if not await _redis.settle_if_held(rid, sent.actuals):
                    counters_lost()  # the hold is gone: it was settled, or Redis lost it with its data
                    for entry, (key, units) in zip(sent.entries, sent.actuals, strict=True):
                        if units and await _redis.built(key) > sent.made:
                            _unrecorded.miss([entry], [(key, units)], tenth=sent.settled)
                del unsure[rid]
            for rid, keys in list(holds.items()):
                await _redis.settle_if_held(rid, [(key, 0) for key in keys])
                del holds[rid]
        except BaseException:
            _unrecorded.put_back(holds, unsure, missed)
            raise
        if missed:
            await sync_to_async(_replay_in_worker, thread_sensitive=False)(missed)
    else:
        logger.warning("budget counters: settlements from the Redis outage still arriving; the rest at the next one")
    _ledger.forget_readings()


redis_state.on_recovery(_recover_counters)


# --- reserving and settling ---------------------------------------------------------------


def worst_case_input_tokens(payload: dict[str, Any]) -> int:
    """An upper bound on the prompt's tokens: one per byte of text (no tokenizer does worse), a fixed
    allowance per image, the tool definitions, and the per-message framing."""
    total = 0
    for message in payload.get("messages") or ():
        total += TOKENS_PER_MESSAGE
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, str):
            total += len(content.encode())
        elif isinstance(content, list):
            for part in content:
                if not isinstance(part, dict):
                    continue
                if isinstance(part.get("text"), str):
                    total += len(part["text"].encode())
                elif part.get("type") in ("image_url", "input_audio", "file"):
                    total += IMAGE_TOKENS
        if isinstance(message, dict) and message.get("tool_calls"):
            total += len(orjson.dumps(message["tool_calls"]))
    for name in ("tools", "functions", "response_format"):
        if payload.get(name):
            total += len(orjson.dumps(payload[name]))
    return total


def worst_case_cost(model: CatalogModel, input_tokens: int, output_tokens: int) -> Decimal:
    return (input_tokens * model.input_price_per_mtok_usd + output_tokens * model.output_price_per_mtok_usd) / Decimal(
        1_000_000
    )


@dataclass(slots=True)
class Reservation:
    """What a request holds: the entries, and what it has spent so far per model."""

    id: str
    entries: list[Entry]
    spent: dict[str, Decimal] = field(default_factory=dict)
    settled: bool = False
    left_usd: Decimal | None = None
    # Held in this process against the ledger (Redis was down), not in Redis.
    from_ledger: bool = False
    made: int = field(default_factory=_tenth)

    def charge(self, model: str, cost: Decimal) -> None:
        self.spent[model] = self.spent.get(model, Decimal(0)) + cost


def budget_exceeded(rule: BudgetRule, left_units: int | None) -> APIError:
    left = max(Decimal(0), from_units(left_units or 0))
    what = rule.scope.replace("_", " ") + (f" budget for {rule.model}" if rule.model else " budget")
    return APIError(
        429,
        f"This request could cost more than is left of the {rule.period} {what} "
        f"(${_usd(left)} of ${_usd(from_units(rule.limit_units))} left).",
        type="insufficient_quota",
        code="budget_exceeded",
        headers={"x-muxer-budget-remaining": f"{left:.10f}", "x-muxer-budget-id": str(rule.id)},
    )


def _usd(amount: Decimal) -> str:
    """Dollars as people read them: cents at least, more places only when the amount needs them."""
    text = format(amount.normalize(), "f")
    whole, _, places = text.partition(".")
    return f"{whole}.{places.ljust(2, '0')}"


async def _initialise(entry: Entry) -> None:
    read_at = _tenth()
    spent = await sync_to_async(_settled_in_worker, thread_sensitive=False)(
        entry.rule, entry.period_start, entry.period_end
    )
    await counters().init(entry.key, spent, _expire_at(entry.period_end), read_at)


def _settled_in_worker(rule: BudgetRule, start: datetime, end: datetime | None) -> int:
    try:
        return settled_units(rule, start, end, queued_usage() or [])
    finally:
        close_old_connections()


def _ledger_in_worker(rule: BudgetRule, start: datetime, end: datetime | None) -> int:
    try:
        return ledger_spent_units(rule, start, end)
    finally:
        close_old_connections()


async def reserve(
    *,
    rules: tuple[BudgetRule, ...],
    team_id: int | None,
    api_key_id: int,
    user_id: int | None,
    costs: dict[str, Decimal],
    total: Decimal,
) -> Reservation | None:
    """Hold the worst case against every budget that applies, or raise ``budget_exceeded``.

    ``costs`` is each model's worst case (for budgets on one model); ``total`` is
    the worst case of the whole request (for the rest). None when no budget applies.
    """
    now = datetime.now(UTC)
    entries: list[Entry] = []
    for rule in rules:
        if not rule.applies_to(team_id=team_id, api_key_id=api_key_id, user_id=user_id):
            continue
        if rule.model and rule.model not in costs:
            continue
        amount = costs[rule.model] if rule.model else total
        start, end = rule.window(now)
        entries.append(Entry(rule, rule.counter_key(start), start, end, to_units(amount, up=True)))
    if not entries:
        return None
    rid = uuid.uuid4().hex
    if not settings.REDIS_URL:
        return await _reserve_in_counters(rid, entries)
    if redis_state.usable():
        try:
            return await _reserve_in_counters(rid, entries)
        except REDIS_ERRORS as exc:
            redis_state.failed("budget_reserve", exc)
            # One that timed out may still land once Redis answers: then it is released.
            _unrecorded.hold(rid, entries)
    return await _reserve_from_ledger(rid, entries)


async def _reserve_in_counters(rid: str, entries: list[Entry]) -> Reservation:
    expires_at = time.time() + settings.MUXER_BUDGET_RESERVATION_SECONDS
    for _ in range(len(entries) + 1):
        outcome = await counters().reserve(rid, entries, expires_at)
        if outcome.missing is not None:
            await _initialise(entries[outcome.missing])
            continue
        return _reservation(rid, entries, outcome, from_ledger=False)
    raise APIError(503, "Budget counters are being rebuilt; retry.", type="server_error", code="budget_unavailable")


async def _reserve_from_ledger(rid: str, entries: list[Entry]) -> Reservation:
    redis_state.fallback("budget_reserve")
    try:
        outcome = await _ledger.reserve(rid, entries)
    except DatabaseError:
        raise APIError(
            503, "Budgets cannot be checked right now; retry shortly.", type="server_error",
            code="budget_unavailable", headers={"retry-after": "1"},
        ) from None  # fmt: skip
    return _reservation(rid, entries, outcome, from_ledger=True)


def _reservation(rid: str, entries: list[Entry], outcome: Outcome, *, from_ledger: bool) -> Reservation:
    if outcome.refused is not None:
        raise budget_exceeded(entries[outcome.refused].rule, outcome.left_units)
    held = Reservation(rid, entries, from_ledger=from_ledger)
    if outcome.left_units is not None:
        held.left_usd = from_units(outcome.left_units)
    return held


async def settle(reservation: Reservation) -> None:
    """Replace the hold with what was spent: the whole request's cost, or one model's for its budgets."""
    if reservation.settled:
        return
    reservation.settled = True
    total = sum(reservation.spent.values(), Decimal(0))
    actuals = [
        (e.key, to_units(reservation.spent.get(e.rule.model, Decimal(0)) if e.rule.model else total))
        for e in reservation.entries
    ]
    if not settings.REDIS_URL:
        await _alerts(reservation, await _memory.settle(reservation.id, actuals))
        return
    if reservation.from_ledger:
        _ledger.release(reservation.id)
    sent = False
    if redis_state.usable():
        # A hold taken against the ledger is unknown to Redis: settling it there just adds the spend.
        try:
            sent = True
            results = await _redis.settle(reservation.id, actuals)
        except REDIS_ERRORS as exc:
            redis_state.failed("budget_settle", exc)
        else:
            await _count_where_missing(reservation.entries, actuals, results)
            await _alerts(reservation, results)
            return
    redis_state.fallback("budget_settle")
    _ledger.record(actuals)
    if sent and not reservation.from_ledger:
        _unrecorded.sent_unanswered(reservation, actuals)
        return
    if not reservation.from_ledger:
        _unrecorded.hold(reservation.id, reservation.entries)
    # (One against the ledger sent without an answer is added again: counted twice at worst, never lost.)
    _unrecorded.miss(reservation.entries, actuals)


async def _count_where_missing(
    entries: list[Entry], actuals: list[tuple[str, int]], results: list[tuple[int, int] | None]
) -> None:
    """A counter gone under a request in flight (Redis restarted without its data) is built again from the
    ledger, which does not have this request yet, and the request's spend is added to it."""
    for entry, (key, units), result in zip(entries, actuals, results, strict=True):
        if result is not None or not units:
            continue
        counters_lost()
        try:
            await _initialise(entry)
            await _redis.add(key, units)
        except REDIS_ERRORS as exc:
            redis_state.failed("budget_settle", exc)
            _unrecorded.miss([entry], [(key, units)])
        except DatabaseError as exc:
            # Left missing: its first use builds it from the ledger, which will have this request by then.
            logger.warning("budget counter not rebuilt (%s)", type(exc).__name__)


async def _alerts(reservation: Reservation, results: list[tuple[int, int] | None]) -> None:
    for entry, result in zip(reservation.entries, results, strict=True):
        if result is None or not entry.rule.thresholds:
            continue
        before, after = result
        if _crossed(entry.rule, before, after):
            await _alert(entry, before, after)


def _crossed(rule: BudgetRule, before: int, after: int) -> bool:
    if rule.limit_units <= 0:
        return after > before
    return any(before * 100 < t * rule.limit_units <= after * 100 for t in rule.thresholds)


def _alert_in_worker(entry: Entry, before: int, after: int) -> None:
    from .alerts import thresholds_crossed

    try:
        thresholds_crossed(
            entry.rule.id,
            entry.period_start,
            from_units(before),
            from_units(after),
            thresholds=entry.rule.thresholds,
            limit_usd=from_units(entry.rule.limit_units),
        )
    finally:
        close_old_connections()


async def _alert(entry: Entry, before: int, after: int) -> None:
    await sync_to_async(_alert_in_worker, thread_sensitive=False)(entry, before, after)


# --- reading and reconciling ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BudgetUsage:
    period_start: datetime
    period_end: datetime | None
    spent_usd: Decimal
    reserved_usd: Decimal
    limit_usd: Decimal

    @property
    def remaining_usd(self) -> Decimal:
        return max(Decimal(0), self.limit_usd - self.spent_usd - self.reserved_usd)


def budget_usage(budget: Budget, *, now: datetime | None = None) -> BudgetUsage:
    """The budget's current period: spent and held, from the counter (rebuilt from the ledger if missing)."""
    rule = rule_from(budget, budget.organization.timezone)
    start, end = rule.window(now or datetime.now(UTC))
    key = rule.counter_key(start)
    try:
        found = counters().read(key)
    except REDIS_ERRORS:
        found = None  # Redis is down: the ledger still knows what was spent
    if found is None:
        spent, reserved = ledger_spent_units(rule, start, end), 0
    else:
        spent, reserved = found
    return BudgetUsage(start, end, from_units(spent), from_units(reserved), budget.limit_usd)


def budget_counters_reconcile(budgets: Iterable[Budget] | None = None, *, now: datetime | None = None) -> int:
    """Set each enabled budget's current counter to what was settled: the ledger's sum plus the usage
    still on the stream (``counter_rebuild``); returns how many differed."""
    queued = queued_usage()
    moment = now or datetime.now(UTC)
    changed = 0
    query = budgets if budgets is not None else Budget.objects.filter(enabled=True).select_related("organization")
    for budget in query:
        rule = rule_from(budget, budget.organization.timezone)
        start, end = rule.window(moment)
        before, after = counter_rebuild(rule, start, end, queued=queued)
        if before != after:
            changed += 1
    return changed


def forget_budget_state() -> None:
    """Tests: drop cached rules and every counter."""
    forget_budget_rules()
    _memory.forget()
    _ledger.forget()
    _unrecorded.forget()
    if settings.REDIS_URL:
        _redis.forget()
