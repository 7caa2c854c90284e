"""Webhooks tables: tenants' endpoints, and one delivery per (event, endpoint)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import JSON, ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from coachforge_shared.db import Base, UTCDateTime
from coachforge_shared.ids import utcnow


class WebhookEndpoint(Base):
    """A URL a tenant wants told of some event types, and the secrets its requests are signed with."""

    __tablename__ = "webhook_endpoints"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    url: Mapped[str] = mapped_column(String(2048))
    events: Mapped[list[str]] = mapped_column(JSON)
    """The webhook event types sent to it (``fine_tuning.job.succeeded``, …)."""
    description: Mapped[str] = mapped_column(String(500), default="")
    status: Mapped[str] = mapped_column(String(16), default="enabled")
    secret: Mapped[str] = mapped_column(String(512))
    """The signing secret, ``whsec_<base64>``, sealed (``fernet:…``) when the operator set keys
    (:mod:`coachforge_webhooks.sealing`: HMAC needs the secret itself, a hash would not do)."""
    previous_secret: Mapped[str | None] = mapped_column(String(512), nullable=True)
    """The secret before the last rotation: it signs too until ``previous_secret_expires_at``."""
    previous_secret_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class WebhookDelivery(Base):
    """One event for one endpoint: its request body (fixed when the event arrived, so that every
    attempt sends and signs the same bytes) and where its sending stands."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (
        UniqueConstraint("event_id", "endpoint_id"),
        Index("ix_webhook_deliveries_due", "status", "next_attempt_at"),
        Index("ix_webhook_deliveries_endpoint_created", "endpoint_id", "created_at"),
    )

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    """The message id (``msg_…``), sent as ``webhook-id``: the same on every attempt."""
    endpoint_id: Mapped[str] = mapped_column(ForeignKey("webhook_endpoints.id", ondelete="CASCADE"))
    tenant_id: Mapped[str] = mapped_column(String(64))
    event_id: Mapped[str] = mapped_column(String(64))
    """The platform event's id (its envelope's ``event_id``)."""
    event_type: Mapped[str] = mapped_column(String(64))
    """The webhook event type (``fine_tuning.job.succeeded``, …)."""
    payload: Mapped[str] = mapped_column(Text)
    """The request body, JSON text."""
    status: Mapped[str] = mapped_column(String(16))
    """pending (an attempt is due at ``next_attempt_at``), succeeded or failed (given up)."""
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_status_code: Mapped[int | None] = mapped_column(Integer, nullable=True)
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    next_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    """When a pending delivery is due (pushed ahead while a sender holds it); NULL once finished."""
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    delivered_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
