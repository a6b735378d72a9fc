"""Redis frozen (SIGSTOP) mid-load and then resumed; Redis restarted with its data gone.

Frozen: requests are still served (rate limits per process, budgets checked
against the ledger, usage written straight to PostgreSQL), each paying at most
about one socket timeout, and once Redis answers again every process uses it
again and the queued usage is flushed. Restarted: the budget counters are
rebuilt from the ledger at their first use, and after the reconcile task (run
by the stack's Celery worker) the counter equals the ledger exactly.
"""

from __future__ import annotations

import asyncio
import threading
import time
from datetime import UTC, datetime
from decimal import Decimal

import pytest
import redis

from billing.budgets import RedisCounters, ledger_spent_units, rule_from
from billing.models import Budget
from tests.conftest import RedisServer

from .conftest import Stack, record
from .load import Outcome, Run, drive

pytestmark = [pytest.mark.redis, pytest.mark.postgres]

CONCURRENCY = 8
BODY = {
    "model": "fake-small",
    "max_tokens": 16,
    "messages": [{"role": "user", "content": "Hello [fake latency_ms=20]"}],
}
# The stack's Redis socket and connect timeouts are 1 s each (private_redis_stack).
SOCKET_TIMEOUT = 1.0


def budget_for(stack: Stack) -> Budget:
    return Budget.objects.create(
        organization=stack.organization, scope="organization", period="monthly", limit_usd=Decimal("100")
    )


def ledger_and_counter(budget: Budget) -> tuple[int, tuple[int, int] | None]:
    rule = rule_from(budget, budget.organization.timezone)
    start, end = rule.window(datetime.now(UTC))
    return ledger_spent_units(rule, start, end), RedisCounters().read(rule.counter_key(start))


def one_row_each(stack: Stack, run: Run) -> tuple[list[str], list[str]]:
    """Answered requests without a usage row, and requests with more than one."""
    rows = stack.rows([o.request_id for o in run.outcomes], timeout=30)
    lost = [o.request_id for o in run.served if not rows[o.request_id]]
    doubled = [rid for rid, found in rows.items() if len(found) > 1]
    return lost, doubled


def between(run: Run, start: float, end: float) -> list[Outcome]:
    return [o for o in run.outcomes if start <= o.started < end]


def test_a_frozen_redis_costs_at_most_a_timeout_and_everything_is_recorded_once_it_resumes(
    private_redis_stack: tuple[Stack, RedisServer],
) -> None:
    stack, server = private_redis_stack
    budget = budget_for(stack)
    frozen_seconds = 3.0
    clock: dict[str, float] = {}

    def watch_recovery() -> None:
        """After the thaw: when every process that marked Redis down has marked it up again."""
        while "thawed" not in clock:
            time.sleep(0.02)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            down = stack.metric("muxer_store_transitions_total", store="redis", to="down")
            up = stack.metric("muxer_store_transitions_total", store="redis", to="up")
            if down and up >= down:
                clock["recovered"] = time.monotonic()
                clock["processes"] = down
                return
            time.sleep(0.05)

    def during(_index: int) -> None:
        now = time.monotonic()
        if "frozen" not in clock and now - clock["start"] >= 1.5:
            server.freeze()
            clock["frozen"] = now
        elif "frozen" in clock and "thawed" not in clock and now - clock["frozen"] >= frozen_seconds:
            server.thaw()
            clock["thawed"] = now

    def enough() -> bool:
        now = time.monotonic()
        return now - clock.get("recovered", now) > 1.5 or now - clock["start"] > 40

    # Warm: the key, catalog and budget loaded in both workers, so the baseline is steady state.
    asyncio.run(drive(stack.url, stack.key, lambda _: BODY, count=40, concurrency=CONCURRENCY, prefix="warm"))
    watcher = threading.Thread(target=watch_recovery, daemon=True)
    watcher.start()
    clock["start"] = time.monotonic()
    run = asyncio.run(
        drive(stack.url, stack.key, lambda _: BODY, count=100_000, concurrency=CONCURRENCY, prefix="freeze",
              during=during, stop_when=enough)
    )  # fmt: skip
    server.thaw()  # in case the load ended early
    watcher.join(timeout=25)

    lost, doubled = one_row_each(stack, run)
    ledger, counter = ledger_and_counter(budget)
    # Answered before the freeze; in flight when it came (these wait out a socket timeout); sent while frozen.
    before = [o for o in run.outcomes if o.started + o.seconds < clock["frozen"]]
    caught = [o for o in between(run, clock["start"], clock["frozen"]) if o.started + o.seconds >= clock["frozen"]]
    frozen = between(run, clock["frozen"], clock["thawed"])
    after = between(run, clock.get("recovered", clock["thawed"]), float("inf"))
    recovery = clock.get("recovered", float("inf")) - clock["thawed"]
    record(
        "redis_frozen",
        requests=len(run.outcomes),
        frozen_seconds=frozen_seconds,
        served_share=round(run.share_served(), 4),
        served_while_frozen=len([o for o in frozen if o.status == 200]),
        sent_while_frozen=len(frozen),
        p99_before_ms=round(run.p99(before) * 1000, 1),
        in_flight_at_freeze=len(caught),
        slowest_in_flight_at_freeze_ms=round(max((o.seconds for o in caught), default=0) * 1000, 1),
        p99_while_frozen_ms=round(run.p99(frozen) * 1000, 1),
        p99_after_recovery_ms=round(run.p99(after) * 1000, 1),
        processes_marked_down=clock.get("processes", 0),
        recovery_seconds=round(recovery, 2),
        answered_but_unrecorded=len(lost),
        charged_twice=len(doubled),
        budget_counter_minus_ledger=(counter[0] - ledger) if counter else None,
    )
    assert run.statuses() == {200: len(run.outcomes)}
    assert len(frozen) >= 10, "the load did not reach the frozen period"
    # A request pays at most about one socket timeout (plus a pool wait while the process finds out).
    assert max(o.seconds for o in caught + frozen) < 3 * SOCKET_TIMEOUT
    # Every process that marked Redis down marked it up again, each within a probe cool-down (0.25 s) or so.
    assert clock.get("processes", 0) >= 2
    assert recovery < 5.0
    assert lost == []
    assert doubled == []
    # The spend of the frozen period reached the counter once Redis was back (told by each process).
    assert counter is not None
    assert counter[0] >= ledger > 0


def test_a_restarted_redis_gets_its_counters_rebuilt_and_reconciled_to_the_ledger(
    private_redis_stack: tuple[Stack, RedisServer],
) -> None:
    stack, server = private_redis_stack
    budget = budget_for(stack)
    count = 300
    restarts: list[threading.Thread] = []
    backlog: list[int] = []

    moments: dict[str, float] = {}

    def restart() -> None:
        """Stopped and started empty on the same port; the usage still on the stream goes with the data."""
        client = redis.Redis.from_url(server.url, socket_timeout=1)
        backlog.append(int(client.xlen(stack.usage_stream)))
        client.close()
        moments["stopping"] = time.monotonic()
        server.stop()
        moments["stopped"] = time.monotonic()
        server.start()

    def during(index: int) -> None:
        if index == count // 2:
            restarts.append(threading.Thread(target=restart))
            restarts[0].start()

    run = asyncio.run(
        drive(stack.url, stack.key, lambda _: BODY, count=count, concurrency=CONCURRENCY, prefix="restart",
              during=during)
    )  # fmt: skip
    restarts[0].join(timeout=30)
    lost, doubled = one_row_each(stack, run)
    drained = time.monotonic()
    ledger, counter = ledger_and_counter(budget)
    rebuilt = counter is not None
    # The gateway finds holds gone from Redis and queues a reconcile for the Celery worker (after
    # MUXER_BUDGET_REBUILD_DELAY_SECONDS, 5 s); nothing here asks for it.
    deadline = drained + 30
    while True:
        ledger_now, counter_now = ledger_and_counter(budget)
        if (counter_now and counter_now[0] == ledger_now) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    consistent_after = time.monotonic() - drained

    record(
        "redis_restarted",
        requests=count,
        served_share=round(run.share_served(), 4),
        statuses={str(k): v for k, v in run.statuses().items()},
        counter_rebuilt=rebuilt,
        counter_minus_ledger_when_drained=(counter[0] - ledger) if counter else None,
        counter_minus_ledger_after_reconcile=(counter_now[0] - ledger_now) if counter_now else None,
        seconds_until_counter_equals_ledger=round(consistent_after, 1),
        stream_backlog_at_restart=backlog[0],
        redis_stop_ms=round((moments["stopped"] - moments["stopping"]) * 1000, 1),
        usage_lost_with_redis_data=len(lost),
        charged_twice=len(doubled),
    )
    # Requests in flight while Redis restarted were still answered (from the fallbacks), none failed.
    assert run.statuses() == {200: count}
    assert doubled == []
    # The counter is rebuilt from the ledger at its first use after the restart, and the reconcile the gateway
    # queued (run by the Celery worker, through the restarted broker) brings it to the ledger exactly.
    assert rebuilt
    assert counter_now is not None
    assert counter_now[0] == ledger_now
    # What a Redis without persistence loses is the usage still on its stream when it died: the writer's
    # backlog then (it lingers up to 250 ms for a fuller batch), and what was added while it shut down. Only
    # requests answered before it stopped can be among them. Production runs Redis with an append-only file
    # (deploy/compose.yaml), which keeps the stream through a restart.
    finished = {o.request_id: o.started + o.seconds for o in run.outcomes}
    assert [rid for rid in lost if finished[rid] > moments["stopped"]] == []
    added_while_stopping = len([t for t in finished.values() if moments["stopping"] <= t <= moments["stopped"]])
    assert len(lost) <= backlog[0] + added_while_stopping + CONCURRENCY
