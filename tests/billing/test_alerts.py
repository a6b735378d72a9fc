"""Budget alerts: crossing thresholds, once per period, email, signed webhook, console notifications, the task."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

import pytest
from celery.exceptions import Retry
from django.core import mail
from django.core.mail.backends.base import BaseEmailBackend
from django.db import connection
from django.urls import reverse
from pytest_django.fixtures import Settings as SettingsWrapper
from rest_framework.test import APIClient

from accounts.models import Organization, Role, User
from audit.models import AuditEvent
from billing import alerts
from billing.alerts import (
    budget_alert_record,
    budget_alert_send,
    thresholds_between,
    thresholds_crossed,
    webhook_signature_valid,
)
from billing.models import Budget, BudgetAlert, Notification
from billing.tasks import budget_alert_deliver
from tests.conftest import CeleryWorker, free_port
from tests.factories import MembershipFactory, OrganizationFactory, UserFactory

if TYPE_CHECKING:
    from rest_framework.response import _MonkeyPatchedResponse as Response

PERIOD_START = datetime(2026, 11, 1, tzinfo=UTC)
SECRET = "whsec_test_3f9c1a"
HOOK_TOKEN = "hook-token-7d21"


# --- a webhook receiver: the outside world's edge ------------------------------------------


@dataclass
class Delivery:
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class WebhookReceiver:
    url: str = ""
    received: list[Delivery] = field(default_factory=list)
    # Statuses to answer with, in order; 200 once they run out.
    statuses: list[int] = field(default_factory=list)


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    state = WebhookReceiver()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            state.received.append(Delivery(self.path, {k.lower(): v for k, v in self.headers.items()}, body))
            self.send_response(state.statuses.pop(0) if state.statuses else 200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{server.server_port}/hooks/muxer?token={HOOK_TOKEN}"
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def hooked(organization: Organization, receiver: WebhookReceiver) -> Organization:
    organization.webhook_url = receiver.url
    organization.webhook_secret = SECRET
    organization.save(update_fields=["webhook_url", "webhook_secret"])
    return organization


@pytest.fixture
def budget(organization: Organization) -> Budget:
    return Budget.objects.create(
        organization=organization,
        name="Monthly spend",
        scope="organization",
        period="monthly",
        limit_usd=Decimal("10"),
        alert_thresholds=[50, 80, 100],
    )


def send(budget: Budget, threshold: int = 50, spent: str = "5.25") -> alerts.AlertDelivery:
    fresh = Budget.objects.select_related("organization").get(pk=budget.pk)
    return budget_alert_send(budget=fresh, period_start=PERIOD_START, threshold=threshold, spent_usd=Decimal(spent))


def expected_signature(secret: str, timestamp: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()


# --- which thresholds a settlement crossed ------------------------------------------------------


@pytest.mark.parametrize(
    ("thresholds", "limit", "before", "after", "crossed"),
    [
        ([50, 80, 100], "10", "4", "6", [50]),
        ([50, 80, 100], "10", "4", "5", [50]),  # reaching a threshold is crossing it
        ([50, 80, 100], "10", "5", "6", []),  # already past 50 before this spend
        ([50, 80, 100], "10", "4", "10.5", [50, 80, 100]),
        ([50, 80, 100], "10", "9.99", "10", [100]),
        ([50, 80, 100], "10", "6", "4", []),  # spend never goes down; nothing to alert
        ([80, 50, 50], "10", "0", "9", [50, 80]),  # unsorted, repeated thresholds
        ([50, 100], "0", "0", "0.01", [50, 100]),  # a zero limit: the first spend crosses everything
        ([50, 100], "0", "0.01", "0.02", []),
        ([], "10", "0", "100", []),
    ],
)
def test_thresholds_between(thresholds: list[int], limit: str, before: str, after: str, crossed: list[int]) -> None:
    assert thresholds_between(thresholds, Decimal(limit), Decimal(before), Decimal(after)) == crossed


@pytest.mark.django_db
def test_nothing_crossed_costs_no_query_and_queues_nothing(
    budget: Budget, django_assert_num_queries: Any, django_capture_on_commit_callbacks: Any
) -> None:
    with django_assert_num_queries(0), django_capture_on_commit_callbacks() as callbacks:
        crossed = thresholds_crossed(
            budget.pk, PERIOD_START, Decimal("5.5"), Decimal("6"), thresholds=[50, 80, 100], limit_usd=Decimal(10)
        )

    assert crossed == []
    assert callbacks == []


@pytest.mark.django_db
def test_a_crossing_sends_email_webhook_and_notification_per_threshold(
    hooked: Organization,
    owner: User,
    budget: Budget,
    receiver: WebhookReceiver,
    mailoutbox: list[mail.EmailMessage],
    django_capture_on_commit_callbacks: Any,
) -> None:
    with django_capture_on_commit_callbacks(execute=True):
        crossed = thresholds_crossed(
            budget.pk, PERIOD_START, Decimal("4"), Decimal("8.5"), thresholds=[50, 80, 100], limit_usd=Decimal(10)
        )

    assert crossed == [50, 80]
    rows = list(BudgetAlert.objects.filter(budget=budget).order_by("threshold"))
    assert [(a.threshold, a.spent_usd, a.period_start) for a in rows] == [
        (50, Decimal("8.5"), PERIOD_START),
        (80, Decimal("8.5"), PERIOD_START),
    ]
    assert all(a.email_sent_at is not None and a.webhook_sent_at is not None for a in rows)
    assert [a.webhook_status for a in rows] == ["200", "200"]
    assert [m.to for m in mailoutbox] == [[owner.email], [owner.email]]
    assert sorted(json.loads(d.body)["threshold"] for d in receiver.received) == [50, 80]
    titles = sorted(Notification.objects.filter(organization=hooked).values_list("title", flat=True))
    assert titles == [
        "Budget 'Monthly spend' reached 50% of $10.00",
        "Budget 'Monthly spend' reached 80% of $10.00",
    ]


@pytest.mark.django_db
def test_without_the_thresholds_it_reads_the_budget(
    budget: Budget, django_capture_on_commit_callbacks: Any, django_assert_num_queries: Any
) -> None:
    with django_capture_on_commit_callbacks() as callbacks, django_assert_num_queries(1):
        crossed = thresholds_crossed(budget.pk, PERIOD_START, Decimal("7"), Decimal("8"))

    assert crossed == [80]
    assert len(callbacks) == 1
    assert thresholds_crossed(budget.pk + 1000, PERIOD_START, Decimal("0"), Decimal("100")) == []


@pytest.mark.django_db
def test_a_broker_that_refuses_the_task_does_not_break_the_settlement(
    budget: Budget,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    django_capture_on_commit_callbacks: Any,
) -> None:
    def refuse(*args: Any, **kwargs: Any) -> None:
        raise ConnectionError("broker down")

    monkeypatch.setattr(budget_alert_deliver, "delay", refuse)
    with django_capture_on_commit_callbacks(execute=True):
        crossed = thresholds_crossed(budget.pk, PERIOD_START, Decimal("0"), Decimal("6"))

    assert crossed == [50]
    assert "the 50% alert could not be queued" in caplog.text
    assert not BudgetAlert.objects.exists()


# --- once per period -------------------------------------------------------------------------------


@pytest.mark.django_db
def test_a_redelivery_sends_nothing_twice(
    hooked: Organization, budget: Budget, receiver: WebhookReceiver, mailoutbox: list[mail.EmailMessage]
) -> None:
    first = send(budget)
    again = send(budget, spent="5.40")

    assert (first.created, first.email, first.webhook) == (True, "sent", "sent")
    assert (again.created, again.email, again.webhook, again.retry) == (False, "already sent", "already sent", False)
    assert again.alert_id == first.alert_id
    assert len(mailoutbox) == 1
    assert len(receiver.received) == 1
    assert Notification.objects.filter(organization=hooked).count() == 1
    assert BudgetAlert.objects.get().spent_usd == Decimal("5.25")
    assert AuditEvent.objects.filter(action="budget.threshold_crossed").count() == 1


@pytest.mark.django_db
def test_the_next_period_alerts_again(budget: Budget, mailoutbox: list[mail.EmailMessage]) -> None:
    fresh = Budget.objects.select_related("organization").get(pk=budget.pk)
    for start in (PERIOD_START, datetime(2026, 12, 1, tzinfo=UTC)):
        budget_alert_send(budget=fresh, period_start=start, threshold=50, spent_usd=Decimal(5))

    assert BudgetAlert.objects.count() == 2
    assert len(mailoutbox) == 2


@pytest.mark.django_db(transaction=True)
def test_racing_workers_record_one_alert_and_one_notification(budget: Budget, catalog: None) -> None:
    workers = 8
    barrier = threading.Barrier(workers)
    created: list[bool] = []
    errors: list[BaseException] = []
    fresh = Budget.objects.select_related("organization").get(pk=budget.pk)

    def race() -> None:
        try:
            barrier.wait()
            _, was_created = budget_alert_record(
                budget=fresh, period_start=PERIOD_START, threshold=80, spent_usd=Decimal("8.1")
            )
            created.append(was_created)
        except BaseException as exc:
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=race) for _ in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert errors == []
    assert sorted(created) == [False] * (workers - 1) + [True]
    assert BudgetAlert.objects.filter(budget=budget).count() == 1
    assert Notification.objects.filter(organization=budget.organization).count() == 1


# --- email -----------------------------------------------------------------------------------


@pytest.mark.django_db
def test_the_email_goes_to_the_owners_and_says_what_was_spent(
    organization: Organization, owner: User, budget: Budget, mailoutbox: list[mail.EmailMessage]
) -> None:
    second_owner = MembershipFactory.create(organization=organization, role=Role.OWNER, user=UserFactory.create()).user
    MembershipFactory.create(organization=organization, role=Role.ADMIN, user=UserFactory.create())

    send(budget, threshold=80, spent="8.02")

    (message,) = mailoutbox
    assert sorted(message.to) == sorted([owner.email, second_owner.email])
    assert message.subject == f"[ModelMuxer] {organization.name}: Budget 'Monthly spend' reached 80% of $10.00"
    assert message.from_email == "ModelMuxer <alerts@modelmuxer.local>"
    assert f"{organization.name} has spent $8.02 of its monthly organization budget 'Monthly spend' ($10.00)" in (
        message.body
    )
    assert "passing the 80% alert" in message.body
    assert "The period began 2026-11-01 00:00 UTC." in message.body
    assert "Requests that would take spend past the limit are refused" in message.body


@pytest.mark.django_db
def test_the_email_goes_to_the_alert_address_when_there_is_one(
    organization: Organization, budget: Budget, mailoutbox: list[mail.EmailMessage]
) -> None:
    organization.alert_email = "finance@example.com"
    organization.save(update_fields=["alert_email"])

    send(budget)

    assert [m.to for m in mailoutbox] == [["finance@example.com"]]


class FailingEmailBackend(BaseEmailBackend):
    def send_messages(self, email_messages: Any) -> int:
        raise ConnectionRefusedError("the mail server is down")


@pytest.mark.django_db
def test_a_failed_email_is_given_back_for_the_retry(
    budget: Budget, settings: SettingsWrapper, mailoutbox: list[mail.EmailMessage]
) -> None:
    settings.EMAIL_BACKEND = f"{__name__}.FailingEmailBackend"
    failed = send(budget)
    assert (failed.email, failed.retry) == ("failed", True)
    assert BudgetAlert.objects.get().email_sent_at is None

    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
    retried = send(budget)

    assert (retried.created, retried.email, retried.retry) == (False, "sent", False)
    assert BudgetAlert.objects.get().email_sent_at is not None
    assert len(mail.outbox) == 1


# --- the signed webhook ------------------------------------------------------------------------


@pytest.mark.django_db
def test_the_webhook_is_signed_and_describes_the_alert(
    hooked: Organization, budget: Budget, receiver: WebhookReceiver
) -> None:
    before = int(time.time())
    send(budget, threshold=80, spent="8.02")

    (delivery,) = receiver.received
    timestamp = delivery.headers["x-muxer-timestamp"]
    assert before <= int(timestamp) <= time.time() + 1
    assert delivery.headers["x-muxer-signature"] == expected_signature(SECRET, timestamp, delivery.body)
    assert delivery.headers["content-type"] == "application/json"
    assert delivery.path == f"/hooks/muxer?token={HOOK_TOKEN}"
    alert = BudgetAlert.objects.get()
    assert json.loads(delivery.body) == {
        "id": alert.pk,
        "type": "budget.threshold_crossed",
        "organization": hooked.slug,
        "budget": {
            "id": budget.pk,
            "name": "Monthly spend",
            "scope": "organization",
            "period": "monthly",
            "limit_usd": "10.0000000000",
        },
        "threshold": 80,
        "spent_usd": "8.0200000000",
        "period_start": "2026-11-01T00:00:00+00:00",
        "created_at": alert.created_at.isoformat(),
    }


@pytest.mark.django_db
def test_a_receiver_can_verify_the_signature_and_spots_forgeries(
    hooked: Organization, budget: Budget, receiver: WebhookReceiver
) -> None:
    send(budget)
    (delivery,) = receiver.received
    timestamp, signature = delivery.headers["x-muxer-timestamp"], delivery.headers["x-muxer-signature"]

    assert webhook_signature_valid(SECRET, timestamp, delivery.body, signature)
    assert not webhook_signature_valid(SECRET, timestamp, delivery.body.replace(b"50", b"95"), signature)
    assert not webhook_signature_valid("whsec_other", timestamp, delivery.body, signature)
    assert not webhook_signature_valid(SECRET, str(int(timestamp) + 1), delivery.body, signature)
    assert not webhook_signature_valid(SECRET, timestamp, delivery.body, signature, now=int(timestamp) + 301)
    assert not webhook_signature_valid(SECRET, "yesterday", delivery.body, signature)


@pytest.mark.django_db
def test_a_failing_webhook_is_retried_until_it_is_taken(
    hooked: Organization, budget: Budget, receiver: WebhookReceiver, mailoutbox: list[mail.EmailMessage]
) -> None:
    receiver.statuses = [503]
    failed = send(budget)
    alert = BudgetAlert.objects.get()
    assert (failed.webhook, failed.retry) == ("failed", True)
    assert (alert.webhook_status, alert.webhook_sent_at) == ("HTTP 503", None)

    retried = send(budget)

    alert.refresh_from_db()
    assert (retried.email, retried.webhook, retried.retry) == ("already sent", "sent", False)
    assert alert.webhook_status == "200"
    assert alert.webhook_sent_at is not None
    assert len(receiver.received) == 2
    assert len(mailoutbox) == 1


@pytest.mark.django_db
def test_a_webhook_refused_for_good_is_not_retried(
    hooked: Organization, budget: Budget, receiver: WebhookReceiver
) -> None:
    receiver.statuses = [410]
    delivery = send(budget)

    assert (delivery.webhook, delivery.retry) == ("failed", False)
    assert BudgetAlert.objects.get().webhook_status == "HTTP 410"


@pytest.mark.django_db
def test_an_unreachable_webhook_is_retried(organization: Organization, budget: Budget) -> None:
    organization.webhook_url = f"http://127.0.0.1:{free_port()}/hook"
    organization.webhook_secret = SECRET
    organization.save()

    delivery = send(budget)

    assert (delivery.webhook, delivery.retry) == ("failed", True)
    assert BudgetAlert.objects.get().webhook_status == "error: ConnectError"


@pytest.mark.django_db
def test_no_unsigned_webhook_goes_out(organization: Organization, budget: Budget, receiver: WebhookReceiver) -> None:
    organization.webhook_url = receiver.url
    organization.save(update_fields=["webhook_url"])

    delivery = send(budget)

    assert (delivery.webhook, delivery.retry) == ("no secret", False)
    assert receiver.received == []
    assert BudgetAlert.objects.get().webhook_status == "not sent: no webhook secret"


@pytest.mark.django_db
def test_no_secret_reaches_the_logs(
    hooked: Organization, budget: Budget, receiver: WebhookReceiver, caplog: pytest.LogCaptureFixture
) -> None:
    receiver.statuses = [500]
    caplog.set_level("DEBUG")

    send(budget)

    assert "alert webhook failed (HTTP 500)" in caplog.text
    assert SECRET not in caplog.text
    assert HOOK_TOKEN not in caplog.text


# --- the task ----------------------------------------------------------------------------------


@pytest.mark.django_db
def test_the_task_retries_a_failing_webhook_with_backoff(
    hooked: Organization, budget: Budget, receiver: WebhookReceiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    receiver.statuses = [503]
    retries: list[dict[str, Any]] = []

    def retry(**kwargs: Any) -> Retry:
        retries.append(kwargs)
        return Retry()

    monkeypatch.setattr(budget_alert_deliver, "retry", retry)
    budget_alert_deliver.push_request(retries=2, is_eager=False)
    try:
        with pytest.raises(Retry):
            budget_alert_deliver.run(budget.pk, PERIOD_START.isoformat(), 50, "5.5")
    finally:
        budget_alert_deliver.pop_request()

    assert retries == [{"countdown": 120}]
    assert budget_alert_deliver.max_retries == 6


@pytest.mark.django_db
def test_in_eager_mode_the_task_tries_once(
    hooked: Organization, budget: Budget, receiver: WebhookReceiver, mailoutbox: list[mail.EmailMessage]
) -> None:
    receiver.statuses = [503, 503, 503]

    result = budget_alert_deliver.apply(args=(budget.pk, PERIOD_START.isoformat(), 50, "5.5")).get()

    assert result == {"alert": BudgetAlert.objects.get().pk, "created": True, "email": "sent", "webhook": "failed"}
    assert len(receiver.received) == 1


@pytest.mark.django_db
def test_the_task_skips_a_budget_deleted_since(budget: Budget) -> None:
    budget_id = budget.pk
    budget.delete()

    result = budget_alert_deliver.apply(args=(budget_id, PERIOD_START.isoformat(), 50, "5.5")).get()

    assert result == {"alert": None, "reason": "the budget no longer exists"}
    assert not BudgetAlert.objects.exists()


# --- a real worker on the broker ------------------------------------------------------------------


def wait_until(check: Any, what: str, worker: CeleryWorker, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.1)
    raise AssertionError(f"{what} did not happen in {timeout}s; worker log:\n{worker.log.read_text()}")


@pytest.mark.celery_worker
@pytest.mark.redis
@pytest.mark.postgres
def test_a_real_worker_delivers_an_alert_once_through_the_broker(
    celery_worker: CeleryWorker, hooked: Organization, owner: User, budget: Budget, receiver: WebhookReceiver
) -> None:
    # Autocommit (transactional database): the callback runs at once and the task goes to the broker.
    crossed = thresholds_crossed(
        budget.pk, PERIOD_START, Decimal("4.5"), Decimal("5.25"), thresholds=[50, 80, 100], limit_usd=Decimal(10)
    )
    assert crossed == [50]

    def delivered() -> bool:
        alert = BudgetAlert.objects.filter(budget=budget).first()
        return alert is not None and alert.webhook_status == "200" and alert.email_sent_at is not None

    wait_until(delivered, "the alert's delivery", celery_worker)

    (mail_file,) = celery_worker.mail_dir.iterdir()
    message = mail_file.read_text()
    assert f"To: {owner.email}" in message
    assert f"Subject: [ModelMuxer] {hooked.name}: Budget 'Monthly spend' reached 50% of $10.00" in message
    (delivery,) = receiver.received
    timestamp = delivery.headers["x-muxer-timestamp"]
    assert delivery.headers["x-muxer-signature"] == expected_signature(SECRET, timestamp, delivery.body)
    assert json.loads(delivery.body)["threshold"] == 50
    assert Notification.objects.filter(organization=hooked).count() == 1
    assert BudgetAlert.objects.filter(budget=budget).count() == 1

    # The same threshold again (a redelivery, or a counter rebuilt mid-period): nothing new goes out.
    again = budget_alert_deliver.delay(budget.pk, PERIOD_START.isoformat(), 50, "5.30")
    celery_worker.wait_for_task(again.id)

    assert f"budget_alert_deliver[{again.id}] succeeded" in celery_worker.log.read_text()
    assert len(list(celery_worker.mail_dir.iterdir())) == 1
    assert len(receiver.received) == 1
    assert Notification.objects.filter(organization=hooked).count() == 1
    assert BudgetAlert.objects.filter(budget=budget).count() == 1


# --- the console notifications API ------------------------------------------------------------


@pytest.fixture
def client() -> APIClient:
    return APIClient()


def as_user(client: APIClient, user: User) -> APIClient:
    client.force_authenticate(user)
    return client


def notify(organization: Organization, title: str) -> Notification:
    return Notification.objects.create(organization=organization, kind="budget.threshold_crossed", title=title)


@pytest.mark.django_db
def test_members_list_their_organizations_notifications_newest_first(
    client: APIClient, organization: Organization, member: User, outsider: User
) -> None:
    older, newer = notify(organization, "older"), notify(organization, "newer")
    notify(outsider.memberships.get().organization, "theirs")
    older.read_at = older.created_at
    older.save(update_fields=["read_at"])

    body = as_user(client, member).get(reverse("notification-list", args=[organization.slug])).json()

    assert [n["title"] for n in body["data"]] == ["newer", "older"]
    assert body["unread_count"] == 1
    assert set(body["data"][0]) == {"id", "kind", "title", "body", "data", "created_at", "read_at"}
    unread = client.get(reverse("notification-list", args=[organization.slug]), {"unread": "true"}).json()
    assert [n["id"] for n in unread["data"]] == [newer.pk]


@pytest.mark.django_db
def test_a_member_marks_a_notification_read_once(client: APIClient, organization: Organization, member: User) -> None:
    notification = notify(organization, "80% reached")
    url = reverse("notification-read", args=[organization.slug, notification.pk])

    first = as_user(client, member).post(url)
    second = client.post(url)

    assert first.status_code == 200
    assert first.json()["read_at"] is not None
    assert second.json()["read_at"] == first.json()["read_at"]
    notification.refresh_from_db()
    assert notification.read_at is not None


def notification_endpoints(org: str, notification_id: int) -> dict[str, tuple[str, str]]:
    return {
        "list": ("get", reverse("notification-list", args=[org])),
        "read": ("post", reverse("notification-read", args=[org, notification_id])),
    }


@pytest.mark.django_db
@pytest.mark.parametrize("endpoint", ["list", "read"])
def test_an_outsider_gets_404_from_every_notification_endpoint(
    client: APIClient, organization: Organization, outsider: User, endpoint: str
) -> None:
    notification = notify(organization, "ours")
    method, url = notification_endpoints(organization.slug, notification.pk)[endpoint]

    response: Response = getattr(as_user(client, outsider), method)(url)

    assert response.status_code == 404
    notification.refresh_from_db()
    assert notification.read_at is None


@pytest.mark.django_db
def test_a_viewer_reads_notifications_and_marks_them_read(client: APIClient, organization: Organization) -> None:
    viewer = MembershipFactory.create(organization=organization, role=Role.VIEWER, user=UserFactory.create()).user
    notification = notify(organization, "ours")

    listed = as_user(client, viewer).get(reverse("notification-list", args=[organization.slug]))
    marked = client.post(reverse("notification-read", args=[organization.slug, notification.pk]))

    assert listed.status_code == 200
    assert marked.status_code == 200
    notification.refresh_from_db()
    assert notification.read_at is not None


@pytest.mark.django_db
def test_another_organizations_notification_is_404(client: APIClient, organization: Organization, member: User) -> None:
    theirs = notify(OrganizationFactory.create(), "theirs")

    response = as_user(client, member).post(reverse("notification-read", args=[organization.slug, theirs.pk]))

    assert response.status_code == 404
    theirs.refresh_from_db()
    assert theirs.read_at is None
