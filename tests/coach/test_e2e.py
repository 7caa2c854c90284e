"""The coach through the running stack: REST and gRPC, the real base model answering with
json_schema-constrained output, the rule-based fallback, tenant isolation and field errors."""

from __future__ import annotations

import json
import secrets
from typing import Any

import grpc
import httpx
import pytest

from coachforge.coach.v1 import coach_pb2, coach_pb2_grpc
from coachforge_launcher.models import BASE_MODEL_ID
from coachforge_shared.auth import add_api_key, create_tenant
from coachforge_shared.db import Database

pytestmark = pytest.mark.stack

TODAY = "2025-06-02"


def _batch(athlete: str) -> dict[str, Any]:
    from polarize.scenarios import scenario_batch

    _, batch = scenario_batch("overreached", 0)
    text = json.dumps(batch).replace("eval-overreached-0", athlete)
    return json.loads(text)  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def api(stack) -> httpx.Client:  # type: ignore[no-untyped-def]
    root = stack.base_url.removesuffix("/v1")
    with httpx.Client(base_url=root, headers={"Authorization": f"Bearer {stack.api_key}"}, timeout=600) as client:
        yield client  # type: ignore[misc]


@pytest.fixture(scope="module")
def other_key(stack) -> str:  # type: ignore[no-untyped-def]
    key = "cf-coach-other-" + secrets.token_hex(8)
    db = Database(stack.database_url)
    create_tenant(db, "coach-other")
    add_api_key(db, "coach-other", key)
    db.dispose()
    return key


def test_import_load_recommend_apply_undo_over_rest(api: httpx.Client) -> None:
    athlete = "e2e-" + secrets.token_hex(3)
    first = api.post("/v1/coach/import", json=_batch(athlete))
    assert first.status_code == 200, first.text
    assert first.json()["workouts"]["created"] == 126
    again = api.post("/v1/coach/import", json=_batch(athlete)).json()
    assert again["workouts"] == {"created": 0, "updated": 0, "unchanged": 126}

    load = api.get(f"/v1/coach/athletes/{athlete}/load", params={"today": TODAY, "days": 14}).json()
    assert len(load["points"]) == 14 and load["today"]["date"] == TODAY
    assert load["today"]["tsb"] < -20  # a very hard last 10 days

    schema = api.get("/v1/coach/schema").json()
    r = api.post(f"/v1/coach/athletes/{athlete}/recommendations",
                 json={"model": BASE_MODEL_ID, "today": TODAY, "question": "I feel wrecked. Changes?"})
    assert r.status_code == 200, r.text
    rec = r.json()
    assert rec["schema_version"] == schema["version"]
    assert rec["answered_by"] == BASE_MODEL_ID  # the real model was asked
    assert rec["context"]["tokenizer"] == BASE_MODEL_ID and rec["context"]["fits"]
    assert rec["context"]["tokens"] <= rec["context"]["budget"]
    assert rec["state"]["branch"] == "fatigued"
    answer = rec["model_answer"]
    assert answer is not None and answer["content"]
    if answer["valid"]:
        assert rec["source"] == "model" or rec["fallback"]["reason"] == "rejected_by_rules"
    else:
        assert rec["source"] == "rules" and rec["fallback"]["reason"] == "invalid_answer"
    for op in rec["operations"]:
        assert op["accepted"] == (op["violations"] == [])
        assert all(v["rule"] and v["message"] for v in op["violations"])
    assert set(rec["weekly_tss"]) == {"before", "after"}

    applied = api.post(f"/v1/coach/athletes/{athlete}/apply",
                       json={"request_id": f"{athlete}-rec", "recommendation_id": rec["id"], "today": TODAY}).json()
    assert applied["recommendation_id"] == rec["id"] and applied["prompt_hash"] == rec["prompt_hash"]
    assert applied["status"] == ("applied" if any(o["accepted"] for o in applied["operations"]) else "rejected")
    replay = api.post(f"/v1/coach/athletes/{athlete}/apply",
                      json={"request_id": f"{athlete}-rec", "recommendation_id": rec["id"], "today": TODAY}).json()
    assert replay["id"] == applied["id"] and replay["replayed"] is True

    assert [c["id"] for c in api.get(f"/v1/coach/athletes/{athlete}/changes").json()["data"]] == [applied["id"]]


def test_client_change_apply_and_undo_over_rest(api: httpx.Client) -> None:
    athlete = "e2e-undo-" + secrets.token_hex(3)
    assert api.post("/v1/coach/import", json=_batch(athlete)).status_code == 200
    mod = {"operations": [{"op": "reduce_intensity", "workout_id": f"{athlete}-p4", "new_zone": 2,
                           "reason": "TSB low", "confidence": 0.9},
                          {"op": "swap_workout", "workout_id": f"{athlete}-p3", "new_type": "intervals",
                           "reason": "harder", "confidence": 0.2}], "message": "Thursday easy."}
    change = api.post(f"/v1/coach/athletes/{athlete}/apply",
                      json={"request_id": f"{athlete}-client", "modification": mod, "today": TODAY}).json()
    assert change["status"] == "applied" and change["after"][0]["zone"] == 2
    assert change["source"] == "client" and change["actor"].startswith("api-key:")
    assert [o["accepted"] for o in change["operations"]] == [True, False]
    assert change["operations"][1]["violations"][0]["rule"] == "no_increase_when_fatigued"
    history = api.get(f"/v1/coach/athletes/{athlete}/changes").json()["data"]
    assert [c["id"] for c in history] == [change["id"]]

    undone = api.post(f"/v1/coach/changes/{change['id']}/undo")
    assert undone.status_code == 200 and undone.json()["status"] == "undone"
    workouts = api.get(f"/v1/coach/athletes/{athlete}/workouts", params={"from": TODAY, "to": "2025-06-09"}).json()
    assert {w["external_id"]: w["zone"] for w in workouts["data"]}[f"{athlete}-p4"] == 3

    # a change whose workout was edited since cannot be undone
    again = api.post(f"/v1/coach/athletes/{athlete}/apply",
                     json={"request_id": f"{athlete}-client-2", "modification": mod, "today": TODAY}).json()
    edited = {**_batch(athlete)["workouts"][-3], "zone": 4, "type": "intervals", "athlete_id": None}
    assert api.post(f"/v1/coach/athletes/{athlete}/workouts", json=edited).status_code == 200
    refused = api.post(f"/v1/coach/changes/{again['id']}/undo")
    assert refused.status_code == 409
    assert refused.json()["error"]["code"] == "workout_changed"


def test_unknown_model_gets_the_rule_based_recommendation_clearly_marked(api: httpx.Client) -> None:
    athlete = "e2e-fallback-" + secrets.token_hex(3)
    assert api.post("/v1/coach/import", json=_batch(athlete)).status_code == 200
    rec = api.post(f"/v1/coach/athletes/{athlete}/recommendations",
                   json={"model": "ft:no-such-model", "today": TODAY}).json()
    assert rec["source"] == "rules"
    assert rec["fallback"]["reason"] == "model_not_found" and rec["fallback"]["message"]
    assert rec["model_answer"] is None and rec["answered_by"] is None
    assert rec["operations"] and all(o["accepted"] for o in rec["operations"])
    assert rec["weekly_tss"]["after"] < rec["weekly_tss"]["before"]  # an overreached athlete gets less


def test_other_tenants_cannot_see_or_touch_the_athlete(api: httpx.Client, stack, other_key: str) -> None:  # type: ignore[no-untyped-def]
    athlete = "e2e-private-" + secrets.token_hex(3)
    assert api.post("/v1/coach/import", json=_batch(athlete)).status_code == 200
    mod = {"operations": [{"op": "add_rest_day", "workout_id": f"{athlete}-p1", "reason": "tired",
                           "confidence": 0.5}], "message": "Rest today."}
    change = api.post(f"/v1/coach/athletes/{athlete}/apply",
                      json={"request_id": "private", "modification": mod, "today": TODAY}).json()
    other = {"Authorization": f"Bearer {other_key}"}
    for method, path in [("GET", f"/v1/coach/athletes/{athlete}"), ("GET", f"/v1/coach/athletes/{athlete}/load"),
                         ("POST", f"/v1/coach/athletes/{athlete}/recommendations"),
                         ("POST", f"/v1/coach/changes/{change['id']}/undo"),
                         ("GET", f"/v1/coach/athletes/{athlete}/changes")]:
        r = api.request(method, path, headers=other, json={} if method == "POST" else None)
        assert r.status_code == 404, (path, r.text)
        assert r.json()["error"]["type"] == "invalid_request_error"
    with grpc.insecure_channel(stack.grpc_target) as channel:
        stub = coach_pb2_grpc.CoachServiceStub(channel)
        with pytest.raises(grpc.RpcError) as err:
            stub.GetLoadMetrics(coach_pb2.GetLoadMetricsRequest(athlete_id=athlete),
                                metadata=(("authorization", f"Bearer {other_key}"),))
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
        with pytest.raises(grpc.RpcError) as err:
            stub.UndoChange(coach_pb2.UndoChangeRequest(change_id=change["id"]),
                            metadata=(("authorization", f"Bearer {other_key}"),))
        assert err.value.code() == grpc.StatusCode.NOT_FOUND


def test_bad_input_is_a_field_error_not_a_500(api: httpx.Client, stack) -> None:  # type: ignore[no-untyped-def]
    athlete = "e2e-bad-" + secrets.token_hex(3)
    assert api.post("/v1/coach/athletes", json={"external_id": athlete}).status_code == 200
    cases = [
        (f"/v1/coach/athletes/{athlete}/workouts", {"external_id": "w1", "date": TODAY, "sport": "run",
                                                    "type": "intervals", "zone": 9, "duration_min": 60, "tss": 80},
         "zone"),
        ("/v1/coach/import", {"workouts": [{"external_id": "w1", "athlete_id": athlete, "date": "not-a-date",
                                            "sport": "run", "type": "tempo", "zone": 3, "duration_min": 60,
                                            "tss": 70}]}, "workouts.0.date"),
        ("/v1/coach/import", {"workouts": [{"external_id": "w1", "athlete_id": "nobody", "date": TODAY,
                                            "sport": "run", "type": "tempo", "zone": 3, "duration_min": 60,
                                            "tss": 70}]}, "workouts[0].athlete_id"),
        (f"/v1/coach/athletes/{athlete}/wellness", {"date": TODAY, "soreness": 11}, "soreness"),
        (f"/v1/coach/athletes/{athlete}/apply", {"request_id": "x", "modification": {
            "operations": [{"op": "move_workout", "workout_id": "w1", "new_date": "someday", "reason": "x",
                            "confidence": 0.5}], "message": "m"}}, "modification.operations.0.move_workout.new_date"),
        (f"/v1/coach/athletes/{athlete}/apply", {"request_id": "y"}, "modification"),
        (f"/v1/coach/athletes/{athlete}/recommendations", {"token_budget": 5}, "token_budget"),
    ]
    for path, body, param in cases:
        r = api.post(path, json=body)
        assert r.status_code == 400, (path, r.text)
        error = r.json()["error"]
        assert error["param"] == param and error["type"] == "invalid_request_error" and error["message"]
    with grpc.insecure_channel(stack.grpc_target) as channel:
        stub = coach_pb2_grpc.CoachServiceStub(channel)
        with pytest.raises(grpc.RpcError) as err:
            stub.UpsertWorkout(coach_pb2.UpsertWorkoutRequest(athlete_id=athlete, workout=coach_pb2.Workout(
                external_id="w1", date="2025-13-40", sport="run", type="tempo", zone=3, duration_min=60, tss=70)),
                metadata=(("authorization", f"Bearer {stack.api_key}"),))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert ("x-error-param", "date") in tuple(err.value.trailing_metadata())


def test_the_whole_flow_over_grpc(stack) -> None:  # type: ignore[no-untyped-def]
    athlete = "e2e-grpc-" + secrets.token_hex(3)
    batch = _batch(athlete)
    md = (("authorization", f"Bearer {stack.api_key}"),)
    with grpc.insecure_channel(stack.grpc_target) as channel:
        stub = coach_pb2_grpc.CoachServiceStub(channel)
        a = batch["athletes"][0]
        imported = stub.ImportData(coach_pb2.ImportDataRequest(
            athletes=[coach_pb2.Athlete(external_id=a["external_id"], name=a["name"], sport=a["sport"],
                                        plan_name=a["plan"]["name"], plan_phase=a["plan"]["phase"],
                                        goal=a["plan"]["goal"], goal_date=a["plan"]["goal_date"])],
            workouts=[coach_pb2.Workout(**w) for w in batch["workouts"]],
            wellness=[coach_pb2.Wellness(**d) for d in batch["wellness"]]), metadata=md)
        assert imported.workouts.created == 126 and imported.wellness.created == 15
        load = stub.GetLoadMetrics(coach_pb2.GetLoadMetricsRequest(athlete_id=athlete, today=TODAY, days=7),
                                   metadata=md)
        assert len(load.points) == 7 and load.today.tsb < -20
        rec = stub.Recommend(coach_pb2.RecommendRequest(athlete_id=athlete, model="ft:missing", today=TODAY),
                             metadata=md)
        assert rec.source == "rules" and rec.fallback_reason == "model_not_found"
        assert json.loads(rec.state_json)["branch"] == "fatigued"
        change = stub.ApplyModification(coach_pb2.ApplyModificationRequest(
            athlete_id=athlete, request_id="grpc-1", recommendation_id=rec.id, today=TODAY), metadata=md)
        assert change.status == "applied" and change.source == "rules"
        assert all(o.accepted for o in change.operations)
        undone = stub.UndoChange(coach_pb2.UndoChangeRequest(change_id=change.id), metadata=md)
        assert undone.status == "undone"
        listed = stub.ListChanges(coach_pb2.ListChangesRequest(athlete_id=athlete), metadata=md)
        assert [c.id for c in listed.changes] == [change.id]
        schema = stub.GetModificationSchema(coach_pb2.GetModificationSchemaRequest(), metadata=md)
        assert json.loads(schema.schema_json)["title"] == "workout_modification"
