"""Blind A/B comparisons over both frontends on a real (SQLite) database: REST (``/v1/comparisons…``
with the shared error handlers) and gRPC (``EvaluatorService`` on an in-process server with the
shared interceptor) answer alike, since both run the same functions: create, list, get, next,
vote, cancel, delete, and their errors (OpenAI error bodies / gRPC status codes)."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from coachforge.evaluator.v1 import evaluator_pb2, evaluator_pb2_grpc
from coachforge_evaluator import api, comparisons
from coachforge_evaluator.clients import Sampled
from coachforge_evaluator.grpc import registration
from coachforge_evaluator.runner import RunExecutor
from coachforge_evaluator.service import EvaluatorDeps
from coachforge_evaluator.settings import EvaluatorSettings
from coachforge_shared.auth import Authenticator, add_api_key, create_tenant
from coachforge_shared.db import Database
from coachforge_shared.grpc_server import GrpcServerThread
from coachforge_shared.http import install_error_handlers

MODELS = ["base-model-x", "ft:coach-anna-y"]
ACME, GLOBEX = {"Authorization": "Bearer cf-acme-key"}, {"Authorization": "Bearer cf-globex-key"}
GRPC_ACME = (("authorization", "Bearer cf-acme-key"),)
GRPC_GLOBEX = (("authorization", "Bearer cf-globex-key"),)


class Answers:
    def sample(self, tenant_id: str, model: str, messages: list[dict[str, str]], params: dict[str, Any],
               user: str = "") -> Sampled:
        return Sampled(text=f"{'short' if model == MODELS[0] else 'long'} answer to {messages[-1]['content']}",
                       finish_reason="stop", prompt_tokens=2, completion_tokens=2, latency_s=0.01, ttft_s=0.005,
                       model=model)


@pytest.fixture
def deps(db: Database) -> EvaluatorDeps:
    for tenant, key in (("acme", "cf-acme-key"), ("globex", "cf-globex-key")):
        create_tenant(db, tenant)
        add_api_key(db, tenant, key)
    return EvaluatorDeps(db=db, settings=EvaluatorSettings(sweep_interval_s=0.2, lease_seconds=2),
                         inference=Answers())  # type: ignore[arg-type]


@pytest.fixture
def rest(deps: EvaluatorDeps) -> TestClient:
    app = FastAPI()
    app.state.authenticator, app.state.evaluator = Authenticator(deps.db, internal_token="internal"), deps
    install_error_handlers(app)
    app.include_router(api.comparisons_router)
    return TestClient(app, raise_server_exceptions=False)


@pytest.fixture
def stub(deps: EvaluatorDeps) -> Iterator[evaluator_pb2_grpc.EvaluatorServiceStub]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = GrpcServerThread([registration(deps)], Authenticator(deps.db, internal_token="internal"),
                              f"127.0.0.1:{port}").start()
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield evaluator_pb2_grpc.EvaluatorServiceStub(channel)
    finally:
        channel.close()
        server.stop()


def _json(reply: evaluator_pb2.JsonObject) -> Any:
    return json.loads(reply.json)


def _ready(deps: EvaluatorDeps, cmp_id: str) -> None:
    executor = RunExecutor(deps, "w1")
    executor.sweep()
    deadline = time.monotonic() + 30
    while comparisons.get(deps, "acme", cmp_id)["status"] == "generating":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    executor.stop()


def _rpc_error(call: Any) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as err:
        call()
    return err.value


def test_rest_and_grpc_answer_alike(deps: EvaluatorDeps, rest: TestClient,
                                    stub: evaluator_pb2_grpc.EvaluatorServiceStub) -> None:
    body = {"models": MODELS, "name": "anna", "prompts": [[{"role": "user", "content": f"q{i}"}] for i in range(2)]}
    by_rest = rest.post("/v1/comparisons", json=body, headers=ACME)
    assert by_rest.status_code == 200, by_rest.text
    by_grpc = _json(stub.CreateComparison(evaluator_pb2.CreateComparisonRequest(body_json=json.dumps(body)),
                                          metadata=GRPC_ACME))
    one, two = by_rest.json(), by_grpc
    assert set(one) == set(two) and {k: v for k, v in one.items() if k not in ("id", "created_at")} == {
        k: v for k, v in two.items() if k not in ("id", "created_at")}
    assert one["status"] == "generating" and one["source"] == {"type": "prompts"}
    cmp_id = one["id"]

    # While generating: 409 over REST, FAILED_PRECONDITION over gRPC, naming the comparison.
    busy = rest.get(f"/v1/comparisons/{cmp_id}/next", params={"voter": "ann"}, headers=ACME)
    assert busy.status_code == 409
    assert (busy.json()["error"]["param"], busy.json()["error"]["code"]) == ("comparison_id", "comparison_generating")
    err = _rpc_error(lambda: stub.NextComparisonPair(evaluator_pb2.NextComparisonPairRequest(
        comparison_id=cmp_id, voter="ann"), metadata=GRPC_ACME))
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    _ready(deps, cmp_id)
    _ready(deps, two["id"])

    # The same voter is served the same pair by both.
    pair = rest.get(f"/v1/comparisons/{cmp_id}/next", params={"voter": "ann"}, headers=ACME).json()
    assert pair == _json(stub.NextComparisonPair(evaluator_pb2.NextComparisonPairRequest(
        comparison_id=cmp_id, voter="ann"), metadata=GRPC_ACME))
    assert pair["remaining"] == 2 and not any(m in json.dumps(pair) for m in MODELS)
    voted = _json(stub.VoteComparison(evaluator_pb2.VoteComparisonRequest(comparison_id=cmp_id, body_json=json.dumps(
        {"pair_id": pair["pair_id"], "voter": "ann", "winner": "left"})), metadata=GRPC_ACME))
    assert voted["object"] == "comparison.vote" and voted["winner"] == "left"
    again = rest.post(f"/v1/comparisons/{cmp_id}/votes", headers=ACME,
                      json={"pair_id": pair["pair_id"], "voter": "ann", "winner": "right"})
    assert again.status_code == 409 and again.json()["error"]["code"] == "already_voted"
    second = rest.get(f"/v1/comparisons/{cmp_id}/next", params={"voter": "ann"}, headers=ACME).json()
    assert second["remaining"] == 1
    rest.post(f"/v1/comparisons/{cmp_id}/votes", headers=ACME,
              json={"pair_id": second["pair_id"], "voter": "ann", "winner": "tie"}).raise_for_status()
    done = rest.get(f"/v1/comparisons/{cmp_id}/next", params={"voter": "ann"}, headers=ACME)
    assert done.status_code == 204
    assert stub.NextComparisonPair(evaluator_pb2.NextComparisonPairRequest(comparison_id=cmp_id, voter="ann"),
                                   metadata=GRPC_ACME).json == ""

    got = rest.get(f"/v1/comparisons/{cmp_id}", headers=ACME).json()
    assert got == _json(stub.GetComparison(evaluator_pb2.GetComparisonRequest(comparison_id=cmp_id),
                                           metadata=GRPC_ACME))
    assert got["status"] == "ready" and got["vote_count"] == 2 and got["results"]["vote_count"] == 2
    exported = rest.get(f"/v1/comparisons/{cmp_id}/preferences", headers=ACME)  # the votes as DPO pairs
    assert exported.status_code == 200 and exported.headers["content-type"].startswith("application/jsonl")
    (preferred,) = [json.loads(x) for x in exported.content.splitlines()]  # ann's tie is left out
    assert preferred["input"]["messages"] == pair["prompt"]
    assert preferred["preferred_output"] == [{"role": "assistant", "content": pair["left"]["content"]}]
    assert preferred["non_preferred_output"] == [{"role": "assistant", "content": pair["right"]["content"]}]
    assert rest.get(f"/v1/comparisons/{cmp_id}/preferences", headers=GLOBEX).status_code == 404

    listed = rest.get("/v1/comparisons", params={"limit": 1, "order": "desc"}, headers=ACME).json()
    assert listed == _json(stub.ListComparisons(evaluator_pb2.ListComparisonsRequest(limit=1, order="desc"),
                                                metadata=GRPC_ACME))
    assert [c["id"] for c in listed["data"]] == [two["id"]] and listed["has_more"] is True
    everything = _json(stub.ListComparisons(evaluator_pb2.ListComparisonsRequest(), metadata=GRPC_ACME))
    assert [c["id"] for c in everything["data"]] == [cmp_id, two["id"]]
    assert rest.get("/v1/comparisons", headers=GLOBEX).json()["data"] == []
    assert _json(stub.ListComparisons(evaluator_pb2.ListComparisonsRequest(), metadata=GRPC_GLOBEX))["data"] == []

    canceled = _json(stub.CancelComparison(evaluator_pb2.GetComparisonRequest(comparison_id=cmp_id),
                                           metadata=GRPC_ACME))
    assert canceled["status"] == "canceled" and canceled["results"] == got["results"]
    twice = rest.post(f"/v1/comparisons/{cmp_id}/cancel", headers=ACME)
    assert twice.status_code == 409 and twice.json()["error"]["code"] == "comparison_canceled"
    canceled_too = rest.post(f"/v1/comparisons/{two['id']}/cancel", headers=ACME).json()
    assert canceled_too["status"] == "canceled"

    deleted = rest.delete(f"/v1/comparisons/{cmp_id}", headers=ACME).json()
    assert deleted == {"id": cmp_id, "object": "comparison.deleted", "deleted": True}
    assert _json(stub.DeleteComparison(evaluator_pb2.GetComparisonRequest(comparison_id=two["id"]),
                                       metadata=GRPC_ACME)) == {"id": two["id"], "object": "comparison.deleted",
                                                                "deleted": True}
    gone = rest.get(f"/v1/comparisons/{cmp_id}", headers=ACME)
    assert gone.status_code == 404 and gone.json()["error"]["code"] == "comparison_not_found"
    err = _rpc_error(lambda: stub.GetComparison(evaluator_pb2.GetComparisonRequest(comparison_id=two["id"]),
                                                metadata=GRPC_ACME))
    assert err.code() == grpc.StatusCode.NOT_FOUND


def test_errors_name_the_field_on_both(rest: TestClient, stub: evaluator_pb2_grpc.EvaluatorServiceStub) -> None:
    body = {"models": MODELS, "prompts": [[{"role": "user", "content": "hi"}]], "file": "file-x"}
    refused = rest.post("/v1/comparisons", json=body, headers=ACME)
    assert refused.status_code == 400
    error = refused.json()["error"]
    assert (error["type"], error["param"], error["code"]) == ("invalid_request_error", "file", "invalid_source")
    err = _rpc_error(lambda: stub.CreateComparison(evaluator_pb2.CreateComparisonRequest(
        body_json=json.dumps(body)), metadata=GRPC_ACME))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and error["message"] in (err.details() or "")
    bad_json = _rpc_error(lambda: stub.CreateComparison(evaluator_pb2.CreateComparisonRequest(body_json="{"),
                                                        metadata=GRPC_ACME))
    assert bad_json.code() == grpc.StatusCode.INVALID_ARGUMENT
    no_voter = rest.get("/v1/comparisons/cmp-x/next", headers=ACME)
    assert no_voter.status_code == 400 and no_voter.json()["error"]["param"] == "voter"
    assert rest.get("/v1/comparisons", params={"limit": 0}, headers=ACME).status_code == 400
    err = _rpc_error(lambda: stub.ListComparisons(evaluator_pb2.ListComparisonsRequest(order="sideways"),
                                                  metadata=GRPC_ACME))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    err = _rpc_error(lambda: stub.DeleteComparison(evaluator_pb2.GetComparisonRequest(comparison_id="cmp-x"),
                                                   metadata=GRPC_ACME))
    assert err.code() == grpc.StatusCode.NOT_FOUND
    assert rest.delete("/v1/comparisons/cmp-x", headers=ACME).status_code == 404
    assert rest.get("/v1/comparisons", headers={"Authorization": "Bearer nope"}).status_code == 401
