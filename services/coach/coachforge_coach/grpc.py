"""gRPC ``CoachService``: the same logic and validation as the REST API."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any, TypeVar

import grpc
from pydantic import BaseModel, ValidationError

from coachforge.coach.v1 import coach_pb2, coach_pb2_grpc
from coachforge_coach import service
from coachforge_coach.schemas import ApplyIn, AthleteIn, ImportBatch, OutcomeIn, RecommendIn, WellnessIn, WorkoutIn
from coachforge_coach.service import CoachDeps
from coachforge_shared.auth import current_principal
from coachforge_shared.errors import InvalidArgument
from coachforge_shared.grpc_server import ServiceRegistration

M = TypeVar("M", bound=BaseModel)


def _validated(cls: type[M], data: dict[str, Any]) -> M:
    """Validate like the REST layer does: a bad field is INVALID_ARGUMENT naming it."""
    try:
        return cls.model_validate(data)
    except ValidationError as err:
        errors = err.errors(include_url=False)
        params = [".".join(str(p) for p in e["loc"]) or "request" for e in errors]
        message = "; ".join(f"{p}: {e['msg']}" for p, e in zip(params, errors, strict=True))
        raise InvalidArgument(f"Invalid request: {message}", param=params[0], code="invalid_value") from None


def _date(value: str) -> str | None:
    return value or None


def _athlete(a: coach_pb2.Athlete) -> dict[str, Any]:
    plan = None
    if a.plan_name or a.plan_phase or a.goal or a.goal_date:
        plan = {"name": a.plan_name, "phase": a.plan_phase, "goal": a.goal, "goal_date": _date(a.goal_date)}
    return {"external_id": a.external_id, "name": a.name, "sport": a.sport, "ill_or_injured": a.ill_or_injured,
            "hrv_baseline_ms": a.hrv_baseline_ms if a.HasField("hrv_baseline_ms") else None, "plan": plan}


def _workout(w: coach_pb2.Workout) -> dict[str, Any]:
    return {"external_id": w.external_id, "athlete_id": w.athlete_id or None, "status": w.status or "planned",
            "date": w.date, "sport": w.sport, "type": w.type, "zone": w.zone, "duration_min": w.duration_min,
            "tss": w.tss, "key_session": w.key_session, "notes": w.notes}


def _wellness(d: coach_pb2.Wellness) -> dict[str, Any]:
    out: dict[str, Any] = {"athlete_id": d.athlete_id or None, "date": d.date, "notes": d.notes}
    for name in ("sleep_hours", "soreness", "hrv_ms", "resting_hr", "rpe"):
        if d.HasField(name):
            out[name] = getattr(d, name)
    return out


def _today(value: str) -> dt.date | None:
    if not value:
        return None
    try:
        return dt.date.fromisoformat(value)
    except ValueError:
        raise InvalidArgument(f"today: {value!r} is not a date (YYYY-MM-DD).", param="today") from None


def athlete_proto(a: dict[str, Any]) -> coach_pb2.Athlete:
    plan = a["plan"]
    msg = coach_pb2.Athlete(external_id=a["external_id"], name=a["name"], sport=a["sport"],
                            ill_or_injured=a["ill_or_injured"], plan_name=plan["name"], plan_phase=plan["phase"],
                            goal=plan["goal"], goal_date=plan["goal_date"] or "")
    if a["hrv_baseline_ms"] is not None:
        msg.hrv_baseline_ms = a["hrv_baseline_ms"]
    return msg


def workout_proto(w: dict[str, Any]) -> coach_pb2.Workout:
    return coach_pb2.Workout(**{k: v for k, v in w.items() if k != "object"})


def wellness_proto(d: dict[str, Any]) -> coach_pb2.Wellness:
    return coach_pb2.Wellness(**{k: v for k, v in d.items() if k != "object" and v is not None})


def _point(p: dict[str, Any]) -> coach_pb2.LoadPoint:
    return coach_pb2.LoadPoint(**p)


def _operations(ops: list[dict[str, Any]]) -> list[coach_pb2.OperationResult]:
    return [coach_pb2.OperationResult(index=o["index"], operation_json=json.dumps(o["operation"]),
                                      accepted=o["accepted"],
                                      violations=[coach_pb2.Violation(**v) for v in o["violations"]])
            for o in ops]


def change_proto(c: dict[str, Any]) -> coach_pb2.PlanChange:
    return coach_pb2.PlanChange(
        id=c["id"], athlete_id=c["athlete_id"], request_id=c["request_id"], status=c["status"], source=c["source"],
        model=c["model"] or "", prompt_hash=c["prompt_hash"] or "", modification_json=json.dumps(c["modification"]),
        operations=_operations(c["operations"]), before_json=json.dumps(c["before"]),
        after_json=json.dumps(c["after"]), created_at=c["created_at"], undone_at=c["undone_at"] or 0,
        replayed=c["replayed"])


def recommendation_proto(r: dict[str, Any]) -> coach_pb2.Recommendation:
    fallback = r["fallback"] or {}
    ctx = r["context"]
    answer = r["model_answer"] or {}
    return coach_pb2.Recommendation(
        id=r["id"], athlete_id=r["athlete_id"], source=r["source"], fallback_reason=fallback.get("reason", ""),
        fallback_message=fallback.get("message", ""), model=r["model"], answered_by=r["answered_by"] or "",
        schema_version=r["schema_version"], prompt_hash=r["prompt_hash"],
        modification_json=json.dumps(r["modification"]), operations=_operations(r["operations"]),
        weekly_tss_before=r["weekly_tss"]["before"], weekly_tss_after=r["weekly_tss"]["after"],
        context=ctx["text"], context_tokens=ctx["tokens"], context_level=ctx["level"],
        model_answer_valid=bool(answer.get("valid")), state_json=json.dumps(r["state"]),
        completion_id=r["completion_id"] or "", knowledge_base=r["knowledge"]["knowledge_base"] or "",
        knowledge_status=r["knowledge"]["status"], knowledge_chunk_ids=r["knowledge"]["chunk_ids"])


def outcome_proto(o: dict[str, Any]) -> coach_pb2.RecommendationOutcome:
    return coach_pb2.RecommendationOutcome(
        recommendation_id=o["recommendation_id"], completion_id=o["completion_id"] or "", rater=o["rater"],
        rating=o["rating"], comment=o["comment"], followed=bool(o["followed"]), feedback=o["feedback"],
        updated_at=o["updated_at"])


def _counts(c: dict[str, int]) -> coach_pb2.ImportCounts:
    return coach_pb2.ImportCounts(**c)


class CoachServicer(coach_pb2_grpc.CoachServiceServicer):
    def __init__(self, deps: CoachDeps) -> None:
        self.deps = deps

    def GetModificationSchema(self, request: coach_pb2.GetModificationSchemaRequest,
                              context: grpc.ServicerContext) -> coach_pb2.ModificationSchema:
        doc = service.schema()
        return coach_pb2.ModificationSchema(version=doc["version"], schema_json=json.dumps(doc["schema"]))

    def ValidateModification(self, request: coach_pb2.ValidateModificationRequest,
                             context: grpc.ServicerContext) -> coach_pb2.ValidateModificationResponse:
        valid, error = service.validate(request.modification_json)
        return coach_pb2.ValidateModificationResponse(valid=valid, error=error)

    def ImportData(self, request: coach_pb2.ImportDataRequest,
                   context: grpc.ServicerContext) -> coach_pb2.ImportDataResponse:
        batch = _validated(ImportBatch, {"athletes": [_athlete(a) for a in request.athletes],
                                         "workouts": [_workout(w) for w in request.workouts],
                                         "wellness": [_wellness(d) for d in request.wellness]})
        result = service.import_batch(self.deps, current_principal().tenant_id, batch)
        return coach_pb2.ImportDataResponse(athletes=_counts(result["athletes"]),
                                            workouts=_counts(result["workouts"]),
                                            wellness=_counts(result["wellness"]))

    def UpsertAthlete(self, request: coach_pb2.Athlete, context: grpc.ServicerContext) -> coach_pb2.Athlete:
        body = _validated(AthleteIn, _athlete(request))
        return athlete_proto(service.upsert_athlete(self.deps, current_principal().tenant_id, body))

    def UpsertWorkout(self, request: coach_pb2.UpsertWorkoutRequest,
                      context: grpc.ServicerContext) -> coach_pb2.Workout:
        body = _validated(WorkoutIn, _workout(request.workout))
        return workout_proto(service.upsert_workout(self.deps, current_principal().tenant_id, request.athlete_id,
                                                    body))

    def UpsertWellness(self, request: coach_pb2.UpsertWellnessRequest,
                       context: grpc.ServicerContext) -> coach_pb2.Wellness:
        body = _validated(WellnessIn, _wellness(request.wellness))
        return wellness_proto(service.upsert_wellness(self.deps, current_principal().tenant_id,
                                                      request.athlete_id, body))

    def GetLoadMetrics(self, request: coach_pb2.GetLoadMetricsRequest,
                       context: grpc.ServicerContext) -> coach_pb2.LoadMetrics:
        result = service.load_metrics(self.deps, current_principal().tenant_id, request.athlete_id,
                                      _today(request.today), request.days or 42)
        return coach_pb2.LoadMetrics(athlete_id=result["athlete_id"], today=_point(result["today"]),
                                     points=[_point(p) for p in result["points"]])

    def Recommend(self, request: coach_pb2.RecommendRequest,
                  context: grpc.ServicerContext) -> coach_pb2.Recommendation:
        body = _validated(RecommendIn, {"model": request.model or None, "question": request.question or None,
                                        "today": _date(request.today), "token_budget": request.token_budget or None,
                                        "knowledge_base": request.knowledge_base
                                        if request.HasField("knowledge_base") else None})
        return recommendation_proto(service.recommend(self.deps, current_principal().tenant_id, request.athlete_id,
                                                      body))

    def ApplyModification(self, request: coach_pb2.ApplyModificationRequest,
                          context: grpc.ServicerContext) -> coach_pb2.PlanChange:
        modification = None
        if request.modification_json:
            try:
                modification = json.loads(request.modification_json)
            except json.JSONDecodeError as err:
                raise InvalidArgument(f"modification_json is not JSON: {err}", param="modification") from None
        body = _validated(ApplyIn, {"request_id": request.request_id,
                                    "recommendation_id": request.recommendation_id or None,
                                    "modification": modification, "today": _date(request.today)})
        p = current_principal()
        return change_proto(service.apply(self.deps, p.tenant_id, p.actor, request.athlete_id, body))

    def UndoChange(self, request: coach_pb2.UndoChangeRequest,
                   context: grpc.ServicerContext) -> coach_pb2.PlanChange:
        p = current_principal()
        return change_proto(service.undo(self.deps, p.tenant_id, p.actor, request.change_id))

    def ListChanges(self, request: coach_pb2.ListChangesRequest,
                    context: grpc.ServicerContext) -> coach_pb2.ListChangesResponse:
        rows = service.history(self.deps, current_principal().tenant_id, request.athlete_id, request.limit or None)
        return coach_pb2.ListChangesResponse(changes=[change_proto(c) for c in rows])

    def RecordOutcome(self, request: coach_pb2.RecordOutcomeRequest,
                      context: grpc.ServicerContext) -> coach_pb2.RecommendationOutcome:
        if not request.recommendation_id:
            raise InvalidArgument("recommendation_id is required", param="recommendation_id")
        body = _validated(OutcomeIn, {"followed": request.followed, "comment": request.comment or None})
        return outcome_proto(service.record_athlete_outcome(self.deps, current_principal().tenant_id,
                                                            request.recommendation_id, body.followed, body.comment))


def registration(deps: CoachDeps) -> ServiceRegistration:
    return ServiceRegistration(coach_pb2.DESCRIPTOR.services_by_name["CoachService"].full_name,
                               CoachServicer(deps),
                               coach_pb2_grpc.add_CoachServiceServicer_to_server)
