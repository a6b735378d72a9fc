"""PostgreSQL terminated and then refused mid-load.

Every connection of the stack is terminated by the server (``pg_terminate_backend``)
and new ones are refused for a few seconds. A key the gateway has seen keeps
being served from its cached copies, its usage waits on the Redis stream and
is written once the database is back; a request that needs the database (a
key never seen) gets 503 ``service_unavailable``. No answer is a 500.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable

import httpx
import psycopg
import pytest
import redis
from django.db import connection

from accounts.models import User
from billing.models import UsageRecord
from tests.conftest import database_url
from tests.factories import issue_key

from .conftest import Stack, record
from .load import Run, drive
from .tcp_proxy import TcpProxy

pytestmark = [pytest.mark.redis, pytest.mark.postgres]

CONCURRENCY = 8
OUTAGE_SECONDS = 3.0
BODY = {
    "model": "fake-small",
    "max_tokens": 16,
    "messages": [{"role": "user", "content": "Hello [fake latency_ms=20]"}],
}


def terminator() -> Callable[[], int]:
    """Ends every session of the stack on the test database (all but the test's own), from a connection of
    its own: the load's hook runs on the event loop, where Django's connection may not be used."""
    with connection.cursor() as cursor:
        cursor.execute("select pg_backend_pid()")
        test_pid = cursor.fetchone()[0]
    admin = psycopg.connect(database_url(), autocommit=True)

    def terminate() -> int:
        found = admin.execute(
            "select count(pg_terminate_backend(pid)) from pg_stat_activity"
            " where datname = current_database() and pid <> pg_backend_pid() and pid <> %s",
            (test_pid,),
        ).fetchone()
        admin.close()
        return int(found[0]) if found else 0

    return terminate


def test_a_database_outage_serves_known_keys_queues_their_usage_and_answers_503_for_the_rest(
    proxied_db_stack: tuple[Stack, TcpProxy], owner: User
) -> None:
    stack, proxy = proxied_db_stack
    unseen_key = issue_key(stack.organization, created_by=owner).secret
    # Warm: the key, catalog and budgets loaded in both workers.
    asyncio.run(drive(stack.url, stack.key, lambda _: BODY, count=60, concurrency=CONCURRENCY, prefix="warm"))
    terminate = terminator()
    stream = redis.Redis.from_url(stack.redis_url, socket_timeout=2)
    clock: dict[str, float] = {}
    during_outage: list[httpx.Response] = []

    def during(_index: int) -> None:
        now = time.monotonic()
        if "down" not in clock and now - clock["start"] >= 1.0:
            clock["terminated"] = terminate()
            proxy.refuse()
            clock["down"] = time.monotonic()
        elif "down" in clock and "up" not in clock and now - clock["down"] >= OUTAGE_SECONDS:
            clock["queued"] = stream.xlen(stack.usage_stream)
            proxy.accept()
            clock["up"] = time.monotonic()
        elif "down" in clock and "up" not in clock and not during_outage and now - clock["down"] >= 1.0:
            # A key this gateway has never seen needs the database.
            unseen = {"Authorization": f"Bearer {unseen_key}"}
            during_outage.append(httpx.post(f"{stack.url}/v1/chat/completions", json=BODY, timeout=10, headers=unseen))

    def enough() -> bool:
        return time.monotonic() - clock.get("up", time.monotonic()) > 2.0 or time.monotonic() - clock["start"] > 30

    clock["start"] = time.monotonic()
    run: Run = asyncio.run(
        drive(stack.url, stack.key, lambda _: BODY, count=100_000, concurrency=CONCURRENCY, prefix="pg",
              during=during, stop_when=enough)
    )  # fmt: skip
    proxy.accept()

    flushed_from = time.monotonic()
    rows = stack.rows([o.request_id for o in run.outcomes], timeout=60)
    flushed_in = time.monotonic() - flushed_from
    outage = [o for o in run.outcomes if clock["down"] <= o.started < clock["up"]]
    answered = [o for o in run.outcomes if o.status == 200]
    lost = [o.request_id for o in answered if not rows[o.request_id]]
    doubled = [rid for rid, found in rows.items() if len(found) > 1]
    unseen = during_outage[0] if during_outage else None
    after = httpx.post(
        f"{stack.url}/v1/chat/completions", json=BODY, timeout=10, headers={"Authorization": f"Bearer {unseen_key}"}
    )
    record(
        "postgres_terminated_and_refused",
        requests=len(run.outcomes),
        outage_seconds=OUTAGE_SECONDS,
        connections_terminated=clock["terminated"],
        statuses={str(k): v for k, v in run.statuses().items()},
        sent_during_outage=len(outage),
        served_during_outage=len([o for o in outage if o.status == 200]),
        p99_during_outage_ms=round(run.p99(outage) * 1000, 1),
        unseen_key_during_outage=unseen.status_code if unseen else None,
        unseen_key_after=after.status_code,
        usage_queued_when_the_database_came_back=clock["queued"],
        seconds_to_flush_after_load=round(flushed_in, 1),
        answered_but_unrecorded=len(lost),
        charged_twice=len(doubled),
    )
    assert clock["terminated"] >= 1, "the stack held no database connection to terminate"
    assert len(outage) >= 20, "the load did not reach the outage"
    # The key was known: every request was served from the workers' copies, none failed, none was a 500.
    assert run.statuses() == {200: len(run.outcomes)}
    assert unseen is not None
    assert unseen.status_code == 503
    assert json.loads(unseen.content)["error"]["code"] == "service_unavailable"
    assert after.status_code == 200
    # Usage of the outage waited on the stream and was written after it, exactly once each.
    assert clock["queued"] >= len(outage) * 0.9  # it waited on the stream (a batch may have been written first)
    assert lost == []
    assert doubled == []
    assert UsageRecord.objects.filter(request_id__in=[o.request_id for o in outage]).count() == len(outage)
