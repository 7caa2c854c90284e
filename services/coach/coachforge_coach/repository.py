"""Queries of the coach tables; every one is scoped to a tenant."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable

from sqlalchemy import select
from sqlalchemy.orm import Session

from coachforge_coach.models import Athlete, PlanChange, Recommendation, Wellness, Workout
from coachforge_shared.errors import NotFound


def athlete(s: Session, tenant_id: str, external_id: str, *, lock: bool = False) -> Athlete:
    q = select(Athlete).where(Athlete.tenant_id == tenant_id, Athlete.external_id == external_id)
    found = s.scalar(q.with_for_update() if lock else q)
    if found is None:
        raise NotFound(f"No athlete {external_id!r}.", param="athlete_id", code="athlete_not_found")
    return found


def find_athlete(s: Session, tenant_id: str, external_id: str) -> Athlete | None:
    return s.scalar(select(Athlete).where(Athlete.tenant_id == tenant_id, Athlete.external_id == external_id))


def workout(s: Session, athlete_id: str, external_id: str) -> Workout | None:
    return s.scalar(select(Workout).where(Workout.athlete_id == athlete_id, Workout.external_id == external_id))


def workouts_by_external_id(s: Session, athlete_id: str, external_ids: Iterable[str]) -> dict[str, Workout]:
    ids = sorted(set(external_ids))
    if not ids:
        return {}
    rows = s.scalars(select(Workout).where(Workout.athlete_id == athlete_id, Workout.external_id.in_(ids)))
    return {w.external_id: w for w in rows}


def workouts_between(s: Session, athlete_id: str, start: dt.date, end: dt.date,
                     statuses: tuple[str, ...] = ("planned", "completed")) -> list[Workout]:
    """Workouts with ``start <= date < end`` in the given statuses, by (date, external id)."""
    return list(s.scalars(select(Workout).where(
        Workout.athlete_id == athlete_id, Workout.date >= start, Workout.date < end, Workout.status.in_(statuses))
        .order_by(Workout.date, Workout.external_id)))


def completed_between(s: Session, athlete_id: str, start: dt.date, until: dt.date) -> list[Workout]:
    """Completed workouts with ``start <= date <= until``, oldest first."""
    return list(s.scalars(select(Workout).where(
        Workout.athlete_id == athlete_id, Workout.status == "completed", Workout.date >= start,
        Workout.date <= until).order_by(Workout.date, Workout.external_id)))


def wellness_between(s: Session, athlete_id: str, start: dt.date, end: dt.date) -> list[Wellness]:
    """Wellness days with ``start <= date <= end``, oldest first."""
    return list(s.scalars(select(Wellness).where(
        Wellness.athlete_id == athlete_id, Wellness.date >= start, Wellness.date <= end).order_by(Wellness.date)))


def wellness_on(s: Session, athlete_id: str, day: dt.date) -> Wellness | None:
    return s.scalar(select(Wellness).where(Wellness.athlete_id == athlete_id, Wellness.date == day))


def recommendation(s: Session, tenant_id: str, athlete_id: str, rec_id: str) -> Recommendation:
    found = s.scalar(select(Recommendation).where(Recommendation.id == rec_id, Recommendation.tenant_id == tenant_id,
                                                  Recommendation.athlete_id == athlete_id))
    if found is None:
        raise NotFound(f"No recommendation {rec_id!r} for this athlete.", param="recommendation_id",
                       code="recommendation_not_found")
    return found


def recommendation_by_id(s: Session, tenant_id: str, rec_id: str) -> Recommendation:
    found = s.scalar(select(Recommendation).where(Recommendation.id == rec_id, Recommendation.tenant_id == tenant_id))
    if found is None:
        raise NotFound(f"No recommendation {rec_id!r}.", param="recommendation_id", code="recommendation_not_found")
    return found


def change_by_request(s: Session, tenant_id: str, request_id: str) -> PlanChange | None:
    return s.scalar(select(PlanChange).where(PlanChange.tenant_id == tenant_id, PlanChange.request_id == request_id))


def change(s: Session, tenant_id: str, change_id: str) -> PlanChange:
    found = s.scalar(select(PlanChange).where(PlanChange.id == change_id, PlanChange.tenant_id == tenant_id))
    if found is None:
        raise NotFound(f"No change {change_id!r}.", param="change_id", code="change_not_found")
    return found


def changes(s: Session, tenant_id: str, athlete_id: str, limit: int) -> list[PlanChange]:
    return list(s.scalars(select(PlanChange).where(PlanChange.tenant_id == tenant_id,
                                                   PlanChange.athlete_id == athlete_id)
                          .order_by(PlanChange.created_at.desc(), PlanChange.id.desc()).limit(limit)))
