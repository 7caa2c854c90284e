"""Webhook signing secrets at rest: sealed with the operator's keys, so a copy of the database does
not give away what signs a tenant's webhooks.

HMAC needs the secret itself (a hash would not do), so it is encrypted, not hashed: with
``COACHFORGE_WEBHOOKS_SECRET_KEYS`` set (random strings of at least 32 characters, comma-separated,
e.g. ``openssl rand -hex 32``; the Helm chart generates one), a secret is stored as
``fernet:<token>`` (Fernet: AES-128-CBC + HMAC-SHA256, with the SHA-256 of the key as its key),
sealed with the first key and opened with whichever key sealed it. Rotating the keys: put the new
key first and keep the old ones after it; secrets sealed with an old key open until their endpoint's
secret is rotated. Without keys, secrets are stored as
given out (``whsec_…``); secrets stored that way stay readable after keys are set.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Sequence

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

PREFIX = "fernet:"


class SecretUnavailable(ValueError):
    """A stored secret that cannot be opened with the configured keys."""


MIN_KEY_CHARS = 32


def check_keys(keys: Sequence[str]) -> None:
    """A ValueError naming the first key too short to be a random key."""
    for i, key in enumerate(keys, 1):
        if len(key) < MIN_KEY_CHARS:
            raise ValueError(f"key {i} has {len(key)} characters; use random keys of at least {MIN_KEY_CHARS} "
                             "(e.g. openssl rand -hex 32)")


def _fernet(key: str) -> Fernet:
    return Fernet(base64.urlsafe_b64encode(hashlib.sha256(key.encode()).digest()))


class SecretBox:
    """Seals secrets with the first of ``keys`` and opens them with any of them (none: kept as given)."""

    def __init__(self, keys: Sequence[str]) -> None:
        self._fernet = MultiFernet([_fernet(k) for k in keys]) if keys else None

    def seal(self, secret: str) -> str:
        if self._fernet is None:
            return secret
        return PREFIX + self._fernet.encrypt(secret.encode()).decode()

    def open(self, stored: str) -> str:
        if not stored.startswith(PREFIX):
            return stored
        if self._fernet is None:
            raise SecretUnavailable("the endpoint's signing secret is sealed, but COACHFORGE_WEBHOOKS_SECRET_KEYS "
                                    "is not set")
        try:
            return self._fernet.decrypt(stored.removeprefix(PREFIX).encode()).decode()
        except InvalidToken:
            raise SecretUnavailable("none of COACHFORGE_WEBHOOKS_SECRET_KEYS opens the endpoint's signing secret "
                                    "(was the key that sealed it removed?)") from None
