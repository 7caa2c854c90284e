"""Coach tables: athletes, their workouts and daily wellness, recommendations and applied changes,
and the outcomes of recommendations kept until inference recorded them as feedback.

Every row carries ``tenant_id``; athletes, workouts and wellness days are identified by the
app's own external ids (a wellness day by its athlete and date), which makes imports idempotent.
"""

from __future__ import annotations

import datetime as dt
from datetime import datetime

from sqlalchemy import Boolean, Date, Float, ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from coachforge_shared.db import Base, UTCDateTime
from coachforge_shared.ids import utcnow


class Athlete(Base):
    """An athlete of a tenant's app, with the current plan it follows."""

    __tablename__ = "coach_athletes"
    __table_args__ = (UniqueConstraint("tenant_id", "external_id"),)

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    external_id: Mapped[str] = mapped_column(String(100))
    name: Mapped[str] = mapped_column(String(200), default="")
    sport: Mapped[str] = mapped_column(String(40), default="")
    ill_or_injured: Mapped[bool] = mapped_column(Boolean, default=False)
    hrv_baseline_ms: Mapped[float | None] = mapped_column(Float, nullable=True)
    plan_name: Mapped[str] = mapped_column(String(200), default="")
    plan_phase: Mapped[str] = mapped_column(String(40), default="")
    goal: Mapped[str] = mapped_column(String(200), default="")
    goal_date: Mapped[dt.date | None] = mapped_column(Date, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class Workout(Base):
    """A planned or completed workout. ``version`` grows with every change (import, apply, undo)."""

    __tablename__ = "coach_workouts"
    __table_args__ = (UniqueConstraint("athlete_id", "external_id"),)

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    athlete_id: Mapped[str] = mapped_column(ForeignKey("coach_athletes.id", ondelete="CASCADE"), index=True)
    external_id: Mapped[str] = mapped_column(String(32))
    status: Mapped[str] = mapped_column(String(20))  # planned | completed | removed
    date: Mapped[dt.date] = mapped_column(Date, index=True)
    sport: Mapped[str] = mapped_column(String(40))
    type: Mapped[str] = mapped_column(String(20))
    zone: Mapped[int] = mapped_column(Integer)
    duration_min: Mapped[int] = mapped_column(Integer)
    tss: Mapped[float] = mapped_column(Float)
    key_session: Mapped[bool] = mapped_column(Boolean, default=False)
    notes: Mapped[str] = mapped_column(Text, default="")
    version: Mapped[int] = mapped_column(Integer, default=1)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class Wellness(Base):
    """How the athlete felt on one day (one row per athlete and date)."""

    __tablename__ = "coach_wellness"
    __table_args__ = (UniqueConstraint("athlete_id", "date"),)

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    athlete_id: Mapped[str] = mapped_column(ForeignKey("coach_athletes.id", ondelete="CASCADE"), index=True)
    date: Mapped[dt.date] = mapped_column(Date)
    sleep_hours: Mapped[float | None] = mapped_column(Float, nullable=True)
    soreness: Mapped[int | None] = mapped_column(Integer, nullable=True)
    hrv_ms: Mapped[float | None] = mapped_column(Float, nullable=True)
    resting_hr: Mapped[int | None] = mapped_column(Integer, nullable=True)
    rpe: Mapped[int | None] = mapped_column(Integer, nullable=True)
    notes: Mapped[str] = mapped_column(Text, default="")
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class Recommendation(Base):
    """A previewed recommendation: what was proposed, by which model (or the rules), for which prompt."""

    __tablename__ = "coach_recommendations"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    athlete_id: Mapped[str] = mapped_column(ForeignKey("coach_athletes.id", ondelete="CASCADE"), index=True)
    source: Mapped[str] = mapped_column(String(10))  # model | rules
    model: Mapped[str] = mapped_column(String(300), default="")
    prompt_hash: Mapped[str] = mapped_column(String(64), default="")
    modification_json: Mapped[str] = mapped_column(Text)
    # The stored chat completion the model answered with (None when the rules answered).
    completion_id: Mapped[str | None] = mapped_column(String(128), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class PlanChange(Base):
    """The audit row of one apply: the accepted operations with every workout before and after."""

    __tablename__ = "coach_changes"
    __table_args__ = (UniqueConstraint("tenant_id", "request_id"),)

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    athlete_id: Mapped[str] = mapped_column(ForeignKey("coach_athletes.id", ondelete="CASCADE"), index=True)
    request_id: Mapped[str] = mapped_column(String(100))
    request_hash: Mapped[str] = mapped_column(String(64))
    recommendation_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    source: Mapped[str] = mapped_column(String(10))  # model | rules | client
    model: Mapped[str] = mapped_column(String(300), default="")
    prompt_hash: Mapped[str] = mapped_column(String(64), default="")
    modification_json: Mapped[str] = mapped_column(Text)
    accepted_json: Mapped[str] = mapped_column(Text, default="[]")
    rejected_json: Mapped[str] = mapped_column(Text, default="[]")
    before_json: Mapped[str] = mapped_column(Text, default="[]")
    after_json: Mapped[str] = mapped_column(Text, default="[]")
    status: Mapped[str] = mapped_column(String(20))  # applied | undone
    actor: Mapped[str] = mapped_column(String(200), default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    undone_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    undone_by: Mapped[str | None] = mapped_column(String(200), nullable=True)


class CoachOutcome(Base):
    """One outcome of a recommendation as feedback on its stored completion (one row per
    recommendation and rater: "coach-outcome" for applied/undone, "athlete-outcome" for followed or
    not), kept until inference recorded it. Written in the transaction of what it reports; sent
    right after, and again (consumer of ``completion.stored``, periodic retries) while inference
    does not have the completion yet or cannot be reached."""

    __tablename__ = "coach_outcomes"
    __table_args__ = (UniqueConstraint("recommendation_id", "rater"),
                      Index("ix_coach_outcomes_status_next_attempt", "status", "next_attempt_at"),
                      Index("ix_coach_outcomes_tenant_completion", "tenant_id", "completion_id"))

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    recommendation_id: Mapped[str] = mapped_column(ForeignKey("coach_recommendations.id", ondelete="CASCADE"))
    # The stored completion rated (None: the rules answered, there is nothing to rate).
    completion_id: Mapped[str | None] = mapped_column(String(128), nullable=True)
    rater: Mapped[str] = mapped_column(String(64))
    rating: Mapped[int] = mapped_column(Integer)
    comment: Mapped[str] = mapped_column(Text, default="")
    followed: Mapped[bool | None] = mapped_column(Boolean, nullable=True)  # athlete-outcome only
    # Grows with every new outcome of the same rater: a send only counts for the version it sent.
    version: Mapped[int] = mapped_column(Integer, default=1)
    status: Mapped[str] = mapped_column(String(16))  # pending | sent | none | expired
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    # A process sending it holds it until then (one send at a time per row).
    claimed_until: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    last_error: Mapped[str] = mapped_column(Text, default="")
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
