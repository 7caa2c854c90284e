"""ListStoredCompletions: stored chat completions as training examples, over a real gRPC server with
the shared interceptor (authentication, tenant scope, error mapping) on SQLite: the rating, gold,
model, avatar, metadata, time and limit filters, the latest correction as the answer, paging."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from typing import Any

import grpc
import pytest

from coachforge.inference.v1 import inference_pb2, inference_pb2_grpc
from coachforge_inference import grpc as inference_grpc
from coachforge_inference import repository, stored
from coachforge_inference.models import StoredCompletion
from coachforge_inference.pool import EnginePool
from coachforge_inference.service import InferenceDeps
from coachforge_inference.settings import InferenceSettings
from coachforge_shared.auth import INTERNAL_HEADER, TENANT_HEADER, Authenticator, create_tenant
from coachforge_shared.db import Database
from coachforge_shared.events import EventConsumer, encode
from coachforge_shared.grpc_server import GrpcServerThread, InternalChannel

TOKEN = "internal"


def store(db: Database, completion_id: str, *, tenant: str = "acme", created: int = 1_700_000_000,
          model: str = "base", requested: str = "", metadata: dict[str, str] | None = None,
          answer: str = "Easy run.") -> None:
    msg = inference_pb2.CompletionStored(
        id=completion_id, created=created, model=model, requested_model=requested or model,
        avatar=requested if requested.startswith("coach-") else "", metadata_json=json.dumps(metadata or {}),
        messages_json=json.dumps([{"role": "user", "content": f"Question of {completion_id}?"}]),
        params_json="{}", choices_json=json.dumps([{"index": 0, "message": {"role": "assistant", "content": answer},
                                                    "finish_reason": "stop"}]))
    consumer = EventConsumer.__new__(EventConsumer)  # handle() needs no broker connection
    consumer.group, consumer.handler, consumer.db = "t", stored.on_completion_stored, db
    assert consumer.handle(encode("completion.stored", msg, tenant).SerializeToString())[0] == "handled"


def rate(db: Database, completion_id: str, rater: str, **values: Any) -> None:
    with db.session() as s:
        row = s.get(StoredCompletion, completion_id)
        assert row is not None
        repository.upsert_feedback(s, row, rater, values)
    time.sleep(0.01)  # distinct updated_at


def serve(db: Database) -> GrpcServerThread:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    deps = InferenceDeps(settings=InferenceSettings(), registry=InternalChannel("127.0.0.1:9", TOKEN), db=db,
                         engines=EnginePool(["http://127.0.0.1:9"], timeout_s=1, health_interval_s=0))
    server = GrpcServerThread([inference_grpc.registration(deps)], Authenticator(db, internal_token=TOKEN),
                              f"127.0.0.1:{port}", max_workers=4).start()
    server.target = f"127.0.0.1:{port}"  # type: ignore[attr-defined]
    return server


@pytest.fixture
def target(db: Database) -> Iterator[str]:
    for tenant in ("acme", "globex"):
        create_tenant(db, tenant)
    store(db, "c1", created=100, metadata={"screen": "week"}, answer="Rest.")
    store(db, "c2", created=200, requested="coach-anna", model="ft:base:acme:anna:1", answer="Ride easy.")
    store(db, "c3", created=300, metadata={"screen": "day"}, answer="Run 5 km.")
    store(db, "c4", created=400, answer="Unrated.")
    store(db, "g1", tenant="globex", created=150, answer="Other tenant.")
    rate(db, "c1", "maria", rating=5, gold=True, correction="first fix")
    rate(db, "c1", "tom", rating=3, correction="the latest fix")
    rate(db, "c2", "maria", rating=2)
    rate(db, "c3", "maria", rating=4)
    rate(db, "g1", "maria", rating=5, gold=True)
    server = serve(db)
    try:
        yield server.target  # type: ignore[attr-defined]
    finally:
        server.stop()


def listed(target: str, tenant: str = "acme", **filters: Any) -> list[inference_pb2.StoredCompletionExample]:
    with grpc.insecure_channel(target) as channel:
        stub = inference_pb2_grpc.InferenceServiceStub(channel)
        return list(stub.ListStoredCompletions(inference_pb2.ListStoredCompletionsRequest(**filters),
                                               metadata=((INTERNAL_HEADER, TOKEN), (TENANT_HEADER, tenant))))


def test_filters_pick_the_tenants_matching_completions(target: str) -> None:
    assert [e.id for e in listed(target)] == ["c1", "c2", "c3", "c4"]  # no rating filter: every one
    assert [e.id for e in listed(target, tenant="globex")] == ["g1"]
    assert [e.id for e in listed(target, gold=True)] == ["c1"]
    assert [e.id for e in listed(target, min_rating=4)] == ["c1", "c3"]
    assert [e.id for e in listed(target, min_rating=1)] == ["c1", "c2", "c3"]  # rated ones only
    assert [e.id for e in listed(target, min_rating=4, gold=True)] == ["c1"]
    assert [e.id for e in listed(target, model="coach-anna")] == ["c2"]
    assert [e.id for e in listed(target, model="ft:base:acme:anna:1")] == ["c2"]
    assert [e.id for e in listed(target, avatar="coach-anna")] == ["c2"]
    assert [e.id for e in listed(target, metadata={"screen": "day"})] == ["c3"]
    assert [e.id for e in listed(target, created_after=200)] == ["c3", "c4"]
    assert [e.id for e in listed(target, limit=2)] == ["c1", "c2"]


def test_the_answer_is_the_latest_correction_else_the_stored_choice(target: str) -> None:
    by_id = {e.id: e for e in listed(target)}
    first = json.loads(by_id["c1"].messages_json)
    assert first == [{"role": "user", "content": "Question of c1?"}, {"role": "assistant", "content": "the latest fix"}]
    assert by_id["c1"].corrected and by_id["c1"].gold and by_id["c1"].mean_rating == 4.0
    third = json.loads(by_id["c3"].messages_json)
    assert third[-1] == {"role": "assistant", "content": "Run 5 km."}
    assert not by_id["c3"].corrected and not by_id["c3"].gold and by_id["c3"].mean_rating == 4.0
    assert by_id["c4"].mean_rating == 0.0


def test_pages_are_read_a_few_rows_at_a_time(target: str, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    real = stored.training_page

    def counting(*args: Any) -> Any:
        calls.append(args[-1])
        return real(*args)

    monkeypatch.setattr(inference_grpc, "TRAINING_PAGE", 2)
    monkeypatch.setattr(stored, "training_page", counting)
    assert [e.id for e in listed(target)] == ["c1", "c2", "c3", "c4"]
    assert calls == [2, 2, 2]  # the third page is empty: the second one was full
    calls.clear()
    assert [e.id for e in listed(target, limit=3)] == ["c1", "c2", "c3"]
    assert calls == [2, 1]


def test_bad_filters_are_invalid_arguments(target: str) -> None:
    with pytest.raises(grpc.RpcError) as err:
        listed(target, min_rating=6)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "min_rating" in (err.value.details() or "")
    with pytest.raises(grpc.RpcError) as err:
        listed(target, limit=-1)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
