"""Trainer tables: jobs, their events and their checkpoints."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, Float, ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from coachforge_shared.db import Base, UTCDateTime
from coachforge_shared.ids import utcnow


class Job(Base):
    __tablename__ = "fine_tuning_jobs"
    # Workers claim the longest waiting queued job: an index scan in claim order (repository.next_claimable).
    __table_args__ = (Index("ix_fine_tuning_jobs_claim_order", "status", "queued_at", "created_at"),)

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    model: Mapped[str] = mapped_column(String(200))
    status: Mapped[str] = mapped_column(String(32), index=True)
    training_file: Mapped[str] = mapped_column(String(64))
    validation_file: Mapped[str | None] = mapped_column(String(64), nullable=True)
    suffix: Mapped[str | None] = mapped_column(String(64), nullable=True)
    n_epochs: Mapped[int] = mapped_column(Integer)
    batch_size: Mapped[int] = mapped_column(Integer)
    learning_rate_multiplier: Mapped[float] = mapped_column(Float)
    seed: Mapped[int] = mapped_column(Integer)
    fine_tuned_model: Mapped[str | None] = mapped_column(String(300), nullable=True)
    trained_tokens: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    error_code: Mapped[str | None] = mapped_column(String(64), nullable=True)
    error_message: Mapped[str | None] = mapped_column(Text, nullable=True)
    cancel_requested: Mapped[bool] = mapped_column(default=False)
    worker_id: Mapped[str | None] = mapped_column(String(200), nullable=True)
    device: Mapped[str | None] = mapped_column(String(16), nullable=True)
    adapter_uri: Mapped[str | None] = mapped_column(String(1000), nullable=True)
    estimated_finish: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    # Method settings beyond the OpenAI hyperparameters (LoRA rank, max_length, ...), resolved.
    method_json: Mapped[str] = mapped_column(Text, default="{}")
    # Estimate made at creation: tokens to train (examples' tokens x epochs), seconds, price.
    estimated_tokens: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    estimated_seconds: Mapped[float | None] = mapped_column(Float, nullable=True)
    estimated_cost_usd: Mapped[float | None] = mapped_column(Float, nullable=True)
    # The whole estimate and the training data's eligibility, as a dry run answers them (JSON
    # {"estimate": {...}, "eligibility": {...}}); null for jobs created before they were stored.
    estimate_json: Mapped[str | None] = mapped_column(Text, nullable=True)
    # Hyperparameter preset the job was created with (quick, balanced, thorough), if any.
    preset: Mapped[str | None] = mapped_column(String(32), nullable=True)
    # Continued training: the fine-tuned model (ft:…) whose adapter the job starts from; ``model`` is
    # then that model's base. None: a new adapter on the base model.
    parent_model: Mapped[str | None] = mapped_column(String(300), nullable=True)
    # OpenAI's method type (supervised, dpo) and the training backend (trl, unsloth, ...).
    method_type: Mapped[str] = mapped_column(String(20), default="supervised", server_default="supervised")
    backend: Mapped[str] = mapped_column(String(32), default="trl", server_default="trl")
    # Backend openai_compatible: the remote fine-tuning job training this one, stored before the worker
    # waits on it (a worker taking the job over follows the same remote job). None: trained here.
    remote_job_id: Mapped[str | None] = mapped_column(String(200), nullable=True)
    # The worker running the job renews this lease; a job whose lease expired is queued again.
    lease_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True, index=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    queued_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    valid_loss: Mapped[float | None] = mapped_column(Float, nullable=True)
    result_file: Mapped[str | None] = mapped_column(String(64), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)


class JobEvent(Base):
    __tablename__ = "fine_tuning_job_events"

    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(64), unique=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("fine_tuning_jobs.id", ondelete="CASCADE"), index=True)
    level: Mapped[str] = mapped_column(String(10), default="info")
    type: Mapped[str] = mapped_column(String(20), default="message")
    message: Mapped[str] = mapped_column(Text)
    data_json: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class JobCheckpoint(Base):
    __tablename__ = "fine_tuning_job_checkpoints"
    __table_args__ = (UniqueConstraint("job_id", "step", name="uq_checkpoint_job_step"),)

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("fine_tuning_jobs.id", ondelete="CASCADE"), index=True)
    step: Mapped[int] = mapped_column(Integer)
    epoch: Mapped[float] = mapped_column(Float)
    train_loss: Mapped[float | None] = mapped_column(Float, nullable=True)
    valid_loss: Mapped[float | None] = mapped_column(Float, nullable=True)
    path: Mapped[str] = mapped_column(String(1000))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
