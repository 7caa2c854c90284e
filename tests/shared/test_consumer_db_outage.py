"""An event consumer lives through a database outage against a real broker and a real PostgreSQL
database made to refuse connections: a record that fails only because the database is away is
retried until it is back (however many times), handled once, never dead-lettered; and a follow-up
that fails does not stop the consumer."""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest
from kafka import KafkaProducer
from prometheus_client import REGISTRY

from coachforge.common.v1.envelope_pb2 import Envelope
from coachforge.trainer.v1 import trainer_pb2
from coachforge_shared import dead_letters, migrate
from coachforge_shared.db import Database
from coachforge_shared.events import RETRY_ATTEMPTS, EventConsumer, encode, ensure_topics

PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"


def _event(job_id: str) -> Envelope:
    return encode("train.requested", trainer_pb2.TrainRequested(job_id=job_id), "acme")


def _send(broker: str, topic: str, *events: Envelope) -> None:
    producer = KafkaProducer(bootstrap_servers=broker, acks="all")
    try:
        for env in events:
            producer.send(topic, value=env.SerializeToString(), key=b"acme").get(timeout=30)
    finally:
        producer.close()


def _until(condition: Callable[[], bool], what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"still waiting for {what}"
        time.sleep(0.05)


def _allow_connections(name: str, allowed: bool) -> None:
    with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
        admin.execute(f'ALTER DATABASE "{name}" WITH ALLOW_CONNECTIONS {"true" if allowed else "false"}')
        if not allowed:
            admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,))


@pytest.fixture
def pg(scratch_postgres: str) -> Iterator[tuple[Database, str]]:
    migrate.upgrade(scratch_postgres)
    db = Database(scratch_postgres)
    name = scratch_postgres.rsplit("/", 1)[1]
    try:
        yield db, name
    finally:
        _allow_connections(name, True)
        db.dispose()


def _failed(group: str) -> float:
    return REGISTRY.get_sample_value("coachforge_events_consumed_total",
                                     {"consumer": group, "type": "train.requested", "outcome": "failed"}) or 0.0


def test_a_record_waits_out_a_database_outage_and_is_handled_once(broker: str, pg: tuple[Database, str]) -> None:
    db, name = pg
    ensure_topics(broker)
    topic, group = f"test-outage-{secrets.token_hex(4)}", f"outage-{secrets.token_hex(4)}"
    ensure_topics(broker, [topic], partitions=1)
    calls: list[str] = []

    def broken_follow_up() -> None:
        raise RuntimeError("the follow-up broke")

    def handler(s: Any, env: Any, payload: Any) -> Callable[[], None] | None:
        calls.append(payload.job_id)
        return broken_follow_up if payload.job_id == "follow-up-fails" else None

    consumer = EventConsumer(broker, group, [topic], handler, db, retry_base_s=0.05, retry_max_s=0.2)
    consumer.start()
    try:
        _send(broker, topic, _event("first"))
        _until(lambda: calls == ["first"], "the first record")

        _allow_connections(name, False)
        _send(broker, topic, _event("during-outage"))
        # Far more failed attempts than a failing handler gets before it is dead-lettered.
        _until(lambda: _failed(group) >= RETRY_ATTEMPTS + 3, "attempts while the database is away")
        assert consumer.running and calls == ["first"]  # the handler never ran: its transaction could not begin

        _allow_connections(name, True)
        _until(lambda: "during-outage" in calls, "the record once the database is back")
        _send(broker, topic, _event("follow-up-fails"), _event("last"))
        _until(lambda: "last" in calls, "the record after a failed follow-up")
        assert calls == ["first", "during-outage", "follow-up-fails", "last"]
        assert consumer.running
        assert dead_letters.read(broker, consumer=group) == []
    finally:
        consumer.stop()
