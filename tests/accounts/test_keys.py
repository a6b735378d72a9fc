"""The API key format: ``mm_live_`` + 32 base62 + a 6-character base62 CRC32 checksum."""

from __future__ import annotations

import hashlib
import hmac
import string
import zlib

import pytest
from pytest_django import Settings

from accounts import keys

BASE62 = string.digits + string.ascii_uppercase + string.ascii_lowercase


def checksum(body: str) -> str:
    """An independent base62 CRC32, so the tests do not trust the module's own helper."""
    number, chars = zlib.crc32(body.encode()), []
    for _ in range(6):
        number, rem = divmod(number, 62)
        chars.append(BASE62[rem])
    return "".join(reversed(chars))


def with_checksum(body: str) -> str:
    return body + checksum(body)


def test_it_generates_the_documented_format() -> None:
    key = keys.generate_key()

    assert len(key) == 46 == keys.KEY_LENGTH
    assert key.startswith("mm_live_")
    assert set(key[8:]) <= set(BASE62)
    assert key[-6:] == checksum(key[:-6])


def test_it_generates_a_different_key_each_time() -> None:
    assert len({keys.generate_key() for _ in range(50)}) == 50


def test_a_generated_key_is_well_formed() -> None:
    assert keys.is_well_formed(keys.generate_key()) is True


def test_a_key_built_from_the_spec_is_well_formed() -> None:
    assert keys.is_well_formed(with_checksum("mm_live_" + "a" * 32)) is True


@pytest.mark.parametrize("position", [8, 20, 39, 40, 45])
def test_it_rejects_a_key_with_one_character_flipped(position: int) -> None:
    key = keys.generate_key()
    replacement = "0" if key[position] != "0" else "1"
    flipped = key[:position] + replacement + key[position + 1 :]

    assert flipped != key
    assert keys.is_well_formed(flipped) is False


@pytest.mark.parametrize("prefix", ["mm_test_", "sk_live_", "MM_LIVE_", "mm-live_"])
def test_it_rejects_an_unknown_type_prefix_even_with_a_valid_checksum(prefix: str) -> None:
    assert keys.is_well_formed(with_checksum(prefix + "b" * 32)) is False


@pytest.mark.parametrize("random_length", [0, 31, 33, 64])
def test_it_rejects_the_wrong_length_even_with_a_valid_checksum(random_length: int) -> None:
    assert keys.is_well_formed(with_checksum("mm_live_" + "c" * random_length)) is False


@pytest.mark.parametrize("bad", ["-", "_", "+", "/", "=", " ", "é"])
def test_it_rejects_characters_outside_base62_even_with_a_valid_checksum(bad: str) -> None:
    body = "mm_live_" + "d" * 31 + bad
    assert len(with_checksum(body)) == keys.KEY_LENGTH
    assert keys.is_well_formed(with_checksum(body)) is False


def test_it_rejects_an_empty_string() -> None:
    assert keys.is_well_formed("") is False


def test_lookup_prefix_is_the_type_prefix_and_eight_random_characters() -> None:
    key = keys.generate_key()

    assert keys.lookup_prefix(key) == key[:16]
    assert keys.lookup_prefix(key).startswith("mm_live_")


def test_lookup_prefix_reveals_less_than_the_key() -> None:
    key = keys.generate_key()

    assert key[16:] not in keys.lookup_prefix(key)
    assert len(key) - len(keys.lookup_prefix(key)) == 30


def test_key_digest_is_hmac_sha256_keyed_by_the_setting(settings: Settings) -> None:
    settings.API_KEY_HMAC_SECRET = "pepper-one"
    key = keys.generate_key()

    expected = hmac.new(b"pepper-one", key.encode(), hashlib.sha256).hexdigest()
    assert keys.key_digest(key) == expected
    assert len(keys.key_digest(key)) == 64


def test_key_digest_is_not_a_plain_hash(settings: Settings) -> None:
    settings.API_KEY_HMAC_SECRET = "pepper-one"
    key = keys.generate_key()

    assert keys.key_digest(key) != hashlib.sha256(key.encode()).hexdigest()


def test_changing_the_hmac_secret_changes_the_digest(settings: Settings) -> None:
    key = keys.generate_key()
    settings.API_KEY_HMAC_SECRET = "pepper-one"
    first = keys.key_digest(key)
    settings.API_KEY_HMAC_SECRET = "pepper-two"
    second = keys.key_digest(key)

    assert first != second
    assert second == hmac.new(b"pepper-two", key.encode(), hashlib.sha256).hexdigest()
