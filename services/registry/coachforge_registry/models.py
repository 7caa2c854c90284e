"""Registry tables."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import ForeignKey, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from coachforge_shared.db import Base, UTCDateTime
from coachforge_shared.ids import utcnow


class ModelVersion(Base):
    """A fine-tuned adapter on top of a base model, owned by a tenant."""

    __tablename__ = "model_versions"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    model_id: Mapped[str] = mapped_column(String(300), unique=True)
    base_model: Mapped[str] = mapped_column(String(200))
    adapter_uri: Mapped[str] = mapped_column(String(1000))
    lora_rank: Mapped[int] = mapped_column(Integer)
    target_modules_json: Mapped[str] = mapped_column(Text, default="[]")
    job_id: Mapped[str | None] = mapped_column(String(64), unique=True, nullable=True)
    status: Mapped[str] = mapped_column(String(20), default="active")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
