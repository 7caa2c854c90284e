"""Webhooks logic: a tenant's endpoints (REST and gRPC share these functions), and the consumer
that turns platform events into one delivery per subscribed endpoint.

The consumer (its own group, :data:`TOPICS`) writes the deliveries in the transaction that records
the event as handled, and the consumer commits the event's offset only after that transaction: an
event is never lost, and a redelivered one adds nothing (``processed_events``, and the unique
(event, endpoint) pair). :mod:`coachforge_webhooks.delivery` sends them.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from google.protobuf.message import Message
from sqlalchemy.orm import Session

from coachforge.common.v1.envelope_pb2 import Envelope
from coachforge_shared.db import Database
from coachforge_shared.errors import Conflict, InvalidArgument
from coachforge_shared.ids import to_unix, utcnow
from coachforge_shared.logging import get_logger
from coachforge_webhooks import repository, signing
from coachforge_webhooks.destinations import BlockedDestination, check_destination
from coachforge_webhooks.models import WebhookDelivery, WebhookEndpoint
from coachforge_webhooks.repository import DELIVERY_STATUSES, PENDING
from coachforge_webhooks.schemas import parse_create
from coachforge_webhooks.settings import WebhooksSettings

log = get_logger("coachforge.webhooks")

WEBHOOK_TYPES = {
    "job.succeeded": "fine_tuning.job.succeeded",
    "job.failed": "fine_tuning.job.failed",
    "job.cancelled": "fine_tuning.job.cancelled",
    "eval.run.succeeded": "eval.run.succeeded",
    "eval.run.failed": "eval.run.failed",
    "eval.run.canceled": "eval.run.canceled",
}
"""The platform event each webhook event type reports."""
TOPICS = tuple(WEBHOOK_TYPES)


@dataclass
class WebhooksDeps:
    db: Database
    settings: WebhooksSettings
    wake: Callable[[], None] | None = None
    """Tells this process's sender that deliveries were committed (it sends them at once)."""


def _id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(12)}"


# -- endpoints -----------------------------------------------------------------------------------


def endpoint_to_openai(e: WebhookEndpoint, *, secret: str | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"id": e.id, "object": "webhook_endpoint", "url": e.url, "events": list(e.events),
                           "description": e.description or None, "created_at": to_unix(e.created_at),
                           "status": e.status}
    if secret is not None:
        out["secret"] = secret
    return out


def create_endpoint(deps: WebhooksDeps, tenant_id: str, body: Any) -> dict[str, Any]:
    """A new endpoint; the answer carries its signing secret (shown again only on rotation)."""
    req = parse_create(body)
    secret = signing.new_secret()
    try:
        check_destination(req.url, deps.settings.allowed(), unresolved_ok=True)
    except BlockedDestination as err:
        raise InvalidArgument(f"url {err}.", param="url", code="url_not_allowed") from None
    with deps.db.session() as s:
        if repository.count_endpoints(s, tenant_id) >= deps.settings.max_endpoints:
            raise Conflict(f"A tenant may have at most {deps.settings.max_endpoints} webhook endpoints; delete one "
                           "first.", param="url", code="too_many_webhook_endpoints")
        row = WebhookEndpoint(id=_id("we"), tenant_id=tenant_id, url=req.url, events=req.events,
                              description=req.description or "", status="enabled",
                              secret=deps.settings.secret_box().seal(secret), created_at=utcnow())
        s.add(row)
        s.flush()
        log.info("webhook endpoint created", tenant=tenant_id, endpoint_id=row.id, events=row.events)
        return endpoint_to_openai(row, secret=secret)


def get_endpoint(deps: WebhooksDeps, tenant_id: str, endpoint_id: str) -> dict[str, Any]:
    with deps.db.session() as s:
        return endpoint_to_openai(repository.endpoint(s, tenant_id, endpoint_id))


def delete_endpoint(deps: WebhooksDeps, tenant_id: str, endpoint_id: str) -> dict[str, Any]:
    """Delete the endpoint with its deliveries (those not sent yet are dropped)."""
    with deps.db.session() as s:
        s.delete(repository.endpoint(s, tenant_id, endpoint_id, lock=True))
    log.info("webhook endpoint deleted", tenant=tenant_id, endpoint_id=endpoint_id)
    return {"id": endpoint_id, "object": "webhook_endpoint.deleted", "deleted": True}


def rotate_secret(deps: WebhooksDeps, tenant_id: str, endpoint_id: str) -> dict[str, Any]:
    """A new secret signs from now on; the one it replaces signs too for ``secret_grace_s`` (each
    request then carries both signatures). The answer carries the new secret."""
    grace = deps.settings.secret_grace_s
    with deps.db.session() as s:
        e = repository.endpoint(s, tenant_id, endpoint_id, lock=True)
        e.previous_secret, e.previous_secret_expires_at = (
            (e.secret, utcnow() + timedelta(seconds=grace)) if grace > 0 else (None, None))
        secret = signing.new_secret()
        e.secret = deps.settings.secret_box().seal(secret)
        log.info("webhook secret rotated", tenant=tenant_id, endpoint_id=endpoint_id, grace_s=grace)
        return endpoint_to_openai(e, secret=secret)


def _limit(limit: int) -> int:
    if not 1 <= limit <= 100:
        raise InvalidArgument("limit must be between 1 and 100.", param="limit")
    return limit


def _descending(order: str) -> bool:
    if order not in ("asc", "desc"):
        raise InvalidArgument("order must be asc or desc.", param="order")
    return order == "desc"


def _page(rows: list[Any], limit: int, convert: Callable[[Any], dict[str, Any]]) -> dict[str, Any]:
    data = [convert(r) for r in rows[:limit]]
    return {"object": "list", "data": data, "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None, "has_more": len(rows) > limit}


def list_endpoints(deps: WebhooksDeps, tenant_id: str, *, after: str | None = None, limit: int = 20,
                   order: str = "asc") -> dict[str, Any]:
    with deps.db.session() as s:
        rows = repository.endpoints(s, tenant_id, after=after, limit=_limit(limit), descending=_descending(order))
        return _page(rows, limit, endpoint_to_openai)


# -- deliveries ----------------------------------------------------------------------------------


def webhook_event_id(event_id: str) -> str:
    """The ``id`` of the webhook event reporting platform event ``event_id``: ``evt_<id>`` (an id
    that already starts with ``evt-``/``evt_`` keeps its random part once, not the prefix twice)."""
    return "evt_" + event_id.removeprefix("evt-").removeprefix("evt_")


def delivery_to_openai(d: WebhookDelivery) -> dict[str, Any]:
    return {"id": d.id, "object": "webhook_delivery", "endpoint_id": d.endpoint_id,
            "event_id": webhook_event_id(d.event_id), "event_type": d.event_type, "status": d.status,
            "attempts": d.attempts, "last_status_code": d.last_status_code, "last_error": d.last_error,
            "next_attempt_at": to_unix(d.next_attempt_at) if d.next_attempt_at is not None else None,
            "created_at": to_unix(d.created_at),
            "delivered_at": to_unix(d.delivered_at) if d.delivered_at is not None else None}


def list_deliveries(deps: WebhooksDeps, tenant_id: str, endpoint_id: str, *, after: str | None = None,
                    limit: int = 20, order: str = "desc", status: str | None = None) -> dict[str, Any]:
    """The endpoint's delivery log, newest first by default."""
    if status and status not in DELIVERY_STATUSES:
        raise InvalidArgument(f"status must be one of {', '.join(DELIVERY_STATUSES)}.", param="status")
    with deps.db.session() as s:
        repository.endpoint(s, tenant_id, endpoint_id)
        rows = repository.deliveries(s, endpoint_id, after=after, limit=_limit(limit),
                                     descending=_descending(order), status=status or None)
        return _page(rows, limit, delivery_to_openai)


def event_data(payload: Message) -> dict[str, Any]:
    """The ``data`` of a webhook event: the job's id, or the run's id and its eval's."""
    job_id = getattr(payload, "job_id", "")
    if job_id:
        return {"id": job_id}
    data: dict[str, Any] = {"id": getattr(payload, "run_id", "")}
    if getattr(payload, "eval_id", ""):
        data["eval_id"] = payload.eval_id  # type: ignore[attr-defined]
    return data


def event_body(env: Envelope, payload: Message) -> str:
    """The request body of the webhook event reporting ``env`` (OpenAI's webhook event shape)."""
    return json.dumps({"id": webhook_event_id(env.event_id), "object": "event", "created_at": env.occurred_at.seconds,
                       "type": WEBHOOK_TYPES[env.type], "data": event_data(payload)}, separators=(",", ":"))


def on_event(deps: WebhooksDeps) -> Callable[[Session, Envelope, Message], Callable[[], None] | None]:
    """The consumer's handler: one pending delivery per endpoint of the event's tenant subscribed to
    its webhook type, written in the event's transaction; afterwards the sender is woken."""
    def handle(s: Session, env: Envelope, payload: Message) -> Callable[[], None] | None:
        event_type = WEBHOOK_TYPES.get(env.type)
        if event_type is None:
            return None
        targets = repository.subscribed(s, env.tenant_id, event_type)
        if not targets:
            return None
        body, now = event_body(env, payload), utcnow()
        repository.add_deliveries(s, [
            {"id": _id("msg"), "endpoint_id": e.id, "tenant_id": env.tenant_id, "event_id": env.event_id,
             "event_type": event_type, "payload": body, "status": PENDING, "attempts": 0, "next_attempt_at": now,
             "created_at": now} for e in targets])
        log.info("webhook deliveries queued", tenant=env.tenant_id, event_type=event_type, event_id=env.event_id,
                 endpoints=len(targets))
        return deps.wake
    return handle
