"""Inference tables: daily usage per tenant/avatar/model/purpose, written from ``usage.recorded`` events."""

from __future__ import annotations

from datetime import date, datetime

from sqlalchemy import BigInteger, Date, Float, ForeignKey, Integer, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from coachforge_shared.db import Base, UTCDateTime
from coachforge_shared.ids import utcnow


class UsageDaily(Base):
    """One tenant's usage of one model through one avatar ("" = model named directly) for one purpose
    ("app": applications' requests; "evaluation": eval runs' samples and judges) on one UTC day."""

    __tablename__ = "usage_daily"
    __table_args__ = (UniqueConstraint("tenant_id", "day", "model", "avatar", "purpose"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    day: Mapped[date] = mapped_column(Date)
    model: Mapped[str] = mapped_column(String(300))
    avatar: Mapped[str] = mapped_column(String(64), default="")
    purpose: Mapped[str] = mapped_column(String(16), default="app", server_default="app")
    messages: Mapped[int] = mapped_column(BigInteger, default=0)
    input_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    output_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    cost_usd: Mapped[float] = mapped_column(Float, default=0.0)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow)
