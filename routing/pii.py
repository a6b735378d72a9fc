"""PII guard: find personal data and secrets in chat messages, mask them, put them back.

``scan(text)`` finds entities; ``guard(messages, policy)`` applies an
organization's ``PIIPolicy`` to OpenAI chat messages and returns masked copies,
counts, the block decision and a ``Restorer`` for the answer.

Detection is validated, not just shaped: cards pass Luhn, IBANs mod-97 and the
country's length, SSNs the area/group/serial rules, IP addresses the
``ipaddress`` module, JWTs a JSON header with ``alg``, phones a plausible digit
count in a recognised layout (international ``+``, North American, or national
with a trunk ``0``). Bare digit runs are never phones or SSNs, since order ids,
timestamps and the like look the same.

Masking replaces a value with a placeholder (``[EMAIL_1]``) that is stable
within one request, so the model can still tell two addresses apart and refer
to them; the ``Restorer`` maps placeholders in the answer back. Findings carry
positions only, never the value, so they are safe to log.

Speed: each detector runs only when a cheap substring test says it could match
(``@``, a digit, ``:``, ``eyJ``, a key prefix), and every pattern starts with a
character class so the regex engine can skip ahead; the prefix boundary is
checked in Python instead of with a leading look-behind, which would defeat that.
"""

from __future__ import annotations

import base64
import binascii
import copy
import ipaddress
import json
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from functools import cached_property
from typing import Any


class PIIEntity(StrEnum):
    EMAIL = "email"
    PHONE = "phone"
    CREDIT_CARD = "credit_card"
    SSN = "ssn"
    IBAN = "iban"
    IP_ADDRESS = "ip_address"
    SECRET = "secret"
    JWT = "jwt"


class PIIAction(StrEnum):
    OFF = "off"
    LOG = "log"
    MASK = "mask"
    BLOCK = "block"


PLACEHOLDER_LABELS: dict[PIIEntity, str] = {
    PIIEntity.EMAIL: "EMAIL",
    PIIEntity.PHONE: "PHONE",
    PIIEntity.CREDIT_CARD: "CARD",
    PIIEntity.SSN: "SSN",
    PIIEntity.IBAN: "IBAN",
    PIIEntity.IP_ADDRESS: "IP",
    PIIEntity.SECRET: "SECRET",
    PIIEntity.JWT: "JWT",
}

# When two detections cover exactly the same span, the earlier one names it.
_PRIORITY: dict[PIIEntity, int] = {
    entity: rank
    for rank, entity in enumerate(
        [
            PIIEntity.SECRET,
            PIIEntity.JWT,
            PIIEntity.CREDIT_CARD,
            PIIEntity.IBAN,
            PIIEntity.SSN,
            PIIEntity.EMAIL,
            PIIEntity.PHONE,
            PIIEntity.IP_ADDRESS,
        ]
    )
}


@dataclass(frozen=True, slots=True)
class Finding:
    """One detected entity at ``text[start:end]``. Deliberately holds no copy of the value."""

    entity: PIIEntity
    start: int
    end: int


# --- policy ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PIIPolicy:
    """What to do with each entity type; entities not listed get ``default``.

    Stored as JSON in the flat form ``{"default": "log", "email": "mask", "secret": "block"}``.
    """

    actions: Mapping[PIIEntity, PIIAction] = field(default_factory=dict)
    default: PIIAction = PIIAction.OFF

    def action_for(self, entity: PIIEntity) -> PIIAction:
        return self.actions.get(entity, self.default)

    @cached_property
    def is_off(self) -> bool:
        """Whether nothing is detected at all; worked out once, since the proxy asks on every request."""
        return all(self.action_for(entity) is PIIAction.OFF for entity in PIIEntity)

    @classmethod
    def from_dict(cls, raw: object) -> PIIPolicy:
        if not isinstance(raw, Mapping):
            raise ValueError(f"A PII policy must be an object, not {type(raw).__name__}.")
        default = PIIAction.OFF
        actions: dict[PIIEntity, PIIAction] = {}
        for key, value in raw.items():
            if key == "default":
                default = _parse_action(key, value)
                continue
            try:
                entity = PIIEntity(key)
            except ValueError:
                known = ", ".join(e.value for e in PIIEntity)
                raise ValueError(f"Unknown PII policy key {key!r}; expected 'default' or one of: {known}.") from None
            actions[entity] = _parse_action(key, value)
        return cls(actions=actions, default=default)

    def to_dict(self) -> dict[str, str]:
        return {"default": self.default.value} | {entity.value: action.value for entity, action in self.actions.items()}


def _parse_action(key: str, value: Any) -> PIIAction:
    try:
        return PIIAction(value)
    except ValueError:
        allowed = ", ".join(a.value for a in PIIAction)
        raise ValueError(f"Invalid PII action {value!r} for {key!r}; expected one of: {allowed}.") from None


# --- validators -----------------------------------------------------------------------------------


def luhn_valid(digits: str) -> bool:
    total = 0
    for index, char in enumerate(reversed(digits)):
        n = ord(char) - 48
        if index % 2:
            n = n * 2 - 9 if n > 4 else n * 2
        total += n
    return total % 10 == 0


# ISO 13616 lengths for the countries a European or Middle-East customer is likely to paste.
IBAN_LENGTHS: dict[str, int] = {
    "AD": 24, "AE": 23, "AL": 28, "AT": 20, "AZ": 28, "BA": 20, "BE": 16, "BG": 22, "BH": 22, "BR": 29,
    "CH": 21, "CR": 22, "CY": 28, "CZ": 24, "DE": 22, "DK": 18, "DO": 28, "EE": 20, "EG": 29, "ES": 24,
    "FI": 18, "FO": 18, "FR": 27, "GB": 22, "GE": 22, "GI": 23, "GL": 18, "GR": 27, "GT": 28, "HR": 21,
    "HU": 28, "IE": 22, "IL": 23, "IQ": 23, "IS": 26, "IT": 27, "JO": 30, "KW": 30, "KZ": 20, "LB": 28,
    "LI": 21, "LT": 20, "LU": 20, "LV": 21, "MC": 27, "MD": 24, "ME": 22, "MK": 19, "MR": 27, "MT": 31,
    "MU": 30, "NL": 18, "NO": 15, "PK": 24, "PL": 28, "PS": 29, "PT": 25, "QA": 29, "RO": 24, "RS": 22,
    "SA": 24, "SE": 24, "SI": 19, "SK": 24, "SM": 27, "TN": 24, "TR": 26, "UA": 29, "VG": 24, "XK": 20,
}  # fmt: skip


def iban_valid(compact: str) -> bool:
    """``compact`` is the IBAN without spaces, any case."""
    iban = compact.upper()
    if IBAN_LENGTHS.get(iban[:2]) != len(iban) or not iban[2:4].isdigit() or not iban.isalnum():
        return False
    rearranged = iban[4:] + iban[:4]
    return int("".join(str(int(char, 36)) for char in rearranged)) % 97 == 1


def ssn_valid(area: str, group: str, serial: str) -> bool:
    return area not in ("000", "666") and area[0] != "9" and group != "00" and serial != "0000"


def jwt_valid(token: str) -> bool:
    header = token.split(".", 1)[0]
    try:
        decoded = json.loads(base64.urlsafe_b64decode(header + "=" * (-len(header) % 4)))
    except (binascii.Error, ValueError):
        return False
    return isinstance(decoded, dict) and "alg" in decoded


# --- detectors ------------------------------------------------------------------------------------
# Each yields (start, end) of validated candidates. Overlaps between detectors are resolved later.

_WORD = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_")
_EMAIL_LOCAL = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._%+-")
_TOKEN = _WORD | {"-"}

_EMAIL_DOMAIN = re.compile(
    r"(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,63}(?![A-Za-z0-9-]|\.[A-Za-z0-9])"
)


def _preceded_by(text: str, index: int, chars: frozenset[str] | set[str]) -> bool:
    return index > 0 and text[index - 1] in chars


def _emails(text: str) -> Iterable[tuple[int, int]]:
    at = text.find("@")
    while at != -1:
        start = at
        while start > 0 and at - start < 64 and text[start - 1] in _EMAIL_LOCAL:
            start -= 1
        while start < at and text[start] == ".":
            start += 1
        local = text[start:at]
        domain = _EMAIL_DOMAIN.match(text, at + 1)
        if local and domain and ".." not in local and not local.endswith("."):
            yield start, domain.end()
            at = text.find("@", domain.end())
        else:
            at = text.find("@", at + 1)


_PHONE_INTERNATIONAL = re.compile(r"\+[1-9](?:[ .\-]?(?:\(\d{1,4}\)|\d)){6,18}(?!\d)", re.ASCII)
_PHONE_NANP = re.compile(r"(?:1[ .\-])?(?:\(\d{3}\)[ .\-]?|\d{3}[ .\-])\d{3}[ .\-]\d{4}(?!\d|[.\-]\d)", re.ASCII)
_PHONE_NATIONAL = re.compile(r"0\d{1,4}(?:[ .\-]\d{2,4}){1,4}(?!\d|[.\-:/]\d)", re.ASCII)
_GROUP_SPLIT = re.compile(r"[ .\-()]+")


def _find(
    pattern: re.Pattern[str],
    text: str,
    pos: int,
    endpos: int,
    not_after: frozenset[str],
    validate: Callable[[re.Match[str]], int | None],
) -> Iterable[tuple[int, int]]:
    """Spans of ``pattern`` that ``validate`` accepts (it returns the end, or None).

    Not finditer: a rejected match resumes one character on, since "1 (415) 555-0100" after
    another number fails as a whole yet holds a phone, and "7 4111 1111 1111 1111" a card.
    """
    while (match := pattern.search(text, pos, endpos)) is not None:
        start = match.start()
        end = None if _preceded_by(text, start, not_after) else validate(match)
        if end is None:
            pos = start + 1
        else:
            yield start, end
            pos = end


def _international_phone(match: re.Match[str]) -> int | None:
    # A greedy match can run into a following number; drop trailing groups until the count fits E.164.
    candidate = match.group()
    while True:
        digits = sum(c.isdigit() for c in candidate) - candidate.count("(0)")
        if digits <= 15:
            break
        cut = max(candidate.rfind(" "), candidate.rfind("-"), candidate.rfind("."))
        if cut <= 1:
            break
        candidate = candidate[:cut]
    return match.start() + len(candidate) if 8 <= digits <= 15 else None


def _nanp_phone(match: re.Match[str]) -> int | None:
    groups = [g for g in _GROUP_SPLIT.split(match.group()) if g]
    if groups[0] == "1":
        groups = groups[1:]
    area, exchange = groups[0], groups[1]
    return None if area[0] in "01" or exchange[0] in "01" else match.end()


def _national_phone(match: re.Match[str]) -> int | None:
    candidate = match.group()
    separators = {c for c in candidate if not c.isdigit()}
    digits = sum(c.isdigit() for c in candidate)
    # One kind of separator only: "01.02.2024 10" is a date and a time, not a phone.
    return match.end() if len(separators) == 1 and 9 <= digits <= 12 and candidate[1] != "0" else None


def _phones(text: str, pos: int, endpos: int) -> Iterable[tuple[int, int]]:
    yield from _find(_PHONE_INTERNATIONAL, text, pos, endpos, _TOKEN | {"+"}, _international_phone)
    yield from _find(_PHONE_NANP, text, pos, endpos, _TOKEN | {".", "+"}, _nanp_phone)
    yield from _find(_PHONE_NATIONAL, text, pos, endpos, _TOKEN | {".", "+", "/", ":"}, _national_phone)


_CARD = re.compile(r"\d(?:[ \-]?\d){12,18}(?!\d|-\d)", re.ASCII)


def _card_prefix(candidate: str) -> str | None:
    """The longest leading run of ``candidate``'s groups that is a valid card number, as text."""
    separators = {c for c in candidate if not c.isdigit()}
    if not separators:
        return candidate if candidate[0] in "23456" and luhn_valid(candidate) else None
    if len(separators) > 1:
        return None
    separator = separators.pop()
    groups = candidate.split(separator)
    # Every card layout (4-4-4-4, 4-6-5, 4-6-4, 4-4-4-4-3) opens with four digits.
    if len(groups[0]) != 4:
        return None
    while groups:
        digits = "".join(groups)
        if len(digits) < 13:
            return None
        if all(3 <= len(g) <= 6 for g in groups) and len(digits) <= 19 and digits[0] in "23456" and luhn_valid(digits):
            return separator.join(groups)
        groups.pop()
    return None


def _card(match: re.Match[str]) -> int | None:
    card = _card_prefix(match.group())
    return None if card is None else match.start() + len(card)


def _cards(text: str, pos: int, endpos: int) -> Iterable[tuple[int, int]]:
    return _find(_CARD, text, pos, endpos, _TOKEN | {".", "+"}, _card)


_SSN = re.compile(r"(\d{3})([\- ])(\d{2})\2(\d{4})(?!\d|-\d)", re.ASCII)


def _ssn(match: re.Match[str]) -> int | None:
    return match.end() if ssn_valid(match[1], match[3], match[4]) else None


def _ssns(text: str, pos: int, endpos: int) -> Iterable[tuple[int, int]]:
    return _find(_SSN, text, pos, endpos, _TOKEN | {"."}, _ssn)


def _iban_at(text: str, start: int) -> int | None:
    """The end of a valid IBAN starting at ``start``, if there is one."""
    length = IBAN_LENGTHS.get(text[start : start + 2].upper())
    if length is None or _preceded_by(text, start, _WORD):
        return None
    # Walk the characters, allowing one space between groups of four as IBANs are printed.
    chars: list[str] = []
    index = start
    while len(chars) < length and index < len(text):
        char = text[index]
        if char.isascii() and char.isalnum():
            chars.append(char)
        elif not (char == " " and len(chars) % 4 == 0 and index + 1 < len(text) and text[index + 1] != " "):
            break
        index += 1
    if len(chars) == length and not _followed_by_word(text, index) and iban_valid("".join(chars)):
        return index
    return None


_IPV4 = re.compile(r"\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3}(?!\d|\.\d)", re.ASCII)
_IPV6 = re.compile(r"[0-9A-Fa-f]{0,4}:[0-9A-Fa-f:]*:[0-9A-Fa-f]*(?:\.\d{1,3}){0,3}", re.ASCII)


def _ipv4(match: re.Match[str]) -> int | None:
    if _followed_by_word(match.string, match.end()):
        return None
    try:
        ipaddress.IPv4Address(match.group())
    except ValueError:
        return None
    return match.end()


def _ipv4s(text: str, pos: int, endpos: int) -> Iterable[tuple[int, int]]:
    return _find(_IPV4, text, pos, endpos, _WORD | {"."}, _ipv4)


_HEX_OR_COLON = frozenset("0123456789abcdefABCDEF:")
_COLON_PAIR = re.compile(r":[0-9A-Fa-f]{0,4}:")


def _ipv6s(text: str) -> Iterable[tuple[int, int]]:
    # Search from the colons (a literal is fast to find), then back up to where the address could start.
    pos = 0
    while (colons := _COLON_PAIR.search(text, pos)) is not None:
        start = colons.start()
        while start > 0 and text[start - 1] in _HEX_OR_COLON:
            start -= 1
        match = _IPV6.match(text, start)
        end = match.end() if match else colons.end()
        pos = max(end, colons.start() + 1)
        if match is None:
            continue
        candidate = match.group()
        if candidate.endswith(":") and not candidate.endswith("::"):
            candidate, end = candidate[:-1], end - 1
        if _preceded_by(text, start, _WORD | {":", "."}) or _followed_by_word(text, end):
            continue
        # Two real groups at least: "[::2]" (a Python slice) and "a::b" in prose are not addresses.
        if sum(1 for group in re.split(r"[:.]", candidate) if group) < 2 or len(candidate) < 6:
            continue
        try:
            ipaddress.IPv6Address(candidate)
        except ValueError:
            continue
        yield start, end


def _followed_by_word(text: str, index: int) -> bool:
    return index < len(text) and text[index] in _WORD


# Keyed by the key's head up to its first "-" or "_". Searching the text for each prefix costs a few
# microseconds apiece; instead one pass finds separators that follow a plausible head (a look-behind
# after a character class is cheap; before it, it would make the engine try every position).
_KEY_PATTERNS: dict[str, re.Pattern[str]] = {
    head: re.compile(pattern, re.ASCII)
    for heads, pattern in [
        (("sk-",), r"sk-[A-Za-z0-9_\-]{20,}"),  # OpenAI (sk-, sk-proj-) and Anthropic (sk-ant-)
        (("ghp_", "gho_", "ghu_", "ghs_", "ghr_"), r"gh[pousr]_[A-Za-z0-9]{36,}"),  # GitHub tokens
        (("github_",), r"github_pat_[A-Za-z0-9_]{22,}"),  # GitHub fine-grained tokens
        (("xoxb-", "xoxa-", "xoxp-", "xoxr-", "xoxs-"), r"xox[baprs]-[0-9A-Za-z\-]{10,}"),  # Slack tokens
        (("sk_", "rk_"), r"[sr]k_(?:live|test)_[0-9A-Za-z]{16,}"),  # Stripe secret and restricted keys
        (("mm_",), r"mm_(?:live|test)_[0-9A-Za-z]{20,}"),  # ModelMuxer keys
    ]
    for head in heads
}
_KEY_SEPARATOR = re.compile(r"[-_](?:(?<=sk.)|(?<=rk.)|(?<=mm.)|(?<=gh[pousr].)|(?<=xox[baprs].)|(?<=github.))")
_UPPERCASE_KEY = re.compile(r"A(?:KIA|SIA)[0-9A-Z]{16}(?![0-9A-Za-z])|AIza[0-9A-Za-z_\-]{35}", re.ASCII)


def _keys(text: str) -> Iterable[tuple[int, int]]:
    pos = 0
    while (separator := _KEY_SEPARATOR.search(text, pos)) is not None:
        head_start = separator.start()
        while head_start > 0 and separator.start() - head_start < 6 and text[head_start - 1].isalpha():
            head_start -= 1
        pattern = _KEY_PATTERNS.get(text[head_start : separator.end()])
        match = pattern.match(text, head_start) if pattern else None
        pos = separator.end()
        if match is None or _preceded_by(text, head_start, _TOKEN):
            continue
        pos = match.end()
        # sk- and xox- allow hyphens, so hyphenated prose could match; real keys are random and have digits.
        if text.startswith(("sk-", "xox"), head_start) and not any(c.isdigit() for c in match.group()):
            continue
        yield match.span()
    for match in _UPPERCASE_KEY.finditer(text):
        if not _preceded_by(text, match.start(), _TOKEN):
            yield match.span()


_PEM_BEGIN = re.compile(r"-----BEGIN ((?:[A-Z0-9]+ )*)PRIVATE KEY-----")
# Without an END line (a truncated paste), take the base64 lines that follow; prose words are shorter.
_PEM_BODY = re.compile(r"(?:(?:\s|\\[rn])*[A-Za-z0-9+/=]{16,})*")


def _secrets(text: str) -> Iterable[tuple[int, int]]:
    yield from _keys(text)
    if "-----BEGIN" in text:
        for match in _PEM_BEGIN.finditer(text):
            end_marker = f"-----END {match[1]}PRIVATE KEY-----"
            end = text.find(end_marker, match.end())
            if end != -1:
                yield match.start(), end + len(end_marker)
            else:
                yield match.start(), _PEM_BODY.match(text, match.end()).end()  # type: ignore[union-attr]


_JWT = re.compile(r"eyJ[A-Za-z0-9_\-]{2,}\.[A-Za-z0-9_\-]{2,}\.[A-Za-z0-9_\-]*")


def _jwts(text: str) -> Iterable[tuple[int, int]]:
    for match in _JWT.finditer(text):
        if not _preceded_by(text, match.start(), _TOKEN | {"."}) and jwt_valid(match.group()):
            yield match.span()


# Digits are found on an ASCII copy where every digit is "0": a literal the regex engine jumps to,
# several times faster than scanning for a character class. A cluster is digits joined by at most
# two separators; the digit detectors only look inside clusters long enough to hold an entity.
_DIGITS_TO_ZERO = bytes.maketrans(b"123456789", b"000000000")
_DIGIT_CLUSTER = re.compile(rb"0(?:[ \-.()/:+]{0,2}0)*")
_MIN_CLUSTER = len("1.1.1.1")
_Detector = Callable[[str, int, int], Iterable[tuple[int, int]]]
_CLUSTER_DETECTORS: list[tuple[PIIEntity, _Detector]] = [
    (PIIEntity.CREDIT_CARD, _cards),
    (PIIEntity.SSN, _ssns),
    (PIIEntity.PHONE, _phones),
    (PIIEntity.IP_ADDRESS, _ipv4s),
]


def _detect(text: str) -> list[Finding]:
    """Every validated detection, minus those inside a longer one (a card-like run inside an IBAN).

    Partial overlaps between detectors remain; both are real findings.
    """
    raw = [Finding(PIIEntity.SECRET, start, end) for start, end in _secrets(text)]
    raw.extend(Finding(PIIEntity.JWT, start, end) for start, end in _jwts(text))
    if "@" in text:
        raw.extend(Finding(PIIEntity.EMAIL, start, end) for start, end in _emails(text))
    if ":" in text:
        raw.extend(Finding(PIIEntity.IP_ADDRESS, start, end) for start, end in _ipv6s(text))
    # "replace" keeps one byte per character, so positions carry over.
    zeroed = text.encode("ascii", "replace").translate(_DIGITS_TO_ZERO)
    for cluster in _DIGIT_CLUSTER.finditer(zeroed):
        start, end = cluster.span()
        if start >= 2 and (iban_end := _iban_at(text, start - 2)) is not None:
            raw.append(Finding(PIIEntity.IBAN, start - 2, iban_end))
        if end - start < _MIN_CLUSTER:
            continue
        # A cluster ends where no digit follows within two separators, so ``end`` never cuts short
        # a look-ahead; a leading "+" or "(" belongs to a phone number.
        window = start - 1 if start and text[start - 1] in "+(" else start
        for entity, detector in _CLUSTER_DETECTORS:
            raw.extend(Finding(entity, s, e) for s, e in detector(text, window, end))
    if len(raw) < 2:
        return raw
    raw.sort(key=lambda f: (f.start, f.start - f.end, _PRIORITY[f.entity]))
    kept: list[Finding] = []
    reach = -1
    for finding in raw:
        if finding.end <= reach:
            continue
        kept.append(finding)
        reach = finding.end
    return kept


def _merge(findings: list[Finding]) -> list[Finding]:
    """Non-overlapping spans; partial overlaps join and take the name of their longest member."""
    merged: list[Finding] = []
    group: list[Finding] = []
    for finding in findings:
        if group and finding.start >= max(f.end for f in group):
            merged.append(_join(group))
            group = []
        group.append(finding)
    if group:
        merged.append(_join(group))
    return merged


def _join(group: list[Finding]) -> Finding:
    if len(group) == 1:
        return group[0]
    name = min(group, key=lambda f: (f.start - f.end, _PRIORITY[f.entity])).entity
    return Finding(name, group[0].start, max(f.end for f in group))


def scan(text: str) -> list[Finding]:
    """The entities in ``text``, in order and not overlapping."""
    return _merge(_detect(text))


# --- masking and restoring ------------------------------------------------------------------------

_LABELS = "|".join(PLACEHOLDER_LABELS.values())
PLACEHOLDER = re.compile(rf"\[(?:{_LABELS})_[1-9]\d{{0,5}}\]", re.ASCII)
_PLACEHOLDER_PREFIX = re.compile(r"\[([A-Z]*)(_\d{0,6})?", re.ASCII)
_PLACEHOLDER_MAX = max(len(label) for label in PLACEHOLDER_LABELS.values()) + 9


class Restorer:
    """Puts the originals back for the placeholders one request's masking handed out.

    Holds the raw values, so its repr shows only how many.
    """

    def __init__(self, originals: Mapping[str, str] | None = None) -> None:
        self._originals: dict[str, str] = dict(originals or {})

    def __repr__(self) -> str:
        return f"<Restorer: {len(self._originals)} placeholders>"

    def __len__(self) -> int:
        return len(self._originals)

    def restore(self, text: str) -> str:
        if not self._originals or "[" not in text:
            return text
        return PLACEHOLDER.sub(lambda m: self._originals.get(m.group(), m.group()), text)

    def restore_in_json(self, text: str) -> str:
        """Restore inside JSON text (tool call arguments), escaping originals such as a multi-line key."""
        if not self._originals or "[" not in text:
            return text
        return PLACEHOLDER.sub(
            lambda m: json.dumps(self._originals[m.group()])[1:-1] if m.group() in self._originals else m.group(),
            text,
        )

    def stream(self, *, json: bool = False) -> StreamRestorer:
        """A restorer for one stream of deltas (one per choice, and one per tool call's arguments, with ``json``)."""
        return StreamRestorer(self, json=json)

    def restore_completion(self, body: dict[str, Any]) -> None:
        """Restore an OpenAI ``chat.completion`` in place: each choice's content, refusal and call arguments."""
        if not self._originals:
            return
        for choice in _dicts(body.get("choices")):
            message = choice.get("message")
            if not isinstance(message, dict):
                continue
            for key in ("content", "refusal"):
                value = message.get(key)
                if isinstance(value, str):
                    message[key] = self.restore(value)
                else:
                    for part in _dicts(value):
                        if isinstance(part.get("text"), str):
                            part["text"] = self.restore(part["text"])
            for function in _functions(message):
                function["arguments"] = self.restore_in_json(function["arguments"])


class StreamRestorer:
    """Restores streamed text, holding back a chunk's tail that may be the start of a split placeholder."""

    def __init__(self, restorer: Restorer, *, json: bool = False) -> None:
        self._restorer = restorer
        self._restore = restorer.restore_in_json if json else restorer.restore
        self._pending = ""

    @property
    def pending(self) -> bool:
        return bool(self._pending)

    def feed(self, chunk: str) -> str:
        text = self._pending + chunk
        self._pending = ""
        if not len(self._restorer):
            return text
        bracket = text.rfind("[", max(0, len(text) - _PLACEHOLDER_MAX))
        if bracket != -1 and _could_become_placeholder(text[bracket:]):
            self._pending = text[bracket:]
            text = text[:bracket]
        return self._restore(text)

    def flush(self) -> str:
        text, self._pending = self._pending, ""
        return self._restore(text)


class CompletionStreamRestorer:
    """Restores a stream of OpenAI ``chat.completion.chunk`` objects in place, chunk by chunk.

    Each choice's content and refusal, and each tool call's arguments, has a
    ``StreamRestorer`` of its own, so a placeholder split across chunks is put
    back whole. Text held back at a choice's end goes out with its finish reason.
    """

    def __init__(self, restorer: Restorer) -> None:
        self._restorer = restorer
        self._texts: dict[tuple[int, str], StreamRestorer] = {}
        self._arguments: dict[tuple[int, int], StreamRestorer] = {}

    def feed(self, chunk: dict[str, Any]) -> None:
        for choice in _dicts(chunk.get("choices")):
            index = choice.get("index", 0)
            delta = choice.get("delta")
            if not isinstance(delta, dict):
                delta = {}
            for key in ("content", "refusal"):
                text = delta.get(key)
                if isinstance(text, str) and text:
                    delta[key] = self._stream(self._texts, (index, key), False).feed(text)
            for position, function in _delta_functions(delta):
                function["arguments"] = self._stream(self._arguments, (index, position), True).feed(
                    function["arguments"]
                )
            if choice.get("finish_reason") and self._finish(index, delta):
                choice["delta"] = delta

    def _stream(self, streams: dict[Any, StreamRestorer], key: Any, json: bool) -> StreamRestorer:
        stream = streams.get(key)
        if stream is None:
            stream = streams[key] = self._restorer.stream(json=json)
        return stream

    def _finish(self, index: int, delta: dict[str, Any]) -> bool:
        """Add what the choice's streams still hold to its last delta; whether there was any."""
        held = False
        for (choice, key), stream in self._texts.items():
            if choice == index and stream.pending:
                delta[key] = (delta.get(key) or "") + stream.flush()
                held = True
        for (choice, position), stream in self._arguments.items():
            if choice == index and stream.pending:
                if position == -1:
                    function = delta.setdefault("function_call", {})
                    function["arguments"] = (function.get("arguments") or "") + stream.flush()
                else:
                    calls = delta.setdefault("tool_calls", [])
                    calls.append({"index": position, "function": {"arguments": stream.flush()}})
                held = True
        return held


def _dicts(value: Any) -> Iterable[dict[str, Any]]:
    return (item for item in value if isinstance(item, dict)) if isinstance(value, list) else ()


def _functions(message: dict[str, Any]) -> Iterable[dict[str, Any]]:
    """The function objects with string arguments in a message: its tool calls' and a legacy function call."""
    functions = [call.get("function") for call in _dicts(message.get("tool_calls"))]
    functions.append(message.get("function_call"))
    return (f for f in functions if isinstance(f, dict) and isinstance(f.get("arguments"), str))


def _delta_functions(delta: dict[str, Any]) -> Iterable[tuple[int, dict[str, Any]]]:
    """(tool call position, function) pairs with string arguments in a stream delta; a legacy call is position -1."""
    for call in _dicts(delta.get("tool_calls")):
        function = call.get("function")
        if isinstance(function, dict) and isinstance(function.get("arguments"), str):
            yield call.get("index", 0), function
    legacy = delta.get("function_call")
    if isinstance(legacy, dict) and isinstance(legacy.get("arguments"), str):
        yield -1, legacy


def _could_become_placeholder(tail: str) -> bool:
    match = _PLACEHOLDER_PREFIX.fullmatch(tail)
    if match is None:
        return False
    label, number = match.groups()
    if number is None:
        return any(known.startswith(label) for known in PLACEHOLDER_LABELS.values())
    return label in PLACEHOLDER_LABELS.values()


class _Masker:
    """Hands out placeholders for one request: one per distinct value, never one already in the input."""

    def __init__(self, reserved: set[str]) -> None:
        self._reserved = reserved
        self._by_value: dict[tuple[str, str], str] = {}
        self._next: dict[str, int] = {}
        self.originals: dict[str, str] = {}

    def placeholder(self, entity: PIIEntity, value: str) -> str:
        label = PLACEHOLDER_LABELS[entity]
        existing = self._by_value.get((label, value))
        if existing is not None:
            return existing
        number = self._next.get(label, 1)
        while f"[{label}_{number}]" in self._reserved:
            number += 1
        self._next[label] = number + 1
        placeholder = f"[{label}_{number}]"
        self._by_value[(label, value)] = placeholder
        self.originals[placeholder] = value
        return placeholder

    def mask(self, text: str, spans: list[Finding]) -> str:
        pieces: list[str] = []
        cursor = 0
        for span in spans:
            pieces.append(text[cursor : span.start])
            pieces.append(self.placeholder(span.entity, text[span.start : span.end]))
            cursor = span.end
        pieces.append(text[cursor:])
        return "".join(pieces)


def mask(text: str) -> tuple[str, Restorer]:
    """Mask every entity in one text; for a quick check or a single prompt outside chat messages."""
    masker = _Masker(set(PLACEHOLDER.findall(text)) if "[" in text else set())
    masked = masker.mask(text, scan(text))
    return masked, Restorer(masker.originals)


def describe_counts(counts: Mapping[PIIEntity, int]) -> str:
    """``email=1,phone=2``: the entity types found and how often, by name; never a value."""
    return ",".join(f"{entity.value}={counts[entity]}" for entity in sorted(counts, key=lambda e: e.value))


# --- chat messages --------------------------------------------------------------------------------


@dataclass(frozen=True)
class GuardResult:
    messages: list[dict[str, Any]]
    counts: dict[PIIEntity, int]
    blocked_entities: frozenset[PIIEntity]
    restorer: Restorer

    @property
    def blocked(self) -> bool:
        return bool(self.blocked_entities)


def _text_slots(messages: list[dict[str, Any]]) -> list[tuple[dict[str, Any], str]]:
    """The (container, key) pairs holding text in OpenAI chat messages: contents, text parts, tool call arguments."""
    slots: list[tuple[dict[str, Any], str]] = []
    for message in messages:
        if not isinstance(message, dict):
            continue
        content = message.get("content")
        if isinstance(content, str):
            slots.append((message, "content"))
        elif isinstance(content, list):
            for part in content:
                if isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str):
                    slots.append((part, "text"))
        calls = message.get("tool_calls")
        functions = (
            [call.get("function") for call in calls if isinstance(call, dict)] if isinstance(calls, list) else []
        )
        functions.append(message.get("function_call"))
        for function in functions:
            if isinstance(function, dict) and isinstance(function.get("arguments"), str):
                slots.append((function, "arguments"))
    return slots


def guard(messages: list[dict[str, Any]], policy: PIIPolicy) -> GuardResult:
    """Apply ``policy`` to chat messages. The input is never modified; the result's messages are copies.

    ``mask`` and ``block`` entities are both replaced in the copies (a blocked request's
    messages are then safe to log); ``log`` entities are only counted.
    """
    copied = copy.deepcopy(messages)
    if policy.is_off:
        return GuardResult(copied, {}, frozenset(), Restorer())
    slots = _text_slots(copied)
    reserved: set[str] = set()
    for container, key in slots:
        if "[" in container[key]:
            reserved.update(PLACEHOLDER.findall(container[key]))
    masker = _Masker(reserved)
    counts: dict[PIIEntity, int] = {}
    blocked: set[PIIEntity] = set()
    for container, key in slots:
        text = container[key]
        to_mask: list[Finding] = []
        for finding in _detect(text):
            action = policy.action_for(finding.entity)
            if action is PIIAction.OFF:
                continue
            counts[finding.entity] = counts.get(finding.entity, 0) + 1
            if action is PIIAction.BLOCK:
                blocked.add(finding.entity)
            if action in (PIIAction.MASK, PIIAction.BLOCK):
                to_mask.append(finding)
        if to_mask:
            container[key] = masker.mask(text, _merge(to_mask))
    return GuardResult(copied, counts, frozenset(blocked), Restorer(masker.originals))
