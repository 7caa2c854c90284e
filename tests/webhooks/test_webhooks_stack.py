"""Webhooks on the running stack: a tenant's endpoint is told of a real eval run event (an eval run of
hand-written samples finishing publishes ``eval.run.succeeded`` on the broker; the webhooks service
consumes it, queues a delivery in PostgreSQL and sends it), signed so that the Standard Webhooks
reference library verifies it; a receiver that fails first is retried; a rotated secret signs
alongside the previous one; bad input is a 400 naming the field, over REST and gRPC alike."""

from __future__ import annotations

import http.server
import json
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import grpc
import httpx
import pytest
from standardwebhooks import Webhook

from coachforge.webhooks.v1 import webhooks_pb2, webhooks_pb2_grpc

pytestmark = pytest.mark.stack

EVAL = {"name": "webhooks", "data_source_config": {"type": "custom", "include_sample_schema": True,
                                                   "item_schema": {"type": "object",
                                                                   "properties": {"expected": {"type": "string"}}}},
        "testing_criteria": [{"type": "string_check", "name": "exact", "input": "{{sample.output_text}}",
                              "reference": "{{item.expected}}", "operation": "eq"}]}


@dataclass
class Received:
    body: bytes
    headers: dict[str, str]


@dataclass
class Receiver:
    """Records every POST; answers with the next of ``statuses`` (the last one once they run out)."""

    statuses: list[int]
    url: str = ""
    requests: list[Received] = field(default_factory=list)

    def answer(self, body: bytes, headers: dict[str, str]) -> int:
        self.requests.append(Received(body, headers))
        return self.statuses[min(len(self.requests), len(self.statuses)) - 1]


@pytest.fixture
def receiver() -> Iterator[Callable[..., Receiver]]:
    """Start HTTP receivers on 127.0.0.1 (ephemeral ports), each in a thread of its own."""
    servers: list[http.server.ThreadingHTTPServer] = []

    def start(*statuses: int) -> Receiver:
        rec = Receiver(list(statuses) or [200])

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                status = rec.answer(body, {k.lower(): v for k, v in self.headers.items()})
                self.send_response(status)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        rec.url = f"http://127.0.0.1:{server.server_address[1]}/webhook"
        return rec

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def tenant_key(stack) -> str:  # type: ignore[no-untyped-def]
    """A key of a tenant of this module's own, so that no other test's eval runs reach its endpoints."""
    from coachforge_shared.auth import add_api_key, create_tenant
    from coachforge_shared.db import Database

    tenant = f"wh-{secrets.token_hex(4)}"
    key = f"cf-{tenant}-{secrets.token_hex(12)}"
    db = Database(stack.database_url)
    try:
        create_tenant(db, tenant)
        add_api_key(db, tenant, key)
    finally:
        db.dispose()
    return key


@pytest.fixture(scope="module")
def http_client(stack, tenant_key: str) -> Iterator[httpx.Client]:  # type: ignore[no-untyped-def]
    with httpx.Client(base_url=stack.base_url.removesuffix("/v1"), timeout=60,
                      headers={"Authorization": f"Bearer {tenant_key}"}) as client:
        yield client


@pytest.fixture(scope="module")
def eval_id(http_client: httpx.Client) -> str:
    created = http_client.post("/v1/evals", json=EVAL)
    assert created.status_code == 200, created.text
    return str(created.json()["id"])


@pytest.fixture
def endpoints(http_client: httpx.Client) -> Iterator[Callable[..., dict[str, Any]]]:
    """Create endpoints; each is deleted afterwards (so later tests' events do not reach it)."""
    made: list[str] = []

    def create(url: str, events: list[str]) -> dict[str, Any]:
        r = http_client.post("/v1/webhooks/endpoints", json={"url": url, "events": events, "description": "stack"})
        assert r.status_code == 200, r.text
        made.append(r.json()["id"])
        return dict(r.json())

    yield create
    for endpoint_id in made:
        http_client.delete(f"/v1/webhooks/endpoints/{endpoint_id}")


def _run(http_client: httpx.Client, eval_id: str) -> str:
    """Start an eval run of hand-written samples (nothing to generate: it finishes within seconds)."""
    r = http_client.post(f"/v1/evals/{eval_id}/runs", json={"name": "wh", "data_source": {
        "type": "jsonl", "source": {"type": "file_content", "content": [
            {"item": {"expected": "rest"}, "sample": {"output_text": "rest", "model": "hand-written"}}]}}})
    assert r.status_code == 200, r.text
    return str(r.json()["id"])


def _wait(check: Callable[[], Any], what: str, timeout: float = 120) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def _deliveries(http_client: httpx.Client, endpoint_id: str) -> list[dict[str, Any]]:
    r = http_client.get(f"/v1/webhooks/endpoints/{endpoint_id}/deliveries")
    assert r.status_code == 200, r.text
    assert r.json()["object"] == "list"
    return list(r.json()["data"])


def test_an_eval_run_event_arrives_signed_and_is_logged(stack, http_client: httpx.Client, eval_id: str,  # type: ignore[no-untyped-def]
                                                        endpoints: Callable[..., dict[str, Any]],
                                                        receiver: Callable[..., Receiver]) -> None:
    rec = receiver(200)
    endpoint = endpoints(rec.url, ["eval.run.succeeded", "eval.run.failed"])
    assert endpoint["id"].startswith("we_") and endpoint["object"] == "webhook_endpoint"
    assert endpoint["secret"].startswith("whsec_") and endpoint["status"] == "enabled"
    assert endpoint["events"] == ["eval.run.succeeded", "eval.run.failed"] and endpoint["description"] == "stack"
    shown = http_client.get(f"/v1/webhooks/endpoints/{endpoint['id']}").json()
    assert "secret" not in shown and shown["url"] == rec.url
    listed = http_client.get("/v1/webhooks/endpoints").json()
    assert listed["object"] == "list" and [e["id"] for e in listed["data"]] == [endpoint["id"]]
    assert listed["has_more"] is False and all("secret" not in e for e in listed["data"])

    run_id = _run(http_client, eval_id)
    _wait(lambda: rec.requests, "the webhook request")
    got = rec.requests[0]
    event = Webhook(endpoint["secret"]).verify(got.body, got.headers)
    assert event["object"] == "event" and event["type"] == "eval.run.succeeded"
    assert event["data"] == {"id": run_id, "eval_id": eval_id}
    assert event["id"].startswith("evt_") and abs(event["created_at"] - time.time()) < 600
    assert got.headers["content-type"] == "application/json"

    (delivery,) = _wait(lambda: [d for d in _deliveries(http_client, endpoint["id"]) if d["status"] == "succeeded"],
                        "the delivery to be logged as succeeded")
    assert delivery["id"] == got.headers["webhook-id"] and delivery["event_id"] == event["id"]
    assert delivery["event_type"] == "eval.run.succeeded" and delivery["attempts"] == 1
    assert delivery["last_status_code"] == 200 and delivery["last_error"] is None
    assert delivery["delivered_at"] is not None and delivery["next_attempt_at"] is None
    assert len(rec.requests) == 1

    metrics = httpx.get(stack.metrics_url, timeout=10).text
    assert 'coachforge_webhook_deliveries_total{event_type="eval.run.succeeded",outcome="succeeded"}' in metrics
    assert 'coachforge_webhook_attempt_seconds_count{result="success"}' in metrics


def test_a_receiver_that_fails_once_gets_a_second_attempt(http_client: httpx.Client, eval_id: str,
                                                          endpoints: Callable[..., dict[str, Any]],
                                                          receiver: Callable[..., Receiver]) -> None:
    rec = receiver(500, 200)
    endpoint = endpoints(rec.url, ["eval.run.succeeded"])
    _run(http_client, eval_id)
    (delivery,) = _wait(lambda: [d for d in _deliveries(http_client, endpoint["id"]) if d["status"] == "succeeded"],
                        "the retried delivery to succeed")
    assert delivery["attempts"] == 2 and delivery["last_status_code"] == 200
    first, second = rec.requests
    assert first.headers["webhook-id"] == second.headers["webhook-id"] == delivery["id"]
    assert first.body == second.body
    for got in (first, second):
        Webhook(endpoint["secret"]).verify(got.body, got.headers)


def test_a_rotated_secret_signs_alongside_the_previous_one(http_client: httpx.Client, eval_id: str,
                                                           endpoints: Callable[..., dict[str, Any]],
                                                           receiver: Callable[..., Receiver]) -> None:
    rec = receiver(200)
    endpoint = endpoints(rec.url, ["eval.run.succeeded"])
    r = http_client.post(f"/v1/webhooks/endpoints/{endpoint['id']}/rotate_secret")
    assert r.status_code == 200, r.text
    rotated = r.json()
    assert rotated["id"] == endpoint["id"] and rotated["secret"].startswith("whsec_")
    assert rotated["secret"] != endpoint["secret"]
    _run(http_client, eval_id)
    _wait(lambda: rec.requests, "the webhook request")
    got = rec.requests[0]
    assert len(got.headers["webhook-signature"].split(" ")) == 2
    assert Webhook(rotated["secret"]).verify(got.body, got.headers)["type"] == "eval.run.succeeded"
    assert Webhook(endpoint["secret"]).verify(got.body, got.headers)["type"] == "eval.run.succeeded"


def test_bad_input_is_a_400_naming_the_field_over_rest_and_grpc(stack, http_client: httpx.Client,  # type: ignore[no-untyped-def]
                                                                tenant_key: str) -> None:
    for body, param in (({"url": "ftp://example.com/hook", "events": ["eval.run.succeeded"]}, "url"),
                        ({"url": "https:///no-host", "events": ["eval.run.succeeded"]}, "url"),
                        ({"url": "https://example.com/hook", "events": ["job.succeeded"]}, "events"),
                        ({"url": "https://example.com/hook", "events": []}, "events")):
        r = http_client.post("/v1/webhooks/endpoints", json=body)
        assert r.status_code == 400, r.text
        error = r.json()["error"]
        assert error["type"] == "invalid_request_error" and error["param"].startswith(param), error
    assert http_client.get("/v1/webhooks/endpoints/we_missing").status_code == 404
    assert http_client.get("/v1/webhooks/endpoints/we_missing/deliveries").status_code == 404

    auth = (("authorization", f"Bearer {tenant_key}"),)
    with grpc.insecure_channel(stack.grpc_target) as channel:
        stub = webhooks_pb2_grpc.WebhooksServiceStub(channel)
        with pytest.raises(grpc.RpcError) as err:
            stub.CreateEndpoint(webhooks_pb2.CreateEndpointRequest(
                body_json='{"url": "mailto:x@example.com", "events": ["eval.run.failed"]}'), metadata=auth)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "url" in (err.value.details() or "")
        made = json.loads(stub.CreateEndpoint(webhooks_pb2.CreateEndpointRequest(
            body_json='{"url": "https://example.com/hook", "events": ["fine_tuning.job.failed"]}'),
            metadata=auth).json)
        try:
            assert made["secret"].startswith("whsec_")
            got = json.loads(stub.GetEndpoint(webhooks_pb2.EndpointRequest(endpoint_id=made["id"]), metadata=auth).json)
            assert got["events"] == ["fine_tuning.job.failed"] and "secret" not in got
            rotated = json.loads(stub.RotateSecret(webhooks_pb2.EndpointRequest(endpoint_id=made["id"]),
                                                   metadata=auth).json)
            assert rotated["secret"] != made["secret"]
            listed = json.loads(stub.ListDeliveries(webhooks_pb2.ListDeliveriesRequest(endpoint_id=made["id"]),
                                                    metadata=auth).json)
            assert listed == {"object": "list", "data": [], "first_id": None, "last_id": None, "has_more": False}
        finally:
            stub.DeleteEndpoint(webhooks_pb2.EndpointRequest(endpoint_id=made["id"]), metadata=auth)
        with pytest.raises(grpc.RpcError) as err:
            stub.GetEndpoint(webhooks_pb2.EndpointRequest(endpoint_id=made["id"]), metadata=auth)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
