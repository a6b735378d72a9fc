"""Encryption of stored provider keys (BYOK) with MultiFernet.

``MUXER_FERNET_KEYS`` holds comma-separated Fernet keys, newest first: new
secrets are encrypted with the first, and any of them decrypts, so a key can
be rotated by prepending a new one and running ``manage.py
rotate_provider_credentials``. Without it, a key is derived from
``SECRET_KEY`` so the embedded default works on a bare machine.
"""

from __future__ import annotations

import base64
import hashlib
from functools import lru_cache

from cryptography.fernet import Fernet, MultiFernet
from django.conf import settings


@lru_cache(maxsize=1)
def _fernet(keys: tuple[str, ...]) -> MultiFernet:
    return MultiFernet([Fernet(key.encode()) for key in keys])


def fernet() -> MultiFernet:
    keys = tuple(settings.MUXER_FERNET_KEYS)
    if not keys:
        derived = base64.urlsafe_b64encode(hashlib.sha256(b"muxer-fernet:" + settings.SECRET_KEY.encode()).digest())
        keys = (derived.decode(),)
    return _fernet(keys)


def encrypt(secret: str) -> str:
    return fernet().encrypt(secret.encode()).decode()


def decrypt(token: str) -> str:
    return fernet().decrypt(token.encode()).decode()


def rotate(token: str) -> str:
    """Re-encrypt with the newest key."""
    return fernet().rotate(token.encode()).decode()
