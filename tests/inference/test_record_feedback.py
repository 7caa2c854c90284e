"""gRPC RecordFeedback: the REST feedback endpoint's logic over a real gRPC server."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from typing import Any

import grpc
import pytest

from coachforge.inference.v1 import inference_pb2, inference_pb2_grpc
from coachforge_inference import grpc as inference_grpc
from coachforge_inference import stored
from coachforge_inference.pool import EnginePool
from coachforge_inference.service import InferenceDeps
from coachforge_inference.settings import InferenceSettings
from coachforge_shared.auth import INTERNAL_HEADER, TENANT_HEADER, Authenticator, create_tenant
from coachforge_shared.db import Database
from coachforge_shared.errors import NotFound
from coachforge_shared.events import EventConsumer, encode
from coachforge_shared.grpc_server import GrpcServerThread, InternalChannel

TOKEN = "internal"


def store(db: Database, completion_id: str, tenant: str = "acme") -> None:
    msg = inference_pb2.CompletionStored(
        id=completion_id, created=100, model="base", requested_model="base", metadata_json="{}",
        messages_json=json.dumps([{"role": "user", "content": "Q?"}]), params_json="{}",
        choices_json=json.dumps([{"index": 0, "message": {"role": "assistant", "content": "A."},
                                  "finish_reason": "stop"}]))
    consumer = EventConsumer.__new__(EventConsumer)  # handle() needs no broker connection
    consumer.group, consumer.handler, consumer.db = "t", stored.on_completion_stored, db
    assert consumer.handle(encode("completion.stored", msg, tenant).SerializeToString())[0] == "handled"


@pytest.fixture
def target(db: Database) -> Iterator[str]:
    for tenant in ("acme", "globex"):
        create_tenant(db, tenant)
    store(db, "c1")
    store(db, "g1", tenant="globex")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    deps = InferenceDeps(settings=InferenceSettings(), registry=InternalChannel("127.0.0.1:9", TOKEN), db=db,
                         engines=EnginePool(["http://127.0.0.1:9"], timeout_s=1, health_interval_s=0))
    server = GrpcServerThread([inference_grpc.registration(deps)], Authenticator(db, internal_token=TOKEN),
                              f"127.0.0.1:{port}", max_workers=4).start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.stop()


def record(target: str, tenant: str = "acme", **fields: Any) -> inference_pb2.CompletionFeedback:
    with grpc.insecure_channel(target) as channel:
        stub = inference_pb2_grpc.InferenceServiceStub(channel)
        reply: inference_pb2.CompletionFeedback = stub.RecordFeedback(
            inference_pb2.RecordFeedbackRequest(**fields), metadata=((INTERNAL_HEADER, TOKEN), (TENANT_HEADER, tenant)),
            timeout=10)
        return reply


def test_feedback_is_recorded_and_replaced_per_rater(target: str, db: Database) -> None:
    first = record(target, completion_id="c1", rating=4, comment="applied", rater="coach-outcome")
    assert first.completion_id == "c1" and first.rater == "coach-outcome" and first.rating == 4
    assert first.comment == "applied" and not first.gold and not first.HasField("correction")
    again = record(target, completion_id="c1", rating=2, comment="undone", rater="coach-outcome")
    assert again.id == first.id and again.rating == 2 and again.comment == "undone"
    gold = record(target, completion_id="c1", gold=True, correction="Rest.")  # rater: the internal caller
    assert gold.gold and gold.correction == "Rest." and not gold.HasField("rating") and gold.rater
    rows = stored.list_feedback(InferenceDeps(settings=InferenceSettings(), registry=None, db=db,  # type: ignore[arg-type]
                                              engines=None), "acme", "c1")["data"]  # type: ignore[arg-type]
    assert [(r["rater"], r["rating"], r["comment"]) for r in rows] == [
        ("coach-outcome", 2, "undone"), (gold.rater, None, None)]


@pytest.mark.parametrize(("tenant", "fields", "code", "param"), [
    ("acme", {"completion_id": "nope", "rating": 4}, grpc.StatusCode.NOT_FOUND, "completion_id"),
    ("acme", {"completion_id": "g1", "rating": 4}, grpc.StatusCode.NOT_FOUND, "completion_id"),  # another tenant's
    ("acme", {"completion_id": "c1", "comment": "nothing rated"}, grpc.StatusCode.INVALID_ARGUMENT, "rating"),
    ("acme", {"completion_id": "c1", "rating": 6}, grpc.StatusCode.INVALID_ARGUMENT, "rating"),
    ("acme", {"rating": 3}, grpc.StatusCode.INVALID_ARGUMENT, "completion_id"),
])
def test_bad_feedback_is_refused(target: str, tenant: str, fields: dict[str, Any], code: grpc.StatusCode,
                                 param: str) -> None:
    with pytest.raises(grpc.RpcError) as err:
        record(target, tenant, **fields)
    assert err.value.code() == code and param in (err.value.details() or "") + str(err.value.trailing_metadata())


def test_the_coachs_client_records_feedback_and_gets_not_found_typed(target: str) -> None:
    from coachforge_coach.clients import GrpcModelClient

    client = GrpcModelClient(InternalChannel("127.0.0.1:9", TOKEN), InternalChannel(target, TOKEN))
    client.record_feedback("acme", "c1", rater="coach-outcome", rating=4, comment="applied", timeout=10)
    with pytest.raises(NotFound):
        client.record_feedback("acme", "missing", rater="coach-outcome", rating=4, comment="applied", timeout=10)
