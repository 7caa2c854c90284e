"""The review queue of stored completions (low ratings and flags, until corrected or dismissed), its
REST API and the review summary kept with every feedback post; SummarizeFeedback over a real gRPC
server; the migration's backfill. On SQLite and on PostgreSQL."""

from __future__ import annotations

import json
import math
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, text

from coachforge.inference.v1 import inference_pb2, inference_pb2_grpc
from coachforge_inference import api, review, stored
from coachforge_inference import grpc as inference_grpc
from coachforge_inference.service import InferenceDeps
from coachforge_inference.settings import InferenceSettings
from coachforge_shared import migrate
from coachforge_shared.auth import INTERNAL_HEADER, TENANT_HEADER, Authenticator, add_api_key, create_tenant
from coachforge_shared.db import Database
from coachforge_shared.errors import InvalidArgument, NotFound
from coachforge_shared.events import EventConsumer, encode
from coachforge_shared.grpc_server import GrpcServerThread, InternalChannel
from coachforge_shared.http import install_error_handlers
from coachforge_shared.stats import mean_interval, wilson_interval

ACME = {"Authorization": "Bearer cf-acme-key"}
GLOBEX = {"Authorization": "Bearer cf-globex-key"}
TOKEN = "internal"


@pytest.fixture(params=["sqlite", "postgresql"])
def qdb(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    url = f"sqlite:///{tmp_path / 'q.db'}" if request.param == "sqlite" else request.getfixturevalue(
        "scratch_postgres")
    migrate.upgrade(url)
    database = Database(url)
    for tenant in ("acme", "globex"):
        create_tenant(database, tenant)
        add_api_key(database, tenant, f"cf-{tenant}-key")
    yield database
    database.dispose()


def keep(db: Database, completion_id: str, *, tenant: str = "acme", created: int = 1_700_000_000,
         model: str = "base", avatar: str = "", variant: str = "") -> None:
    """A stored completion, through the completion.stored consumer."""
    msg = inference_pb2.CompletionStored(
        id=completion_id, created=created, model=model, requested_model=avatar or model, avatar=avatar,
        variant=variant, metadata_json="{}", messages_json=json.dumps([{"role": "user", "content": "Run?"}]),
        params_json="{}", choices_json=json.dumps([{"index": 0, "message": {"role": "assistant", "content": "Yes."},
                                                    "finish_reason": "stop"}]))
    consumer = EventConsumer.__new__(EventConsumer)  # handle() needs no broker connection
    consumer.group, consumer.handler, consumer.db = "review-test", stored.on_completion_stored, db
    assert consumer.handle(encode("completion.stored", msg, tenant).SerializeToString())[0] == "handled"


def deps_of(db: Database) -> InferenceDeps:
    return InferenceDeps(settings=InferenceSettings(engine_url="http://127.0.0.1:9"),
                         registry=InternalChannel("127.0.0.1:9", TOKEN), db=db)


def rate(deps: InferenceDeps, completion_id: str, rater: str = "r1", tenant: str = "acme", **body: Any) -> None:
    stored.post_feedback(deps, tenant, completion_id, {**body, "rater": rater}, "api-key:x")


def queue_ids(deps: InferenceDeps, **kwargs: Any) -> tuple[list[str], bool]:
    page = review.queue(deps, "acme", **kwargs)
    data = [c["id"] for c in page["data"]]
    assert page["object"] == "list" and page["first_id"] == (data[0] if data else None)
    assert page["last_id"] == (data[-1] if data else None)
    return data, page["has_more"]


def test_the_queue_holds_low_ratings_and_flags_until_corrected_or_dismissed(qdb: Database) -> None:
    deps = deps_of(qdb)
    for i in range(1, 9):
        keep(qdb, f"chatcmpl-{i}", created=1_700_000_000 + i, model="ft:x" if i == 3 else "base",
             avatar="coach-anna" if i in (1, 3) else "")
    keep(qdb, "chatcmpl-g", tenant="globex")
    rate(deps, "chatcmpl-1", rating=1)
    rate(deps, "chatcmpl-2", rating=5)
    rate(deps, "chatcmpl-3", rating=4, flagged=True, comment="unsafe advice")
    rate(deps, "chatcmpl-4", rating=2)
    rate(deps, "chatcmpl-4", rater="r2", rating=3)  # mean 2.5
    rate(deps, "chatcmpl-5", rating=1)
    rate(deps, "chatcmpl-5", rater="editor", correction="Rest today.")  # corrected: not waiting
    rate(deps, "chatcmpl-6", gold=True)  # no rating, no flag
    rate(deps, "chatcmpl-7", rating=2)  # exactly the threshold
    # chatcmpl-8: no feedback at all
    rate(deps, "chatcmpl-g", tenant="globex", rating=1)

    assert queue_ids(deps) == (["chatcmpl-1", "chatcmpl-3", "chatcmpl-7"], False)
    assert queue_ids(deps, max_rating=3) == (["chatcmpl-1", "chatcmpl-3", "chatcmpl-4", "chatcmpl-7"], False)
    assert queue_ids(deps, max_rating=1) == (["chatcmpl-1", "chatcmpl-3"], False)
    assert queue_ids(deps, reason="flagged") == (["chatcmpl-3"], False)
    assert queue_ids(deps, reason="low_rating") == (["chatcmpl-1", "chatcmpl-7"], False)
    assert queue_ids(deps, avatar="coach-anna") == (["chatcmpl-1", "chatcmpl-3"], False)
    assert queue_ids(deps, model="ft:x") == (["chatcmpl-3"], False)
    assert queue_ids(deps, model="coach-anna") == (["chatcmpl-1", "chatcmpl-3"], False)  # as requested
    assert queue_ids(deps, limit=2) == (["chatcmpl-1", "chatcmpl-3"], True)
    assert queue_ids(deps, limit=2, after="chatcmpl-3") == (["chatcmpl-7"], False)
    assert queue_ids(deps, after="chatcmpl-2") == (["chatcmpl-3", "chatcmpl-7"], False)  # any own completion
    with pytest.raises(NotFound) as err:
        queue_ids(deps, after="chatcmpl-g")  # another tenant's id is no cursor
    assert err.value.param == "after"
    for bad in ({"max_rating": 0.5}, {"max_rating": 6}, {"reason": "other"}):
        with pytest.raises(InvalidArgument):
            queue_ids(deps, **bad)

    items = {c["id"]: c for c in review.queue(deps, "acme")["data"]}
    assert items["chatcmpl-1"]["review"] == {"reasons": ["low_rating"], "mean_rating": 1.0, "flags": 0}
    assert items["chatcmpl-3"]["review"] == {"reasons": ["flagged"], "mean_rating": 4.0, "flags": 1}
    assert items["chatcmpl-3"]["object"] == "chat.completion" and items["chatcmpl-3"]["avatar"] == "coach-anna"
    assert items["chatcmpl-3"]["feedback"]["count"] == 1
    both = review.queue(deps, "acme", max_rating=4)["data"][1]
    assert both["id"] == "chatcmpl-3" and both["review"]["reasons"] == ["low_rating", "flagged"]

    # A correction takes it off; the same rater posting again without the flag unflags it.
    rate(deps, "chatcmpl-1", rater="editor", correction="Easy 30 minutes.")
    rate(deps, "chatcmpl-3", rating=4)
    assert queue_ids(deps) == (["chatcmpl-7"], False)
    rate(deps, "chatcmpl-3", rater="r2", flagged=True)  # flagged alone is feedback enough
    assert queue_ids(deps) == (["chatcmpl-3", "chatcmpl-7"], False)

    dismissed = review.record(deps, "acme", "chatcmpl-7", {"action": "dismiss", "comment": "fine as is"}, "api-key:k")
    assert dismissed == {"object": "chat.completion.review", "completion_id": "chatcmpl-7", "state": "dismissed",
                         "reviewer": "api-key:k", "comment": "fine as is", "reviewed_at": dismissed["reviewed_at"],
                         "reasons": ["low_rating"], "mean_rating": 2.0, "flags": 0, "corrected": False,
                         "in_queue": False}
    assert dismissed["reviewed_at"] > 0
    assert queue_ids(deps) == (["chatcmpl-3"], False)
    rate(deps, "chatcmpl-7", rater="r9", rating=1)  # more feedback does not undo a dismissal
    assert queue_ids(deps) == (["chatcmpl-3"], False)
    reopened = review.record(deps, "acme", "chatcmpl-7", {"action": "reopen", "reviewer": "lead"}, "api-key:k")
    assert reopened["state"] == "open" and reopened["reviewer"] == "lead" and reopened["in_queue"] is True
    assert reopened["mean_rating"] == 1.5
    assert queue_ids(deps) == (["chatcmpl-3", "chatcmpl-7"], False)
    # Reviewing a completion nobody rated yet: kept, not queued.
    assert review.record(deps, "acme", "chatcmpl-8", {"action": "reopen"}, "k")["in_queue"] is False
    with pytest.raises(NotFound):
        review.record(deps, "acme", "chatcmpl-g", {"action": "dismiss"}, "k")
    with pytest.raises(InvalidArgument) as refused:
        review.record(deps, "acme", "chatcmpl-3", {"action": "close"}, "k")
    assert refused.value.param == "action"

    # Deleting a completion deletes its review row; the other tenant's queue is its own.
    stored.delete_completion(deps, "acme", "chatcmpl-3")
    assert queue_ids(deps) == (["chatcmpl-7"], False)
    assert [c["id"] for c in review.queue(deps, "globex")["data"]] == ["chatcmpl-g"]


@pytest.fixture
def client(qdb: Database) -> TestClient:
    app = FastAPI()
    app.state.authenticator = Authenticator(qdb, internal_token=TOKEN)
    app.state.inference = deps_of(qdb)
    install_error_handlers(app)
    app.include_router(api.router)
    return TestClient(app, raise_server_exceptions=False)


def test_rest_review_queue_and_review(qdb: Database, client: TestClient) -> None:
    keep(qdb, "chatcmpl-a", created=1_700_000_001, avatar="coach-anna", variant="candidate", model="ft:c")
    keep(qdb, "chatcmpl-b", created=1_700_000_002)
    r = client.post("/v1/chat/completions/chatcmpl-a/feedback", headers=ACME,
                    json={"flagged": True, "comment": "made up a race", "rater": "athlete"})
    assert r.status_code == 200, r.text
    assert r.json()["flagged"] is True and r.json()["rating"] is None
    client.post("/v1/chat/completions/chatcmpl-b/feedback", headers=ACME, json={"rating": 1})
    listed = client.get("/v1/chat/completions/chatcmpl-a/feedback", headers=ACME).json()["data"]
    assert [f["flagged"] for f in listed] == [True]

    r = client.get("/v1/chat/completions/review_queue", headers=ACME)  # not taken for a completion id
    assert r.status_code == 200, r.text
    page = r.json()
    assert [c["id"] for c in page["data"]] == ["chatcmpl-a", "chatcmpl-b"]
    assert page["first_id"] == "chatcmpl-a" and page["last_id"] == "chatcmpl-b" and page["has_more"] is False
    assert page["data"][0]["review"] == {"reasons": ["flagged"], "mean_rating": None, "flags": 1}
    assert page["data"][0]["variant"] == "candidate"
    r = client.get("/v1/chat/completions/review_queue", headers=ACME, params={"reason": "low_rating", "limit": 1})
    assert [c["id"] for c in r.json()["data"]] == ["chatcmpl-b"]
    r = client.get("/v1/chat/completions/review_queue", headers=ACME, params={"avatar": "coach-anna"})
    assert [c["id"] for c in r.json()["data"]] == ["chatcmpl-a"]
    assert client.get("/v1/chat/completions/review_queue", headers=GLOBEX).json()["data"] == []
    assert client.get("/v1/chat/completions/review_queue").status_code == 401
    for params, param in (({"reason": "bad"}, "reason"), ({"max_rating": 9}, "max_rating"),
                          ({"limit": 0}, "limit")):
        r = client.get("/v1/chat/completions/review_queue", headers=ACME, params=params)
        assert r.status_code == 400 and r.json()["error"]["param"] == param, r.text

    r = client.post("/v1/chat/completions/chatcmpl-a/review", headers=ACME, json={"action": "dismiss"})
    assert r.status_code == 200, r.text
    assert r.json()["state"] == "dismissed" and r.json()["reviewer"].startswith("api-key:")
    assert [c["id"] for c in client.get("/v1/chat/completions/review_queue", headers=ACME).json()["data"]] == [
        "chatcmpl-b"]
    r = client.post("/v1/chat/completions/chatcmpl-b/feedback", headers=ACME,
                    json={"correction": "Rest today.", "rater": "editor"})
    assert r.status_code == 200
    assert client.get("/v1/chat/completions/review_queue", headers=ACME).json()["data"] == []
    for body, param in (({"action": "close"}, "action"), ({}, "action"), ({"action": "dismiss", "x": 1}, "x")):
        r = client.post("/v1/chat/completions/chatcmpl-a/review", headers=ACME, json=body)
        assert r.status_code == 400 and r.json()["error"]["param"] == param, r.text
    r = client.post("/v1/chat/completions/chatcmpl-a/review", headers=GLOBEX, json={"action": "reopen"})
    assert r.status_code == 404


# --- SummarizeFeedback over a real gRPC server ---


@pytest.fixture
def target(qdb: Database) -> Iterator[str]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = GrpcServerThread([inference_grpc.registration(deps_of(qdb))], Authenticator(qdb, internal_token=TOKEN),
                              f"127.0.0.1:{port}", max_workers=4).start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.stop()


def _call(target: str, method: str, request: Any, tenant: str = "acme") -> Any:
    with grpc.insecure_channel(target) as channel:
        stub = inference_pb2_grpc.InferenceServiceStub(channel)
        return getattr(stub, method)(request, metadata=((INTERNAL_HEADER, TOKEN), (TENANT_HEADER, tenant)),
                                     timeout=10)


def test_summarize_feedback_per_variant(qdb: Database, target: str) -> None:
    deps = deps_of(qdb)
    # Active arm ("ft:a" as "active"): per-completion ratings 5, 4, 2 (two raters: 1 and 3), 5; one
    # completion only marked gold (reviewed, not rated); one without feedback.
    active = {"a1": [5], "a2": [4], "a3": [1, 3], "a4": [5]}
    for i, (cid, ratings) in enumerate(active.items()):
        keep(qdb, cid, created=2000 + i, model="ft:a", avatar="coach", variant="active")
        for j, value in enumerate(ratings):
            rate(deps, cid, rater=f"r{j}", rating=value, gold=cid == "a1")
    keep(qdb, "a5", created=2010, model="ft:a", avatar="coach", variant="active")
    rate(deps, "a5", gold=True)
    keep(qdb, "a6", created=2011, model="ft:a", avatar="coach", variant="active")
    # Candidate arm: 3, 3 (flag only on the second, no effect), one answered by the base model on fallback.
    keep(qdb, "c1", created=2001, model="ft:c", avatar="coach", variant="candidate")
    keep(qdb, "c2", created=2002, model="ft:c", avatar="coach", variant="candidate")
    rate(deps, "c1", rating=3)
    rate(deps, "c2", rating=3, flagged=True)
    keep(qdb, "c3", created=2003, model="base", avatar="coach", variant="candidate")
    # Not counted: before `since`, another avatar, another tenant.
    keep(qdb, "old", created=1000, model="ft:a", avatar="coach", variant="active")
    rate(deps, "old", rating=1)
    keep(qdb, "x1", created=2005, model="ft:a", avatar="other", variant="active")
    keep(qdb, "g1", tenant="globex", created=2005, model="ft:a", avatar="coach", variant="active")

    reply = _call(target, "SummarizeFeedback", inference_pb2.SummarizeFeedbackRequest(avatar="coach", since=1500))
    rows = {(v.model, v.variant): v for v in reply.variants}
    assert list(rows) == [("base", "candidate"), ("ft:a", "active"), ("ft:c", "candidate")]

    a = rows[("ft:a", "active")]
    assert (a.completions, a.reviewed, a.rated, a.gold, a.thumbs_up, a.thumbs_down) == (6, 5, 4, 2, 3, 1)
    # per-completion means 5, 4, 2, 5: mean 4, sd sqrt(((1 + 0 + 4 + 1) / 3)) = sqrt(2)
    assert a.mean_rating == pytest.approx(4.0) and a.rating_stddev == pytest.approx(math.sqrt(2))
    low, high = mean_interval(4.0, math.sqrt(2), 4) or (0, 0)
    # by hand: 4 -+ t(0.975, 3) * sqrt(2) / 2 = 4 -+ 3.182446 * 0.707107 = 4 -+ 2.250329
    assert (low, high) == pytest.approx((1.749671, 6.250329), abs=1e-6)
    assert (a.mean_rating_interval.low, a.mean_rating_interval.high) == pytest.approx((low, high))
    assert a.gold_rate == pytest.approx(2 / 5)
    assert (a.gold_rate_interval.low, a.gold_rate_interval.high) == pytest.approx(wilson_interval(2, 5))
    assert a.thumbs_up_rate == pytest.approx(3 / 4) and a.thumbs_down_rate == pytest.approx(1 / 4)
    assert (a.thumbs_down_interval.low, a.thumbs_down_interval.high) == pytest.approx(wilson_interval(1, 4))

    c = rows[("ft:c", "candidate")]
    assert (c.completions, c.reviewed, c.rated, c.gold, c.thumbs_up, c.thumbs_down) == (2, 2, 2, 0, 0, 0)
    assert c.mean_rating == pytest.approx(3.0) and c.rating_stddev == pytest.approx(0.0)
    assert (c.mean_rating_interval.low, c.mean_rating_interval.high) == pytest.approx((3.0, 3.0))
    assert c.gold_rate == 0.0 and c.gold_rate_interval.low == 0.0

    fallback = rows[("base", "candidate")]
    assert (fallback.completions, fallback.reviewed, fallback.rated) == (1, 0, 0)
    for name in ("mean_rating", "rating_stddev", "mean_rating_interval", "gold_rate", "gold_rate_interval",
                 "thumbs_up_rate", "thumbs_up_interval"):
        assert not fallback.HasField(name), name

    everything = _call(target, "SummarizeFeedback", inference_pb2.SummarizeFeedbackRequest(avatar="coach"))
    old = {(v.model, v.variant): v for v in everything.variants}[("ft:a", "active")]
    assert old.completions == 7 and old.thumbs_down == 2
    one = _call(target, "SummarizeFeedback", inference_pb2.SummarizeFeedbackRequest(avatar="coach", since=2011))
    assert [(v.model, v.completions, v.rated, v.HasField("mean_rating")) for v in one.variants] == [
        ("ft:a", 1, 0, False)]
    assert _call(target, "SummarizeFeedback", inference_pb2.SummarizeFeedbackRequest(avatar="nobody")).variants == []
    with pytest.raises(grpc.RpcError) as err:
        _call(target, "SummarizeFeedback", inference_pb2.SummarizeFeedbackRequest())
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_record_feedback_over_grpc_can_flag(qdb: Database, target: str) -> None:
    keep(qdb, "chatcmpl-z")
    reply = _call(target, "RecordFeedback", inference_pb2.RecordFeedbackRequest(
        completion_id="chatcmpl-z", flagged=True, rater="coach-outcome"))
    assert reply.flagged and not reply.HasField("rating")
    assert queue_ids(deps_of(qdb)) == (["chatcmpl-z"], False)


# --- the migration ---


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_the_migration_summarizes_earlier_feedback(backend: str, tmp_path: Path,
                                                   request: pytest.FixtureRequest) -> None:
    url = f"sqlite:///{tmp_path / 'm.db'}" if backend == "sqlite" else request.getfixturevalue("scratch_postgres")
    migrate.upgrade(url, "a4c9d5e6f7b8")
    engine = create_engine(url)
    try:
        with engine.begin() as c:
            c.execute(text("INSERT INTO tenants (id, name, created_at) VALUES ('t', 't', CURRENT_TIMESTAMP)"))
            for cid in ("c1", "c2"):
                c.execute(text(
                    "INSERT INTO stored_completions (id, tenant_id, created, created_at, model, requested_model, "
                    "avatar, variant, end_user, purpose, fallback_from, stream, metadata, messages, params, choices, "
                    "latency_seconds, stored_at) VALUES (:id, 't', 1, CURRENT_TIMESTAMP, 'm', 'm', '', '', '', "
                    "'app', '', false, '{}', '[]', '{}', '[]', 0, CURRENT_TIMESTAMP)"), {"id": cid})
            for fid, cid, rater, rating, correction in (("f1", "c1", "a", 1, None), ("f2", "c1", "b", 2, None),
                                                        ("f3", "c2", "a", None, "Better.")):
                c.execute(text(
                    "INSERT INTO completion_feedback (id, completion_id, tenant_id, rater, rating, gold, correction, "
                    "created_at, updated_at) VALUES (:id, :cid, 't', :rater, :rating, false, :correction, "
                    "CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)"),
                    {"id": fid, "cid": cid, "rater": rater, "rating": rating, "correction": correction})
        migrate.upgrade(url)
        with engine.begin() as c:
            rows = c.execute(text("SELECT completion_id, rated, rating_sum, flags, corrected, state "
                                  "FROM completion_reviews ORDER BY completion_id")).all()
            flags = c.execute(text("SELECT DISTINCT flagged FROM completion_feedback")).scalars().all()
        assert [(r[0], r[1], r[2], r[3], bool(r[4]), r[5]) for r in rows] == [
            ("c1", 2, 3, 0, False, ""), ("c2", 0, 0, 0, True, "")]
        assert [bool(f) for f in flags] == [False]
        db = Database(url)
        try:
            assert [c["id"] for c in review.queue(deps_of(db), "t")["data"]] == ["c1"]
        finally:
            db.dispose()
        migrate.downgrade(url, "a4c9d5e6f7b8")
        migrate.upgrade(url)
    finally:
        engine.dispose()
