"""Inference tables: daily usage per tenant/avatar/model/purpose, written from ``usage.recorded`` events;
stored chat completions (from ``completion.stored`` events), their metadata pairs and their feedback;
each tenant's stored completion policy (store by default, retention, PII scrubbing)."""

from __future__ import annotations

from datetime import date, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Date,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    false,
)
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
    are plain indexed equalities on every backend (the completion's ``metadata`` column is what is shown).
    It carries copies of its completion's tenant and list order (``created``, ``created_at``; they
    never change), so that one index gives a tenant's completions with a pair already in list order:
    a page is a range of that index, however many completions have the pair."""

    __tablename__ = "stored_completion_metadata"
    __table_args__ = (Index("ix_stored_completion_metadata_listing", "tenant_id", "key", "value", "created",
                            "created_at", "completion_id"),)

    completion_id: Mapped[str] = mapped_column(ForeignKey("stored_completions.id", ondelete="CASCADE"),
                                               primary_key=True)
    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(String(512))
    tenant_id: Mapped[str] = mapped_column(String(64))
    """The completion's tenant."""
    created: Mapped[int] = mapped_column(BigInteger)
    """The completion's ``created``."""
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    """The completion's ``created_at``."""


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
    flagged: Mapped[bool] = mapped_column(default=False, server_default=false())
    """The rater flags the answer for review (the review queue)."""


class CompletionReview(Base):
    """Where a stored completion stands for review: a summary of its feedback, rewritten with every
    feedback post (what the review queue filters on, without aggregating feedback rows), and its
    review state. One row per completion that has feedback or was reviewed."""

    __tablename__ = "completion_reviews"
    __table_args__ = (Index("ix_completion_reviews_queue", "tenant_id", "corrected", "state"),)

    completion_id: Mapped[str] = mapped_column(ForeignKey("stored_completions.id", ondelete="CASCADE"),
                                               primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    rated: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    """Raters who gave a rating."""
    rating_sum: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    """Sum of their ratings (mean rating: rating_sum / rated)."""
    flags: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    """Raters who flagged it."""
    corrected: Mapped[bool] = mapped_column(default=False, server_default=false())
    """Some rater posted a correction."""
    state: Mapped[str] = mapped_column(String(16), default="", server_default="")
    """"" (never reviewed), "dismissed" (off the queue) or "open" (reopened)."""
    reviewer: Mapped[str | None] = mapped_column(String(256), nullable=True)
    comment: Mapped[str | None] = mapped_column(Text, nullable=True)
    reviewed_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class StoredCompletionPolicy(Base):
    """A tenant's rules for its stored chat completions (a tenant without a row gets the defaults:
    store only on request, the deployment's retention, scrub personal data)."""

    __tablename__ = "stored_completion_policies"

    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), primary_key=True)
    store_by_default: Mapped[bool] = mapped_column(default=False)
    """Keep chat completions whose request does not say ``store`` (an avatar's own ``store`` comes first)."""
    retention_days: Mapped[int] = mapped_column(Integer)
    """Stored completions older than this many days are deleted with their feedback; 0 keeps them forever."""
    scrub_pii: Mapped[bool] = mapped_column(default=True)
    """Replace e-mail addresses, phone numbers and URLs carrying credentials before keeping a completion."""
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow)
