"""The event bus: kafka-python producer/consumers carrying protobuf payloads in one envelope.

* Topics are named after event types (``train.requested``, ``job.succeeded``, …).
* Consumers join a consumer group and commit offsets only after handling.
* Handling is idempotent: the handler runs in the same database transaction as the insert
  of a ``processed_events`` row for (group, event_id), so a redelivered event is skipped.
* A record whose handler fails is retried in place with backoff; after the last attempt (at once
  when it cannot be decoded, or its handler found it invalid: :class:`InvalidEvent`) it goes to the
  ``dead-letter`` topic, and the consumer moves on.
* Every client connects with the platform's Kafka security settings (:func:`kafka_options`:
  TLS, SASL).
"""

from __future__ import annotations

import hashlib
import queue
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

from google.protobuf import any_pb2, timestamp_pb2
from google.protobuf.message import Message
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer
from kafka.admin import NewTopic
from kafka.errors import KafkaError, TopicAlreadyExistsError
from kafka.structs import OffsetAndMetadata, TopicPartition
from sqlalchemy import insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session
from tenacity import retry, retry_if_exception_type, stop_after_delay, wait_exponential

from coachforge.common.v1.dead_letter_pb2 import DeadLetter
from coachforge.common.v1.envelope_pb2 import Envelope
from coachforge.dataset.v1 import dataset_pb2
from coachforge.evaluator.v1 import evaluator_pb2
from coachforge.inference.v1 import inference_pb2
from coachforge.registry.v1 import registry_pb2
from coachforge.trainer.v1 import trainer_pb2
from coachforge_shared import outbox
from coachforge_shared.db import Database, is_outage
from coachforge_shared.ids import new_id, utcnow
from coachforge_shared.logging import get_logger
from coachforge_shared.metrics import EVENTS_CONSUMED, EVENTS_DEAD_LETTERED, EVENTS_PUBLISHED, OUTBOX_SPILLED
from coachforge_shared.models import ProcessedEvent
from coachforge_shared.settings import platform_settings

log = get_logger("coachforge.events")


def kafka_options() -> dict[str, Any]:
    """The security options (``security_protocol``, SASL, TLS CA) every kafka-python client of this
    process is made with: the platform settings' (``COACHFORGE_KAFKA_*``)."""
    return platform_settings().kafka_options()


class InvalidEvent(ValueError):
    """Raised by a handler for an event that can never be handled (it breaks a rule the consumer
    checks, e.g. an artifact outside the artifact store, a negative count): dead-lettered at once,
    with this message, instead of being retried."""

DEAD_LETTER_TOPIC = "dead-letter"
"""Where consumers put the records they gave up on (see :class:`EventConsumer`)."""

#: Every event type and the protobuf message of its payload.
EVENT_TYPES: dict[str, type[Message]] = {
    "file.uploaded": dataset_pb2.FileUploaded,
    "train.requested": trainer_pb2.TrainRequested,
    "job.progress": trainer_pb2.JobProgress,
    "job.succeeded": trainer_pb2.JobSucceeded,
    "job.failed": trainer_pb2.JobFinished,
    "job.cancelled": trainer_pb2.JobFinished,
    "model.registered": registry_pb2.ModelRegistered,
    "model.activated": registry_pb2.AvatarChanged,
    "model.rolled_back": registry_pb2.AvatarChanged,
    "model.avatar_updated": registry_pb2.AvatarChanged,
    "model.deleted": registry_pb2.ModelDeleted,
    "model.rejected": registry_pb2.ModelRejected,
    "model.export.succeeded": registry_pb2.ModelExport,
    "model.export.failed": registry_pb2.ModelExport,
    "retrain.promoted": registry_pb2.RetrainFinished,
    "retrain.rejected": registry_pb2.RetrainFinished,
    "retrain.failed": registry_pb2.RetrainFinished,
    "retrain.canceled": registry_pb2.RetrainFinished,
    "usage.recorded": inference_pb2.UsageRecorded,
    "completion.stored": inference_pb2.CompletionStored,
    "eval.run.requested": evaluator_pb2.EvalRunRequested,
    "eval.run.succeeded": evaluator_pb2.EvalRunFinished,
    "eval.run.failed": evaluator_pb2.EvalRunFinished,
    "eval.run.canceled": evaluator_pb2.EvalRunFinished,
    DEAD_LETTER_TOPIC: DeadLetter,
}

_connect_retry = retry(
    retry=retry_if_exception_type((KafkaError, OSError)),
    wait=wait_exponential(multiplier=0.2, max=2),
    stop=stop_after_delay(60),
    reraise=True,
)


def encode(event_type: str, payload: Message, tenant_id: str, event_id: str | None = None) -> Envelope:
    """``payload`` in an envelope; with a new event id unless ``event_id`` gives one (a caller that
    may publish the same fact twice, such as one request's usage, gives the same id each time, so
    that consumers count it once)."""
    if not isinstance(payload, EVENT_TYPES[event_type]):
        raise TypeError(f"{event_type} carries {EVENT_TYPES[event_type].__name__}, not {type(payload).__name__}")
    packed = any_pb2.Any()
    packed.Pack(payload)
    ts = timestamp_pb2.Timestamp()
    ts.FromDatetime(utcnow())
    return Envelope(event_id=event_id or new_id("evt"), type=event_type, occurred_at=ts, tenant_id=tenant_id,
                    payload=packed)


def decode(raw: bytes) -> tuple[Envelope, Message]:
    env = Envelope.FromString(raw)
    payload = EVENT_TYPES[env.type]()
    if not env.payload.Unpack(payload):
        raise ValueError(f"event {env.event_id}: payload is {env.payload.type_url}, expected {env.type}")
    return env, payload


@_connect_retry
def ensure_topics(bootstrap: str, topics: Iterable[str] = EVENT_TYPES, partitions: int = 3) -> None:
    """Create the topics that do not exist yet (idempotent)."""
    admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="coachforge-admin", **kafka_options())
    try:
        existing = set(admin.list_topics())
        missing = [NewTopic(t, num_partitions=partitions, replication_factor=1) for t in topics if t not in existing]
        if missing:
            try:
                admin.create_topics(missing)
            except TopicAlreadyExistsError:
                pass
    finally:
        admin.close()


def publish_in(session: Session, event_type: str, payload: Message, tenant_id: str, key: str | None = None,
               event_id: str | None = None) -> str:
    """Write one event into ``session``'s transaction (the outbox); returns its event id. A relay
    sends it, with that id, once the transaction committed, and never if it rolls back: the caller
    never waits for the broker, and a broker away fails nothing. ``event_id``: see :func:`encode`."""
    env = encode(event_type, payload, tenant_id, event_id)
    outbox.add(session, env, key or tenant_id)
    return env.event_id


OUTBOX_EVENTS = 10_000
"""Events not waited for that a publisher holds before its thread has sent them (more are not
delivered instead of making the caller wait: the broker is away; see ``EventPublisher._undelivered``)."""

SPILL_BATCH = 500
"""Undelivered events a publisher writes to the outbox table per transaction."""


@dataclass(slots=True)
class _Outgoing:
    type: str
    env: Envelope
    key: bytes
    sent: Future[Any] | None
    """For a caller that waits: the producer's future, once the publisher's thread sent the event."""


class EventPublisher:
    """Publishes events; safe to share between threads. Its own thread hands every event to the
    producer, in the order they were published: a caller that does not wait (hot paths such as
    usage records and stored completions) pays for encoding its event only, not for kafka-python's
    send (partitioning, batching and record encoding in Python, a few hundred microseconds).

    An event that reports a database change is written with :meth:`publish_in` into the change's
    transaction (the outbox, :mod:`coachforge_shared.outbox`) and sent by the process's relay. With a
    database (``db``), an event not waited for that the producer cannot deliver (it gave up after
    ``delivery_timeout_ms``, or too many wait) is written to the outbox by a thread of the
    publisher's own, and the relay sends it, same event id, when the broker is back: a usage record
    survives a broker outage of any length without slowing the request that made it."""

    def __init__(self, bootstrap: str, client_id: str, *, db: Database | None = None,
                 delivery_timeout_ms: int = 120_000) -> None:
        self.delivery_timeout_s = delivery_timeout_ms / 1000
        """How long the producer tries before it reports an event as not delivered."""
        self._producer = self._connect(bootstrap, client_id, delivery_timeout_ms)
        self._outbox: queue.Queue[_Outgoing | None] = queue.Queue(maxsize=OUTBOX_EVENTS)
        self._sender = threading.Thread(target=self._send_all, name=f"events-{client_id}", daemon=True)
        self._sender.start()
        self._db = db
        # Unbounded, so that the threads that learn of a failure (the sender, kafka-python's I/O
        # thread, a caller on an event loop) only hand the event over; the spill thread writes it.
        self._spilled: queue.SimpleQueue[tuple[_Outgoing, str] | None] = queue.SimpleQueue()
        self._spiller: threading.Thread | None = None
        if db is not None:
            self._spiller = threading.Thread(target=self._spill_all, name=f"events-spill-{client_id}", daemon=True)
            self._spiller.start()

    @staticmethod
    @_connect_retry
    def _connect(bootstrap: str, client_id: str, delivery_timeout_ms: int) -> KafkaProducer:
        # kafka-python wants delivery_timeout_ms >= request_timeout_ms + linger_ms; a send that waits
        # for topic metadata (max_block_ms) should not outlast a delivery either. Not idempotent: an
        # idempotent kafka-python producer whose producer-id request times out (the broker is away
        # when it first sends) turns fatal and fails every later send until the process restarts.
        # Consumers skip duplicates by event id anyway; one request in flight keeps the order.
        return KafkaProducer(bootstrap_servers=bootstrap, client_id=client_id, acks="all", linger_ms=0,
                             **kafka_options(),
                             delivery_timeout_ms=delivery_timeout_ms,
                             request_timeout_ms=min(30_000, delivery_timeout_ms),
                             max_block_ms=min(60_000, delivery_timeout_ms),
                             enable_idempotence=False, max_in_flight_requests_per_connection=1)

    def publish_in(self, session: Session, event_type: str, payload: Message, tenant_id: str,
                   key: str | None = None, event_id: str | None = None) -> str:
        """:func:`publish_in`: the event is sent by the relay once ``session`` committed."""
        return publish_in(session, event_type, payload, tenant_id, key, event_id)

    def deliver(self, env: Envelope, key: bytes) -> Future[Any]:
        """Hand an encoded event to the publisher's thread, after those handed before it. The future
        holds what the producer's send returned (a future of the broker's acknowledgement) or raised."""
        outgoing = _Outgoing(env.type, env, key, Future())
        self._outbox.put(outgoing)
        assert outgoing.sent is not None
        return outgoing.sent

    def publish(self, event_type: str, payload: Message, tenant_id: str, key: str | None = None, *,
                wait: bool = True, event_id: str | None = None) -> str:
        """Send one event; returns its event id. With ``wait`` (the default) the broker's
        acknowledgement is awaited and a failure raises; without it (hot paths such as usage
        records) a failure is logged when the producer learns of it. ``event_id``: see :func:`encode`."""
        env = encode(event_type, payload, tenant_id, event_id)
        outgoing = _Outgoing(event_type, env, (key or tenant_id).encode(), Future() if wait else None)
        if not wait:
            try:
                self._outbox.put_nowait(outgoing)
            except queue.Full:
                self._undelivered(outgoing, f"{OUTBOX_EVENTS} events wait to be sent")
            return env.event_id
        self._outbox.put(outgoing)
        assert outgoing.sent is not None
        outgoing.sent.result().get(timeout=30)  # what send() raised, else the broker's acknowledgement
        self._published(outgoing)
        return env.event_id

    def _send_all(self) -> None:
        """The publisher's thread: hand each event to the producer, until :meth:`close`."""
        while (outgoing := self._outbox.get()) is not None:
            try:
                future = self._producer.send(outgoing.type, value=outgoing.env.SerializeToString(), key=outgoing.key)
            except Exception as err:
                if outgoing.sent is not None:
                    outgoing.sent.set_exception(err)
                else:
                    self._undelivered(outgoing, f"{type(err).__name__}: {err}")
                continue
            if outgoing.sent is not None:
                outgoing.sent.set_result(future)
                continue
            future.add_errback(lambda err, o=outgoing: self._undelivered(o, f"{type(err).__name__}: {err}"))
            self._published(outgoing)

    def _undelivered(self, outgoing: _Outgoing, error: str) -> None:
        """An event not waited for that the producer could not deliver. With a database it goes to
        the spill thread, which keeps it in the outbox (called from whichever thread learnt of the
        failure, perhaps a caller's event loop or kafka-python's I/O thread: neither may wait for
        the database); without one it is lost, and logged."""
        if self._spiller is None:
            log.error("event not delivered", type=outgoing.type, event_id=outgoing.env.event_id, error=error)
            return
        self._spilled.put((outgoing, error))

    def _spill_all(self) -> None:
        """The spill thread: write undelivered events to the outbox, those waiting together in one
        transaction, until :meth:`close`."""
        closing = False
        while not closing:
            batch: list[tuple[_Outgoing, str]] = []
            item = self._spilled.get()
            while True:
                if item is None:
                    closing = True
                    break
                batch.append(item)
                if len(batch) == SPILL_BATCH or self._spilled.empty():
                    break
                item = self._spilled.get()
            if batch:
                self._spill(batch)

    def _spill(self, batch: list[tuple[_Outgoing, str]]) -> None:
        assert self._db is not None
        try:
            with self._db.session() as s:
                for outgoing, error in batch:
                    outbox.add(s, outgoing.env, outgoing.key.decode(), attempts=1, last_error=error)
        except Exception as err:
            for outgoing, error in batch:
                log.error("event not delivered", type=outgoing.type, event_id=outgoing.env.event_id, error=error,
                          outbox_error=str(err))
            return
        for outgoing, error in batch:
            OUTBOX_SPILLED.labels(outgoing.type).inc()
            log.warning("event kept in the outbox", type=outgoing.type, event_id=outgoing.env.event_id,
                        error=error)

    @staticmethod
    def _published(outgoing: _Outgoing) -> None:
        EVENTS_PUBLISHED.labels(outgoing.type).inc()
        log.debug("event published", type=outgoing.type, event_id=outgoing.env.event_id,
                  tenant=outgoing.env.tenant_id)

    def healthy(self) -> bool:
        """Whether the broker answers a metadata request."""
        try:
            return self._producer.partitions_for("train.requested") is not None
        except KafkaError:
            return False

    def close(self) -> None:
        """Send what is waiting to be sent, then close the producer (which delivers it); with a
        database, what it could not deliver is kept in the outbox."""
        self._outbox.put(None)
        self._sender.join(timeout=30)
        try:
            self._producer.close(timeout=5)
        finally:
            if self._spiller is not None:
                self._spilled.put(None)
                self._spiller.join(timeout=30)


#: A handler runs inside the idempotency transaction. It may return a follow-up callable,
#: run after the transaction committed (for long work that must not hold a transaction).
Handler = Callable[[Session, Envelope, Any], Callable[[], None] | None]


RETRY_ATTEMPTS = 5
"""Times a consumer calls the handler of one record before it gives up and dead-letters it."""
RETRY_BASE_S = 0.2
RETRY_MAX_S = 5.0
"""The wait before the next attempt at a failed record: ``RETRY_BASE_S``, doubling up to
``RETRY_MAX_S`` (five attempts: 0.2 + 0.4 + 0.8 + 1.6 s). Long enough to ride out a database
failover or a lock timeout, short enough that one bad record does not hold its partition for long."""
MAX_ERROR_CHARS = 2000
"""A dead letter keeps this much of the error's message."""


@dataclass(slots=True)
class _Retry:
    """The record of a partition that failed and waits for its next attempt (the partition is
    paused and its position set back to the record until ``due``, a ``time.monotonic()``)."""

    offset: int
    attempts: int
    due: float


class EventConsumer:
    """A consumer-group member that hands each event to ``handler`` exactly once per group.

    A record whose handler raises is tried again in place, up to ``max_attempts`` times with
    exponential backoff, and its offset is not committed meanwhile. The consumer does not sleep
    between attempts: it sets the partition's position back to the record, pauses the partition
    until the next attempt is due and keeps polling (its other partitions go on; the poll loop stays
    well within ``max_poll_interval_ms``, so the group does not evict it). After the last attempt,
    or at once for a record that cannot be decoded, the record is published to the
    ``dead-letter`` topic (:class:`DeadLetter`, with the error) and the offset moves on:
    ``coachforge events dead-letters`` lists them, ``coachforge events replay`` sends them again.
    A record whose handler failed because the database is away is no attempt: it waits, retried
    every ``retry_max_s``, until the database is back, and is never dead-lettered for that."""

    def __init__(
        self,
        bootstrap: str,
        group: str,
        topics: list[str],
        handler: Handler,
        db: Database,
        *,
        max_poll_interval_ms: int = 300_000,
        max_poll_records: int = 50,
        max_attempts: int = RETRY_ATTEMPTS,
        retry_base_s: float = RETRY_BASE_S,
        retry_max_s: float = RETRY_MAX_S,
    ) -> None:
        if max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        self.group = group
        self.topics = topics
        self.handler = handler
        self.db = db
        self.max_attempts = max_attempts
        self.retry_base_s = retry_base_s
        self.retry_max_s = retry_max_s
        self._bootstrap = bootstrap
        self._retries: dict[TopicPartition, _Retry] = {}
        self._producer: KafkaProducer | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        for topic in topics:  # the series exist from the start, so that increase() sees the first one
            EVENTS_DEAD_LETTERED.labels(group, topic if topic in EVENT_TYPES else "unknown")
        self._consumer = self._connect(bootstrap, group, topics, max_poll_interval_ms, max_poll_records)

    @staticmethod
    @_connect_retry
    def _connect(bootstrap: str, group: str, topics: list[str], max_poll_interval_ms: int,
                 max_poll_records: int) -> KafkaConsumer:
        consumer = KafkaConsumer(
            bootstrap_servers=bootstrap,
            group_id=group,
            client_id=group,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            session_timeout_ms=6000,
            heartbeat_interval_ms=1000,
            max_poll_interval_ms=max_poll_interval_ms,
            max_poll_records=max_poll_records,
            **kafka_options(),
        )
        consumer.subscribe(topics)
        return consumer

    def handle(self, raw: bytes) -> tuple[str, Callable[[], None] | None]:
        """One attempt at one raw record, in its transaction (retries are the run loop's).

        Returns the outcome (handled, duplicate, failed) and the handler's follow-up, if any."""
        outcome, follow_up, _, _ = self._attempt(raw)
        return ("failed" if outcome == "undecodable" else outcome), follow_up

    def _attempt(self, raw: bytes) -> tuple[str, Callable[[], None] | None, BaseException | None,
                                            Envelope | None]:
        """One attempt: the outcome (handled, duplicate, failed, undecodable), the follow-up, the
        error of a failed or undecodable record and the envelope when it could be read."""
        try:
            env, payload = decode(raw)
        except Exception as err:
            log.error("undecodable event", consumer=self.group, error=f"{type(err).__name__}: {err}")
            EVENTS_CONSUMED.labels(self.group, "unknown", "failed").inc()
            return "undecodable", None, err, None
        follow_up = None
        try:
            with self.db.session() as s:
                # The unique (consumer, event_id) constraint refuses a redelivered event.
                s.execute(insert(ProcessedEvent), {"consumer": self.group, "event_id": env.event_id,
                                                   "event_type": env.type})
                follow_up = self.handler(s, env, payload)
        except IntegrityError:
            EVENTS_CONSUMED.labels(self.group, env.type, "duplicate").inc()
            return "duplicate", None, None, env
        except Exception as err:
            if is_outage(err):  # not the event's fault: one line, not a traceback per attempt
                log.warning("event handler: database unavailable", consumer=self.group, type=env.type,
                            event_id=env.event_id)
            elif isinstance(err, InvalidEvent):
                log.warning("invalid event refused", consumer=self.group, type=env.type, event_id=env.event_id,
                            error=str(err))
            else:
                log.exception("event handler failed", consumer=self.group, type=env.type, event_id=env.event_id)
            EVENTS_CONSUMED.labels(self.group, env.type, "failed").inc()
            return "failed", None, err, env
        EVENTS_CONSUMED.labels(self.group, env.type, "handled").inc()
        return "handled", follow_up, None, env

    def _process(self, record: Any) -> tuple[bool, Callable[[], None] | None]:
        """Handle one record, retrying it on failure. Returns whether the record is done with (its
        offset may be committed: handled, duplicate or dead-lettered) and the handler's follow-up.
        A record that is not done waits for its next attempt: its partition was set back to it and
        paused, and the caller leaves the partition's other records for later polls."""
        tp = TopicPartition(record.topic, record.partition)
        outcome, follow_up, err, env = self._attempt(record.value)
        if outcome in ("handled", "duplicate"):
            self._retries.pop(tp, None)
            return True, follow_up
        assert err is not None
        if outcome == "undecodable":  # no attempt can succeed
            attempts = 0
        elif isinstance(err, InvalidEvent):  # nor for an event its handler found invalid
            attempts = 1
        elif is_outage(err):
            # The database is away: no fault of the event, so it is not an attempt; the record waits
            # (retried every retry_max_s) until the database is back, and is never dead-lettered for it.
            earlier = self._retries.get(tp)
            attempts = earlier.attempts if earlier is not None and earlier.offset == record.offset else 0
            self._retry_later(tp, record.offset, attempts, self.retry_max_s)
            return False, None
        else:
            earlier = self._retries.get(tp)
            attempts = earlier.attempts + 1 if earlier is not None and earlier.offset == record.offset else 1
            if attempts < self.max_attempts:
                self._retry_later(tp, record.offset, attempts)
                return False, None
        try:
            self._dead_letter(record, env, err, attempts)
        except Exception:  # the broker is away: keep the record and try it (and this) again later
            log.exception("dead letter not published", consumer=self.group, topic=record.topic,
                          partition=record.partition, offset=record.offset)
            self._retry_later(tp, record.offset, attempts, self.retry_max_s)
            return False, None
        self._retries.pop(tp, None)
        return True, None

    def _retry_later(self, tp: TopicPartition, offset: int, attempts: int, delay: float | None = None) -> None:
        if delay is None:
            delay = min(self.retry_base_s * 2 ** (attempts - 1), self.retry_max_s)
        self._retries[tp] = _Retry(offset, attempts, time.monotonic() + delay)
        self._consumer.seek(tp, offset)
        self._consumer.pause(tp)
        log.warning("event will be retried", consumer=self.group, topic=tp.topic, partition=tp.partition,
                    offset=offset, attempts=attempts, retry_in_s=round(delay, 3))

    def _resume_due(self) -> float:
        """Resume the paused partitions whose next attempt is due; returns the seconds until the
        next one is (at most 0.5: the poll timeout)."""
        now, wait = time.monotonic(), 0.5
        assigned = self._consumer.assignment()
        for tp, pending in list(self._retries.items()):
            if tp not in assigned:  # revoked: whoever owns it now starts from the committed offset
                del self._retries[tp]
            elif pending.due <= now:
                self._consumer.resume(tp)
            else:
                wait = min(wait, pending.due - now)
        return max(wait, 0.0)

    def _dead_letter(self, record: Any, env: Envelope | None, err: BaseException, attempts: int) -> None:
        """Publish ``record`` to the dead-letter topic (waiting for the broker's acknowledgement).
        Its event id is derived from (group, topic, partition, offset): a record dead-lettered twice
        (a crash before the commit) is one dead letter to whoever reads them."""
        if env is None:
            env = _peek(record.value)
        letter = DeadLetter(
            record=record.value, key=record.key or b"", topic=record.topic, partition=record.partition,
            offset=record.offset, consumer=self.group, event_id=env.event_id if env else "",
            event_type=env.type if env else "", error_type=type(err).__name__,
            error_message=str(err)[:MAX_ERROR_CHARS], attempts=attempts)
        letter.failed_at.FromDatetime(utcnow())
        digest = hashlib.sha256(f"{self.group}\0{record.topic}\0{record.partition}\0{record.offset}".encode())
        out = encode(DEAD_LETTER_TOPIC, letter, env.tenant_id if env else "",
                     event_id=f"dlq-{digest.hexdigest()[:24]}")
        if self._producer is None:
            self._producer = KafkaProducer(bootstrap_servers=self._bootstrap, client_id=f"{self.group}-dead-letters",
                                           acks="all", linger_ms=0, **kafka_options())
        self._producer.send(DEAD_LETTER_TOPIC, value=out.SerializeToString(), key=self.group.encode()).get(timeout=30)
        type_label = env.type if env is not None and env.type in EVENT_TYPES else "unknown"
        EVENTS_DEAD_LETTERED.labels(self.group, type_label).inc()
        log.error("event dead-lettered", consumer=self.group, type=letter.event_type, event_id=letter.event_id,
                  topic=record.topic, partition=record.partition, offset=record.offset, attempts=attempts,
                  error=f"{letter.error_type}: {letter.error_message}")

    def _commit(self, record: Any) -> None:
        tp = TopicPartition(record.topic, record.partition)
        self._consumer.commit({tp: OffsetAndMetadata(record.offset + 1, None, -1)})

    def run(self) -> None:
        """Poll until :meth:`stop`. A record's offset is committed after its transaction committed
        (or it was dead-lettered): before its follow-up runs (the database, not the offset, tracks
        long work), else once for the records of a partition that one poll returned (one broker
        round trip, not one per event; a redelivery after a crash is caught by the idempotency
        table). A record to be retried stops its partition's batch there, uncommitted."""
        log.info("consumer started", consumer=self.group, topics=self.topics)
        try:
            while not self._stop.is_set():
                wait = self._resume_due()
                batches = self._consumer.poll(timeout_ms=max(1, int(wait * 1000)))
                for records in batches.values():
                    uncommitted = None
                    for record in records:
                        done, follow_up = self._process(record)
                        if not done:
                            break
                        uncommitted = record
                        if follow_up is not None:
                            self._commit(record)
                            uncommitted = None
                            try:
                                follow_up()
                            except Exception:  # the event is committed; a failed follow-up must not stop polling
                                log.exception("event follow-up failed", consumer=self.group, topic=record.topic,
                                              partition=record.partition, offset=record.offset)
                        if self._stop.is_set():
                            break
                    if uncommitted is not None:
                        self._commit(uncommitted)
        finally:
            self._consumer.close()
            if self._producer is not None:
                self._producer.close(timeout=5)
            log.info("consumer stopped", consumer=self.group)

    def start(self) -> threading.Thread:
        self._thread = threading.Thread(target=self.run, name=f"consumer-{self.group}", daemon=True)
        self._thread.start()
        return self._thread

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def stop(self, timeout: float = 30) -> None:
        """Stop polling; waits for the event being handled (not for its follow-up) to finish."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)


def _peek(raw: bytes) -> Envelope | None:
    """The envelope of a record that could not be decoded, when at least the envelope can be read
    (an unknown type, a payload of the wrong type), for its event id and type."""
    try:
        return Envelope.FromString(raw)
    except Exception:
        return None
