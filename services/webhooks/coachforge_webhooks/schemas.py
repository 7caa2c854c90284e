"""Request bodies of the webhooks API, validated the same way for REST and gRPC."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

import httpx
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from coachforge_shared.errors import InvalidArgument

WEBHOOK_EVENT_TYPES = (
    "fine_tuning.job.succeeded", "fine_tuning.job.failed", "fine_tuning.job.cancelled",
    "eval.run.succeeded", "eval.run.failed", "eval.run.canceled",
)
"""The event types an endpoint may subscribe to (OpenAI's webhook event names)."""

MAX_URL_LENGTH = 2048


def check_url(value: str) -> str:
    """``value`` if it is an absolute http(s) URL with a host, else a ValueError saying why."""
    if value != value.strip() or any(c.isspace() or ord(c) < 0x20 for c in value):
        raise ValueError("must not contain whitespace or control characters")
    try:
        parts = urlsplit(value)
        port = parts.port  # raises for a port that is not a number in 0-65535
    except ValueError as err:
        raise ValueError(f"is not a valid URL ({err})") from None
    if parts.scheme.lower() not in ("http", "https"):
        raise ValueError("must be an http:// or https:// URL")
    if not parts.hostname:
        raise ValueError("must name a host")
    if port == 0:
        raise ValueError("must not name port 0")
    if parts.username is not None or parts.password is not None:
        raise ValueError("must not carry credentials (user:password@)")
    try:
        httpx.URL(value)  # what the sender will make of it (e.g. a host name IDNA cannot encode)
    except (httpx.InvalidURL, ValueError) as err:
        raise ValueError(f"is not a valid URL ({err})") from None
    return value


class CreateEndpoint(BaseModel):
    """A webhook endpoint: where events are sent and which ones."""

    model_config = ConfigDict(extra="forbid")

    url: str = Field(min_length=1, max_length=MAX_URL_LENGTH,
                     description="The http(s) URL the events are POSTed to.")
    events: list[str] = Field(min_length=1, max_length=len(WEBHOOK_EVENT_TYPES),
                              description="Event types to send: " + ", ".join(WEBHOOK_EVENT_TYPES) + ".",
                              json_schema_extra={"items": {"type": "string", "enum": list(WEBHOOK_EVENT_TYPES)}})
    description: str | None = Field(default=None, max_length=500, description="A note for people.")

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        return check_url(value)

    @field_validator("events")
    @classmethod
    def _events(cls, value: list[str]) -> list[str]:
        unknown = [e for e in value if e not in WEBHOOK_EVENT_TYPES]
        if unknown:
            raise ValueError(f"unknown event type(s) {', '.join(map(repr, unknown))}; known: "
                             f"{', '.join(WEBHOOK_EVENT_TYPES)}")
        return list(dict.fromkeys(value))  # duplicates once, in the order given


def _param(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or "body"


def parse_create(body: Any) -> CreateEndpoint:
    """``body`` as :class:`CreateEndpoint`; a problem is an :class:`InvalidArgument` naming the first bad field."""
    if isinstance(body, CreateEndpoint):
        return body
    if not isinstance(body, dict):
        raise InvalidArgument("The request body must be a JSON object.", param="body")
    try:
        return CreateEndpoint.model_validate(body)
    except ValidationError as err:
        errors = err.errors()
        detail = "; ".join(f"{_param(tuple(e['loc']))}: {e['msg']}" for e in errors[:5])
        raise InvalidArgument(f"Invalid request: {detail}", param=_param(tuple(errors[0]["loc"])),
                              code="invalid_value") from None
