"""The PII guard: detection with validation, masking, restoring, policies and chat messages."""

from __future__ import annotations

import base64
import copy
import json
import string
from typing import Any

import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from routing.pii import (
    Finding,
    PIIAction,
    PIIEntity,
    PIIPolicy,
    guard,
    iban_valid,
    luhn_valid,
    mask,
    scan,
)

PROPERTY = hypothesis_settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
MASK_ALL = PIIPolicy(default=PIIAction.MASK)


def entities(text: str) -> list[PIIEntity]:
    return [finding.entity for finding in scan(text)]


# --- strategies for valid instances ---------------------------------------------------------------

ALNUM = string.ascii_letters + string.digits


def _luhn_complete(body: str) -> str:
    return next(body + d for d in string.digits if luhn_valid(body + d))


def _iban(country: str, bban: str) -> str:
    for check in range(100):
        candidate = f"{country}{check:02d}{bban}"
        if iban_valid(candidate):
            return candidate
    raise AssertionError("no check digits")


emails = st.builds(
    lambda local, domain, tld: f"{local}@{domain}.{tld}",
    st.from_regex(r"[a-z0-9]([a-z0-9_+\-]{0,10}[a-z0-9])?(\.[a-z0-9]{1,5})?", fullmatch=True),
    st.from_regex(r"[a-z0-9]([a-z0-9\-]{0,10}[a-z0-9])?", fullmatch=True),
    st.sampled_from(["com", "org", "io", "co.uk", "de", "example"]),
)

nanp_phones = st.builds(
    lambda area, exchange, line, layout: layout.format(a=area, e=exchange, n=line),
    st.integers(200, 999),
    st.integers(200, 999),
    st.integers(0, 9999).map(lambda n: f"{n:04d}"),
    st.sampled_from(["({a}) {e}-{n}", "{a}-{e}-{n}", "{a}.{e}.{n}", "{a} {e} {n}", "+1 {a} {e} {n}", "+1-{a}-{e}-{n}"]),
)
international_phones = st.builds(
    lambda country, groups: "+" + str(country) + "".join(" " + g for g in groups),
    st.integers(1, 99),
    st.lists(st.from_regex(r"[0-9]{2,4}", fullmatch=True), min_size=3, max_size=4).filter(
        lambda groups: 7 <= sum(map(len, groups)) <= 12
    ),
)
# A trunk 0, an area code and a subscriber number: 10 or 11 digits, as in "020 7946 0958".
national_phones = st.builds(
    lambda area, first, last: f"0{area} {first} {last}",
    st.from_regex(r"[1-9][0-9]{1,2}", fullmatch=True),
    st.from_regex(r"[0-9]{3,4}", fullmatch=True),
    st.from_regex(r"[0-9]{4}", fullmatch=True),
)
phones = st.one_of(nanp_phones, international_phones, national_phones)


@st.composite
def cards(draw: st.DrawFn) -> str:
    length = draw(st.sampled_from([13, 15, 16, 19]))
    body = draw(st.sampled_from("3456")) + draw(st.from_regex(rf"[0-9]{{{length - 2}}}", fullmatch=True))
    number = _luhn_complete(body)
    layout = {16: [4, 4, 4, 4], 15: [4, 6, 5], 19: [4, 4, 4, 4, 3]}.get(length)
    separator = draw(st.sampled_from(["", " ", "-"])) if layout else ""
    if not separator:
        return number
    groups, cursor = [], 0
    for size in layout or []:
        groups.append(number[cursor : cursor + size])
        cursor += size
    return separator.join(groups)


ssns = st.builds(
    lambda area, group, serial, sep: f"{area:03d}{sep}{group:02d}{sep}{serial:04d}",
    st.integers(1, 899).filter(lambda a: a != 666),
    st.integers(1, 99),
    st.integers(1, 9999),
    st.sampled_from(["-", " "]),
)

IBAN_COUNTRIES = {"DE": 18, "GB": 18, "FR": 23, "NL": 14, "ES": 20, "IT": 23, "CH": 17, "BE": 12}


@st.composite
def ibans(draw: st.DrawFn) -> str:
    country = draw(st.sampled_from(sorted(IBAN_COUNTRIES)))
    bban = draw(st.from_regex(rf"[0-9]{{{IBAN_COUNTRIES[country]}}}", fullmatch=True))
    compact = _iban(country, bban)
    if draw(st.booleans()):
        return compact
    return " ".join(compact[i : i + 4] for i in range(0, len(compact), 4))


ipv4s = st.ip_addresses(v=4).map(str)
# "::" and "::1" alone are too short to tell from code ("[::2]"); the guard needs two groups.
ipv6s = st.ip_addresses(v=6).map(str).filter(lambda a: len(a) >= 6 and sum(1 for g in a.split(":") if g) >= 2)

_key_body = st.text(alphabet=ALNUM, min_size=40, max_size=60).filter(lambda s: any(c.isdigit() for c in s))
secrets = st.one_of(
    _key_body.map(lambda b: "sk-" + b),
    _key_body.map(lambda b: "sk-proj-" + b),
    _key_body.map(lambda b: "sk-ant-api03-" + b),
    st.from_regex(r"AKIA[0-9A-Z]{16}", fullmatch=True),
    _key_body.map(lambda b: "ghp_" + b[:36]),
    _key_body.map(lambda b: "github_pat_" + b),
    st.text(alphabet=ALNUM + "_-", min_size=35, max_size=35).map(lambda b: "AIza" + b),
    _key_body.map(lambda b: "xoxb-" + b[:12] + "-" + b[12:]),
    _key_body.map(lambda b: "sk_live_" + b),
    _key_body.map(lambda b: "rk_live_" + b),
    _key_body.map(lambda b: "mm_live_" + b[:38]),
    _key_body.map(lambda b: f"-----BEGIN RSA PRIVATE KEY-----\nMIIE{b}\n{b}\n-----END RSA PRIVATE KEY-----"),
)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


jwts = st.builds(
    lambda alg, sub, sig: ".".join(
        [_b64(json.dumps({"alg": alg, "typ": "JWT"}).encode()), _b64(json.dumps({"sub": sub}).encode()), _b64(sig)]
    ),
    st.sampled_from(["HS256", "RS256", "ES256"]),
    st.text(max_size=20),
    st.binary(min_size=16, max_size=64),
)

INSTANCES = {
    PIIEntity.EMAIL: emails,
    PIIEntity.PHONE: phones,
    PIIEntity.CREDIT_CARD: cards(),
    PIIEntity.SSN: ssns,
    PIIEntity.IBAN: ibans(),
    PIIEntity.IP_ADDRESS: st.one_of(ipv4s, ipv6s),
    PIIEntity.SECRET: secrets,
    PIIEntity.JWT: jwts,
}
instances = st.one_of(*INSTANCES.values())

# Prose: words, punctuation and a few short numbers, never two numbers in a row.
_word = st.text(alphabet=string.ascii_letters + "éü'", min_size=1, max_size=10)
_token = st.one_of(
    _word,
    st.tuples(_word, st.integers(0, 999)).map(lambda t: f"{t[0]} {t[1]}"),
    st.tuples(_word, st.sampled_from(",.;:!?()")).map("".join),
)
prose = st.lists(_token, max_size=12).map(" ".join)


@st.composite
def texts_with_pii(draw: st.DrawFn) -> tuple[str, list[str]]:
    values = draw(st.lists(instances, min_size=1, max_size=4))
    pieces = [draw(prose)]
    for value in values:
        pieces += [value, draw(prose)]
    return " ".join(pieces), values


TRICKY = [
    "2024-01-15",
    "15/01/2024",
    "01.02.2024",
    "01.02.2024 10:30",
    "2024-01-15T10:30:00Z",
    "10:30:45",
    "12:34:56.789",
    "$1,299.99",
    "€ 12.50",
    "1 299,00 €",
    "USD 1500000",
    "99.9%",
    "v1.2.3",
    "Python 3.11.4",
    "Django 5.2",
    "1.0.0-rc.1",
    "2.10.3",
    "10.0.19041.1",
    "123e4567-e89b-12d3-a456-426614174000",
    "ORD-2024-000123",
    "order #A12345678",
    "order 1234567",
    "INV-00012345",
    "42",
    "3.14",
    "1e-9",
    "3f2a9c1",
    "a94a8fe5ccb19ba61c4c0873d391e987982fbbd3",
    "#ff00aa",
    "1700000000",
    "1700000000123",
    "978-3-16-148410-0",
    "94105-1234",
    "37.7749, -122.4194",
    "00:1A:2B:3C:4D:5E",
    "std::vector<int>",
    "xs[::2]",
    "xs[::-1]",
    "1 2 3 4 5 6 7 8 9 10 11 12 13",
    "page 12 of 345",
    "task-force and risk-free",
    "sk-learn",
    "[EMAIL_1]",
]


# --- properties -----------------------------------------------------------------------------------


@given(texts_with_pii())
@PROPERTY
def test_no_generated_instance_survives_masking(case: tuple[str, list[str]]) -> None:
    text, values = case
    masked, _ = mask(text)
    for value in values:
        assert value not in masked


@pytest.mark.parametrize("entity", list(PIIEntity))
@given(data=st.data())
@PROPERTY
def test_each_entity_type_is_detected_as_itself(entity: PIIEntity, data: st.DataObject) -> None:
    value = data.draw(INSTANCES[entity])
    surrounding = data.draw(prose)
    assert entities(f"{surrounding} {value} {surrounding}") == [entity]


@given(texts_with_pii())
@PROPERTY
def test_masking_is_idempotent(case: tuple[str, list[str]]) -> None:
    masked, _ = mask(case[0])
    assert mask(masked)[0] == masked
    assert scan(masked) == []


@given(texts_with_pii())
@PROPERTY
def test_restore_of_mask_is_the_original(case: tuple[str, list[str]]) -> None:
    masked, restorer = mask(case[0])
    assert restorer.restore(masked) == case[0]


@given(prose)
@PROPERTY
def test_prose_is_untouched(text: str) -> None:
    assert scan(text) == []
    assert mask(text)[0] == text


@given(st.lists(st.sampled_from(TRICKY), min_size=1, max_size=6), prose)
@PROPERTY
def test_tricky_non_pii_is_untouched(pieces: list[str], surrounding: str) -> None:
    text = f"{surrounding} {' '.join(pieces)} {surrounding}"
    assert scan(text) == []


@pytest.mark.parametrize("text", TRICKY)
def test_tricky_item_alone_is_not_pii(text: str) -> None:
    assert scan(text) == []


@given(texts_with_pii(), st.lists(st.integers(1, 12), min_size=1, max_size=40))
@PROPERTY
def test_stream_restorer_restores_across_any_chunking(case: tuple[str, list[str]], sizes: list[int]) -> None:
    masked, restorer = mask(case[0])
    stream, out, cursor = restorer.stream(), [], 0
    for size in sizes:
        out.append(stream.feed(masked[cursor : cursor + size]))
        cursor += size
    out.append(stream.feed(masked[cursor:]))
    out.append(stream.flush())
    assert "".join(out) == case[0]


# --- examples per entity --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("write to jane.doe+news@mail.example.co.uk today", [PIIEntity.EMAIL]),
        ("call (415) 555-0100", [PIIEntity.PHONE]),
        ("call +1 415 555 0100", [PIIEntity.PHONE]),
        ("call +44 20 7946 0958", [PIIEntity.PHONE]),
        ("call +33 1 23 45 67 89", [PIIEntity.PHONE]),
        ("call 020 7946 0958", [PIIEntity.PHONE]),
        ("call +14155550100", [PIIEntity.PHONE]),
        ("card 4111 1111 1111 1111", [PIIEntity.CREDIT_CARD]),
        ("card 4111-1111-1111-1111", [PIIEntity.CREDIT_CARD]),
        ("amex 3782 822463 10005", [PIIEntity.CREDIT_CARD]),
        ("card 5555555555554444 exp 12/27", [PIIEntity.CREDIT_CARD]),
        ("ssn 123-45-6789", [PIIEntity.SSN]),
        ("iban DE89 3704 0044 0532 0130 00", [PIIEntity.IBAN]),
        ("iban GB29NWBK60161331926819", [PIIEntity.IBAN]),
        ("iban GB29 NWBK 6016 1331 9268 19 thanks", [PIIEntity.IBAN]),
        ("host 192.168.1.20", [PIIEntity.IP_ADDRESS]),
        ("host 2001:db8::8a2e:370:7334", [PIIEntity.IP_ADDRESS]),
        ("host ::ffff:192.0.2.1", [PIIEntity.IP_ADDRESS]),
        ("key AKIAIOSFODNN7EXAMPLE", [PIIEntity.SECRET]),
        ("key AIzaSyA1234567890abcdefghijklmnopqrstuv", [PIIEntity.SECRET]),
        ("key xoxp-1234567890-abcdef", [PIIEntity.SECRET]),
    ],
)
def test_it_detects(text: str, expected: list[PIIEntity]) -> None:
    assert entities(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "card 4111 1111 1111 1112",  # Luhn-invalid
        "card 1234567812345678",  # Luhn-valid, but no card network starts with 1
        "iban DE88370400440532013000",  # wrong check digits
        "iban DE89 3704 0044 0532 0130 0",  # one short of Germany's 22
        "ssn 000-12-3456",
        "ssn 666-12-3456",
        "ssn 912-12-3456",
        "ssn 123-00-4567",
        "ssn 123-45-0000",
        "ssn 123456789",  # a bare nine-digit run is an id, not an SSN
        "ip 999.1.1.1",
        "ip 1.2.3.4.5",
        "ip 01.02.03.04",
        "phone 123-456-7890",  # no North American area code starts with 1
        "phone 4155550100",  # a bare digit run is an order id as often as a phone
        "user@localhost",
        "jwt eyJub3RfYWxnIjoxfQ.eyJzdWIiOiIxIn0.c2ln",  # header has no alg
        "hyphenated sk-this-is-just-a-long-hyphenated-phrase",
    ],
)
def test_it_does_not_detect(text: str) -> None:
    assert scan(text) == []


def test_an_iban_with_wrong_check_digits_is_not_an_iban() -> None:
    # Spaced, its last groups still read as a national phone number ("0532 0130 00"); only the IBAN is refused.
    assert PIIEntity.IBAN not in entities("iban DE88 3704 0044 0532 0130 00")


def test_it_masks_a_private_key_block_whole() -> None:
    text = "key:\n-----BEGIN EC PRIVATE KEY-----\nMHcCAQEEIBkg4LVWM9nuwNSk3yBQwJ4\n-----END EC PRIVATE KEY-----\nbye"
    assert mask(text)[0] == "key:\n[SECRET_1]\nbye"


def test_it_masks_a_truncated_private_key_up_to_the_prose() -> None:
    text = "-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASC\nMIIEvQIBADANBgkqhkiG9w0BAQEF\nthanks"
    assert mask(text)[0] == "[SECRET_1]\nthanks"


def test_it_detects_jwt_with_alg_header() -> None:
    token = (
        "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U"
    )
    assert scan(f"Bearer {token}") == [Finding(PIIEntity.JWT, 7, 7 + len(token))]


def test_findings_hold_positions_not_values() -> None:
    text = "mail jane@example.com"
    (finding,) = scan(text)
    assert (finding.start, finding.end) == (5, len(text))
    assert "jane" not in repr(finding)
    assert "jane" not in str(finding)


def test_same_value_gets_the_same_placeholder() -> None:
    masked, _ = mask("a@x.io b@x.io a@x.io 4111111111111111")
    assert masked == "[EMAIL_1] [EMAIL_2] [EMAIL_1] [CARD_1]"


def test_a_placeholder_already_in_the_text_is_not_handed_out() -> None:
    masked, restorer = mask("literal [EMAIL_1] and real a@x.io")
    assert masked == "literal [EMAIL_1] and real [EMAIL_2]"
    assert restorer.restore("[EMAIL_1] [EMAIL_2]") == "[EMAIL_1] a@x.io"


def test_restorer_repr_holds_no_values() -> None:
    _, restorer = mask("a@x.io")
    assert "a@x.io" not in repr(restorer)


def test_restore_in_json_escapes_the_original() -> None:
    text = "-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASC\n-----END PRIVATE KEY-----"
    _, restorer = mask(text)
    arguments = json.dumps({"key": "[SECRET_1]"})
    assert json.loads(restorer.restore_in_json(arguments)) == {"key": text}


def test_stream_restorer_passes_a_lone_bracket_through_at_the_end() -> None:
    _, restorer = mask("a@x.io")
    stream = restorer.stream()
    assert stream.feed("see [EMAIL_") == "see "
    assert stream.feed("1] and [x") == "a@x.io and [x"
    assert stream.feed("] [") == "] "
    assert stream.flush() == "["


# --- policy ---------------------------------------------------------------------------------------


def test_policy_from_dict() -> None:
    policy = PIIPolicy.from_dict({"default": "log", "email": "mask", "secret": "block"})
    assert policy.action_for(PIIEntity.EMAIL) is PIIAction.MASK
    assert policy.action_for(PIIEntity.SECRET) is PIIAction.BLOCK
    assert policy.action_for(PIIEntity.PHONE) is PIIAction.LOG
    assert PIIPolicy.from_dict(policy.to_dict()) == policy


def test_policy_default_is_off() -> None:
    assert PIIPolicy.from_dict({}).is_off


@pytest.mark.parametrize(
    ("raw", "named"),
    [
        ({"emails": "mask"}, "'emails'"),
        ({"email": "redact"}, "'redact'"),
        ({"default": "drop"}, "'drop'"),
        ({"ssn": None}, "None"),
        (["email"], "list"),
    ],
)
def test_policy_from_dict_names_the_bad_key_or_value(raw: object, named: str) -> None:
    with pytest.raises(ValueError, match=named):
        PIIPolicy.from_dict(raw)


# --- guard on chat messages -----------------------------------------------------------------------


def test_guard_masks_content_text_parts_and_tool_arguments_and_leaves_the_input_alone() -> None:
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": "Be brief."},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "I am jane@example.com"},
                {
                    "type": "image_url",
                    "image_url": {"url": "https://img.example/jane@example.com/4111111111111111.png"},
                },
            ],
        },
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "lookup", "arguments": '{"email": "jane@example.com", "ip": "10.0.0.7"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "Card on file 4111 1111 1111 1111"},
    ]
    before = copy.deepcopy(messages)
    result = guard(messages, MASK_ALL)
    assert messages == before
    out = result.messages
    assert out[1]["content"][0]["text"] == "I am [EMAIL_1]"
    assert out[1]["content"][1] == before[1]["content"][1]
    assert out[2]["tool_calls"][0]["function"]["arguments"] == '{"email": "[EMAIL_1]", "ip": "[IP_1]"}'
    assert out[3]["content"] == "Card on file [CARD_1]"
    assert result.counts == {PIIEntity.EMAIL: 2, PIIEntity.IP_ADDRESS: 1, PIIEntity.CREDIT_CARD: 1}
    assert not result.blocked
    assert out[1] is not messages[1]
    assert out[1]["content"][1] is not messages[1]["content"][1]
    assert result.restorer.restore("Hi [EMAIL_1]") == "Hi jane@example.com"


def test_guard_blocks_and_names_the_entities_and_still_masks_them() -> None:
    policy = PIIPolicy.from_dict({"default": "log", "secret": "block", "email": "mask"})
    result = guard([{"role": "user", "content": "use sk-abc123def456ghi789jkl012 as a@x.io from 10.1.2.3"}], policy)
    assert result.blocked
    assert result.blocked_entities == {PIIEntity.SECRET}
    assert result.messages[0]["content"] == "use [SECRET_1] as [EMAIL_1] from 10.1.2.3"
    assert result.counts == {PIIEntity.SECRET: 1, PIIEntity.EMAIL: 1, PIIEntity.IP_ADDRESS: 1}


def test_guard_ignores_entities_that_are_off() -> None:
    policy = PIIPolicy.from_dict({"default": "mask", "ip_address": "off"})
    result = guard([{"role": "user", "content": "a@x.io at 10.1.2.3"}], policy)
    assert result.messages[0]["content"] == "[EMAIL_1] at 10.1.2.3"
    assert result.counts == {PIIEntity.EMAIL: 1}


def test_guard_with_everything_off_returns_copies_untouched() -> None:
    messages = [{"role": "user", "content": "a@x.io"}]
    result = guard(messages, PIIPolicy())
    assert result.messages == messages
    assert result.messages[0] is not messages[0]
    assert result.counts == {}
    assert len(result.restorer) == 0


def test_guard_numbers_placeholders_across_messages() -> None:
    messages = [
        {"role": "user", "content": "a@x.io and [EMAIL_1] literally"},
        {"role": "assistant", "content": "b@x.io"},
        {"role": "user", "content": "a@x.io again"},
    ]
    result = guard(messages, MASK_ALL)
    assert [m["content"] for m in result.messages] == [
        "[EMAIL_2] and [EMAIL_1] literally",
        "[EMAIL_3]",
        "[EMAIL_2] again",
    ]


def test_8000_characters_of_clean_operational_text_have_no_findings() -> None:
    # Speed is measured by hand (about 0.1 ms for this text), not asserted here: the machine is shared.
    paragraph = (
        "On 2024-01-15 the router moved 1,204 requests (v1.2.3) to the cheaper model; latency p95 was 830 ms "
        "and the cost fell by 12.5%. See ticket ORD-2024-000123 and commit 3f2a9c1 for the details. "
    )
    text = (paragraph * (8000 // len(paragraph) + 1))[:8000]

    assert scan(text) == []
