"""The Standard Webhooks signature scheme (https://www.standardwebhooks.com/).

Each request carries three headers: ``webhook-id`` (the message id, the same on every attempt, so
that a receiver can drop duplicates), ``webhook-timestamp`` (unix seconds of this attempt; receivers
refuse old ones against replays) and ``webhook-signature``: ``v1,<base64 HMAC-SHA256>`` of
``"{id}.{timestamp}.{body}"`` keyed with the secret's bytes (the base64 after ``whsec_``), one per
secret in use, separated by spaces (during a rotation's grace period, the new and the previous one).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
from collections.abc import Iterable

SECRET_PREFIX = "whsec_"
SECRET_BYTES = 32
"""Random bytes of a new secret (Standard Webhooks asks for 24 to 64)."""


def new_secret() -> str:
    """A new signing secret, ``whsec_<base64 of 32 random bytes>``."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode()


def secret_bytes(secret: str) -> bytes:
    """The HMAC key of ``secret``: the base64-decoded part after ``whsec_``."""
    encoded = secret.removeprefix(SECRET_PREFIX)
    try:
        key = base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("a webhook secret is whsec_ followed by base64") from None
    if not key:
        raise ValueError("a webhook secret may not be empty")
    return key


def sign(secret: str, msg_id: str, timestamp: int, body: str) -> str:
    """One signature, ``v1,<base64>``, of ``body`` sent as message ``msg_id`` at ``timestamp``."""
    digest = hmac.new(secret_bytes(secret), f"{msg_id}.{timestamp}.{body}".encode(), hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def signature_header(secrets_in_use: Iterable[str], msg_id: str, timestamp: int, body: str) -> str:
    """The ``webhook-signature`` value: one signature per secret, space-separated."""
    return " ".join(sign(s, msg_id, timestamp, body) for s in secrets_in_use)


def headers(secrets_in_use: Iterable[str], msg_id: str, timestamp: int, body: str) -> dict[str, str]:
    """The Standard Webhooks headers of one attempt."""
    return {"webhook-id": msg_id, "webhook-timestamp": str(timestamp),
            "webhook-signature": signature_header(secrets_in_use, msg_id, timestamp, body)}
