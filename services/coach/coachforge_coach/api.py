"""REST: ``/v1/coach/…`` for the Polarize app."""

from __future__ import annotations

import datetime as dt
from typing import Any

from fastapi import APIRouter, Body, Query, Request

from coachforge_coach import service
from coachforge_coach.schemas import ApplyIn, AthleteIn, ImportBatch, OutcomeIn, RecommendIn, WellnessIn, WorkoutIn
from coachforge_coach.service import CoachDeps
from coachforge_shared.auth import READ
from coachforge_shared.http import CurrentPrincipal, needs_scope

router = APIRouter(prefix="/v1/coach", tags=["coach"])


def _deps(request: Request) -> CoachDeps:
    deps: CoachDeps = request.app.state.coach
    return deps


def _list(data: list[dict[str, Any]]) -> dict[str, Any]:
    return {"object": "list", "data": data}


@router.get("/schema")
def modification_schema(principal: CurrentPrincipal) -> dict[str, Any]:
    """The versioned JSON Schema of a workout modification (also vLLM's response_format)."""
    return service.schema()


@router.post("/validate", openapi_extra=needs_scope(READ))
def validate_modification(principal: CurrentPrincipal, body: dict[str, Any] = Body(...)) -> dict[str, Any]:
    """Check a proposed modification (``{"modification": "<json text>"}``) against the schema."""
    text = body.get("modification")
    valid, error = service.validate(text if isinstance(text, str) else "")
    return {"valid": valid, "error": error or None}


@router.post("/import")
def import_batch(request: Request, principal: CurrentPrincipal, body: ImportBatch) -> dict[str, Any]:
    """Athletes, workouts and wellness days in one transaction; idempotent by external id."""
    return {"object": "coach.import", **service.import_batch(_deps(request), principal.tenant_id, body)}


@router.post("/athletes")
def upsert_athlete(request: Request, principal: CurrentPrincipal, body: AthleteIn) -> dict[str, Any]:
    return service.upsert_athlete(_deps(request), principal.tenant_id, body)


@router.get("/athletes/{athlete_id}")
def get_athlete(request: Request, principal: CurrentPrincipal, athlete_id: str) -> dict[str, Any]:
    return service.get_athlete(_deps(request), principal.tenant_id, athlete_id)


@router.post("/athletes/{athlete_id}/workouts")
def upsert_workout(request: Request, principal: CurrentPrincipal, athlete_id: str, body: WorkoutIn) -> dict[str, Any]:
    return service.upsert_workout(_deps(request), principal.tenant_id, athlete_id, body)


@router.get("/athletes/{athlete_id}/workouts")
def list_workouts(request: Request, principal: CurrentPrincipal, athlete_id: str,
                  start: dt.date = Query(..., alias="from"), end: dt.date = Query(..., alias="to"),
                  include_removed: bool = False) -> dict[str, Any]:
    """Workouts with ``from <= date < to``."""
    return _list(service.list_workouts(_deps(request), principal.tenant_id, athlete_id, start, end,
                                       include_removed))


@router.post("/athletes/{athlete_id}/wellness")
def upsert_wellness(request: Request, principal: CurrentPrincipal, athlete_id: str,
                    body: WellnessIn) -> dict[str, Any]:
    return service.upsert_wellness(_deps(request), principal.tenant_id, athlete_id, body)


@router.get("/athletes/{athlete_id}/load")
def load_metrics(request: Request, principal: CurrentPrincipal, athlete_id: str, days: int = 42,
                 today: dt.date | None = None) -> dict[str, Any]:
    """CTL (42-day), ATL (7-day), TSB (yesterday's CTL - ATL) and ramp, one point per day."""
    return service.load_metrics(_deps(request), principal.tenant_id, athlete_id, today, days)


@router.post("/athletes/{athlete_id}/recommendations", openapi_extra=needs_scope(READ))
def recommend(request: Request, principal: CurrentPrincipal, athlete_id: str,
              body: RecommendIn | None = None) -> dict[str, Any]:
    """A preview: the model's (or, as a marked fallback, the rules') proposal with the verdict on
    every operation. Nothing is changed."""
    return service.recommend(_deps(request), principal.tenant_id, athlete_id, body or RecommendIn.model_validate({}))


@router.post("/recommendations/{recommendation_id}/outcome")
def record_outcome(request: Request, principal: CurrentPrincipal, recommendation_id: str,
                   body: OutcomeIn) -> dict[str, Any]:
    """Whether the athlete followed the recommendation: feedback of rater ``athlete-outcome`` on its
    stored completion (followed: 5, not: 2), kept and sent once inference has the completion."""
    return service.record_athlete_outcome(_deps(request), principal.tenant_id, recommendation_id, body.followed,
                                          body.comment)


@router.get("/recommendations/{recommendation_id}/outcomes")
def list_outcomes(request: Request, principal: CurrentPrincipal, recommendation_id: str) -> dict[str, Any]:
    """The recommendation's outcomes (applied/undone, followed) and whether inference recorded them."""
    return _list(service.list_outcomes(_deps(request), principal.tenant_id, recommendation_id))


@router.post("/athletes/{athlete_id}/apply")
def apply(request: Request, principal: CurrentPrincipal, athlete_id: str, body: ApplyIn) -> dict[str, Any]:
    """Apply the accepted operations in one transaction with an audit row; idempotent by request_id."""
    return service.apply(_deps(request), principal.tenant_id, principal.actor, athlete_id, body)


@router.get("/athletes/{athlete_id}/changes")
def history(request: Request, principal: CurrentPrincipal, athlete_id: str,
            limit: int | None = None) -> dict[str, Any]:
    return _list(service.history(_deps(request), principal.tenant_id, athlete_id, limit))


@router.get("/changes/{change_id}")
def get_change(request: Request, principal: CurrentPrincipal, change_id: str) -> dict[str, Any]:
    return service.get_change(_deps(request), principal.tenant_id, change_id)


@router.post("/changes/{change_id}/undo")
def undo(request: Request, principal: CurrentPrincipal, change_id: str) -> dict[str, Any]:
    """Restore the workouts the change touched; 409 when one was changed since."""
    return service.undo(_deps(request), principal.tenant_id, principal.actor, change_id)
