"""Personal data in free text: e-mail addresses, phone numbers and URLs that carry credentials,
found and replaced by placeholders (``[EMAIL]``, ``[PHONE]``, ``[URL]``).

Used by the dataset pipeline's PII stage and by inference before it keeps a stored chat
completion. Pure functions, no state: the same text always gives the same result.
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Any, Final
from urllib.parse import parse_qsl, urlsplit

SENSITIVE_QUERY_KEYS: Final = frozenset(
    {"token", "key", "sig", "signature", "access_token", "refresh_token", "id_token", "api_key", "apikey",
     "auth", "password", "secret", "client_secret", "session", "sessionid", "x-amz-signature", "x-amz-credential"}
)
_URL = re.compile(r"https?://[^\s\"'<>\])}]+", re.IGNORECASE)
_EMAIL = re.compile(r"(?<![\w.%+-])[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}\b")
_PHONE = re.compile(
    r"(?<![\w+])(?:"
    r"\+\d{1,3}[ .-]?(?:\(\d{1,4}\)[ .-]?)?\d{1,4}(?:[ .-]?\d{2,4}){2,4}"  # international: +44 20 7946 0958
    r"|\(\d{3}\)[ .-]?\d{3}[ .-]\d{4}"  # (555) 123-4567
    r"|\d{3}[.-]\d{3}[.-]\d{4}"  # 555-123-4567
    r")(?![\w])"
)
PII_KINDS: Final[tuple[str, ...]] = ("email", "phone", "url")
"""The kinds :func:`scrub_text` counts, in report order."""

PLACEHOLDERS: Final[dict[str, str]] = {"email": "[EMAIL]", "phone": "[PHONE]", "url": "[URL]"}
"""What each kind is replaced by."""


def url_has_secret(url: str) -> bool:
    """Whether a query parameter of ``url`` looks like a credential (``token``, ``key``, ``sig``,
    ``access_token``, ``*_token``, ``*_key``, ``*_secret`` …)."""
    try:
        query = urlsplit(url).query
    except ValueError:
        return False
    for name, _ in parse_qsl(query, keep_blank_values=True):
        lowered = name.lower()
        if lowered in SENSITIVE_QUERY_KEYS or lowered.endswith(("_token", "_key", "_secret")):
            return True
    return False


def scrub_text(text: str) -> tuple[str, Counter[str]]:
    """Replace URLs with secrets in their query, e-mails and phone numbers; count per kind.

    URLs are only replaced when a query parameter looks like a credential (``token``, ``key``,
    ``sig``, ``access_token``, ``*_token`` ...).  Phone numbers need 8 to 15 digits and a
    phone-like shape (international ``+`` prefix, ``(555) 123-4567`` or ``555-123-4567``), so
    dates and plain numbers are left alone.
    """
    counts: Counter[str] = Counter()

    def url(match: re.Match[str]) -> str:
        if url_has_secret(match.group(0)):
            counts["url"] += 1
            return PLACEHOLDERS["url"]
        return match.group(0)

    def email(_: re.Match[str]) -> str:
        counts["email"] += 1
        return PLACEHOLDERS["email"]

    def phone(match: re.Match[str]) -> str:
        digits = sum(ch.isdigit() for ch in match.group(0))
        if 8 <= digits <= 15:
            counts["phone"] += 1
            return PLACEHOLDERS["phone"]
        return match.group(0)

    text = _URL.sub(url, text)
    text = _EMAIL.sub(email, text)
    text = _PHONE.sub(phone, text)
    return text, counts


def scrub_value(value: Any, counts: Counter[str] | None = None) -> Any:
    """``value`` (a string, or JSON-like lists and dicts of them) with every string scrubbed by
    :func:`scrub_text`; dict keys, numbers, booleans and None are kept, and so are strings that are
    ``data:`` URLs (inline images or files: base64 is no text). What was replaced is added to
    ``counts`` when given."""
    if isinstance(value, str):
        if value.startswith("data:"):
            return value
        text, found = scrub_text(value)
        if counts is not None:
            counts.update(found)
        return text
    if isinstance(value, list):
        return [scrub_value(v, counts) for v in value]
    if isinstance(value, dict):
        return {k: scrub_value(v, counts) for k, v in value.items()}
    return value
