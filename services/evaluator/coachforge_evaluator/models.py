"""Evaluator tables: evals, their runs, and one row per item of a run (its sample and grades)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, Float, ForeignKey, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from coachforge_shared.db import Base, UTCDateTime
from coachforge_shared.ids import utcnow


class Eval(Base):
    __tablename__ = "evals"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    data_source_config: Mapped[dict[str, Any]] = mapped_column(JSON)
    testing_criteria: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    metadata_: Mapped[dict[str, str]] = mapped_column("metadata", JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class EvalRun(Base):
    __tablename__ = "eval_runs"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    eval_id: Mapped[str] = mapped_column(ForeignKey("evals.id", ondelete="CASCADE"), index=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    model: Mapped[str] = mapped_column(String(300))
    status: Mapped[str] = mapped_column(String(32), index=True)
    """queued, in_progress, completed, failed, canceled (OpenAI's)."""
    data_source: Mapped[dict[str, Any]] = mapped_column(JSON)
    """The run's data source as given, without inline items (those are rows of eval_run_items)."""
    metadata_: Mapped[dict[str, str]] = mapped_column("metadata", JSON, default=dict)
    error_code: Mapped[str | None] = mapped_column(String(64), nullable=True)
    error_message: Mapped[str | None] = mapped_column(Text, nullable=True)
    cancel_requested: Mapped[bool] = mapped_column(default=False)
    worker_id: Mapped[str | None] = mapped_column(String(200), nullable=True)
    lease_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True, index=True)
    """The worker running the run renews it; a run whose lease expired is taken over by another."""
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)


class EvalRunItem(Base):
    """One data source item of a run; ``status`` stays NULL until the item was sampled and graded
    (once: the result is written only where it is still NULL, so a resumed run never counts an
    item twice)."""

    __tablename__ = "eval_run_items"
    __table_args__ = (UniqueConstraint("run_id", "item_index"),)

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    run_id: Mapped[str] = mapped_column(ForeignKey("eval_runs.id", ondelete="CASCADE"), index=True)
    item_index: Mapped[int] = mapped_column(Integer)
    item: Mapped[dict[str, Any]] = mapped_column(JSON)
    status: Mapped[str | None] = mapped_column(String(16), nullable=True, index=True)
    """NULL (not yet graded), pass, fail or error."""
    sample: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    results: Mapped[list[dict[str, Any]] | None] = mapped_column(JSON, nullable=True)
    latency_s: Mapped[float | None] = mapped_column(Float, nullable=True)
    ttft_s: Mapped[float | None] = mapped_column(Float, nullable=True)
    output_tokens_per_s: Mapped[float | None] = mapped_column(Float, nullable=True)
    prompt_tokens: Mapped[int] = mapped_column(Integer, default=0)
    completion_tokens: Mapped[int] = mapped_column(Integer, default=0)
    graded_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)


class Comparison(Base):
    """A blind A/B comparison: 2-4 models answer the same prompts (one completions run each, of a
    hidden eval without testing criteria); people vote on pairs of answers."""

    __tablename__ = "comparisons"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    eval_id: Mapped[str] = mapped_column(ForeignKey("evals.id", ondelete="CASCADE"), unique=True)
    """The hidden eval whose runs generate the answers (not listed or served by the Evals API)."""
    name: Mapped[str] = mapped_column(String(200))
    models: Mapped[list[str]] = mapped_column(JSON)
    run_ids: Mapped[list[str]] = mapped_column(JSON)
    """One run per model, in the order of ``models``."""
    prompt_count: Mapped[int] = mapped_column(Integer)
    salt: Mapped[str] = mapped_column(String(64))
    """Secret seed of each voter's pair order and left/right sides."""
    source: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    """Where the prompts came from: ``{"type": "prompts"}`` (inline), ``{"type": "file", "file_id"}``
    or ``{"type": "stored_completions", "filter"}``; NULL for comparisons older than sources (inline)."""
    metadata_: Mapped[dict[str, str]] = mapped_column("metadata", JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    canceled_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    """When it was canceled (its runs were asked to stop, voting closed); NULL while it is not."""


class ComparisonPair(Base):
    """One prompt and one unordered pair of the comparison's models (``model_a`` before ``model_b``
    in the comparison's model order)."""

    __tablename__ = "comparison_pairs"
    __table_args__ = (UniqueConstraint("comparison_id", "prompt_index", "model_a", "model_b"),)

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    comparison_id: Mapped[str] = mapped_column(ForeignKey("comparisons.id", ondelete="CASCADE"), index=True)
    prompt_index: Mapped[int] = mapped_column(Integer)
    model_a: Mapped[str] = mapped_column(String(300))
    model_b: Mapped[str] = mapped_column(String(300))
    rank: Mapped[int] = mapped_column(BigInteger, server_default="0")
    """A random number below ``2**31 - 1`` drawn at creation; each voter is served the pairs in the
    order of an affine permutation of it keyed by the comparison's salt and the voter (computed
    in SQL, so the next pair is one query). The server default only fills rows written without one."""


class ComparisonVote(Base):
    """One voter's verdict on one pair; which model was on the left for them is kept with it."""

    __tablename__ = "comparison_votes"
    __table_args__ = (UniqueConstraint("pair_id", "voter"),)

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    comparison_id: Mapped[str] = mapped_column(ForeignKey("comparisons.id", ondelete="CASCADE"), index=True)
    pair_id: Mapped[str] = mapped_column(ForeignKey("comparison_pairs.id", ondelete="CASCADE"))
    voter: Mapped[str] = mapped_column(String(256))
    left_model: Mapped[str] = mapped_column(String(300))
    winner_model: Mapped[str | None] = mapped_column(String(300), nullable=True)
    """NULL: a tie."""
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
