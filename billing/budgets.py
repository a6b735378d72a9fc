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
use in a period, or Redis lost its data) is rebuilt from the ledger before
the reservation, and the ``budget_counters_reconcile`` task corrects drift.
Without Redis (the embedded default) the same logic runs in process memory.

The worst case is a true upper bound, so spend cannot pass a hard limit: the
prompt counts one token per byte (no tokenizer yields more), and the answer
its ``max_tokens`` (else the organization's cap, which is then sent to the
provider, else the model's maximum output).
"""

from __future__ import annotations

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
from django.db import close_old_connections
from django.db.models import Q, Sum

from muxer_project.cached_loader import CachedLoader
from muxer_project.errors import APIError
from providers.catalog import CatalogModel

from .models import Budget, BudgetPeriod, BudgetScope, UsageRecord

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
    total = UsageRecord.objects.filter(ledger_filter(rule, start, end)).aggregate(total=Sum("cost_usd"))["total"]
    return to_units(total or Decimal(0))


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
  if tonumber(ARGV[2]) > 0 then
    redis.call('EXPIREAT', KEYS[1], ARGV[2])
  end
end
return 1
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

    async def init(self, key: str, spent: int, expire_at: int) -> None:
        with self.lock:
            self.counters.setdefault(key, {"spent": spent, "reserved": 0})

    def read(self, key: str) -> tuple[int, int] | None:
        counter = self.counters.get(key)
        return None if counter is None else (counter["spent"], counter["reserved"])

    def overwrite(self, key: str, spent: int, expire_at: int) -> None:
        with self.lock:
            self.counters.setdefault(key, {"spent": 0, "reserved": 0})["spent"] = spent

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

    async def init(self, key: str, spent: int, expire_at: int) -> None:
        from muxer_project.redis import async_redis

        await async_redis().eval(_INIT, 1, key, spent, expire_at)

    def read(self, key: str) -> tuple[int, int] | None:
        from muxer_project.redis import sync_redis

        raw = sync_redis().hgetall(key)
        if b"spent" not in raw:
            return None
        return int(raw[b"spent"]), int(raw.get(b"reserved", 0))

    def overwrite(self, key: str, spent: int, expire_at: int) -> None:
        from muxer_project.redis import sync_redis

        client = sync_redis()
        client.hset(key, "spent", spent)
        client.hsetnx(key, "reserved", 0)
        if expire_at > 0:
            client.expireat(key, expire_at)

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
    spent = await sync_to_async(_ledger_in_worker, thread_sensitive=False)(
        entry.rule, entry.period_start, entry.period_end
    )
    await counters().init(entry.key, spent, _expire_at(entry.period_end))


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
    expires_at = time.time() + settings.MUXER_BUDGET_RESERVATION_SECONDS
    for _ in range(len(entries) + 1):
        outcome = await counters().reserve(rid, entries, expires_at)
        if outcome.missing is not None:
            await _initialise(entries[outcome.missing])
            continue
        if outcome.refused is not None:
            raise budget_exceeded(entries[outcome.refused].rule, outcome.left_units)
        held = Reservation(rid, entries)
        if outcome.left_units is not None:
            held.left_usd = from_units(outcome.left_units)
        return held
    raise APIError(503, "Budget counters are being rebuilt; retry.", type="server_error", code="budget_unavailable")


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
    results = await counters().settle(reservation.id, actuals)
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
    found = counters().read(key)
    if found is None:
        spent, reserved = ledger_spent_units(rule, start, end), 0
    else:
        spent, reserved = found
    return BudgetUsage(start, end, from_units(spent), from_units(reserved), budget.limit_usd)


def budget_counters_reconcile(budgets: Iterable[Budget] | None = None, *, now: datetime | None = None) -> int:
    """Set each enabled budget's current counter to the ledger's sum; returns how many differed.

    Spend that is settled but not yet in the ledger (events still on the usage
    stream) would look like drift, so while events are pending a counter is
    only ever raised to the ledger, never lowered.
    """
    from .usage import usage_pending

    pending = usage_pending() if settings.REDIS_URL else 0
    moment = now or datetime.now(UTC)
    changed = 0
    query = budgets if budgets is not None else Budget.objects.filter(enabled=True).select_related("organization")
    for budget in query:
        rule = rule_from(budget, budget.organization.timezone)
        start, end = rule.window(moment)
        key = rule.counter_key(start)
        ledger = ledger_spent_units(rule, start, end)
        found = counters().read(key)
        current = None if found is None else found[0]
        wanted = ledger if pending == 0 or current is None else max(current, ledger)
        if current != wanted:
            counters().overwrite(key, wanted, _expire_at(end))
            changed += 1
    return changed


def forget_budget_state() -> None:
    """Tests: drop cached rules and every counter."""
    forget_budget_rules()
    _memory.forget()
    if settings.REDIS_URL:
        _redis.forget()
