"""Queries of the webhooks tables (the caller's session commits)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import func, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from coachforge_shared.errors import NotFound
from coachforge_webhooks.models import WebhookDelivery, WebhookEndpoint

PENDING, SUCCEEDED, FAILED = "pending", "succeeded", "failed"
DELIVERY_STATUSES = (PENDING, SUCCEEDED, FAILED)


def _order(model: Any, descending: bool) -> tuple[Any, Any]:
    return (model.created_at.desc(), model.id.desc()) if descending else (model.created_at, model.id)


def _after(model: Any, created_at: datetime, id_: str, descending: bool) -> Any:
    if descending:
        return or_(model.created_at < created_at, (model.created_at == created_at) & (model.id < id_))
    return or_(model.created_at > created_at, (model.created_at == created_at) & (model.id > id_))


# -- endpoints -----------------------------------------------------------------------------------


def endpoint(s: Session, tenant_id: str, endpoint_id: str, *, lock: bool = False) -> WebhookEndpoint:
    q = select(WebhookEndpoint).where(WebhookEndpoint.id == endpoint_id, WebhookEndpoint.tenant_id == tenant_id)
    found = s.scalar(q.with_for_update() if lock else q)
    if found is None:
        raise NotFound(f"No webhook endpoint with id {endpoint_id!r}.", param="endpoint_id",
                       code="webhook_endpoint_not_found")
    return found


def endpoints(s: Session, tenant_id: str, *, after: str | None, limit: int, descending: bool) -> list[WebhookEndpoint]:
    q = select(WebhookEndpoint).where(WebhookEndpoint.tenant_id == tenant_id)
    if after:
        cursor = s.scalar(select(WebhookEndpoint).where(WebhookEndpoint.id == after,
                                                        WebhookEndpoint.tenant_id == tenant_id))
        if cursor is None:
            raise NotFound(f"No webhook endpoint with id {after!r}.", param="after", code="webhook_endpoint_not_found")
        q = q.where(_after(WebhookEndpoint, cursor.created_at, cursor.id, descending))
    return list(s.scalars(q.order_by(*_order(WebhookEndpoint, descending)).limit(limit + 1)))


def count_endpoints(s: Session, tenant_id: str) -> int:
    return s.scalar(select(func.count()).select_from(WebhookEndpoint)
                    .where(WebhookEndpoint.tenant_id == tenant_id)) or 0


def subscribed(s: Session, tenant_id: str, event_type: str) -> list[WebhookEndpoint]:
    """The tenant's enabled endpoints that asked for ``event_type`` (a tenant has a few endpoints:
    the subscription is checked here rather than in SQL, where JSON lists differ by database)."""
    rows = s.scalars(select(WebhookEndpoint).where(WebhookEndpoint.tenant_id == tenant_id,
                                                   WebhookEndpoint.status == "enabled")
                     .order_by(WebhookEndpoint.created_at))
    return [r for r in rows if event_type in (r.events or [])]


# -- deliveries ----------------------------------------------------------------------------------


def add_deliveries(s: Session, rows: list[dict[str, Any]]) -> None:
    """Insert deliveries; one whose (event, endpoint) exists already is skipped (a redelivered event)."""
    if not rows:
        return
    insert = postgresql.insert if s.get_bind().dialect.name == "postgresql" else sqlite.insert
    s.execute(insert(WebhookDelivery).values(rows)
              .on_conflict_do_nothing(index_elements=["event_id", "endpoint_id"]))


def deliveries(s: Session, endpoint_id: str, *, after: str | None, limit: int, descending: bool,
               status: str | None) -> list[WebhookDelivery]:
    q = select(WebhookDelivery).where(WebhookDelivery.endpoint_id == endpoint_id)
    if status:
        q = q.where(WebhookDelivery.status == status)
    if after:
        cursor = s.scalar(select(WebhookDelivery).where(WebhookDelivery.id == after,
                                                        WebhookDelivery.endpoint_id == endpoint_id))
        if cursor is None:
            raise NotFound(f"No delivery with id {after!r} for this endpoint.", param="after",
                           code="webhook_delivery_not_found")
        q = q.where(_after(WebhookDelivery, cursor.created_at, cursor.id, descending))
    return list(s.scalars(q.order_by(*_order(WebhookDelivery, descending)).limit(limit + 1)))


def due(s: Session, now: datetime, limit: int, *, skip_locked: bool) -> list[str]:
    """Ids of pending deliveries whose next attempt is due, the longest due first. With
    ``skip_locked`` (PostgreSQL) the rows are locked and rows another sender locked are skipped."""
    q = (select(WebhookDelivery.id)
         .where(WebhookDelivery.status == PENDING, WebhookDelivery.next_attempt_at <= now)
         .order_by(WebhookDelivery.next_attempt_at).limit(limit))
    if skip_locked:
        q = q.with_for_update(skip_locked=True)
    return list(s.scalars(q))


def claim(s: Session, delivery_id: str, now: datetime, until: datetime) -> bool:
    """Take a due pending delivery until ``until`` (compare-and-set on its due time); whether this
    sender has it now. A sender that dies leaves it due again at ``until``."""
    result = s.execute(update(WebhookDelivery).where(
        WebhookDelivery.id == delivery_id, WebhookDelivery.status == PENDING,
        WebhookDelivery.next_attempt_at <= now).values(next_attempt_at=until))
    return bool(result.rowcount)  # type: ignore[attr-defined]


def finish_attempt(s: Session, delivery_id: str, attempts_before: int, values: dict[str, Any]) -> bool:
    """Store one attempt's result, unless another sender stored one for the same attempt first (its
    claim expired meanwhile) or the delivery is gone (its endpoint was deleted); whether it was stored."""
    result = s.execute(update(WebhookDelivery).where(
        WebhookDelivery.id == delivery_id, WebhookDelivery.status == PENDING,
        WebhookDelivery.attempts == attempts_before).values(**values))
    return bool(result.rowcount)  # type: ignore[attr-defined]
