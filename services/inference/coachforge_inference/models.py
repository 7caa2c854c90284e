"""Inference tables: daily usage per tenant/avatar/model/purpose, written from ``usage.recorded`` events;
stored chat completions (from ``completion.stored`` events), their metadata pairs and their feedback."""

from __future__ import annotations

from datetime import date, datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, Date, Float, ForeignKey, Index, Integer, String, Text, UniqueConstraint
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


class StoredCompletion(Base):
    """A chat completion kept because its request said ``store: true`` (OpenAI's stored
    completions), written from its ``completion.stored`` event; ``id`` is the id the client got."""

    __tablename__ = "stored_completions"
    __table_args__ = (Index("ix_stored_completions_tenant_created", "tenant_id", "created", "created_at", "id"),)

    id: Mapped[str] = mapped_column(String(128), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    created: Mapped[int] = mapped_column(BigInteger)
    """Unix seconds, as the client got it."""
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    """When the answer was published (sub-second: breaks ties between completions of one second)."""
    model: Mapped[str] = mapped_column(String(300))
    """The model that answered (public id)."""
    requested_model: Mapped[str] = mapped_column(String(300))
    """The model as requested (an id or an avatar alias)."""
    avatar: Mapped[str] = mapped_column(String(64), default="")
    variant: Mapped[str] = mapped_column(String(16), default="")
    """For an avatar with a candidate: "active" or "candidate"; "" otherwise."""
    end_user: Mapped[str] = mapped_column(String(256), default="")
    """The request's ``user``."""
    purpose: Mapped[str] = mapped_column(String(16), default="app")
    fallback_from: Mapped[str] = mapped_column(String(300), default="")
    stream: Mapped[bool] = mapped_column(default=False)
    metadata_: Mapped[dict[str, str]] = mapped_column("metadata", JSON, default=dict)
    messages: Mapped[list[Any]] = mapped_column(JSON)
    params: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    """The request's sampling parameters (temperature, max_tokens, n, seed, stop, …)."""
    choices: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    """``{"index", "message": {"role", "content"}, "finish_reason"}`` per choice."""
    prompt_tokens: Mapped[int | None] = mapped_column(Integer, nullable=True)
    completion_tokens: Mapped[int | None] = mapped_column(Integer, nullable=True)
    total_tokens: Mapped[int | None] = mapped_column(Integer, nullable=True)
    latency_seconds: Mapped[float] = mapped_column(Float, default=0.0)
    stored_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class StoredCompletionMetadata(Base):
    """One metadata pair of a stored completion, kept apart so that ``metadata[key]=value`` filters
    are plain indexed equalities on every backend (the completion's ``metadata`` column is what is shown)."""

    __tablename__ = "stored_completion_metadata"
    __table_args__ = (Index("ix_stored_completion_metadata_key_value", "key", "value"),)

    completion_id: Mapped[str] = mapped_column(ForeignKey("stored_completions.id", ondelete="CASCADE"),
                                               primary_key=True)
    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(String(512))


class CompletionFeedback(Base):
    """One rater's feedback on a stored completion (posting again as the same rater replaces it)."""

    __tablename__ = "completion_feedback"
    __table_args__ = (UniqueConstraint("completion_id", "rater"),)

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    completion_id: Mapped[str] = mapped_column(ForeignKey("stored_completions.id", ondelete="CASCADE"))
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    rater: Mapped[str] = mapped_column(String(256))
    rating: Mapped[int | None] = mapped_column(Integer, nullable=True)
    """1 (bad) to 5 (excellent); None when not rated."""
    gold: Mapped[bool] = mapped_column(default=False)
    """The answer (or its correction) is good enough to train on."""
    correction: Mapped[str | None] = mapped_column(Text, nullable=True)
    """The answer the rater would have wanted."""
    comment: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow)
