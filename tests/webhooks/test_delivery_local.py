"""The webhooks service on a real SQLite database with a real HTTP receiver (no broker): events
handled by the consumer's handler become one delivery per subscribed endpoint, idempotently; the
sender signs them (verified with the Standard Webhooks reference library), retries failures with
the configured backoff until the last attempt, and the delivery log tells what happened."""

from __future__ import annotations

import http.server
import json
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from coachforge.evaluator.v1 import evaluator_pb2
from coachforge.trainer.v1 import trainer_pb2
from coachforge_shared.auth import create_tenant
from coachforge_shared.db import Database
from coachforge_shared.errors import Conflict, InvalidArgument, NotFound
from coachforge_shared.events import encode
from coachforge_webhooks import service
from coachforge_webhooks.delivery import DeliverySender
from coachforge_webhooks.models import WebhookDelivery, WebhookEndpoint
from coachforge_webhooks.schemas import parse_create
from coachforge_webhooks.service import WebhooksDeps
from coachforge_webhooks.settings import WebhooksSettings


@dataclass
class Received:
    body: bytes
    headers: dict[str, str]


@dataclass
class Receiver:
    """An HTTP server on 127.0.0.1 that records every POST and answers with the next status of
    ``statuses`` (the last one once they run out)."""

    statuses: list[int] = field(default_factory=lambda: [200])
    requests: list[Received] = field(default_factory=list)
    url: str = ""
    _served: int = 0

    def handle(self, body: bytes, headers: dict[str, str]) -> int:
        self.requests.append(Received(body, headers))
        status = self.statuses[min(self._served, len(self.statuses) - 1)]
        self._served += 1
        return status


@pytest.fixture
def receiver() -> Iterator[Callable[..., Receiver]]:
    servers: list[http.server.ThreadingHTTPServer] = []

    def start(*statuses: int) -> Receiver:
        rec = Receiver(statuses=list(statuses) or [200])

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                status = rec.handle(body, {k.lower(): v for k, v in self.headers.items()})
                answer = b"boom" if status >= 400 else b"ok"
                self.send_response(status)
                self.send_header("content-length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args: Any) -> None:
                pass

        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        rec.url = f"http://127.0.0.1:{server.server_address[1]}/hooks"
        return rec

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


@pytest.fixture
def deps(db: Database) -> WebhooksDeps:
    create_tenant(db, "acme")
    create_tenant(db, "other")
    return WebhooksDeps(db=db, settings=WebhooksSettings(retry_schedule_s=[0.2, 0.4], max_attempts=3,
                                                         poll_interval_s=0.1, timeout_s=5, max_endpoints=3,
                                                         allowed_networks=["127.0.0.0/8"]))


@pytest.fixture
def sender(deps: WebhooksDeps) -> Iterator[DeliverySender]:
    s = DeliverySender(deps)
    deps.wake = s.wake
    s.start()
    yield s
    s.stop()


def _consume(deps: WebhooksDeps, event_type: str, payload: Any, tenant: str = "acme",
             event_id: str | None = None) -> str:
    """What the consumer does with one event: the handler in a transaction, then its follow-up."""
    env = encode(event_type, payload, tenant, event_id)
    with deps.db.session() as s:
        follow_up = service.on_event(deps)(s, env, payload)
    if follow_up is not None:
        follow_up()
    return env.event_id


def _wait(check: Callable[[], Any], timeout: float = 20) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError("condition not met in time")


def _log(deps: WebhooksDeps, endpoint_id: str) -> list[dict[str, Any]]:
    data: list[dict[str, Any]] = service.list_deliveries(deps, "acme", endpoint_id)["data"]
    return data


def test_an_event_reaches_its_endpoint_signed_once(deps: WebhooksDeps, sender: DeliverySender,
                                                   receiver: Callable[..., Receiver]) -> None:
    rec = receiver(200)
    created = service.create_endpoint(deps, "acme", {"url": rec.url, "events": ["fine_tuning.job.cancelled"],
                                                     "description": "ci"})
    assert created["object"] == "webhook_endpoint" and created["id"].startswith("we_")
    assert created["secret"].startswith("whsec_") and created["status"] == "enabled"
    assert created["events"] == ["fine_tuning.job.cancelled"] and created["description"] == "ci"
    event_id = _consume(deps, "job.cancelled",
                        trainer_pb2.JobFinished(job_id="ftjob-1", status=trainer_pb2.JOB_STATUS_CANCELLED))
    _wait(lambda: rec.requests)
    got = rec.requests[0]
    event = Webhook(created["secret"]).verify(got.body, got.headers)
    assert event["type"] == "fine_tuning.job.cancelled" and event["object"] == "event"
    assert event["data"] == {"id": "ftjob-1"} and event["id"] == service.webhook_event_id(event_id)
    assert event["id"].startswith("evt_") and isinstance(event["created_at"], int)
    assert got.headers["content-type"] == "application/json"
    (delivery,) = _wait(lambda: [d for d in _log(deps, created["id"]) if d["status"] == "succeeded"])
    assert delivery["id"] == got.headers["webhook-id"] and delivery["attempts"] == 1
    assert delivery["last_status_code"] == 200 and delivery["last_error"] is None
    assert delivery["event_id"] == event["id"] and delivery["event_type"] == "fine_tuning.job.cancelled"
    assert delivery["delivered_at"] is not None and delivery["next_attempt_at"] is None
    assert "secret" not in service.get_endpoint(deps, "acme", created["id"])


def test_a_redelivered_event_creates_nothing_new(deps: WebhooksDeps, receiver: Callable[..., Receiver]) -> None:
    rec = receiver(200)
    created = service.create_endpoint(deps, "acme", {"url": rec.url, "events": ["eval.run.succeeded"]})
    payload = evaluator_pb2.EvalRunFinished(eval_id="eval_1", run_id="evalrun_1", status="completed")
    event_id = _consume(deps, "eval.run.succeeded", payload)
    _consume(deps, "eval.run.succeeded", payload, event_id=event_id)
    (delivery,) = _log(deps, created["id"])
    assert delivery["status"] == "pending" and delivery["attempts"] == 0
    with deps.db.session() as s:
        body = json.loads(s.get(WebhookDelivery, delivery["id"]).payload)
    assert body["data"] == {"id": "evalrun_1", "eval_id": "eval_1"} and body["type"] == "eval.run.succeeded"


def test_only_subscribed_endpoints_of_the_events_tenant_get_it(deps: WebhooksDeps,
                                                               receiver: Callable[..., Receiver]) -> None:
    rec = receiver(200)
    wanted = service.create_endpoint(deps, "acme", {"url": rec.url, "events": ["fine_tuning.job.failed"]})
    other_type = service.create_endpoint(deps, "acme", {"url": rec.url, "events": ["fine_tuning.job.succeeded"]})
    other_tenant = service.create_endpoint(deps, "other", {"url": rec.url, "events": ["fine_tuning.job.failed"]})
    _consume(deps, "job.failed", trainer_pb2.JobFinished(job_id="ftjob-2", status=trainer_pb2.JOB_STATUS_FAILED))
    _consume(deps, "job.progress", trainer_pb2.JobProgress(job_id="ftjob-2"))  # not a webhook event
    assert len(_log(deps, wanted["id"])) == 1
    assert _log(deps, other_type["id"]) == []
    assert service.list_deliveries(deps, "other", other_tenant["id"])["data"] == []
    with pytest.raises(NotFound):  # a tenant never sees another's endpoints
        service.list_deliveries(deps, "acme", other_tenant["id"])


def test_a_failing_receiver_is_retried_until_it_answers(deps: WebhooksDeps, sender: DeliverySender,
                                                        receiver: Callable[..., Receiver]) -> None:
    rec = receiver(500, 200)
    created = service.create_endpoint(deps, "acme", {"url": rec.url, "events": ["fine_tuning.job.cancelled"]})
    _consume(deps, "job.cancelled", trainer_pb2.JobFinished(job_id="ftjob-3"))
    (delivery,) = _wait(lambda: [d for d in _log(deps, created["id"]) if d["status"] == "succeeded"])
    assert delivery["attempts"] == 2 and delivery["last_status_code"] == 200
    first, second = rec.requests
    assert first.headers["webhook-id"] == second.headers["webhook-id"] == delivery["id"]  # stable across retries
    assert first.body == second.body
    for got in (first, second):
        Webhook(created["secret"]).verify(got.body, got.headers)


def test_a_receiver_that_always_fails_is_given_up_after_the_last_attempt(
        deps: WebhooksDeps, sender: DeliverySender, receiver: Callable[..., Receiver]) -> None:
    rec = receiver(503)
    created = service.create_endpoint(deps, "acme", {"url": rec.url, "events": ["fine_tuning.job.cancelled"]})
    _consume(deps, "job.cancelled", trainer_pb2.JobFinished(job_id="ftjob-4"))
    (delivery,) = _wait(lambda: [d for d in _log(deps, created["id"]) if d["status"] == "failed"])
    assert delivery["attempts"] == 3 == len(rec.requests)
    assert delivery["last_status_code"] == 503 and delivery["last_error"] == "HTTP 503: boom"
    assert delivery["next_attempt_at"] is None and delivery["delivered_at"] is None


def test_an_unreachable_endpoint_keeps_the_error_and_waits_for_its_next_attempt(
        deps: WebhooksDeps, sender: DeliverySender) -> None:
    import socket

    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    deps.settings.retry_schedule_s = [3600.0]
    created = service.create_endpoint(deps, "acme", {"url": f"http://127.0.0.1:{port}/x",
                                                     "events": ["fine_tuning.job.cancelled"]})
    _consume(deps, "job.cancelled", trainer_pb2.JobFinished(job_id="ftjob-5"))
    (delivery,) = _wait(lambda: [d for d in _log(deps, created["id"]) if d["attempts"] == 1])
    assert delivery["status"] == "pending" and delivery["last_status_code"] is None
    assert delivery["last_error"].startswith("ConnectError")
    assert delivery["next_attempt_at"] >= delivery["created_at"] + 3500


def test_rotation_signs_with_both_secrets_during_the_grace_period(
        deps: WebhooksDeps, sender: DeliverySender, receiver: Callable[..., Receiver]) -> None:
    rec = receiver(200)
    created = service.create_endpoint(deps, "acme", {"url": rec.url, "events": ["fine_tuning.job.succeeded"]})
    rotated = service.rotate_secret(deps, "acme", created["id"])
    assert rotated["secret"].startswith("whsec_") and rotated["secret"] != created["secret"]
    _consume(deps, "job.succeeded", trainer_pb2.JobSucceeded(job_id="ftjob-6"))
    _wait(lambda: rec.requests)
    got = rec.requests[0]
    assert len(got.headers["webhook-signature"].split(" ")) == 2
    Webhook(rotated["secret"]).verify(got.body, got.headers)
    Webhook(created["secret"]).verify(got.body, got.headers)
    # Without a grace period, only the new secret signs.
    deps.settings.secret_grace_s = 0
    again = service.rotate_secret(deps, "acme", created["id"])
    _consume(deps, "job.succeeded", trainer_pb2.JobSucceeded(job_id="ftjob-7"))
    _wait(lambda: len(rec.requests) == 2)
    got = rec.requests[1]
    assert len(got.headers["webhook-signature"].split(" ")) == 1
    Webhook(again["secret"]).verify(got.body, got.headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(rotated["secret"]).verify(got.body, got.headers)


@pytest.mark.parametrize(("body", "param"), [
    ({"url": "ftp://example.com/x", "events": ["eval.run.failed"]}, "url"),
    ({"url": "http:///nohost", "events": ["eval.run.failed"]}, "url"),
    ({"url": "example.com/hook", "events": ["eval.run.failed"]}, "url"),
    ({"url": "https://example.com:99999/", "events": ["eval.run.failed"]}, "url"),
    ({"url": "https://u:p@example.com/", "events": ["eval.run.failed"]}, "url"),
    ({"url": "https://example.com/ x", "events": ["eval.run.failed"]}, "url"),
    ({"url": "https://example.com/", "events": []}, "events"),
    ({"url": "https://example.com/", "events": ["job.succeeded"]}, "events"),
    ({"url": "https://example.com/"}, "events"),
    ({"events": ["eval.run.failed"]}, "url"),
    ({"url": "https://example.com/", "events": ["eval.run.failed"], "secret": "mine"}, "secret"),
    ({"url": "https://example.com/", "events": ["eval.run.failed"], "description": "x" * 501}, "description"),
])
def test_bad_input_names_the_field(body: dict[str, Any], param: str) -> None:
    """What create_endpoint (REST and gRPC) checks before anything is written."""
    with pytest.raises(InvalidArgument) as err:
        parse_create(body)
    assert err.value.param == param, err.value.message
    assert err.value.code == "invalid_value"


def test_endpoints_are_listed_paged_limited_and_deleted_with_their_log(deps: WebhooksDeps) -> None:
    made = [service.create_endpoint(deps, "acme", {"url": f"https://example.com/{i}",
                                                   "events": ["eval.run.failed", "eval.run.failed"]})
            for i in range(3)]
    assert made[0]["events"] == ["eval.run.failed"]  # duplicates once
    with pytest.raises(Conflict):
        service.create_endpoint(deps, "acme", {"url": "https://example.com/4", "events": ["eval.run.failed"]})
    page = service.list_endpoints(deps, "acme", limit=2)
    assert page["object"] == "list" and page["has_more"] is True
    assert [e["id"] for e in page["data"]] == [m["id"] for m in made[:2]]
    assert all("secret" not in e for e in page["data"])
    rest = service.list_endpoints(deps, "acme", after=page["last_id"], limit=2)
    assert [e["id"] for e in rest["data"]] == [made[2]["id"]] and rest["has_more"] is False
    assert service.list_endpoints(deps, "other")["data"] == []
    _consume(deps, "eval.run.failed", evaluator_pb2.EvalRunFinished(run_id="evalrun_9", status="failed"))
    assert len(_log(deps, made[0]["id"])) == 1
    assert service.delete_endpoint(deps, "acme", made[0]["id"]) == {
        "id": made[0]["id"], "object": "webhook_endpoint.deleted", "deleted": True}
    with pytest.raises(NotFound):
        service.get_endpoint(deps, "acme", made[0]["id"])
    with deps.db.session() as s:
        assert s.query(WebhookDelivery).filter_by(endpoint_id=made[0]["id"]).count() == 0
    with pytest.raises(NotFound):
        service.delete_endpoint(deps, "other", made[1]["id"])


@pytest.mark.parametrize("url", ["http://169.254.169.254/latest/meta-data/", "http://10.1.2.3/hook",
                                 "https://[::1]:8443/hook", "http://[::ffff:192.168.0.9]/hook", "http://localhost:9/x",
                                 "http://100.64.0.1/hook"])
def test_an_endpoint_into_a_private_network_is_refused(deps: WebhooksDeps, url: str) -> None:
    deps.settings.allowed_networks = []
    with pytest.raises(InvalidArgument) as refused:
        service.create_endpoint(deps, "acme", {"url": url, "events": ["fine_tuning.job.failed"]})
    assert refused.value.param == "url" and refused.value.code == "url_not_allowed"
    assert "COACHFORGE_WEBHOOKS_ALLOWED_NETWORKS" in str(refused.value)
    assert service.list_endpoints(deps, "acme")["data"] == []


def test_an_attempt_to_a_destination_no_longer_allowed_sends_nothing(
        deps: WebhooksDeps, sender: DeliverySender, receiver: Callable[..., Receiver]) -> None:
    rec = receiver(200)
    created = service.create_endpoint(deps, "acme", {"url": rec.url, "events": ["fine_tuning.job.cancelled"]})
    deps.settings.allowed_networks = []  # e.g. an operator narrowed the allowed networks since
    deps.settings.retry_schedule_s = [3600.0]
    _consume(deps, "job.cancelled", trainer_pb2.JobFinished(job_id="ftjob-blocked"))
    (delivery,) = _wait(lambda: [d for d in _log(deps, created["id"]) if d["attempts"] == 1])
    assert delivery["status"] == "pending" and delivery["last_status_code"] is None
    assert delivery["last_error"].startswith("not sent: 127.0.0.1 is a loopback address")
    assert rec.requests == []


def test_sealed_secrets_sign_rotate_and_stay_unreadable_in_the_database(
        deps: WebhooksDeps, sender: DeliverySender, receiver: Callable[..., Receiver]) -> None:
    old_key, new_key = secrets.token_hex(32), secrets.token_hex(32)
    deps.settings.secret_keys = [old_key]
    rec = receiver(200)
    created = service.create_endpoint(deps, "acme", {"url": rec.url, "events": ["fine_tuning.job.succeeded"]})
    with deps.db.session() as s:
        stored = s.get(WebhookEndpoint, created["id"])
        assert stored is not None and stored.secret.startswith("fernet:")
        assert created["secret"] not in stored.secret and created["secret"].removeprefix("whsec_") not in stored.secret
    # A new key first, the old one kept: the old seal still opens, the rotated secret is sealed with the new key.
    deps.settings.secret_keys = [new_key, old_key]
    rotated = service.rotate_secret(deps, "acme", created["id"])
    _consume(deps, "job.succeeded", trainer_pb2.JobSucceeded(job_id="ftjob-sealed"))
    _wait(lambda: rec.requests)
    got = rec.requests[0]
    Webhook(rotated["secret"]).verify(got.body, got.headers)
    Webhook(created["secret"]).verify(got.body, got.headers)
    # Without the keys the secrets cannot be opened: the attempt fails, nothing is sent unsigned.
    deps.settings.secret_keys = []
    deps.settings.retry_schedule_s = [3600.0]
    _consume(deps, "job.succeeded", trainer_pb2.JobSucceeded(job_id="ftjob-sealed-2"))
    (delivery,) = _wait(lambda: [d for d in _log(deps, created["id"]) if d["status"] == "pending" and d["attempts"]])
    assert delivery["last_error"].startswith("not sent: the endpoint's signing secret is sealed")
    assert len(rec.requests) == 1
