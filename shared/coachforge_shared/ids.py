"""Identifier helpers."""

from __future__ import annotations

import secrets
import time
from datetime import UTC, datetime


def new_id(prefix: str) -> str:
    """A random id with a readable prefix, e.g. ``file-3f9c…`` (24 hex chars)."""
    return f"{prefix}-{secrets.token_hex(12)}"


def utcnow() -> datetime:
    return datetime.now(UTC)


def unix_now() -> int:
    return int(time.time())


def to_unix(value: datetime | None) -> int:
    """Unix seconds for a datetime (naive values are taken as UTC); 0 for None."""
    if value is None:
        return 0
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return int(value.timestamp())
