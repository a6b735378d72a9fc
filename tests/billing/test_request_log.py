"""The opt-in request log: masking the bodies, storing them with their usage rows, and their retention."""

from __future__ import annotations

import base64
import copy
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from django.conf import settings as django_settings
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from pytest_django.fixtures import Settings as SettingsWrapper

from accounts.models import APIKey, Organization, User
from billing.models import RequestLog, UsageRecord
from billing.request_log import (
    TRUNCATION_MARKER,
    request_log_bodies,
    request_log_for_usage,
    request_log_purge,
    request_logged_usage_ids,
)
from billing.rollups import usage_records_expire
from billing.tasks import request_log_purge_task
from billing.usage import UsageEvent, usage_drain, usage_emit, usage_write_batch
from muxer_project.celery import app
from routing.pii import PIIEntity, PIIPolicy
from tests.factories import OrganizationFactory, issue_key

from .test_usage import T0, event, in_worker_thread

pytestmark = pytest.mark.django_db


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


JWT = ".".join([_b64(b'{"alg": "HS256", "typ": "JWT"}'), _b64(b'{"sub": "jane"}'), _b64(b"0123456789abcdef0123")])
# One value the detector knows for every entity type.
PII = {
    PIIEntity.EMAIL: "jane.doe@example.com",
    PIIEntity.PHONE: "+44 20 7946 0958",
    PIIEntity.CREDIT_CARD: "4111 1111 1111 1111",
    PIIEntity.SSN: "123-45-6789",
    PIIEntity.IBAN: "DE89 3704 0044 0532 0130 00",
    PIIEntity.IP_ADDRESS: "192.168.10.20",
    PIIEntity.SECRET: "AKIAIOSFODNN7EXAMPLE",
    PIIEntity.JWT: JWT,
}
EMAIL = PII[PIIEntity.EMAIL]


def stored_text(bodies: dict[str, Any]) -> str:
    return json.dumps(bodies, ensure_ascii=False)


def assert_no_pii(bodies: dict[str, Any]) -> None:
    text = stored_text(bodies)
    shown = [entity.value for entity, value in PII.items() if value in text]
    assert not shown, f"{shown} left unmasked in {text}"


@pytest.fixture
def key(organization: Organization, owner: User) -> APIKey:
    return issue_key(organization, created_by=owner).api_key


def chat_request(text: str) -> dict[str, Any]:
    return {"model": "auto", "temperature": 0, "messages": [{"role": "user", "content": text}]}


def answer(text: str) -> dict[str, Any]:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 12, "completion_tokens": 3, "total_tokens": 15},
    }


# --- masking ----------------------------------------------------------------------------------------


def test_every_entity_type_is_masked() -> None:
    prose = "; ".join(f"my {entity.value} is {value}" for entity, value in PII.items())

    bodies = request_log_bodies(request=chat_request(prose), response=answer(f"Noted: {prose}"))

    assert_no_pii(bodies)
    content = bodies["request"]["messages"][0]["content"]
    assert content == (
        "my email is [EMAIL_1]; my phone is [PHONE_1]; my credit_card is [CARD_1]; my ssn is [SSN_1]; "
        "my iban is [IBAN_1]; my ip_address is [IP_1]; my secret is [SECRET_1]; my jwt is [JWT_1]"
    )
    assert bodies["response"]["choices"][0]["message"]["content"] == f"Noted: {content}"


@pytest.mark.parametrize("policy", [{}, {"default": "off"}, {"default": "log"}, {"email": "off", "default": "mask"}])
def test_the_organizations_policy_does_not_matter(policy: dict[str, str]) -> None:
    # The policy governs what leaves for a provider; the log is data at rest and masks everything.
    assert PIIPolicy.from_dict(policy).action_for(PIIEntity.EMAIL).value in ("off", "log")

    bodies = request_log_bodies(request=chat_request(f"mail {EMAIL}"), response=None)

    assert bodies["request"]["messages"][0]["content"] == "mail [EMAIL_1]"


def test_text_parts_tool_arguments_user_and_metadata_are_masked() -> None:
    request: dict[str, Any] = {
        "model": "auto",
        "user": EMAIL,
        "metadata": {"customer": {"phone": PII[PIIEntity.PHONE]}, "tags": [PII[PIIEntity.IP_ADDRESS]]},
        "messages": [
            {"role": "system", "content": [{"type": "text", "text": f"Card on file: {PII[PIIEntity.CREDIT_CARD]}"}]},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": f"Send it to {EMAIL}"},
                    {"type": "image_url", "image_url": {"url": "https://example.com/cat.png", "detail": "low"}},
                ],
            },
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "call_1",
                        "type": "function",
                        "function": {
                            "name": "send",
                            "arguments": json.dumps({"to": EMAIL, "iban": PII[PIIEntity.IBAN]}),
                        },
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "call_1", "content": f"sent from {PII[PIIEntity.IP_ADDRESS]}"},
        ],
        "tools": [{"type": "function", "function": {"name": "send", "parameters": {"type": "object"}}}],
    }
    response = {
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": [{"type": "text", "text": f"Done, {EMAIL}."}],
                    "tool_calls": [
                        {
                            "id": "call_2",
                            "type": "function",
                            "function": {"name": "log", "arguments": f'{{"ssn": "{PII[PIIEntity.SSN]}"}}'},
                        }
                    ],
                },
            }
        ]
    }

    bodies = request_log_bodies(request=request, response=response)

    assert_no_pii(bodies)
    stored = bodies["request"]
    assert stored["user"] == "[EMAIL_1]"
    assert stored["metadata"] == {"customer": {"phone": "[PHONE_1]"}, "tags": ["[IP_1]"]}
    assert stored["messages"][0]["content"][0]["text"] == "Card on file: [CARD_1]"
    assert stored["messages"][1]["content"][0]["text"] == "Send it to [EMAIL_1]"
    assert stored["messages"][1]["content"][1] == request["messages"][1]["content"][1]
    arguments = stored["messages"][2]["tool_calls"][0]["function"]["arguments"]
    assert json.loads(arguments) == {"to": "[EMAIL_1]", "iban": "[IBAN_1]"}
    assert stored["messages"][3]["content"] == "sent from [IP_1]"
    assert stored["tools"] == request["tools"]
    message = bodies["response"]["choices"][0]["message"]
    assert message["content"] == [{"type": "text", "text": "Done, [EMAIL_1]."}]
    assert json.loads(message["tool_calls"][0]["function"]["arguments"]) == {"ssn": "[SSN_1]"}


def test_structure_numbers_and_flags_are_kept_and_the_inputs_untouched() -> None:
    request = {**chat_request(f"hi {EMAIL}"), "max_tokens": 50, "stream": True, "stop": None, "top_p": 0.5}
    response = answer("hello")
    originals = copy.deepcopy((request, response))

    bodies = request_log_bodies(request=request, response=response)

    assert (request, response) == originals
    assert {k: v for k, v in bodies["request"].items() if k != "messages"} == {
        "model": "auto",
        "temperature": 0,
        "max_tokens": 50,
        "stream": True,
        "stop": None,
        "top_p": 0.5,
    }
    assert bodies["response"] == response


def test_one_value_gets_one_placeholder_and_never_one_the_text_already_holds() -> None:
    other = "john@example.org"
    request = chat_request(f"Is [EMAIL_1] the same as {EMAIL}? And {other}? Again: {EMAIL}")

    bodies = request_log_bodies(request=request, response=answer(f"No, {other} differs."))

    assert (
        bodies["request"]["messages"][0]["content"]
        == "Is [EMAIL_1] the same as [EMAIL_2]? And [EMAIL_3]? Again: [EMAIL_2]"
    )
    assert bodies["response"]["choices"][0]["message"]["content"] == "No, [EMAIL_3] differs."


def test_a_missing_response_stays_none() -> None:
    assert request_log_bodies(request=chat_request("hi"), response=None) == {
        "request": chat_request("hi"),
        "response": None,
    }


# --- the size bound -----------------------------------------------------------------------------------


def size(body: Any) -> int:
    return len(json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode())


def test_a_long_body_is_cut_to_the_limit_with_a_marker(settings: SettingsWrapper) -> None:
    settings.MUXER_REQUEST_LOG_MAX_BYTES = 2000
    request = {
        "model": "auto",
        "messages": [{"role": "user", "content": "x" * 10_000}, {"role": "user", "content": "short"}],
    }

    stored = request_log_bodies(request=request, response=None)["request"]

    assert size(stored) <= 2000
    long, short = (m["content"] for m in stored["messages"])
    assert short == "short"
    head = long.split("…")[0]
    assert head == "x" * len(head)
    assert len(head) > 1000
    assert long == head + TRUNCATION_MARKER.format(count=10_000 - len(head))


def test_a_value_straddling_the_cut_is_masked_whole(settings: SettingsWrapper) -> None:
    settings.MUXER_REQUEST_LOG_MAX_BYTES = 1000
    card = PII[PIIEntity.CREDIT_CARD]
    # Wherever the cut falls near the start of the card, no part of its digits is left in clear.
    for pairs in range(400, 480):
        text = "a " * pairs + card + " " + "b" * 5000
        stored = request_log_bodies(request=chat_request(text), response=None)["request"]
        content = stored["messages"][0]["content"]
        assert size(stored) <= 1000
        assert "4111" not in content, content[-80:]
        assert "1111" not in content, content[-80:]


def test_inline_data_is_not_kept() -> None:
    data = "data:image/png;base64," + "iVBORw0KGgo" * 500
    request = {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": data}}]}]}

    url = request_log_bodies(request=request, response=None)["request"]["messages"][0]["content"][0]["image_url"]["url"]

    assert url == f"data:image/png;base64,…[{len(data) - 22} characters of inline data not kept]"


def test_a_body_of_many_small_values_falls_back_to_a_masked_head(settings: SettingsWrapper) -> None:
    settings.MUXER_REQUEST_LOG_MAX_BYTES = 1000
    request = {"input": [f"{EMAIL} {n}" for n in range(500)]}

    stored = request_log_bodies(request=request, response=None)["request"]

    assert stored["truncated"] is True
    assert stored["bytes"] > 1000
    assert stored["head"].startswith('{"input": ["[EMAIL_1] 0", "[EMAIL_1] 1"')
    assert size(stored) <= 1000
    assert EMAIL not in stored["head"]


def test_the_fallback_head_is_bounded_in_bytes_for_multibyte_text(settings: SettingsWrapper) -> None:
    settings.MUXER_REQUEST_LOG_MAX_BYTES = 1000
    request = {"input": ["日本語のテキスト🙂" for _ in range(400)]}

    stored = request_log_bodies(request=request, response=None)["request"]

    assert stored["truncated"] is True
    assert len(stored["head"].encode()) <= 500
    assert stored["head"].startswith('{"input": ["日本語のテキスト🙂"')
    assert size(stored) <= 1000


def test_the_default_limit_is_64_kib() -> None:
    assert django_settings.MUXER_REQUEST_LOG_MAX_BYTES == 64 * 1024


# --- storing with the usage rows ------------------------------------------------------------------------


def logged(key: APIKey, request_id: str, text: str = f"mail {EMAIL}", **overrides: Any) -> UsageEvent:
    bodies = request_log_bodies(request=chat_request(text), response=answer(f"re: {text}"))
    return event(key, request_id, request_log=bodies, **overrides)


def test_the_writer_stores_bodies_linked_to_their_usage_rows(key: APIKey) -> None:
    usage_write_batch([logged(key, "req_a", "first"), logged(key, "req_b", f"second {EMAIL}")])

    a = RequestLog.objects.get(usage__request_id="req_a")
    b = RequestLog.objects.get(usage__request_id="req_b")
    assert (a.organization_id, a.created_at) == (key.organization_id, datetime.fromtimestamp(T0, tz=UTC))
    assert a.request_body == chat_request("first")
    assert a.response_body == answer("re: first")
    assert b.request_body["messages"][0]["content"] == "second [EMAIL_1]"
    assert b.usage.organization_id == key.organization_id


def test_events_without_bodies_store_none(key: APIKey) -> None:
    usage_write_batch([event(key, "req_plain"), event(key, "req_none", request_log=None), logged(key, "req_logged")])

    assert UsageRecord.objects.count() == 3
    assert list(RequestLog.objects.values_list("usage__request_id", flat=True)) == ["req_logged"]


def test_a_failed_request_keeps_its_request_without_a_response(key: APIKey) -> None:
    bodies = request_log_bodies(request=chat_request("hi"), response=None)

    usage_write_batch([event(key, "req_err", status="error", http_status=502, request_log=bodies)])

    [row] = RequestLog.objects.all()
    assert (row.request_body, row.response_body) == (chat_request("hi"), None)


def test_a_redelivered_event_adds_nothing_and_the_first_stands(key: APIKey) -> None:
    usage_write_batch([logged(key, "req_1", "first")])
    usage_write_batch([logged(key, "req_1", "second"), logged(key, "req_1", "third"), logged(key, "req_2")])

    assert UsageRecord.objects.count() == 2
    assert RequestLog.objects.count() == 2
    assert RequestLog.objects.get(usage__request_id="req_1").request_body == chat_request("first")


def test_duplicates_in_one_batch_keep_the_first_bodies_as_the_row_keeps_the_first_event(key: APIKey) -> None:
    usage_write_batch([logged(key, "req_1", "first", output_tokens=1), logged(key, "req_1", "second", output_tokens=2)])

    [row] = RequestLog.objects.select_related("usage")
    assert row.usage.output_tokens == 1
    assert row.request_body == chat_request("first")


def test_each_cascade_step_gets_its_own_bodies(key: APIKey) -> None:
    usage_write_batch([logged(key, "req_c", "cheap try", attempt=1), logged(key, "req_c", "strong try", attempt=2)])

    bodies = {
        row.usage.attempt: row.request_body["messages"][0]["content"]
        for row in RequestLog.objects.select_related("usage")
    }
    assert bodies == {1: "cheap try", 2: "strong try"}


def test_bodies_never_attach_to_another_organizations_record_with_the_same_request_id(key: APIKey, owner: User) -> None:
    victim = OrganizationFactory.create()
    victim_key = issue_key(victim, created_by=owner, name="victim").api_key
    usage_write_batch([event(victim_key, "req_same")])

    usage_write_batch([logged(key, "req_same", "intruder")])

    assert UsageRecord.objects.get(request_id="req_same").organization_id == victim.pk
    assert not RequestLog.objects.exists()


# --- reading -----------------------------------------------------------------------------------------


def test_lookups_are_scoped_to_the_organization(key: APIKey, owner: User) -> None:
    usage_write_batch([logged(key, "req_mine"), event(key, "req_plain")])
    mine = UsageRecord.objects.get(request_id="req_mine")
    plain = UsageRecord.objects.get(request_id="req_plain")
    other = OrganizationFactory.create()

    found = request_log_for_usage(organization=key.organization, usage_id=mine.pk)
    assert found is not None
    assert found.usage == mine
    assert request_log_for_usage(organization=other, usage_id=mine.pk) is None
    assert request_log_for_usage(organization=key.organization, usage_id=plain.pk) is None
    assert request_logged_usage_ids(organization=key.organization, usage_ids=[mine.pk, plain.pk]) == {mine.pk}
    assert request_logged_usage_ids(organization=other, usage_ids=[mine.pk, plain.pk]) == set()


# --- retention --------------------------------------------------------------------------------------------

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def log_at(key: APIKey, request_id: str, age: timedelta) -> None:
    usage_write_batch([logged(key, request_id, created_at=(NOW - age).timestamp())])


def kept(organization: Organization) -> list[str]:
    return sorted(RequestLog.objects.filter(organization=organization).values_list("usage__request_id", flat=True))


def test_purge_respects_each_organizations_retention(key: APIKey, owner: User) -> None:
    short = key.organization
    Organization.objects.filter(pk=short.pk).update(request_log_retention_days=7, request_log_enabled=True)
    long = OrganizationFactory.create(request_log_retention_days=30, request_log_enabled=True)
    long_key = issue_key(long, created_by=owner, name="long").api_key
    for k, prefix in ((key, "s"), (long_key, "l")):
        log_at(k, f"{prefix}_new", timedelta(days=6, hours=23))
        log_at(k, f"{prefix}_8d", timedelta(days=8))
        log_at(k, f"{prefix}_31d", timedelta(days=31))

    result = request_log_purge(now=NOW)

    assert (result.deleted, result.organizations) == (3, 2)
    assert kept(short) == ["s_new"]
    assert kept(long) == ["l_8d", "l_new"]
    # Only the bodies go; the usage records stay.
    assert UsageRecord.objects.count() == 6


def test_turning_the_log_off_does_not_keep_old_bodies_forever(key: APIKey) -> None:
    Organization.objects.filter(pk=key.organization_id).update(request_log_retention_days=3, request_log_enabled=False)
    log_at(key, "old", timedelta(days=4))
    log_at(key, "recent", timedelta(days=1))

    request_log_purge(now=NOW)

    assert kept(key.organization) == ["recent"]


def test_purge_deletes_in_batches_until_nothing_is_left(key: APIKey) -> None:
    Organization.objects.filter(pk=key.organization_id).update(request_log_retention_days=1)
    for n in range(7):
        log_at(key, f"old_{n}", timedelta(days=2, minutes=n))
    log_at(key, "fresh", timedelta(hours=1))

    result = request_log_purge(now=NOW, batch_size=3)

    assert result.deleted == 7
    assert kept(key.organization) == ["fresh"]
    assert request_log_purge(now=NOW, batch_size=3).deleted == 0


def test_usage_retention_takes_the_bodies_with_their_records_and_counts_records_only(
    key: APIKey, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Retention of raw usage (90 days by default) outlasting the bodies' own is the usual case; when the
    # records go first, their bodies go with them.
    Organization.objects.filter(pk=key.organization_id).update(request_log_retention_days=3650)
    monkeypatch.setattr(timezone, "now", lambda: NOW)
    old = (NOW - timedelta(days=120)).timestamp()
    usage_write_batch([logged(key, "old_1", created_at=old), logged(key, "old_2", created_at=old + 60)])
    usage_write_batch([logged(key, "recent", created_at=(NOW - timedelta(days=1)).timestamp())])

    with CaptureQueriesContext(connection) as queries:
        result = usage_records_expire(batch_size=10)

    assert result.deleted == 2
    assert kept(key.organization) == ["recent"]
    # The batch's records are loaded by id alone before the cascade, never whole rows.
    loads = [q["sql"] for q in queries.captured_queries if 'FROM "billing_usagerecord"' in q["sql"]]
    assert not [sql for sql in loads if '"billing_usagerecord"."prompt_features"' in sql and "DELETE" not in sql]


def test_the_task_purges_against_the_clock_and_beat_runs_it(key: APIKey) -> None:
    Organization.objects.filter(pk=key.organization_id).update(request_log_retention_days=30)
    now = timezone.now()
    usage_write_batch([logged(key, "expired", created_at=(now - timedelta(days=30, minutes=5)).timestamp())])
    usage_write_batch([logged(key, "kept", created_at=(now - timedelta(days=29, hours=23)).timestamp())])

    summary = request_log_purge_task.apply().get()

    assert summary == {"deleted": 1, "organizations": 1}
    assert kept(key.organization) == ["kept"]
    schedule = django_settings.CELERY_BEAT_SCHEDULE["request-log-retention"]
    assert schedule["task"] == "billing.request_log_purge"
    app.loader.import_default_modules()
    assert app.tasks["billing.request_log_purge"].name == request_log_purge_task.name


# --- through the Redis stream, into PostgreSQL ---------------------------------------------------------


@pytest.mark.redis
@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("_close_loop_clients")
async def test_bodies_travel_the_usage_stream_and_a_redelivery_adds_nothing(key: APIKey, usage_stream: str) -> None:
    text = f"Schreib an {EMAIL} — café ✓"
    await usage_emit(logged(key, "req_stream", text))
    await usage_emit(logged(key, "req_stream", "a duplicate delivery"))
    await usage_emit(event(key, "req_plain"))

    assert await in_worker_thread(usage_drain)(block_ms=0) == 3

    rows = await in_worker_thread(
        lambda: list(RequestLog.objects.values_list("usage__request_id", "request_body", "response_body"))
    )()
    assert rows == [
        (
            "req_stream",
            chat_request("Schreib an [EMAIL_1] — café ✓"),
            answer("re: Schreib an [EMAIL_1] — café ✓"),
        )
    ]
    # JSON containment works on the stored bodies in PostgreSQL (a console search could use it).
    found = await in_worker_thread(
        lambda: RequestLog.objects.filter(request_body__contains={"model": "auto"}).count()
    )()
    assert found == 1
