"""Registry tables."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import ForeignKey, Integer, String, Text, UniqueConstraint
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


class Avatar(Base):
    """A tenant's named alias (e.g. ``coach-anna``) for the model version that answers as it."""

    __tablename__ = "avatars"
    __table_args__ = (UniqueConstraint("tenant_id", "name"),)

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(64))
    active_model: Mapped[str] = mapped_column(String(300))
    fallback: Mapped[str] = mapped_column(String(10), default="error")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class AvatarChange(Base):
    """One change of an avatar's active model: who, when, why, from what to what."""

    __tablename__ = "avatar_changes"

    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    avatar_id: Mapped[str] = mapped_column(ForeignKey("avatars.id", ondelete="CASCADE"), index=True)
    action: Mapped[str] = mapped_column(String(20))
    from_model: Mapped[str | None] = mapped_column(String(300), nullable=True)
    to_model: Mapped[str] = mapped_column(String(300))
    actor: Mapped[str] = mapped_column(String(200))
    reason: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
