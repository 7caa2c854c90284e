"""The coach links each recommendation to its stored completion and records outcomes as feedback."""

from __future__ import annotations

import pytest
from conftest import TODAY, ScriptedModels, answer, athlete_batch  # type: ignore[import-not-found]

from coachforge_coach import service
from coachforge_coach.grpc import recommendation_proto
from coachforge_coach.schemas import ApplyIn, RecommendIn
from coachforge_coach.service import CoachDeps
from coachforge_shared.errors import NotFound, Unavailable

SAFE = answer({"op": "reduce_intensity", "workout_id": "p-wed", "new_zone": 2, "reason": "TSB low",
               "confidence": 0.8})


def rec_in(**kw: object) -> RecommendIn:
    return RecommendIn.model_validate({"today": TODAY.isoformat(), **kw})


def apply_in(request_id: str, **kw: object) -> ApplyIn:
    return ApplyIn.model_validate({"request_id": request_id, "today": TODAY.isoformat(), **kw})


def test_the_completion_is_stored_and_kept_on_the_recommendation(deps: CoachDeps, models: ScriptedModels) -> None:
    service.import_batch(deps, "acme", athlete_batch(recent_tss=140))
    models.answer = SAFE
    rec = service.recommend(deps, "acme", "anna", rec_in())
    assert rec["source"] == "model" and rec["completion_id"] == "chatcmpl-1"
    assert models.calls[-1]["store_metadata"] == {"source": "coach", "athlete": "anna", "recommendation": rec["id"]}
    assert recommendation_proto(rec).completion_id == "chatcmpl-1"

    models.answer = "not json at all"  # the model answered, unusably: the rules' recommendation has no completion
    fallback = service.recommend(deps, "acme", "anna", rec_in())
    assert fallback["source"] == "rules" and fallback["completion_id"] is None
    assert recommendation_proto(fallback).completion_id == ""
    models.answer = Unavailable("engine down")
    assert service.recommend(deps, "acme", "anna", rec_in())["completion_id"] is None


def test_applied_then_undone_is_recorded_as_the_same_raters_feedback(deps: CoachDeps,
                                                                     models: ScriptedModels) -> None:
    service.import_batch(deps, "acme", athlete_batch(recent_tss=140))
    models.answer = SAFE
    rec = service.recommend(deps, "acme", "anna", rec_in())
    change = service.apply(deps, "acme", "k", "anna", apply_in("r1", recommendation_id=rec["id"]))
    assert change["status"] == "applied"
    assert models.feedback == [{"tenant": "acme", "completion_id": "chatcmpl-1", "rater": "coach-outcome",
                                "rating": 4, "comment": "applied"}]
    service.apply(deps, "acme", "k", "anna", apply_in("r1", recommendation_id=rec["id"]))  # a replay: no feedback
    assert len(models.feedback) == 1
    service.undo(deps, "acme", "k", change["id"])
    assert models.feedback[-1] == {"tenant": "acme", "completion_id": "chatcmpl-1", "rater": "coach-outcome",
                                   "rating": 2, "comment": "undone"}
    service.undo(deps, "acme", "k", change["id"])  # already undone: nothing more
    assert len(models.feedback) == 2


def test_no_feedback_without_a_stored_completion(deps: CoachDeps, models: ScriptedModels) -> None:
    service.import_batch(deps, "acme", athlete_batch(recent_tss=140))
    change = service.apply(deps, "acme", "k", "anna", apply_in("r1", modification={"operations": [
        {"op": "reduce_intensity", "workout_id": "p-wed", "new_zone": 2, "reason": "x", "confidence": 1.0}],
        "message": "client"}))
    service.undo(deps, "acme", "k", change["id"])
    models.answer = Unavailable("engine down")
    rec = service.recommend(deps, "acme", "anna", rec_in())  # the rules answer
    assert rec["source"] == "rules"
    service.apply(deps, "acme", "k", "anna", apply_in("r2", recommendation_id=rec["id"]))
    assert models.feedback == []


@pytest.mark.parametrize("error", [NotFound("No stored chat completion found.", param="completion_id"),
                                   Unavailable("inference down"), RuntimeError("boom")])
def test_a_feedback_failure_never_fails_apply_or_undo(deps: CoachDeps, models: ScriptedModels,
                                                      error: Exception) -> None:
    service.import_batch(deps, "acme", athlete_batch(recent_tss=140))
    models.answer = SAFE
    rec = service.recommend(deps, "acme", "anna", rec_in())
    models.feedback_error = error
    change = service.apply(deps, "acme", "k", "anna", apply_in("r1", recommendation_id=rec["id"]))
    assert change["status"] == "applied" and service.get_change(deps, "acme", change["id"])["status"] == "applied"
    assert service.undo(deps, "acme", "k", change["id"])["status"] == "undone"
    assert [f["comment"] for f in models.feedback] == ["applied", "undone"]
