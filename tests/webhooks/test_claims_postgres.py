"""Several senders share the deliveries on the real PostgreSQL server: concurrent claims never hand
out the same delivery twice (``FOR UPDATE SKIP LOCKED`` plus a compare-and-set on the due time), a
claim keeps a delivery from other senders until it runs out, and an attempt's result is stored once."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest

from coachforge.trainer.v1 import trainer_pb2
from coachforge_shared import migrate
from coachforge_shared.auth import create_tenant
from coachforge_shared.db import Database
from coachforge_shared.events import encode
from coachforge_webhooks import repository, service
from coachforge_webhooks.delivery import Attempt, claim_due
from coachforge_webhooks.service import WebhooksDeps
from coachforge_webhooks.settings import WebhooksSettings


@pytest.fixture
def deps(scratch_postgres: str) -> Iterator[WebhooksDeps]:
    migrate.upgrade(scratch_postgres)
    db = Database(scratch_postgres)
    create_tenant(db, "acme")
    yield WebhooksDeps(db=db, settings=WebhooksSettings(timeout_s=0.2, claim_s=0.3))
    db.dispose()


def _queue(deps: WebhooksDeps, events: int) -> None:
    service.create_endpoint(deps, "acme", {"url": "https://example.com/a", "events": ["fine_tuning.job.failed"]})
    service.create_endpoint(deps, "acme", {"url": "https://example.com/b", "events": ["fine_tuning.job.failed"]})
    handle = service.on_event(deps)
    for i in range(events):
        payload = trainer_pb2.JobFinished(job_id=f"ftjob-{i}")
        env = encode("job.failed", payload, "acme")
        with deps.db.session() as s:
            handle(s, env, payload)
        with deps.db.session() as s:  # the same event again (a redelivery): nothing new
            handle(s, env, payload)


def test_concurrent_senders_claim_disjoint_deliveries(deps: WebhooksDeps) -> None:
    _queue(deps, 15)  # two endpoints: 30 deliveries
    claimed: list[list[Attempt]] = []
    lock = threading.Lock()
    start = threading.Barrier(4)

    def sender() -> None:
        start.wait()
        got = claim_due(deps, 10)
        with lock:
            claimed.append(got)

    threads = [threading.Thread(target=sender) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ids = [a.delivery_id for batch in claimed for a in batch]
    assert len(ids) == len(set(ids)) == 30
    assert {a.url for batch in claimed for a in batch} == {"https://example.com/a", "https://example.com/b"}
    assert claim_due(deps, 100) == []  # all held


def test_a_claim_runs_out_and_a_result_is_stored_once(deps: WebhooksDeps) -> None:
    _queue(deps, 1)
    first = claim_due(deps, 10)
    assert len(first) == 2 and claim_due(deps, 10) == []
    deadline = time.monotonic() + 30
    again: list[Attempt] = []
    while not again and time.monotonic() < deadline:  # timeout_s + claim_s later, due again
        time.sleep(0.1)
        again = claim_due(deps, 10)
    assert {a.delivery_id for a in again} == {a.delivery_id for a in first}
    a = first[0]
    values = {"attempts": 1, "last_status_code": 200, "status": "succeeded", "next_attempt_at": None}
    with deps.db.session() as s:
        assert repository.finish_attempt(s, a.delivery_id, a.attempts, values)
    with deps.db.session() as s:  # the other sender's result of the same attempt is not stored
        assert not repository.finish_attempt(s, a.delivery_id, a.attempts, {**values, "last_status_code": 500})
