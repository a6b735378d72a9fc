"""What an audit row may hold: no secrets and no personal data, deterministically.

Two rules, applied to ``metadata``, ``before`` and ``after`` at any depth:

1. **Secret-named keys.** A key is split into words (``_``, ``-``, ``.``,
   spaces and camelCase), lower-cased. It names a secret when one of its words
   is in :data:`SECRET_WORDS` (``password``, ``secret``, ``token``, ``key``,
   ``digest``...), unless its *last* word is in :data:`NOT_SECRET_LAST_WORDS`,
   which marks a harmless description of the secret (``key_id``,
   ``key_prefix``, ``token_count``, ``api_key_env``). Its value becomes
   ``"[redacted]"``, except ``None``, booleans and the empty string, which
   only say whether there is one, and a value masked already (asterisks and
   at most four characters more, like a credential's ``****abcd``).
2. **Strings.** Every string value (and key) is scanned with the PII guard's
   detectors (``routing.pii.scan``) and each finding replaced by its label,
   ``[EMAIL]``, ``[SECRET]`` (a ModelMuxer, OpenAI, Stripe... key), ``[JWT]``,
   ``[CARD]``, ``[PHONE]``, ``[SSN]`` or ``[IBAN]``. IP addresses are kept: the
   audit records the client's address on purpose, and addresses in settings
   (allow-lists) are configuration, not a person. Hex digests (16 or more hex
   characters with at least one letter, as every hash here is) are kept as
   they are: a detector could only misread them.

Values are also made plain JSON (decimals, datetimes, UUIDs and sets become
strings or lists; NUL characters, which PostgreSQL refuses, are dropped), so
what is hashed is exactly what is stored and read back.
"""

from __future__ import annotations

import math
import re
import uuid
from collections.abc import Mapping
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from typing import Any

from routing.pii import PLACEHOLDER_LABELS, PIIEntity, scan

REDACTED = "[redacted]"

SECRET_WORDS = frozenset(
    {
        "password", "passwords", "passwd", "passphrase", "pwd",
        "secret", "secrets", "token", "jwt", "otp",
        "key", "keys", "apikey", "digest", "hmac", "signature",
        "credential", "credentials", "authorization", "cookie", "ciphertext",
    }
)  # fmt: skip
NOT_SECRET_LAST_WORDS = frozenset(
    {"id", "ids", "prefix", "name", "env", "type", "count", "at", "hint", "length", "version", "scope", "scopes"}
)

_WORD_SPLIT = re.compile(r"[\s_.\-]+|(?<=[a-z0-9])(?=[A-Z])")
_HEX_DIGEST = re.compile(r"(?=[0-9]*[a-fA-F])[0-9a-fA-F]{16,}", re.ASCII)
_KEPT_ENTITIES = frozenset({PIIEntity.IP_ADDRESS})
_MASKED = re.compile(r"\*{3,}[^*]{0,4}")


def _shown_under_a_secret_name(value: Any) -> bool:
    return (
        value is None
        or isinstance(value, bool)
        or value == ""
        or (isinstance(value, str) and bool(_MASKED.fullmatch(value)))
    )


def key_words(name: str) -> list[str]:
    return [word.lower() for word in _WORD_SPLIT.split(name) if word]


def is_secret_key(name: str) -> bool:
    words = key_words(name)
    if not words or words[-1] in NOT_SECRET_LAST_WORDS:
        return False
    return any(word in SECRET_WORDS for word in words)


def mask_text(text: str) -> str:
    """``text`` with every secret and piece of personal data replaced by its label."""
    text = text.replace("\x00", "")
    if _HEX_DIGEST.fullmatch(text):
        return text
    findings = [f for f in scan(text) if f.entity not in _KEPT_ENTITIES]
    if not findings:
        return text
    pieces: list[str] = []
    cursor = 0
    for finding in findings:
        pieces.append(text[cursor : finding.start])
        pieces.append(f"[{PLACEHOLDER_LABELS[finding.entity]}]")
        cursor = finding.end
    pieces.append(text[cursor:])
    return "".join(pieces)


def redact(value: Any) -> Any:
    """A plain-JSON copy of ``value`` with both rules applied (see the module's docstring)."""
    if value is None or isinstance(value, bool | int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, str):
        return mask_text(value)
    if isinstance(value, Mapping):
        redacted: dict[str, Any] = {}
        for raw_key, item in value.items():
            key = mask_text(str(raw_key))
            hidden = is_secret_key(str(raw_key)) and not _shown_under_a_secret_name(item)
            redacted[key] = REDACTED if hidden else redact(item)
        return redacted
    if isinstance(value, list | tuple | set | frozenset):
        items = sorted(value, key=repr) if isinstance(value, set | frozenset) else value
        return [redact(item) for item in items]
    if isinstance(value, datetime | date | time):
        return value.isoformat()
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, Decimal | uuid.UUID):
        return str(value)
    if isinstance(value, bytes | bytearray | memoryview):
        return REDACTED
    return mask_text(str(value))
