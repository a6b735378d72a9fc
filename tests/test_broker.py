"""The Celery broker's client gives up on a frozen Redis instead of hanging the caller."""

from __future__ import annotations

import threading
import time

import pytest
from celery import Celery
from django.conf import settings

from tests.conftest import RedisServer


@pytest.mark.redis
def test_a_publish_to_a_frozen_broker_fails_within_its_timeouts(redis_server: RedisServer) -> None:
    app = Celery("broker-test", broker=redis_server.url)
    app.conf.update(
        broker_transport_options={**settings.CELERY_BROKER_TRANSPORT_OPTIONS, "socket_timeout": 0.5},
        task_publish_retry_policy=settings.CELERY_TASK_PUBLISH_RETRY_POLICY,
        broker_connection_retry_on_startup=True,
    )
    app.send_task("billing.budget_alert_deliver", args=(1, "2026-01-01T00:00:00+00:00", 80, "1"), queue="t")
    outcome: list[BaseException | None] = []

    def publish() -> None:
        try:
            app.send_task("billing.budget_alert_deliver", args=(1, "2026-01-01T00:00:00+00:00", 90, "1"), queue="t")
        except Exception as exc:
            outcome.append(exc)
        else:
            outcome.append(None)

    redis_server.freeze()
    started = time.monotonic()
    thread = threading.Thread(target=publish, daemon=True)
    thread.start()
    # Three attempts of at most 0.5 s each plus the retry intervals; a publish without a socket timeout never ends.
    thread.join(timeout=15)
    took = time.monotonic() - started
    redis_server.thaw()

    assert not thread.is_alive(), "the publish hung on the frozen broker"
    assert len(outcome) == 1
    assert outcome[0] is not None, "a publish to a frozen broker cannot have succeeded"
    assert took < 15
