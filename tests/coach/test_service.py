"""Coach service logic against a migrated database: import, load, recommend, apply, undo, history."""

from __future__ import annotations

import datetime as dt

import pytest
from conftest import TODAY, ScriptedModels, answer, athlete_batch, workout  # type: ignore[import-not-found]

from coachforge_coach import service
from coachforge_coach.schemas import ApplyIn, AthleteIn, ImportBatch, RecommendIn, WellnessIn, WorkoutIn
from coachforge_coach.service import CoachDeps
from coachforge_shared.errors import Conflict, FailedPrecondition, InvalidArgument, NotFound, Unavailable
from polarize.prompt import render_context


def rec_in(**kw: object) -> RecommendIn:
    return RecommendIn.model_validate({"today": TODAY.isoformat(), **kw})


def apply_in(request_id: str, **kw: object) -> ApplyIn:
    return ApplyIn.model_validate({"request_id": request_id, "today": TODAY.isoformat(), **kw})


def planned(deps: CoachDeps, tenant: str = "acme") -> dict[str, dict[str, object]]:
    rows = service.list_workouts(deps, tenant, "anna", TODAY, TODAY + dt.timedelta(days=7), include_removed=True)
    return {w["external_id"]: w for w in rows}


# -- import ------------------------------------------------------------------------------------


def test_import_is_idempotent_by_external_id(deps: CoachDeps) -> None:
    batch = athlete_batch()
    first = service.import_batch(deps, "acme", batch)
    assert first == {"athletes": {"created": 1, "updated": 0, "unchanged": 0},
                     "workouts": {"created": 126, "updated": 0, "unchanged": 0},
                     "wellness": {"created": 15, "updated": 0, "unchanged": 0}}
    again = service.import_batch(deps, "acme", batch)
    assert again["workouts"] == {"created": 0, "updated": 0, "unchanged": 126}
    assert again["athletes"] == {"created": 0, "updated": 0, "unchanged": 1}

    before = planned(deps)["p-wed"]
    changed = service.upsert_workout(deps, "acme", "anna", WorkoutIn.model_validate(
        {**workout("p-wed", 2, "tempo", 3, 75, 85), "athlete_id": None}))
    assert changed["duration_min"] == 75 and changed["version"] == before["version"] + 1
    day = service.upsert_wellness(deps, "acme", "anna", WellnessIn.model_validate(
        {"date": TODAY.isoformat(), "sleep_hours": 5.0, "soreness": 8}))
    assert day["sleep_hours"] == 5.0
    assert service.import_batch(deps, "acme", ImportBatch.model_validate({"wellness": [
        {"athlete_id": "anna", "date": TODAY.isoformat(), "sleep_hours": 5.0, "soreness": 8}]}))["wellness"] == {
        "created": 0, "updated": 0, "unchanged": 1}
    athlete = service.upsert_athlete(deps, "acme", AthleteIn.model_validate({"external_id": "anna", "name": "A",
                                                                             "ill_or_injured": True}))
    assert athlete["ill_or_injured"] is True and athlete["plan"]["name"] == ""


def test_import_naming_an_unknown_athlete_fails_whole_batch_naming_the_field(deps: CoachDeps) -> None:
    batch = ImportBatch.model_validate({
        "athletes": [{"external_id": "bob"}],
        "workouts": [workout("x1", 1, athlete="bob"), workout("x2", 2, athlete="nobody")]})
    with pytest.raises(InvalidArgument) as err:
        service.import_batch(deps, "acme", batch)
    assert err.value.param == "workouts[1].athlete_id"
    with pytest.raises(NotFound):  # nothing of the failed batch was kept
        service.get_athlete(deps, "acme", "bob")


def test_tenants_do_not_see_each_other(deps: CoachDeps) -> None:
    service.import_batch(deps, "acme", athlete_batch())
    with pytest.raises(NotFound):
        service.get_athlete(deps, "globex", "anna")
    with pytest.raises(NotFound):
        service.load_metrics(deps, "globex", "anna", TODAY)
    with pytest.raises(NotFound):
        service.recommend(deps, "globex", "anna", rec_in())
    # the same external id in another tenant is another athlete
    service.import_batch(deps, "globex", athlete_batch(daily_tss=10))
    assert service.load_metrics(deps, "globex", "anna", TODAY)["today"]["ctl"] < \
        service.load_metrics(deps, "acme", "anna", TODAY)["today"]["ctl"]
    change = service.apply(deps, "acme", "k", "anna", apply_in("r1", modification={
        "operations": [{"op": "change_duration", "workout_id": "p-fri", "new_duration_min": 55, "reason": "x",
                        "confidence": 0.5}], "message": "ok"}))
    with pytest.raises(NotFound):
        service.undo(deps, "globex", "k", change["id"])
    with pytest.raises(NotFound):
        service.get_change(deps, "globex", change["id"])


# -- load --------------------------------------------------------------------------------------


def test_load_metrics_by_hand(deps: CoachDeps) -> None:
    service.import_batch(deps, "acme", ImportBatch.model_validate({
        "athletes": [{"external_id": "anna"}],
        "workouts": [workout("a", -2, tss=60, status="completed"), workout("b", -2, tss=40, status="completed"),
                     workout("planned-not-counted", -1, tss=500)]}))
    load = service.load_metrics(deps, "acme", "anna", TODAY, days=3)
    # Day -2: 100 TSS (two workouts). ctl = 100/42 = 2.380952, atl = 100/7 = 14.285714, tsb = 0
    # Day -1: 0 TSS (a planned workout is not training done). ctl = 2.380952*41/42 = 2.324263,
    #         atl = 14.285714*6/7 = 12.244898, tsb = 2.380952 - 14.285714 = -11.904762
    # Today:  ctl = 2.324263*41/42 = 2.268923, atl = 12.244898*6/7 = 10.495627,
    #         tsb = 2.324263 - 12.244898 = -9.920635, ramp = ctl - 0 (under 7 days of history)
    assert [p["date"] for p in load["points"]] == ["2025-03-08", "2025-03-09", "2025-03-10"]
    assert [p["tss"] for p in load["points"]] == [100.0, 0.0, 0.0]
    assert [p["ctl"] for p in load["points"]] == [2.38, 2.32, 2.27]
    assert [p["atl"] for p in load["points"]] == [14.29, 12.24, 10.5]
    assert [p["tsb"] for p in load["points"]] == [0.0, -11.9, -9.92]
    assert load["today"] == {"date": "2025-03-10", "tss": 0.0, "ctl": 2.27, "atl": 10.5, "tsb": -9.92, "ramp": 2.27}
    with pytest.raises(InvalidArgument) as err:
        service.load_metrics(deps, "acme", "anna", TODAY, days=0)
    assert err.value.param == "days"


# -- recommend ---------------------------------------------------------------------------------


def test_model_answer_is_checked_and_stored(deps: CoachDeps, models: ScriptedModels) -> None:
    service.import_batch(deps, "acme", athlete_batch(recent_tss=140, sleep=7.5))  # overreached: TSB < -20
    models.answer = answer(
        {"op": "reduce_intensity", "workout_id": "p-wed", "new_zone": 2, "reason": "TSB low", "confidence": 0.8},
        {"op": "change_duration", "workout_id": "p-sat", "new_duration_min": 150, "reason": "more", "confidence": 0.4},
        {"op": "add_rest_day", "workout_id": "p-mon", "reason": "tired", "confidence": 0.6})
    rec = service.recommend(deps, "acme", "anna", rec_in(question="Too much?"))
    assert rec["source"] == "model" and rec["fallback"] is None
    assert rec["state"]["branch"] == "fatigued" and rec["state"]["tsb"] < -20
    verdicts = {o["operation"]["workout_id"]: o for o in rec["operations"]}
    assert verdicts["p-wed"]["accepted"] is True
    assert [v["rule"] for v in verdicts["p-sat"]["violations"]] == ["no_increase_when_fatigued"]
    assert [v["rule"] for v in verdicts["p-mon"]["violations"]] == ["key_session_protected"]
    assert rec["weekly_tss"]["before"] == 375.0 and rec["weekly_tss"]["after"] < 375.0
    call = models.calls[0]
    assert call["response_format"]["type"] == "json_schema"
    # the schema, narrowed to this week's workouts
    schema = call["response_format"]["json_schema"]["schema"]
    assert schema["properties"]["operations"]["maxItems"] == 6
    assert schema["$defs"]["ReduceIntensity"]["properties"]["workout_id"]["enum"] == [
        "p-fri", "p-mon", "p-sat", "p-thu", "p-tue", "p-wed"]
    assert call["messages"][1]["content"] == rec["context"]["text"]
    assert rec["context"]["text"].endswith("Athlete: Too much?") and rec["context"]["fits"]
    assert rec["model_answer"]["valid"] is True and len(rec["prompt_hash"]) == 64

    # the same inputs give the same prompt
    again = service.recommend(deps, "acme", "anna", rec_in(question="Too much?"))
    assert again["prompt_hash"] == rec["prompt_hash"] and again["id"] != rec["id"]


@pytest.mark.parametrize(("scripted", "reason"), [
    ('{"operations": [{"op": "fly"}], "message": "x"}', "invalid_answer"),
    ("not json at all", "invalid_answer"),
    (Unavailable("engine down"), "model_unavailable"),
])
def test_unusable_model_falls_back_to_the_rules_clearly_marked(deps: CoachDeps, models: ScriptedModels,
                                                              scripted: object, reason: str) -> None:
    service.import_batch(deps, "acme", athlete_batch(sleep=4.5))  # poor sleep
    models.answer = scripted  # type: ignore[assignment]
    rec = service.recommend(deps, "acme", "anna", rec_in())
    assert rec["source"] == "rules" and rec["fallback"]["reason"] == reason
    assert rec["operations"] and all(o["accepted"] for o in rec["operations"])
    # the rules give the key session (Monday's intervals) more recovery before it: moved, not dropped
    assert [(o["operation"]["op"], o["operation"]["workout_id"]) for o in rec["operations"]] == [
        ("move_workout", "p-mon")]
    assert rec["weekly_tss"]["after"] == rec["weekly_tss"]["before"]
    if reason == "invalid_answer":
        assert rec["model_answer"]["valid"] is False and rec["model_answer"]["error"]


def test_unknown_model_and_all_rejected_answers_fall_back(deps: CoachDeps, models: ScriptedModels) -> None:
    service.import_batch(deps, "acme", athlete_batch(sleep=4.5))
    models.base = NotFound("The model 'nope' does not exist.")
    rec = service.recommend(deps, "acme", "anna", rec_in(model="nope"))
    assert rec["source"] == "rules" and rec["fallback"]["reason"] == "model_not_found" and not models.calls
    models.base = "SmolLM2-135M-Instruct"
    models.answer = answer({"op": "change_duration", "workout_id": "p-sat", "new_duration_min": 180, "reason": "more",
                            "confidence": 0.9})
    rec = service.recommend(deps, "acme", "anna", rec_in())
    assert rec["source"] == "rules" and rec["fallback"]["reason"] == "rejected_by_rules"
    assert rec["model_answer"]["valid"] is True


def test_minimal_context_when_budget_is_tight(deps: CoachDeps, models: ScriptedModels) -> None:
    service.import_batch(deps, "acme", athlete_batch())
    full = service.recommend(deps, "acme", "anna", rec_in(token_budget=4000))
    assert full["context"]["level"] == "full" and "Last 14 days:" in full["context"]["text"]
    assert full["context"]["tokenizer"] == "approximate"  # no prepared model in this test's models_dir
    tight = service.recommend(deps, "acme", "anna", rec_in(token_budget=200))
    assert tight["context"]["tokens"] <= 200 or tight["source"] == "rules"
    assert tight["context"]["level"] != "full"


# -- apply / undo ------------------------------------------------------------------------------


def test_apply_accepts_safe_operations_rejects_others_and_undo_restores(deps: CoachDeps,
                                                                       models: ScriptedModels) -> None:
    service.import_batch(deps, "acme", athlete_batch(recent_tss=140))
    models.answer = answer(
        {"op": "reduce_intensity", "workout_id": "p-wed", "new_zone": 2, "reason": "TSB low", "confidence": 0.8},
        {"op": "swap_workout", "workout_id": "p-tue", "new_type": "intervals", "reason": "x", "confidence": 0.3},
        {"op": "move_workout", "workout_id": "p-mon", "new_date": "2025-03-12", "reason": "rest", "confidence": 0.7})
    rec = service.recommend(deps, "acme", "anna", rec_in())
    before = planned(deps)
    change = service.apply(deps, "acme", "api-key:k1", "anna", apply_in("req-1", recommendation_id=rec["id"]))
    assert change["status"] == "applied" and change["source"] == "model"
    assert change["model"] == "SmolLM2-135M-Instruct" and change["prompt_hash"] == rec["prompt_hash"]
    assert [o["accepted"] for o in change["operations"]] == [True, False, True]
    assert change["operations"][1]["violations"][0]["rule"] == "no_increase_when_fatigued"
    assert [b["external_id"] for b in change["before"]] == ["p-wed", "p-mon"]
    assert change["before"][0]["zone"] == 3 and change["after"][0]["zone"] == 2
    after = planned(deps)
    assert after["p-wed"]["zone"] == 2 and after["p-wed"]["type"] == "endurance"
    assert after["p-mon"]["date"] == "2025-03-12" and after["p-tue"] == before["p-tue"]

    replay = service.apply(deps, "acme", "api-key:k1", "anna", apply_in("req-1", recommendation_id=rec["id"]))
    assert replay["id"] == change["id"] and replay["replayed"] is True
    assert planned(deps) == after  # nothing applied twice
    with pytest.raises(Conflict) as err:
        service.apply(deps, "acme", "k", "anna", apply_in("req-1", modification={"operations": [], "message": "x"}))
    assert err.value.param == "request_id"

    undone = service.undo(deps, "acme", "api-key:k2", change["id"])
    assert undone["status"] == "undone" and undone["undone_at"]
    restored = planned(deps)
    for wid in ("p-wed", "p-mon"):
        assert {k: v for k, v in restored[wid].items() if k != "version"} == \
            {k: v for k, v in before[wid].items() if k != "version"}
        assert restored[wid]["version"] == before[wid]["version"] + 2
    assert service.undo(deps, "acme", "k", change["id"])["status"] == "undone"  # undo twice is a no-op
    history = service.history(deps, "acme", "anna")
    assert [c["id"] for c in history] == [change["id"]] and history[0]["status"] == "undone"


def test_undo_refuses_when_the_workout_changed_since(deps: CoachDeps) -> None:
    service.import_batch(deps, "acme", athlete_batch())
    change = service.apply(deps, "acme", "k", "anna", apply_in("r", modification={
        "operations": [{"op": "change_duration", "workout_id": "p-fri", "new_duration_min": 55, "reason": "short",
                        "confidence": 0.5}], "message": "Shorter Friday."}))
    assert change["status"] == "applied" and change["source"] == "client" and change["model"] is None
    service.upsert_workout(deps, "acme", "anna", WorkoutIn.model_validate(  # the app edits it afterwards
        {**workout("p-fri", 4, minutes=70, tss=58), "athlete_id": None}))
    with pytest.raises(FailedPrecondition) as err:
        service.undo(deps, "acme", "k", change["id"])
    assert err.value.code == "workout_changed" and "p-fri" in err.value.message
    assert planned(deps)["p-fri"]["duration_min"] == 70


def test_rules_on_apply(deps: CoachDeps) -> None:
    service.import_batch(deps, "acme", athlete_batch())
    change = service.apply(deps, "acme", "k", "anna", apply_in("r", modification={"operations": [
        {"op": "add_rest_day", "workout_id": "p-mon", "reason": "skip", "confidence": 0.5},       # key session
        {"op": "change_duration", "workout_id": "d3", "new_duration_min": 30, "reason": "x", "confidence": 0.5},
        {"op": "change_duration", "workout_id": "ghost", "new_duration_min": 30, "reason": "x", "confidence": 0.5},
        {"op": "swap_workout", "workout_id": "p-tue", "new_type": "intervals", "reason": "x", "confidence": 0.5},
        {"op": "change_duration", "workout_id": "p-sat", "new_duration_min": 240, "reason": "x", "confidence": 0.5},
    ], "message": "Changes."}))
    rules = {o["operation"]["workout_id"]: [v["rule"] for v in o["violations"]] for o in change["operations"]}
    assert rules["p-mon"] == ["key_session_protected"]
    assert rules["d3"] == ["past_workout"]  # a completed workout
    assert rules["ghost"] == ["unknown_workout"]
    assert rules["p-tue"] == ["hard_days_in_a_row"]  # Mon intervals, Tue intervals, Wed tempo
    assert "weekly_tss_band" in rules["p-sat"]
    assert change["status"] == "rejected" and change["before"] == []
    with pytest.raises(FailedPrecondition):
        service.undo(deps, "acme", "k", change["id"])

    ill = athlete_batch(ill=True)
    service.import_batch(deps, "acme", ImportBatch.model_validate({"athletes": [ill.athletes[0].model_dump()]}))
    allowed = service.apply(deps, "acme", "k", "anna", apply_in("r2", modification={"operations": [
        {"op": "add_rest_day", "workout_id": "p-mon", "reason": "ill", "confidence": 0.9}], "message": "Rest."}))
    assert allowed["status"] == "applied"
    assert planned(deps)["p-mon"]["status"] == "removed"


def test_apply_validates_its_input(deps: CoachDeps) -> None:
    service.import_batch(deps, "acme", athlete_batch())
    with pytest.raises(InvalidArgument) as err:
        service.apply(deps, "acme", "k", "anna", apply_in("r", modification={"operations": [
            {"op": "reduce_intensity", "workout_id": "p-wed", "new_zone": 9, "reason": "x", "confidence": 0.5}],
            "message": "x"}))
    assert err.value.param == "modification.operations.0.reduce_intensity.new_zone"
    with pytest.raises(InvalidArgument):
        service.apply(deps, "acme", "k", "anna", apply_in("r"))
    with pytest.raises(NotFound) as nf:
        service.apply(deps, "acme", "k", "anna", apply_in("r", recommendation_id="rec-missing"))
    assert nf.value.param == "recommendation_id"


def test_the_rule_based_fallback_for_a_sick_athlete_matches_the_shared_rules(deps: CoachDeps,
                                                                            models: ScriptedModels) -> None:
    service.import_batch(deps, "acme", athlete_batch(ill=True))
    models.answer = Unavailable("down")
    rec = service.recommend(deps, "acme", "anna", rec_in())
    assert rec["state"]["branch"] == "ill"
    assert [o["operation"]["op"] for o in rec["operations"]] == ["add_rest_day"] * 3
    assert {o["operation"]["workout_id"] for o in rec["operations"]} == {"p-mon", "p-tue", "p-wed"}
    # the minimal context is exactly the synthetic training prompt's form
    assert render_context.__module__ == "polarize.prompt"
