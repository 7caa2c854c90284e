"""The event bus against a real broker and a real database: envelopes, consumer groups,
idempotent handling of redelivered events."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
from sqlalchemy import func, select

from coachforge.trainer.v1 import trainer_pb2
from coachforge_shared.db import Database
from coachforge_shared.events import EventConsumer, EventPublisher, decode, encode, ensure_topics
from coachforge_shared.models import ProcessedEvent


def test_envelope_round_trip() -> None:
    env = encode("train.requested", trainer_pb2.TrainRequested(job_id="ftjob-1"), "acme")
    decoded, payload = decode(env.SerializeToString())
    assert decoded.event_id == env.event_id and decoded.tenant_id == "acme"
    assert decoded.type == "train.requested"
    assert isinstance(payload, trainer_pb2.TrainRequested) and payload.job_id == "ftjob-1"
    assert decoded.occurred_at.seconds > 0


def test_payload_must_match_the_event_type() -> None:
    with pytest.raises(TypeError):
        encode("job.succeeded", trainer_pb2.TrainRequested(job_id="x"), "acme")


def test_redelivered_event_has_no_second_effect(db: Database) -> None:
    calls: list[str] = []

    def handler(s: Any, env: Any, payload: Any) -> None:
        calls.append(payload.job_id)

    consumer = EventConsumer.__new__(EventConsumer)  # handle() needs no broker connection
    consumer.group, consumer.handler, consumer.db = "g1", handler, db
    raw = encode("train.requested", trainer_pb2.TrainRequested(job_id="ftjob-7"), "acme").SerializeToString()
    assert consumer.handle(raw)[0] == "handled"
    assert consumer.handle(raw)[0] == "duplicate"
    assert calls == ["ftjob-7"]
    other = EventConsumer.__new__(EventConsumer)
    other.group, other.handler, other.db = "g2", handler, db
    assert other.handle(raw)[0] == "handled", "another consumer group handles the event on its own"
    assert calls == ["ftjob-7", "ftjob-7"]


def test_failed_handler_leaves_no_trace_so_the_event_can_be_retried(db: Database) -> None:
    def boom(s: Any, env: Any, payload: Any) -> None:
        raise RuntimeError("boom")

    consumer = EventConsumer.__new__(EventConsumer)
    consumer.group, consumer.handler, consumer.db = "g", boom, db
    raw = encode("train.requested", trainer_pb2.TrainRequested(job_id="j"), "acme").SerializeToString()
    assert consumer.handle(raw)[0] == "failed"
    with db.session() as s:
        assert s.scalar(select(func.count()).select_from(ProcessedEvent)) == 0


def test_publish_and_consume_through_the_broker(broker: str, db: Database) -> None:
    ensure_topics(broker)
    received: list[tuple[str, str]] = []
    done = threading.Event()

    def handler(s: Any, env: Any, payload: Any) -> None:
        received.append((env.tenant_id, payload.job_id))
        if len(received) == 3:
            done.set()

    consumer = EventConsumer(broker, "test-group", ["train.requested"], handler, db)
    consumer.start()
    publisher = EventPublisher(broker, "test")
    try:
        for i in range(3):
            publisher.publish("train.requested", trainer_pb2.TrainRequested(job_id=f"job-{i}"), "acme")
        assert done.wait(60), f"only {received} arrived"
    finally:
        consumer.stop()
        publisher.close()
    assert sorted(received) == [("acme", "job-0"), ("acme", "job-1"), ("acme", "job-2")]
    with db.session() as s:
        assert s.scalar(select(func.count()).select_from(ProcessedEvent)) == 3

    # A new member of the same group starts from the committed offsets: nothing is handled twice.
    again: list[str] = []
    consumer2 = EventConsumer(broker, "test-group", ["train.requested"], lambda s, e, p: again.append(p.job_id), db)
    consumer2.start()
    time.sleep(8)
    consumer2.stop()
    assert again == []
