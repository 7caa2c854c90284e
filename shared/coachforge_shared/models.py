"""Tables shared by every service: tenants, API keys, processed events, the event outbox."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, Float, ForeignKey, Integer, LargeBinary, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from coachforge_shared.db import Base, UTCDateTime
from coachforge_shared.ids import utcnow


class Tenant(Base):
    """A tenant, with its own limits on inference (``None``: the deployment's default; 0: no limit)."""

    __tablename__ = "tenants"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    max_requests_per_1_minute: Mapped[int | None] = mapped_column(Integer(), nullable=True)
    max_tokens_per_1_minute: Mapped[int | None] = mapped_column(BigInteger(), nullable=True)
    max_tokens_per_1_day: Mapped[int | None] = mapped_column(BigInteger(), nullable=True)
    max_cost_usd_per_1_day: Mapped[float | None] = mapped_column(Float(), nullable=True)
    limits_updated_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)


class ApiKey(Base):
    """An API key, stored as its sha256 (the key itself is shown once, at creation). ``scopes`` is a
    comma-separated subset of ``read``, ``write``, ``admin``."""

    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    prefix: Mapped[str] = mapped_column(String(16))
    name: Mapped[str] = mapped_column(String(200), default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    scopes: Mapped[str] = mapped_column(String(100), default="read,write,admin", server_default="read,write,admin")
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    """When the key last authenticated a request (to within a minute)."""


class ProcessedEvent(Base):
    """One row per (consumer group, event id) handled: a redelivered event has no second effect."""

    __tablename__ = "processed_events"
    __table_args__ = (UniqueConstraint("consumer", "event_id"),)

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    consumer: Mapped[str] = mapped_column(String(100))
    event_id: Mapped[str] = mapped_column(String(64))
    event_type: Mapped[str] = mapped_column(String(100))
    processed_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class OutboxEvent(Base):
    """An event written in the same transaction as the change it reports, waiting to be sent.

    The outbox relay (:mod:`coachforge_shared.outbox`) publishes committed rows in ``id`` order and
    deletes each once the broker acknowledged it, so an event exists exactly when its change was
    committed. ``envelope`` is the encoded envelope: its event id is fixed when the row is written,
    and a row sent again after a crash carries the same one (consumers skip it)."""

    __tablename__ = "outbox_events"

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer(), "sqlite"), primary_key=True,
                                    autoincrement=True)
    event_id: Mapped[str] = mapped_column(String(64))
    type: Mapped[str] = mapped_column(String(100))
    key: Mapped[str] = mapped_column(String(400))
    """The record key (events of one key stay in order on one partition)."""
    tenant_id: Mapped[str] = mapped_column(String(64))
    envelope: Mapped[bytes] = mapped_column(LargeBinary())
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    attempts: Mapped[int] = mapped_column(Integer(), default=0)
    """Failed deliveries so far (a usage event the producer gave up on arrives with one)."""
    last_error: Mapped[str | None] = mapped_column(Text(), nullable=True)
