"""The API key format: ``mm_live_<32 random base62><6 base62 CRC32>``.

The type prefix and checksum let secret scanners recognise a leaked key, and
let the gateway reject a mistyped key without touching any store. Only the
lookup prefix (type prefix + 8 random characters) and an HMAC-SHA256 digest of
the whole key are ever stored.

Invitation tokens (``mm_inv_<40 random base62>``) are stored the same way, as
an HMAC digest only, under a key of their own so the two never collide.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import zlib

from django.conf import settings

ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
TYPE_PREFIXES = ("mm_live_",)
INVITATION_PREFIX = "mm_inv_"
INVITATION_RANDOM_LENGTH = 40
RANDOM_LENGTH = 32
CHECKSUM_LENGTH = 6
LOOKUP_RANDOM_CHARS = 8
KEY_LENGTH = len(TYPE_PREFIXES[0]) + RANDOM_LENGTH + CHECKSUM_LENGTH
_ALPHABET_SET = frozenset(ALPHABET)


def _base62(number: int, width: int) -> str:
    chars = []
    for _ in range(width):
        number, rem = divmod(number, 62)
        chars.append(ALPHABET[rem])
    return "".join(reversed(chars))


def _checksum(body: str) -> str:
    return _base62(zlib.crc32(body.encode()), CHECKSUM_LENGTH)


def generate_key(type_prefix: str = "mm_live_") -> str:
    body = type_prefix + "".join(secrets.choice(ALPHABET) for _ in range(RANDOM_LENGTH))
    return body + _checksum(body)


def is_well_formed(raw: str) -> bool:
    """True when ``raw`` has a known type prefix, the right length and alphabet, and a valid checksum."""
    if len(raw) != KEY_LENGTH or not raw.startswith(TYPE_PREFIXES):
        return False
    rest = raw[len(TYPE_PREFIXES[0]) :]
    if not _ALPHABET_SET.issuperset(rest):
        return False
    body, check = raw[:-CHECKSUM_LENGTH], raw[-CHECKSUM_LENGTH:]
    return hmac.compare_digest(_checksum(body), check)


def lookup_prefix(raw: str) -> str:
    return raw[: len(TYPE_PREFIXES[0]) + LOOKUP_RANDOM_CHARS]


def key_digest(raw: str) -> str:
    return hmac.new(settings.API_KEY_HMAC_SECRET.encode(), raw.encode(), hashlib.sha256).hexdigest()


def generate_invitation_token() -> str:
    return INVITATION_PREFIX + "".join(secrets.choice(ALPHABET) for _ in range(INVITATION_RANDOM_LENGTH))


def invitation_digest(token: str) -> str:
    secret = f"invitation:{settings.API_KEY_HMAC_SECRET}".encode()
    return hmac.new(secret, token.encode(), hashlib.sha256).hexdigest()
