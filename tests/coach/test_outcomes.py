"""Outcomes of recommendations are never lost: kept with the apply/undo (or the athlete's answer),
sent at once, and sent again when the completion is stored (the coach's completion.stored
consumer) or when due (the retrier), one version at a time, idempotently. End to end against a real
inference gRPC server on SQLite and on PostgreSQL."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
from conftest import TODAY, ScriptedModels, answer, athlete_batch  # type: ignore[import-not-found]
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import select, update

from coachforge.coach.v1 import coach_pb2, coach_pb2_grpc
from coachforge.inference.v1 import inference_pb2
from coachforge_coach import api, outcomes, service
from coachforge_coach import grpc as coach_grpc
from coachforge_coach.clients import GrpcModelClient
from coachforge_coach.models import CoachOutcome
from coachforge_coach.schemas import ApplyIn, RecommendIn
from coachforge_coach.service import CoachDeps
from coachforge_coach.settings import CoachSettings
from coachforge_shared import migrate
from coachforge_shared.auth import INTERNAL_HEADER, TENANT_HEADER, Authenticator, add_api_key, create_tenant
from coachforge_shared.db import Database
from coachforge_shared.errors import NotFound, Unavailable
from coachforge_shared.events import EventConsumer, encode
from coachforge_shared.grpc_server import GrpcServerThread, InternalChannel
from coachforge_shared.http import install_error_handlers
from coachforge_shared.ids import utcnow

SAFE = answer({"op": "reduce_intensity", "workout_id": "p-wed", "new_zone": 2, "reason": "TSB low",
               "confidence": 0.8})
TOKEN = "internal"


def rec_in() -> RecommendIn:
    return RecommendIn.model_validate({"today": TODAY.isoformat()})


def apply_in(request_id: str, rec_id: str) -> ApplyIn:
    return ApplyIn.model_validate({"request_id": request_id, "today": TODAY.isoformat(), "recommendation_id": rec_id})


def recommended(deps: CoachDeps, models: ScriptedModels) -> dict[str, Any]:
    service.import_batch(deps, "acme", athlete_batch(recent_tss=140))
    models.answer = SAFE
    rec = service.recommend(deps, "acme", "anna", rec_in())
    assert rec["completion_id"] == "chatcmpl-1"
    return rec


def outcome_rows(deps: CoachDeps) -> list[CoachOutcome]:
    with deps.db.session() as s:
        return list(s.scalars(select(CoachOutcome).order_by(CoachOutcome.rater)))


def make_due(deps: CoachDeps) -> None:
    with deps.db.session() as s:
        s.execute(update(CoachOutcome).where(CoachOutcome.status == outcomes.PENDING)
                  .values(next_attempt_at=utcnow() - timedelta(seconds=1)))


def stored_event(completion_id: str, tenant: str = "acme") -> bytes:
    msg = inference_pb2.CompletionStored(id=completion_id, created=1, model="m", metadata_json="{}",
                                         messages_json="[]", params_json="{}", choices_json="[]")
    return bytes(encode("completion.stored", msg, tenant).SerializeToString())


def consumer(db: Database, group: str, handler: Any) -> EventConsumer:
    c = EventConsumer.__new__(EventConsumer)  # handle() needs no broker connection
    c.group, c.handler, c.db = group, handler, db
    return c


def test_an_outcome_of_a_completion_not_stored_yet_is_sent_when_it_is(deps: CoachDeps,
                                                                      models: ScriptedModels) -> None:
    rec = recommended(deps, models)
    models.feedback_error = NotFound("No stored chat completion found.", param="completion_id")
    change = service.apply(deps, "acme", "k", "anna", apply_in("r1", rec["id"]))
    assert change["status"] == "applied"
    (row,) = outcome_rows(deps)
    assert (row.status, row.rater, row.rating, row.comment, row.attempts) == (
        "pending", "coach-outcome", 4, "applied", 1)
    assert "No stored chat completion" in row.last_error and row.next_attempt_at is not None
    listed = service.list_outcomes(deps, "acme", rec["id"])
    assert [(o["rater"], o["feedback"], o["attempts"]) for o in listed] == [("coach-outcome", "pending", 1)]

    models.feedback_error = None
    coach = consumer(deps.db, "coach-outcomes-test", outcomes.on_completion_stored(deps))
    result, follow_up = coach.handle(stored_event("chatcmpl-other"))  # not one of the coach's: nothing to do
    assert result == "handled" and follow_up is None
    assert coach.handle(stored_event("chatcmpl-1", tenant="globex")) == ("handled", None)  # another tenant's
    result, follow_up = coach.handle(stored_event("chatcmpl-1"))
    assert result == "handled" and follow_up is not None
    follow_up()
    assert models.feedback[-1] == {"tenant": "acme", "completion_id": "chatcmpl-1", "rater": "coach-outcome",
                                   "rating": 4, "comment": "applied"}
    (row,) = outcome_rows(deps)
    assert (row.status, row.attempts, row.last_error, row.next_attempt_at) == ("sent", 2, "", None)
    assert row.sent_at is not None
    sends = len(models.feedback)
    assert coach.handle(stored_event("chatcmpl-1"))[1] is None  # republished: nothing pending any more
    assert outcomes.deliver_due(deps) == 0 and outcomes.deliver(deps, row.id) == "sent"
    assert len(models.feedback) == sends  # a recorded outcome is not sent again
    assert service.list_outcomes(deps, "acme", rec["id"])[0]["feedback"] == "recorded"


def test_due_outcomes_are_retried_with_backoff(deps: CoachDeps, models: ScriptedModels) -> None:
    rec = recommended(deps, models)
    models.feedback_error = Unavailable("inference down")
    service.apply(deps, "acme", "k", "anna", apply_in("r1", rec["id"]))
    (row,) = outcome_rows(deps)
    assert row.status == "pending" and row.next_attempt_at is not None
    first_wait = (row.next_attempt_at - utcnow()).total_seconds()
    assert 0 < first_wait <= deps.settings.outcome_retry_base_s
    assert outcomes.deliver_due(deps) == 0 and len(models.feedback) == 1  # not due yet
    make_due(deps)
    assert outcomes.deliver_due(deps) == 0 and len(models.feedback) == 2
    (row,) = outcome_rows(deps)
    assert row.attempts == 2 and row.next_attempt_at is not None
    assert (row.next_attempt_at - utcnow()).total_seconds() > first_wait  # doubled
    models.feedback_error = None
    make_due(deps)
    assert outcomes.deliver_due(deps) == 1
    assert outcome_rows(deps)[0].status == "sent" and len(models.feedback) == 3


def test_an_undo_replaces_a_pending_apply(deps: CoachDeps, models: ScriptedModels) -> None:
    rec = recommended(deps, models)
    models.feedback_error = NotFound("not yet", param="completion_id")
    change = service.apply(deps, "acme", "k", "anna", apply_in("r1", rec["id"]))
    service.undo(deps, "acme", "k", change["id"])
    (row,) = outcome_rows(deps)
    assert (row.status, row.version, row.rating, row.comment, row.attempts) == ("pending", 2, 2, "undone", 1)
    models.feedback_error = None
    make_due(deps)
    assert outcomes.deliver_due(deps) == 1
    assert [f["comment"] for f in models.feedback] == ["applied", "undone", "undone"]  # "applied" never again


class RacingModels(ScriptedModels):
    """Sends succeed; the first one meanwhile sees a newer outcome of the same rater written."""

    def __init__(self, deps_ref: list[CoachDeps]) -> None:
        super().__init__()
        self.deps_ref = deps_ref

    def record_feedback(self, tenant_id: str, completion_id: str, *, rater: str, rating: int, comment: str,
                        timeout: float) -> None:
        super().record_feedback(tenant_id, completion_id, rater=rater, rating=rating, comment=comment,
                                timeout=timeout)
        if len(self.feedback) == 1:
            deps = self.deps_ref[0]
            with deps.db.session() as s:
                rec_id = s.scalar(select(CoachOutcome.recommendation_id))
                outcomes.keep(s, tenant_id=tenant_id, recommendation_id=rec_id, completion_id=completion_id,
                              rater=rater, rating=2, comment="undone")


def test_a_newer_version_written_while_sending_is_sent_after_it(db: Database, tmp_path: Path) -> None:
    create_tenant(db, "acme")
    ref: list[CoachDeps] = []
    models = RacingModels(ref)
    deps = CoachDeps(db=db, settings=CoachSettings(), models_dir=tmp_path, models=models)
    ref.append(deps)
    rec = recommended(deps, models)
    service.apply(deps, "acme", "k", "anna", apply_in("r1", rec["id"]))
    assert [f["comment"] for f in models.feedback] == ["applied", "undone"]  # the newer one last
    (row,) = outcome_rows(deps)
    assert (row.status, row.version, row.comment) == ("sent", 2, "undone")


def test_an_outcome_held_by_another_process_is_left_to_it_and_old_ones_expire(deps: CoachDeps,
                                                                              models: ScriptedModels) -> None:
    rec = recommended(deps, models)
    models.feedback_error = NotFound("not yet", param="completion_id")
    service.apply(deps, "acme", "k", "anna", apply_in("r1", rec["id"]))
    (row,) = outcome_rows(deps)
    with deps.db.session() as s:
        s.execute(update(CoachOutcome).values(claimed_until=utcnow() + timedelta(seconds=30)))
    make_due(deps)
    assert outcomes.deliver_due(deps) == 0 and outcomes.deliver(deps, row.id) == "pending"
    assert len(models.feedback) == 1  # nothing sent while held
    with deps.db.session() as s:  # the holder died: its claim runs out
        s.execute(update(CoachOutcome).values(claimed_until=utcnow() - timedelta(seconds=1)))
    deps.settings = CoachSettings(outcome_max_age_s=0.001)
    assert outcomes.deliver(deps, row.id) == "expired"
    assert len(models.feedback) == 1
    assert service.list_outcomes(deps, "acme", rec["id"])[0]["feedback"] == "expired"


def test_the_retrier_thread_sends_them(deps: CoachDeps, models: ScriptedModels) -> None:
    deps.settings = CoachSettings(outcome_retry_interval_s=0.05, outcome_retry_base_s=0.05)
    rec = recommended(deps, models)
    models.feedback_error = Unavailable("inference down")
    service.apply(deps, "acme", "k", "anna", apply_in("r1", rec["id"]))
    models.feedback_error = None
    retrier = outcomes.OutcomeRetrier(deps)
    retrier.start()
    try:
        deadline = time.monotonic() + 10
        while outcome_rows(deps)[0].status != "sent" and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        retrier.stop()
    assert outcome_rows(deps)[0].status == "sent"


def test_the_athlete_followed_it_or_not(deps: CoachDeps, models: ScriptedModels) -> None:
    rec = recommended(deps, models)
    got = service.record_athlete_outcome(deps, "acme", rec["id"], True, None)
    assert got == {"object": "coach.recommendation_outcome", "recommendation_id": rec["id"],
                   "completion_id": "chatcmpl-1", "rater": "athlete-outcome", "rating": 5, "comment": "followed",
                   "followed": True, "feedback": "recorded", "attempts": 1, "last_error": None,
                   "updated_at": got["updated_at"]}
    got = service.record_athlete_outcome(deps, "acme", rec["id"], False, "too tired")
    assert (got["rating"], got["comment"], got["followed"], got["feedback"]) == (2, "too tired", False, "recorded")
    assert [(f["rater"], f["rating"], f["comment"]) for f in models.feedback] == [
        ("athlete-outcome", 5, "followed"), ("athlete-outcome", 2, "too tired")]
    assert len(outcome_rows(deps)) == 1  # one row per rater, replaced

    models.feedback_error = NotFound("not yet", param="completion_id")
    assert service.record_athlete_outcome(deps, "acme", rec["id"], True, None)["feedback"] == "pending"

    models.answer = Unavailable("engine down")  # the rules answer: nothing to rate, the answer is kept
    rules = service.recommend(deps, "acme", "anna", rec_in())
    calls = len(models.feedback)
    kept = service.record_athlete_outcome(deps, "acme", rules["id"], True, None)
    assert (kept["completion_id"], kept["feedback"]) == (None, "none") and len(models.feedback) == calls
    with pytest.raises(NotFound) as err:
        service.record_athlete_outcome(deps, "acme", "rec-nope", True, None)
    assert err.value.param == "recommendation_id"
    with pytest.raises(NotFound):
        service.record_athlete_outcome(deps, "globex", rec["id"], True, None)


def test_outcome_over_rest_and_grpc(deps: CoachDeps, models: ScriptedModels) -> None:
    add_api_key(deps.db, "acme", "cf-acme-key")
    rec = recommended(deps, models)
    app = FastAPI()
    app.state.authenticator = Authenticator(deps.db, internal_token=TOKEN)
    app.state.coach = deps
    install_error_handlers(app)
    app.include_router(api.router)
    client = TestClient(app, raise_server_exceptions=False)
    headers = {"Authorization": "Bearer cf-acme-key"}
    url = f"/v1/coach/recommendations/{rec['id']}/outcome"
    r = client.post(url, headers=headers, json={"followed": True, "comment": "felt great"})
    assert r.status_code == 200, r.text
    assert (r.json()["rating"], r.json()["feedback"], r.json()["comment"]) == (5, "recorded", "felt great")
    for body, param in (({}, "followed"), ({"followed": "yes"}, "followed"), ({"followed": True, "x": 1}, "x"),
                        ({"followed": True, "comment": "x" * 2001}, "comment")):
        r = client.post(url, headers=headers, json=body)
        assert r.status_code == 400 and r.json()["error"]["param"] == param, r.text
    assert client.post("/v1/coach/recommendations/nope/outcome", headers=headers,
                       json={"followed": True}).status_code == 404
    listed = client.get(f"/v1/coach/recommendations/{rec['id']}/outcomes", headers=headers).json()
    assert [(o["rater"], o["feedback"]) for o in listed["data"]] == [("athlete-outcome", "recorded")]

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = GrpcServerThread([coach_grpc.registration(deps)], Authenticator(deps.db, internal_token=TOKEN),
                              f"127.0.0.1:{port}", max_workers=4).start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = coach_pb2_grpc.CoachServiceStub(channel)
            meta = ((INTERNAL_HEADER, TOKEN), (TENANT_HEADER, "acme"))
            reply = stub.RecordOutcome(coach_pb2.RecordOutcomeRequest(recommendation_id=rec["id"], followed=False),
                                       metadata=meta, timeout=10)
            assert (reply.rater, reply.rating, reply.comment, reply.followed, reply.feedback) == (
                "athlete-outcome", 2, "not followed", False, "recorded")
            assert reply.completion_id == "chatcmpl-1" and reply.updated_at > 0
            with pytest.raises(grpc.RpcError) as err:
                stub.RecordOutcome(coach_pb2.RecordOutcomeRequest(recommendation_id="nope"), metadata=meta, timeout=10)
            assert err.value.code() == grpc.StatusCode.NOT_FOUND
            with pytest.raises(grpc.RpcError) as err:
                stub.RecordOutcome(coach_pb2.RecordOutcomeRequest(), metadata=meta, timeout=10)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    finally:
        server.stop()


# --- end to end: a real inference gRPC server on the same database ---


@pytest.fixture(params=["sqlite", "postgresql"])
def shared_db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    url = f"sqlite:///{tmp_path / 'e2e.db'}" if request.param == "sqlite" else request.getfixturevalue(
        "scratch_postgres")
    migrate.upgrade(url)
    db = Database(url)
    create_tenant(db, "acme")
    yield db
    db.dispose()


@pytest.fixture
def inference_target(shared_db: Database) -> Iterator[str]:
    from coachforge_inference import grpc as inference_grpc
    from coachforge_inference.service import InferenceDeps
    from coachforge_inference.settings import InferenceSettings

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    deps = InferenceDeps(settings=InferenceSettings(engine_url="http://127.0.0.1:9"),
                         registry=InternalChannel("127.0.0.1:9", TOKEN), db=shared_db)
    server = GrpcServerThread([inference_grpc.registration(deps)], Authenticator(shared_db, internal_token=TOKEN),
                              f"127.0.0.1:{port}", max_workers=4).start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.stop()


def _inference_feedback(db: Database, completion_id: str) -> list[tuple[str, int | None, str | None]]:
    from coachforge_inference.models import CompletionFeedback

    with db.session() as s:
        rows = s.scalars(select(CompletionFeedback).where(CompletionFeedback.completion_id == completion_id)
                         .order_by(CompletionFeedback.rater))
        return [(r.rater, r.rating, r.comment) for r in rows]


def test_outcomes_reach_inference_once_the_completion_is_stored(shared_db: Database, inference_target: str,
                                                                tmp_path: Path) -> None:
    from coachforge_inference import stored

    scripted = ScriptedModels()
    deps = CoachDeps(db=shared_db, settings=CoachSettings(), models_dir=tmp_path, models=scripted)
    rec = recommended(deps, scripted)
    channel = InternalChannel(inference_target, TOKEN)
    deps.models = GrpcModelClient(InternalChannel("127.0.0.1:9", TOKEN), channel)
    try:
        change = service.apply(deps, "acme", "k", "anna", apply_in("r1", rec["id"]))  # inference: NOT_FOUND
        assert change["status"] == "applied"
        assert service.record_athlete_outcome(deps, "acme", rec["id"], True, None)["feedback"] == "pending"
        assert [r.status for r in outcome_rows(deps)] == ["pending", "pending"]

        raw = stored_event("chatcmpl-1")
        coach = consumer(shared_db, "coach-outcomes-e2e", outcomes.on_completion_stored(deps))
        # The coach's consumer may be first: inference has not kept the completion yet, still NOT_FOUND.
        result, follow_up = coach.handle(raw)
        assert result == "handled" and follow_up is not None
        follow_up()
        assert [r.status for r in outcome_rows(deps)] == ["pending", "pending"]
        assert consumer(shared_db, "inference-stored-e2e", stored.on_completion_stored).handle(raw)[0] == "handled"
        make_due(deps)  # the retrier's next round
        assert outcomes.deliver_due(deps) == 2
        assert [r.status for r in outcome_rows(deps)] == ["sent", "sent"]
        assert _inference_feedback(shared_db, "chatcmpl-1") == [
            ("athlete-outcome", 5, "followed"), ("coach-outcome", 4, "applied")]

        service.undo(deps, "acme", "k", change["id"])  # stored by now: recorded at once, replacing "applied"
        assert _inference_feedback(shared_db, "chatcmpl-1") == [
            ("athlete-outcome", 5, "followed"), ("coach-outcome", 2, "undone")]
        assert coach.handle(raw) == ("duplicate", None)
    finally:
        channel.close()
