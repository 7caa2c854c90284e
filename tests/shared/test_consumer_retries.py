"""EventConsumer retries and dead letters against a real broker and a real database: a failing
handler is tried again in place (nothing after the record is handled before it, its offset is not
committed until it is done); after the last attempt the record goes to the dead-letter topic with
its error and the consumer goes on; an undecodable record goes there at once; ``coachforge events``
lists dead letters and replays them to a handler that works now, which handles each once."""

from __future__ import annotations

import json
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from kafka import KafkaAdminClient, KafkaProducer
from kafka.structs import TopicPartition
from prometheus_client import REGISTRY
from sqlalchemy import func, select, text

from coachforge.common.v1.envelope_pb2 import Envelope
from coachforge.trainer.v1 import trainer_pb2
from coachforge_launcher.cli import main
from coachforge_shared import dead_letters
from coachforge_shared.db import Database
from coachforge_shared.events import RETRY_ATTEMPTS, EventConsumer, encode, ensure_topics
from coachforge_shared.models import ProcessedEvent


@pytest.fixture
def topic(broker: str) -> str:
    """A topic of the test's own (one partition: the records' order is the topic's)."""
    ensure_topics(broker)  # the event types' topics, the dead-letter topic among them
    name = f"test-retries-{secrets.token_hex(4)}"
    ensure_topics(broker, [name], partitions=1)
    return name


@pytest.fixture
def group() -> str:
    return f"retries-{secrets.token_hex(4)}"


@pytest.fixture
def consumers() -> Iterator[list[EventConsumer]]:
    """Consumers to stop at the end of the test."""
    started: list[EventConsumer] = []
    yield started
    for consumer in started:
        consumer.stop()


def _event(job_id: str) -> Envelope:
    return encode("train.requested", trainer_pb2.TrainRequested(job_id=job_id), "acme")


def _send(broker: str, topic: str, *values: bytes) -> None:
    producer = KafkaProducer(bootstrap_servers=broker, acks="all")
    try:
        for value in values:
            producer.send(topic, value=value, key=b"acme").get(timeout=30)
    finally:
        producer.close()


def _until(condition: Callable[[], bool], what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"still waiting for {what}"
        time.sleep(0.05)


def _committed(broker: str, group: str, topic: str) -> int | None:
    """The group's committed offset of the topic's partition (None: nothing committed)."""
    admin = KafkaAdminClient(bootstrap_servers=broker)
    tp = TopicPartition(topic, 0)
    try:
        offsets = admin.list_group_offsets({group: [tp]})[group]
    finally:
        admin.close()
    meta = offsets.get(tp)
    return None if meta is None or meta.offset < 0 else int(meta.offset)


def _processed(db: Database, group: str) -> int:
    with db.session() as s:
        return int(s.scalar(select(func.count()).select_from(ProcessedEvent).where(ProcessedEvent.consumer == group))
                   or 0)


def _dead_lettered(group: str, event_type: str) -> float:
    return REGISTRY.get_sample_value("coachforge_events_dead_lettered_total",
                                     {"consumer": group, "type": event_type}) or 0.0


def _fail_on(s: Any) -> None:
    """A real database error inside the handler's transaction (rolled back with it)."""
    s.execute(text("SELECT * FROM no_such_table"))


def test_a_handler_that_fails_twice_is_retried_in_place_then_handled_once(
        broker: str, db: Database, topic: str, group: str, consumers: list[EventConsumer]) -> None:
    calls: list[str] = []

    def handler(s: Any, env: Any, payload: Any) -> None:
        calls.append(payload.job_id)
        if payload.job_id == "flaky" and calls.count("flaky") <= 2:
            _fail_on(s)

    consumer = EventConsumer(broker, group, [topic], handler, db)
    consumers.append(consumer)
    consumer.start()
    _send(broker, topic, _event("flaky").SerializeToString(), _event("after").SerializeToString())
    _until(lambda: "after" in calls, "the record after the flaky one")
    _until(lambda: _committed(broker, group, topic) == 2, "the offset after both records")

    # Tried three times, in place: the next record was handled only after it.
    assert calls == ["flaky", "flaky", "flaky", "after"]
    assert _processed(db, group) == 2  # the failed attempts left no trace
    assert dead_letters.read(broker, consumer=group) == []
    # The group's series exists from the start (at 0), so that increase() sees its first dead letter.
    assert REGISTRY.get_sample_value("coachforge_events_dead_lettered_total",
                                     {"consumer": group, "type": "unknown"}) == 0.0  # a topic that is no type
    assert consumer.running


def test_a_record_that_keeps_failing_is_dead_lettered_and_later_records_are_handled(
        broker: str, db: Database, topic: str, group: str, consumers: list[EventConsumer]) -> None:
    calls: list[str] = []

    def handler(s: Any, env: Any, payload: Any) -> None:
        calls.append(payload.job_id)
        if payload.job_id == "poison":
            _fail_on(s)

    poison = _event("poison")
    consumer = EventConsumer(broker, group, [topic], handler, db)
    consumers.append(consumer)
    consumer.start()
    _send(broker, topic, poison.SerializeToString(), _event("good-1").SerializeToString(),
          _event("good-2").SerializeToString())
    _until(lambda: "good-2" in calls, "the records after the poison one")
    _until(lambda: _committed(broker, group, topic) == 3, "the offset after the three records")

    assert calls == ["poison"] * RETRY_ATTEMPTS + ["good-1", "good-2"]
    (letter,) = dead_letters.read(broker, consumer=group)
    dl = letter.letter
    assert (dl.consumer, dl.topic, dl.partition, dl.offset) == (group, topic, 0, 0)
    assert (dl.event_id, dl.event_type, dl.attempts) == (poison.event_id, "train.requested", RETRY_ATTEMPTS)
    assert dl.error_type == "OperationalError" and "no_such_table" in dl.error_message
    assert dl.record == poison.SerializeToString() and dl.key == b"acme"
    assert dl.failed_at.seconds > 0
    assert _processed(db, group) == 2
    assert _dead_lettered(group, "train.requested") == 1


def test_an_undecodable_record_is_dead_lettered_at_once(
        broker: str, db: Database, topic: str, group: str, consumers: list[EventConsumer]) -> None:
    calls: list[str] = []
    consumer = EventConsumer(broker, group, [topic], lambda s, env, payload: calls.append(payload.job_id), db)
    consumers.append(consumer)
    consumer.start()
    unknown = Envelope(event_id="evt-unknown-type", type="no.such.type", tenant_id="acme")
    _send(broker, topic, b"\xff\xfe not an envelope", unknown.SerializeToString(), _event("good").SerializeToString())
    _until(lambda: "good" in calls, "the record after the undecodable ones")

    assert calls == ["good"]  # no handler saw the others
    garbage, typeless = dead_letters.read(broker, consumer=group)
    assert garbage.letter.record == b"\xff\xfe not an envelope" and garbage.letter.attempts == 0
    assert (garbage.letter.event_id, garbage.letter.event_type, garbage.letter.offset) == ("", "", 0)
    assert garbage.letter.error_type == "DecodeError"
    assert (typeless.letter.event_id, typeless.letter.event_type, typeless.letter.offset) == (
        "evt-unknown-type", "no.such.type", 1)
    assert typeless.letter.attempts == 0 and typeless.letter.error_type == "KeyError"
    assert _dead_lettered(group, "unknown") == 2


def test_the_cli_lists_dead_letters_and_replays_them_to_a_handler_that_works_now(
        broker: str, db: Database, topic: str, group: str, consumers: list[EventConsumer],
        capsys: pytest.CaptureFixture[str]) -> None:
    calls: list[str] = []
    fixed = threading.Event()

    def handler(s: Any, env: Any, payload: Any) -> None:
        calls.append(payload.job_id)
        if payload.job_id == "poison" and not fixed.is_set():
            raise RuntimeError("registry unavailable")

    poison = _event("poison")
    consumer = EventConsumer(broker, group, [topic], handler, db)
    consumers.append(consumer)
    consumer.start()
    _send(broker, topic, poison.SerializeToString(), _event("good").SerializeToString())
    _until(lambda: "good" in calls, "the record after the poison one")
    _until(lambda: bool(dead_letters.read(broker, consumer=group)), "the dead letter")

    capsys.readouterr()  # what was logged so far
    assert main(["events", "dead-letters", "--bootstrap", broker, "--consumer", group, "--json"]) == 0
    (listed,) = json.loads(capsys.readouterr().out)
    assert (listed["consumer"], listed["event_type"], listed["event_id"], listed["attempts"]) == (
        group, "train.requested", poison.event_id, RETRY_ATTEMPTS)
    assert (listed["error_type"], listed["error_message"]) == ("RuntimeError", "registry unavailable")
    assert (listed["topic"], listed["partition"], listed["offset"]) == (topic, 0, 0)
    assert listed["failed_at"].endswith("Z")
    assert main(["events", "dead-letters", "--bootstrap", broker, "--consumer", group]) == 0
    (line,) = capsys.readouterr().out.splitlines()
    assert group in line and "train.requested" in line and poison.event_id in line
    assert "RuntimeError: registry unavailable" in line and f"{RETRY_ATTEMPTS} attempt(s)" in line
    assert main(["events", "dead-letters", "--bootstrap", broker, "--consumer", group, "--type", "job.failed"]) == 0
    assert capsys.readouterr().out == ""

    assert main(["events", "replay", "--bootstrap", broker, "--consumer", group]) == 2  # which ones?
    assert main(["events", "replay", "--bootstrap", broker, "--consumer", group, "--event-id", "evt-nope"]) == 1
    capsys.readouterr()

    fixed.set()
    assert main(["events", "replay", "--bootstrap", broker, "--consumer", group, "--event-id",
                 poison.event_id]) == 0
    assert f"replayed {poison.event_id} to {topic}" in capsys.readouterr().out
    _until(lambda: calls.count("poison") == RETRY_ATTEMPTS + 1, "the replayed event")

    # Replayed again (everything of the group): the group handled it already, so it is skipped.
    assert main(["events", "replay", "--bootstrap", broker, "--consumer", group, "--all"]) == 0
    _send(broker, topic, _event("sentinel").SerializeToString())  # after the replay on the same partition
    _until(lambda: "sentinel" in calls, "the record sent after the second replay")
    assert calls.count("poison") == RETRY_ATTEMPTS + 1
    with db.session() as s:
        assert s.scalar(select(func.count()).select_from(ProcessedEvent).where(
            ProcessedEvent.consumer == group, ProcessedEvent.event_id == poison.event_id)) == 1
    assert len(dead_letters.read(broker, consumer=group)) == 1  # the topic is a log: still listed
