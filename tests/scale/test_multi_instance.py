"""Two gateway instances behind nginx behave as one gateway: revocation, rate limits, budgets, alerts, the
response cache, an instance lost mid-load, and the metrics all hold across them (see README.md here)."""

from __future__ import annotations

import asyncio
import email
import math
import re
import signal
import time
import uuid
from decimal import Decimal
from typing import Any

import httpx
import orjson
import pytest
from rest_framework_simplejwt.tokens import AccessToken

from accounts.models import Organization, User
from billing.budgets import budget_usage, worst_case_cost, worst_case_input_tokens
from billing.models import Budget, BudgetAlert, Notification, UsageRecord
from muxer_project.redis import sync_redis
from providers.catalog import get_catalog_sync
from tests.conftest import FakeUpstream
from tests.factories import issue_key
from tests.reliability.load import Outcome, Run, drive

from .conftest import Cluster, Instance, metric_sum, record

pytestmark = [pytest.mark.redis, pytest.mark.postgres, pytest.mark.django_db(transaction=True)]

BODY: dict[str, Any] = {"model": "fake-small", "messages": [{"role": "user", "content": "Say hello"}], "max_tokens": 16}


def chat(url: str, secret: str, body: dict[str, Any] = BODY) -> httpx.Response:
    headers = {"authorization": f"Bearer {secret}"}
    return httpx.post(f"{url}/v1/chat/completions", json=body, headers=headers, timeout=30)


async def spread(
    cluster: Cluster, secret: str, body: dict[str, Any], *, count: int, concurrency: int, prefix: str
) -> dict[str, Run]:
    """``count`` requests straight to the instances, half to each, ``concurrency`` in flight in all."""
    half, each = count // 2, max(1, concurrency // 2)
    runs = await asyncio.gather(
        drive(cluster.a.url, secret, lambda _: body, count=half, concurrency=each, prefix=f"{prefix}-a"),
        drive(cluster.b.url, secret, lambda _: body, count=count - half, concurrency=each, prefix=f"{prefix}-b"),
    )
    return dict(zip(("A", "B"), runs, strict=True))


def outcomes(runs: dict[str, Run]) -> list[Outcome]:
    return [o for run in runs.values() for o in run.outcomes]


def error_code(outcome: Outcome) -> str:
    return str(orjson.loads(outcome.body)["error"]["code"])


# --- revocation ---------------------------------------------------------------------------------


def test_a_key_revoked_through_one_instance_is_refused_by_the_other_within_5_s(
    cluster: Cluster, organization: Organization, owner: User
) -> None:
    """The owner revokes the key through instance A's management API; B has the key in its cache (2 s) and no
    signal passes between the instances: B refuses the key once its copy expires."""
    issued = issue_key(organization, created_by=owner)
    for instance in (cluster.a, cluster.b):
        assert chat(instance.url, issued.secret).status_code == 200  # each instance now holds the key
    token = str(AccessToken.for_user(owner))  # signed with the SECRET_KEY the instances share

    revoked = httpx.post(
        f"{cluster.a.url}/api/orgs/{organization.slug}/keys/{issued.api_key.pk}/revoke/",
        headers={"authorization": f"Bearer {token}"},
        timeout=10,
    )
    revoked_at = time.monotonic()
    assert revoked.status_code == 200, revoked.text
    assert revoked.json()["status"] == "revoked"

    refused_after: dict[str, float] = {}
    served_after_revocation = {"A": 0, "B": 0}
    last: dict[str, httpx.Response] = {}
    while len(refused_after) < 2 and time.monotonic() - revoked_at < 8:
        for instance in (cluster.a, cluster.b):
            if instance.name in refused_after:
                continue
            response = last[instance.name] = chat(instance.url, issued.secret)
            if response.status_code == 401:
                refused_after[instance.name] = time.monotonic() - revoked_at
            else:
                served_after_revocation[instance.name] += 1
        time.sleep(0.05)

    record(
        "revocation",
        key_cache_seconds=2,
        refused_after_seconds={k: round(v, 2) for k, v in sorted(refused_after.items())},
        served_after_revocation=served_after_revocation,
    )
    assert set(refused_after) == {"A", "B"}, {name: r.status_code for name, r in last.items()}
    for response in last.values():
        assert response.json()["error"]["code"] == "invalid_api_key"
        assert response.json()["error"]["message"] == "This API key has been revoked."
    assert refused_after["B"] < 5


# --- rate limits ----------------------------------------------------------------------------------

LIMIT = 20


def test_a_rate_limit_holds_across_both_instances_together(
    cluster: Cluster, organization: Organization, owner: User, fake_upstream: FakeUpstream
) -> None:
    """3L requests on a key limited to L per minute, half through each instance at once: L are admitted (GCRA
    admits a burst of the minute's allowance, then one more every 60/L s), the rest get 429."""
    issued = issue_key(organization, created_by=owner, rpm_limit=LIMIT)
    fake_upstream.reset()
    started = time.monotonic()
    runs = asyncio.run(spread(cluster, issued.secret, BODY, count=3 * LIMIT, concurrency=8, prefix="rl"))
    elapsed = time.monotonic() - started

    sent = outcomes(runs)
    admitted = {name: sum(o.status == 200 for o in run.outcomes) for name, run in runs.items()}
    refused = [o for o in sent if o.status == 429]
    total = sum(admitted.values())
    # The most GCRA can admit in the time the load took: the burst plus what the minute refilled meanwhile.
    most = LIMIT + int(elapsed * LIMIT / 60)
    rows = cluster.rows([o.request_id for o in sent])
    record(
        "rate_limit",
        limit_per_minute=LIMIT,
        sent=len(sent),
        admitted=total,
        admitted_by_instance=admitted,
        refused=len(refused),
        seconds=round(elapsed, 2),
        upstream_calls=fake_upstream.stats()["requests"],
    )
    assert LIMIT <= total <= most
    assert len(refused) == len(sent) - total, sorted({o.status for o in sent})
    assert {error_code(o) for o in refused} == {"rate_limit_exceeded"}
    # Both instances refused requests: neither counted only its own.
    assert all(sum(o.status == 429 for o in run.outcomes) for run in runs.values())
    assert fake_upstream.stats()["requests"] == total
    assert sorted(len(found) for found in rows.values()) == sorted([1] * total + [0] * len(refused))


# --- budgets --------------------------------------------------------------------------------------

BUDGET_USD = Decimal("0.000005")


def test_a_budget_holds_across_both_instances_together(
    cluster: Cluster, organization: Organization, owner: User
) -> None:
    """120 requests through both instances at once against an organization budget that fits about 35 of them:
    recorded spend never passes the limit (each request holds its worst case before the call, so the documented
    overshoot is zero), and the budget is used up to within one worst-case hold per request in flight."""
    issued = issue_key(organization, created_by=owner)
    budget = Budget.objects.create(
        organization=organization, scope="organization", period="daily", limit_usd=BUDGET_USD, alert_thresholds=[]
    )
    budget = Budget.objects.select_related("organization").get(pk=budget.pk)
    concurrency = 8
    model = get_catalog_sync().get("fake-small")
    assert model is not None
    worst = worst_case_cost(model, worst_case_input_tokens(BODY), BODY["max_tokens"])

    runs = asyncio.run(spread(cluster, issued.secret, BODY, count=120, concurrency=concurrency, prefix="budget"))

    sent = outcomes(runs)
    answered = [o for o in sent if o.status == 200]
    refused = [o for o in sent if o.status != 200]
    rows = cluster.rows([o.request_id for o in sent])
    recorded = sum((r.cost_usd for found in rows.values() for r in found), Decimal(0))
    usage = budget_usage(budget)
    record(
        "budget",
        limit_usd=str(BUDGET_USD),
        worst_case_hold_usd=str(worst),
        sent=len(sent),
        answered=len(answered),
        answered_by_instance={name: sum(o.status == 200 for o in run.outcomes) for name, run in runs.items()},
        refused=len(refused),
        recorded_usd=str(recorded),
        used_share=round(float(recorded / BUDGET_USD), 3),
    )
    assert answered, "the budget fits some requests"
    assert refused, "and not all of them"
    assert {(o.status, error_code(o)) for o in refused} == {(429, "budget_exceeded")}
    assert all(sum(o.status == 429 for o in run.outcomes) for run in runs.values()), "both instances refused"
    assert sum(len(found) for found in rows.values()) == len(answered)
    assert recorded <= BUDGET_USD
    # A request is refused only when spent + held + its worst case passes the limit, and at most
    # concurrency - 1 others hold at once: so what is left unspent is less than `concurrency` worst cases.
    assert BUDGET_USD - recorded < concurrency * worst
    assert (usage.spent_usd, usage.reserved_usd) == (recorded, Decimal(0)), "the counter equals the ledger"


_TASK = re.compile(r"Task billing\.budget_alert_deliver\[([0-9a-f-]+)\] (received|succeeded)")


def _alert_tasks(log: str) -> tuple[set[str], set[str]]:
    received: set[str] = set()
    succeeded: set[str] = set()
    for task_id, what in _TASK.findall(log):
        (received if what == "received" else succeeded).add(task_id)
    return received, succeeded


def mail_subjects(cluster: Cluster) -> list[str]:
    """The subject of every message the worker's file backend wrote (one file per connection, messages separated
    by a line of 79 dashes), unfolded."""
    subjects = []
    for path in cluster.worker.mail_dir.iterdir():
        for raw in path.read_text(errors="replace").split("\n" + "-" * 79 + "\n"):
            if raw.strip():
                subjects.append(" ".join(str(email.message_from_string(raw)["Subject"]).split()))
    return subjects


def test_a_budget_alert_fires_once_not_once_per_instance(
    cluster: Cluster, organization: Organization, owner: User
) -> None:
    """A soft budget passed 50, 80, 95 and 100% by requests through both instances at once: each threshold is
    queued once (one settlement crosses it, whichever instance made it), recorded once and emailed once."""
    issued = issue_key(organization, created_by=owner)
    budget = Budget.objects.create(
        organization=organization, scope="organization", period="daily", limit_usd=BUDGET_USD, hard_limit=False
    )
    thresholds = sorted(budget.alert_thresholds)
    assert thresholds == [50, 80, 95, 100]
    already = _alert_tasks(cluster.worker.log.read_text(errors="replace"))[0]

    runs = asyncio.run(spread(cluster, issued.secret, BODY, count=60, concurrency=8, prefix="alert"))

    sent = outcomes(runs)
    assert {o.status for o in sent} == {200}, "a soft budget refuses nothing"
    rows = cluster.rows([o.request_id for o in sent])
    spent = sum((r.cost_usd for found in rows.values() for r in found), Decimal(0))
    assert spent > BUDGET_USD, "the load passes every threshold"
    # Each alert was queued by the settlement that crossed it, before that request was answered: every task is
    # on the broker now. Wait until the worker has taken the queue and finished everything it took.
    broker = sync_redis()
    deadline = time.monotonic() + 30
    while True:
        received, succeeded = (s - already for s in _alert_tasks(cluster.worker.log.read_text(errors="replace")))
        idle = broker.llen(cluster.worker.queue) == 0 and received == succeeded
        if (idle and BudgetAlert.objects.filter(budget=budget, email_sent_at__isnull=False).count() == 4) or (
            time.monotonic() > deadline
        ):
            break
        time.sleep(0.1)
    alerts = list(BudgetAlert.objects.filter(budget=budget).order_by("threshold"))
    subject = re.compile(rf"^\[ModelMuxer\] {re.escape(organization.name)}: .* reached (\d+)% of")
    mailed = sorted(int(match[1]) for s in mail_subjects(cluster) if (match := subject.match(s)))
    record(
        "budget_alert",
        thresholds=thresholds,
        requests=len(sent),
        tasks_queued=len(received),
        alerts_recorded=len(alerts),
        emails=mailed,
        notifications=Notification.objects.filter(organization=organization).count(),
    )
    assert len(received) == len(thresholds), "one task per threshold crossed, not one per instance"
    assert received == succeeded
    assert [a.threshold for a in alerts] == thresholds
    assert all(a.email_sent_at is not None for a in alerts)
    assert mailed == thresholds
    assert Notification.objects.filter(organization=organization).count() == len(thresholds)


# --- response cache -------------------------------------------------------------------------------


def test_an_answer_cached_through_one_instance_is_served_by_the_other(
    cluster: Cluster, organization: Organization, owner: User, fake_upstream: FakeUpstream
) -> None:
    """A temperature-0 request answered through A is kept in Redis; the same request through B (and four more
    through nginx) is a hit: one provider call in all, and $0 records for the hits."""
    issued = issue_key(organization, created_by=owner)
    body = {
        "model": "fake-small",
        "temperature": 0,
        "messages": [{"role": "user", "content": f"What is the capital of France? ({uuid.uuid4().hex})"}],
    }
    fake_upstream.reset()
    first = chat(cluster.a.url, issued.secret, body)
    assert first.status_code == 200, first.text
    assert first.headers["x-muxer-cache"] == "miss"
    # The answer is stored just after it is sent: wait for the entry rather than race it.
    answered_at = time.monotonic()
    redis = sync_redis()
    pattern = f"mm:resp:*chat:{organization.pk}:*"
    kept_on_answer = any(redis.scan_iter(match=pattern, count=1000))
    while not any(redis.scan_iter(match=pattern, count=1000)) and time.monotonic() - answered_at < 5:
        time.sleep(0.001)
    kept_after_ms = (time.monotonic() - answered_at) * 1000

    second = chat(cluster.b.url, issued.secret, body)
    through_nginx = [chat(cluster.url, issued.secret, body) for _ in range(4)]

    cluster.wait_drained()
    rows = list(UsageRecord.objects.filter(organization=organization).order_by("created_at"))
    record(
        "response_cache",
        first=first.headers["x-muxer-cache"],
        second_through_b=second.headers.get("x-muxer-cache"),
        through_nginx=[r.headers.get("x-muxer-cache") for r in through_nginx],
        upstream_calls=fake_upstream.stats()["requests"],
        kept_when_first_answered=kept_on_answer,
        kept_within_ms=round(kept_after_ms, 1),
    )
    assert second.status_code == 200, second.text
    assert second.headers["x-muxer-cache"] == "hit"
    assert second.headers["x-muxer-route-reason"] == "cache"
    assert second.headers["x-muxer-cost-usd"] == "0"
    assert second.json()["choices"] == first.json()["choices"]
    assert second.json()["id"] != first.json()["id"]
    assert [(r.status_code, r.headers.get("x-muxer-cache")) for r in through_nginx] == [(200, "hit")] * 4
    assert fake_upstream.stats()["requests"] == 1
    assert [(r.cache_hit, r.cost_usd > 0) for r in rows] == [(False, True)] + [(True, False)] * 5


# --- metrics ------------------------------------------------------------------------------------------


def test_the_metrics_of_both_instances_add_up_to_the_ledger(
    cluster: Cluster, organization: Organization, owner: User
) -> None:
    """60 requests, half through each instance, on a key limited to 40 a minute; each instance's /metrics is
    scraped directly. Summed over the instances, requests answered, refused, tokens and cost equal what the
    clients saw and what the ledger holds."""
    issued = issue_key(organization, created_by=owner, rpm_limit=40)
    runs = asyncio.run(spread(cluster, issued.secret, BODY, count=60, concurrency=8, prefix="metrics"))
    sent = outcomes(runs)
    answered = [o for o in sent if o.status == 200]
    refused = [o for o in sent if o.status == 429]
    rows = [r for found in cluster.rows([o.request_id for o in sent]).values() for r in found]

    org = str(organization.pk)
    scraped = {name: instance.metrics() for name, instance in cluster.instances.items()}

    def total(name: str, **labels: str) -> float:
        return sum(metric_sum(text, name, org=org, **labels) for text in scraped.values())

    by_instance = {
        name: int(metric_sum(text, "muxer_requests_total", org=org, status="200")) for name, text in scraped.items()
    }
    ledger: dict[str, int | Decimal] = {
        "answered": len(rows),
        "input_tokens": sum(r.input_tokens for r in rows),
        "output_tokens": sum(r.output_tokens for r in rows),
        "cost_usd": sum((r.cost_usd for r in rows), Decimal(0)),
    }
    metrics = {
        "answered": total("muxer_requests_total", status="200"),
        "refused": total("muxer_requests_total", status="429"),
        "rate_limited": total("muxer_rate_limited_total"),
        "input_tokens": total("muxer_tokens_total", direction="input"),
        "output_tokens": total("muxer_tokens_total", direction="output"),
        "cost_usd": total("muxer_cost_usd_total"),
    }
    record(
        "metrics",
        sent=len(sent),
        answered=len(answered),
        refused=len(refused),
        answered_by_instance=by_instance,
        ledger={k: str(v) for k, v in ledger.items()},
        metrics=metrics,
    )
    assert len(answered) + len(refused) == len(sent)
    assert refused, "the limit refused some"
    assert all(by_instance.values()), "both instances answered: the sum is over both"
    assert metrics["answered"] == ledger["answered"] == len(answered)
    assert metrics["refused"] == metrics["rate_limited"] == len(refused)
    assert metrics["input_tokens"] == ledger["input_tokens"]
    assert metrics["output_tokens"] == ledger["output_tokens"]
    assert math.isclose(metrics["cost_usd"], float(ledger["cost_usd"]), rel_tol=1e-9)


# --- an instance lost mid-load ----------------------------------------------------------------------

COUNT = 240
CONCURRENCY = 8
STOP_AT = 48


@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
def test_an_instance_stopped_mid_load_loses_no_usage_and_charges_nothing_twice(
    cluster: Cluster, organization: Organization, owner: User, fake_upstream: FakeUpstream, how: signal.Signals
) -> None:
    """240 requests through nginx, 8 in flight; instance A gets ``how`` a fifth of the way in, and nginx retries on
    B whatever A no longer accepts. Every request answered 200 has exactly one charged usage row, and no request
    has two. After SIGTERM (a 0.5 s drain, then in-flight requests finish) nothing fails and every provider answer
    is billed. After SIGKILL only requests in flight on A fail (502, named in the figures), none is charged twice,
    and only a provider answer A received and never answered can go unbilled."""
    issued = issue_key(organization, created_by=owner)
    body = {"model": "fake-small", "messages": [{"role": "user", "content": "Hello [fake latency_ms=40]"}]}
    fake_upstream.reset()
    victim: Instance = cluster.a
    stopped_at: list[float] = []

    def stop_at(index: int) -> None:
        if index == STOP_AT:
            victim.process.send_signal(how)
            stopped_at.append(time.monotonic())

    run = asyncio.run(
        drive(cluster.url, issued.secret, lambda _: body, count=COUNT, concurrency=CONCURRENCY,
              prefix=f"stop-{how.name.lower()}", during=stop_at)
    )  # fmt: skip
    exit_code = victim.process.wait(timeout=30)
    seconds_to_exit = time.monotonic() - stopped_at[0]

    ids = [o.request_id for o in run.outcomes]
    rows = cluster.rows(ids)
    lines = cluster.nginx_lines(set(ids))
    answered = [o for o in run.outcomes if o.status == 200]
    failed = [o for o in run.outcomes if o.status != 200]
    unrecorded = [o.request_id for o in answered if len(rows[o.request_id]) != 1]
    doubled = [rid for rid, found in rows.items() if len(found) > 1]
    retried = sorted(rid for rid, line in lines.items() if len(line.upstreams) > 1)
    served_by_victim = [rid for rid, line in lines.items() if (line.status, line.upstreams) == (200, (victim.address,))]
    charged_unanswered = [o.request_id for o in failed if rows[o.request_id]]
    recorded = sum(len(found) for found in rows.values())
    # Provider answers the fake upstream sent whose usage never reached the ledger.
    unbilled = fake_upstream.stats()["completed"] - recorded
    wrong = [
        (r.request_id, r.status, str(r.cost_usd))
        for o in answered
        for r in rows[o.request_id]
        if r.status != "ok" or r.cost_usd <= 0
        or r.output_tokens != orjson.loads(o.body)["usage"]["completion_tokens"]
    ]  # fmt: skip
    record(
        f"instance_{how.name.lower()}",
        requests=COUNT,
        in_flight=CONCURRENCY,
        answered=len(answered),
        failed={o.request_id: (o.status, lines[o.request_id].upstream_statuses if o.request_id in lines else None)
                for o in failed},
        charged_without_answer=len(charged_unanswered),
        retried_by_nginx_on_b=len(retried),
        served_by_a_before_the_stop=len(served_by_victim),
        doubled=len(doubled),
        unrecorded_answers=len(unrecorded),
        unbilled_provider_answers=unbilled,
        exit_code=exit_code,
        seconds_to_exit=round(seconds_to_exit, 2),
    )  # fmt: skip
    assert len(lines) == COUNT, "nginx logged every request"
    assert served_by_victim, "A was serving when it was stopped"
    assert retried, "nginx retried on B what A no longer accepted"
    assert all(lines[rid].status == 200 for rid in retried)
    assert not unrecorded, unrecorded
    assert not doubled, doubled
    assert not wrong, wrong
    if how == signal.SIGTERM:
        # Drained: A finished what it had and nginx took the rest elsewhere; nothing failed, nothing unbilled.
        assert not failed, [(o.request_id, o.status) for o in failed]
        assert unbilled == 0
        assert exit_code == 0
    else:
        # Only requests in flight on A when it died can fail; each is charged at most once (asserted above), and
        # only a provider answer A got but never answered can go unbilled.
        assert len(failed) <= CONCURRENCY, [(o.request_id, o.status) for o in failed]
        assert all(o.status in (0, 502) for o in failed), [(o.request_id, o.status) for o in failed]
        assert 0 <= unbilled <= len(failed) - len(charged_unanswered)
