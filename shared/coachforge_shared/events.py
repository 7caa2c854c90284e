"""The event bus: kafka-python producer/consumers carrying protobuf payloads in one envelope.

* Topics are named after event types (``train.requested``, ``job.succeeded``, …).
* Consumers join a consumer group and commit offsets only after handling.
* Handling is idempotent: the handler runs in the same database transaction as the insert
  of a ``processed_events`` row for (group, event_id), so a redelivered event is skipped.
"""

from __future__ import annotations

import queue
import threading
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

from coachforge.common.v1.envelope_pb2 import Envelope
from coachforge.dataset.v1 import dataset_pb2
from coachforge.evaluator.v1 import evaluator_pb2
from coachforge.inference.v1 import inference_pb2
from coachforge.registry.v1 import registry_pb2
from coachforge.trainer.v1 import trainer_pb2
from coachforge_shared.db import Database
from coachforge_shared.ids import new_id, utcnow
from coachforge_shared.logging import get_logger
from coachforge_shared.metrics import EVENTS_CONSUMED, EVENTS_PUBLISHED
from coachforge_shared.models import ProcessedEvent

log = get_logger("coachforge.events")

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
}

_connect_retry = retry(
    retry=retry_if_exception_type((KafkaError, OSError)),
    wait=wait_exponential(multiplier=0.2, max=2),
    stop=stop_after_delay(60),
    reraise=True,
)


def encode(event_type: str, payload: Message, tenant_id: str) -> Envelope:
    if not isinstance(payload, EVENT_TYPES[event_type]):
        raise TypeError(f"{event_type} carries {EVENT_TYPES[event_type].__name__}, not {type(payload).__name__}")
    packed = any_pb2.Any()
    packed.Pack(payload)
    ts = timestamp_pb2.Timestamp()
    ts.FromDatetime(utcnow())
    return Envelope(event_id=new_id("evt"), type=event_type, occurred_at=ts, tenant_id=tenant_id, payload=packed)


def decode(raw: bytes) -> tuple[Envelope, Message]:
    env = Envelope.FromString(raw)
    payload = EVENT_TYPES[env.type]()
    if not env.payload.Unpack(payload):
        raise ValueError(f"event {env.event_id}: payload is {env.payload.type_url}, expected {env.type}")
    return env, payload


@_connect_retry
def ensure_topics(bootstrap: str, topics: Iterable[str] = EVENT_TYPES, partitions: int = 3) -> None:
    """Create the topics that do not exist yet (idempotent)."""
    admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="coachforge-admin")
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


OUTBOX_EVENTS = 10_000
"""Events not waited for that a publisher holds before its thread has sent them (more are logged
as not delivered instead of making the caller wait: the broker is away)."""


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
    send (partitioning, batching and record encoding in Python, a few hundred microseconds)."""

    def __init__(self, bootstrap: str, client_id: str) -> None:
        self._producer = self._connect(bootstrap, client_id)
        self._outbox: queue.Queue[_Outgoing | None] = queue.Queue(maxsize=OUTBOX_EVENTS)
        self._sender = threading.Thread(target=self._send_all, name=f"events-{client_id}", daemon=True)
        self._sender.start()

    @staticmethod
    @_connect_retry
    def _connect(bootstrap: str, client_id: str) -> KafkaProducer:
        return KafkaProducer(bootstrap_servers=bootstrap, client_id=client_id, acks="all", linger_ms=0)

    def publish(self, event_type: str, payload: Message, tenant_id: str, key: str | None = None, *,
                wait: bool = True) -> str:
        """Send one event; returns its event id. With ``wait`` (the default) the broker's
        acknowledgement is awaited and a failure raises; without it (hot paths such as usage
        records) a failure is logged when the producer learns of it."""
        env = encode(event_type, payload, tenant_id)
        outgoing = _Outgoing(event_type, env, (key or tenant_id).encode(), Future() if wait else None)
        if not wait:
            try:
                self._outbox.put_nowait(outgoing)
            except queue.Full:
                log.error("event not delivered", type=event_type, event_id=env.event_id,
                          error=f"{OUTBOX_EVENTS} events wait to be sent")
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
                    log.error("event not delivered", type=outgoing.type, event_id=outgoing.env.event_id,
                              error=str(err))
                continue
            if outgoing.sent is not None:
                outgoing.sent.set_result(future)
                continue
            future.add_errback(lambda err, o=outgoing: log.error("event not delivered", type=o.type,
                                                                 event_id=o.env.event_id, error=str(err)))
            self._published(outgoing)

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
        """Send what is waiting to be sent, then close the producer (which delivers it)."""
        self._outbox.put(None)
        self._sender.join(timeout=30)
        self._producer.close(timeout=5)


#: A handler runs inside the idempotency transaction. It may return a follow-up callable,
#: run after the transaction committed (for long work that must not hold a transaction).
Handler = Callable[[Session, Envelope, Any], Callable[[], None] | None]


class EventConsumer:
    """A consumer-group member that hands each event to ``handler`` exactly once per group."""

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
    ) -> None:
        self.group = group
        self.topics = topics
        self.handler = handler
        self.db = db
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
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
        )
        consumer.subscribe(topics)
        return consumer

    def handle(self, raw: bytes) -> tuple[str, Callable[[], None] | None]:
        """Handle one raw record in its transaction.

        Returns the outcome (handled, duplicate, failed) and the handler's follow-up, if any."""
        try:
            env, payload = decode(raw)
        except Exception:  # a record we cannot read must not block the partition forever
            log.exception("undecodable event dropped", consumer=self.group)
            EVENTS_CONSUMED.labels(self.group, "unknown", "failed").inc()
            return "failed", None
        follow_up = None
        try:
            with self.db.session() as s:
                # The unique (consumer, event_id) constraint refuses a redelivered event.
                s.execute(insert(ProcessedEvent), {"consumer": self.group, "event_id": env.event_id,
                                                   "event_type": env.type})
                follow_up = self.handler(s, env, payload)
        except IntegrityError:
            EVENTS_CONSUMED.labels(self.group, env.type, "duplicate").inc()
            return "duplicate", None
        except Exception:
            log.exception("event handler failed", consumer=self.group, type=env.type, event_id=env.event_id)
            EVENTS_CONSUMED.labels(self.group, env.type, "failed").inc()
            return "failed", None
        EVENTS_CONSUMED.labels(self.group, env.type, "handled").inc()
        return "handled", follow_up

    def _commit(self, record: Any) -> None:
        tp = TopicPartition(record.topic, record.partition)
        self._consumer.commit({tp: OffsetAndMetadata(record.offset + 1, None, -1)})

    def run(self) -> None:
        """Poll until :meth:`stop`. A record's offset is committed after its transaction committed:
        before its follow-up runs (the database, not the offset, tracks long work), else once for
        the records of a partition that one poll returned (one broker round trip, not one per
        event; a redelivery after a crash is caught by the idempotency table)."""
        log.info("consumer started", consumer=self.group, topics=self.topics)
        try:
            while not self._stop.is_set():
                batches = self._consumer.poll(timeout_ms=500)
                for records in batches.values():
                    uncommitted = None
                    for record in records:
                        _, follow_up = self.handle(record.value)
                        uncommitted = record
                        if follow_up is not None:
                            self._commit(record)
                            uncommitted = None
                            follow_up()
                        if self._stop.is_set():
                            break
                    if uncommitted is not None:
                        self._commit(uncommitted)
        finally:
            self._consumer.close()
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
