"""The transactional outbox: events written in the transaction of the change they report, sent once
it committed.

Publishing to the broker inside a database transaction couples the two badly: a change fails when
the broker is away, and a consumer may receive the event before the change is committed (a worker
gets ``train.requested`` for a job it cannot see yet). Publishing after the commit loses the event
when the process dies in between. Instead a service writes the event as a row of ``outbox_events``
in its own transaction (:meth:`~coachforge_shared.events.EventPublisher.publish_in`, which calls
:func:`add`): the row exists exactly when the change does. :class:`OutboxRelay`, a thread of every
process that has a publisher and a database, sends committed rows in ``id`` order, waits for the
broker's acknowledgement and deletes them in the same transaction.

Delivery is at least once: a row sent but not deleted (the process died, the commit failed) is sent
again with the same event id, which consumers skip (``processed_events``). While the broker is away
rows stay and the relay retries with a backoff; nothing is lost. The relay wakes up as soon as a
commit of its process added rows (a session event), and polls every ``outbox_poll_seconds`` for rows
written by other processes. On PostgreSQL each batch is locked with ``FOR UPDATE SKIP LOCKED``, so
that several processes relay at once without sending a row twice at the same time; on SQLite (one
machine, the all-in-one) a plain select, and a rare duplicate is skipped by its consumers.
"""

from __future__ import annotations

import threading
from concurrent.futures import Future
from datetime import UTC, datetime
from typing import Any, Protocol

from sqlalchemy import event, func, select
from sqlalchemy.orm import Session

from coachforge.common.v1.envelope_pb2 import Envelope
from coachforge_shared.db import Database, OutageBackoff
from coachforge_shared.ids import utcnow
from coachforge_shared.logging import get_logger
from coachforge_shared.metrics import (
    EVENTS_PUBLISHED,
    OUTBOX_DEPTH,
    OUTBOX_OLDEST_AGE,
    OUTBOX_RELAY_FAILURES,
    OUTBOX_RELAYED,
)
from coachforge_shared.models import OutboxEvent

log = get_logger("coachforge.outbox")

_PENDING = "coachforge.outbox.pending"
"""``Session.info`` key: the session's transaction wrote outbox rows (wake the relays on commit)."""

MAX_BACKOFF_SECONDS = 10.0
"""Longest pause between relay passes that left events unsent (each pass already waited for the
producer to give up, up to its delivery timeout)."""

_relays_lock = threading.Lock()
_relays: set[threading.Event] = set()


def add(session: Session, env: Envelope, key: str, *, attempts: int = 0, last_error: str | None = None) -> None:
    """Write the encoded event ``env`` into ``session``'s transaction: it is sent once the transaction
    committed, and never if it rolls back."""
    session.add(OutboxEvent(event_id=env.event_id, type=env.type, key=key, tenant_id=env.tenant_id,
                            envelope=env.SerializeToString(), created_at=utcnow(), attempts=attempts,
                            last_error=last_error))
    session.info[_PENDING] = True


def wake_relays() -> None:
    """Tell this process's relays that rows were committed (they look at once, not at their next poll)."""
    with _relays_lock:
        for wake in _relays:
            wake.set()


@event.listens_for(Session, "after_commit")
def _after_commit(session: Session) -> None:
    if session.info.pop(_PENDING, False):
        wake_relays()


@event.listens_for(Session, "after_rollback")
def _after_rollback(session: Session) -> None:
    session.info.pop(_PENDING, None)


class Sender(Protocol):
    """What the relay needs of :class:`~coachforge_shared.events.EventPublisher`."""

    delivery_timeout_s: float

    def deliver(self, env: Envelope, key: bytes) -> Future[Any]: ...


class OutboxRelay:
    """Sends the outbox's committed rows through ``publisher``, oldest first, in its own thread."""

    def __init__(self, db: Database, publisher: Sender, *, poll_seconds: float = 2.0, batch_size: int = 100,
                 name: str = "outbox-relay") -> None:
        self.db = db
        self.publisher = publisher
        self.poll_seconds = poll_seconds
        self.batch_size = batch_size
        self.name = name
        self._lock_rows = db.engine.dialect.name == "postgresql"
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._oldest: datetime | None = None

    # -- one pass --------------------------------------------------------------------------------
    def relay_once(self) -> tuple[int, str | None]:
        """Send up to ``batch_size`` rows and delete those the broker acknowledged, in one transaction.
        Returns how many were sent and, when some were not, the producer's error (those rows stay,
        with one more attempt and the error, for the next pass)."""
        sent: list[str] = []
        error: str | None = None
        wait = self.publisher.delivery_timeout_s + 10
        with self.db.session() as s:
            query = select(OutboxEvent).order_by(OutboxEvent.id).limit(self.batch_size)
            if self._lock_rows:
                query = query.with_for_update(skip_locked=True)
            # (SQLite: pysqlite begins the transaction at the first write, so no snapshot is held
            # while the acknowledgements are awaited and other processes keep writing meanwhile.)
            rows = list(s.scalars(query))
            # Handed to the producer all at once, in order; then each acknowledgement is awaited.
            handed = [(row, self.publisher.deliver(Envelope.FromString(row.envelope), row.key.encode()))
                      for row in rows]
            for row, future in handed:
                try:
                    future.result(timeout=wait).get(timeout=wait)
                except Exception as err:
                    row.attempts += 1
                    row.last_error = f"{type(err).__name__}: {err}"[:2000]
                    error = error or row.last_error
                    continue
                s.delete(row)
                sent.append(row.type)
        for event_type in sent:
            OUTBOX_RELAYED.labels(event_type).inc()
            EVENTS_PUBLISHED.labels(event_type).inc()
        return len(sent), error

    def count(self) -> int:
        """Count the waiting rows (and note the oldest one's age) for the gauges."""
        with self.db.session() as s:
            depth, oldest = s.execute(select(func.count(), func.min(OutboxEvent.created_at))).one()
        self._oldest = oldest
        OUTBOX_DEPTH.set(depth)
        return int(depth)

    def _oldest_age(self) -> float:
        oldest = self._oldest
        if oldest is None:
            return 0.0
        if oldest.tzinfo is None:  # stored naive (SQLite), in UTC
            oldest = oldest.replace(tzinfo=UTC)
        return max((utcnow() - oldest).total_seconds(), 0.0)

    # -- the thread ------------------------------------------------------------------------------
    def run(self) -> None:
        """Relay until :meth:`stop`: at once after a commit that wrote rows, else every
        ``poll_seconds``; after a pass that left rows unsent, again after a growing pause."""
        backoff = 0.0
        database = OutageBackoff(self.name)  # a database outage is logged once, not every pass
        while not self._stop.is_set():
            self._wake.clear()  # a commit from now on wakes the next wait
            try:
                sent, error = self.relay_once()
            except Exception as err:  # the database is away: same as the broker, try again later
                database.failed(err, "outbox relay failed")
                sent, error = 0, str(err)
            else:
                database.succeeded()
            try:
                self.count()
            except Exception:
                log.warning("outbox not counted", relay=self.name)
            if error is not None:
                OUTBOX_RELAY_FAILURES.inc()
                backoff = min(max(backoff * 2, 0.5), MAX_BACKOFF_SECONDS)
                log.warning("outbox events not sent; retrying", relay=self.name, sent=sent, error=error,
                            retry_in=backoff)
                self._stop.wait(backoff)
                continue
            backoff = 0.0
            if sent < self.batch_size:
                self._wake.wait(self.poll_seconds)

    def start(self) -> threading.Thread:
        with _relays_lock:
            _relays.add(self._wake)
        OUTBOX_OLDEST_AGE.set_function(self._oldest_age)
        self._thread = threading.Thread(target=self.run, name=self.name, daemon=True)
        self._thread.start()
        return self._thread

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def stop(self, timeout: float = 30) -> None:
        """Stop after the current pass (rows not sent stay for the next process)."""
        with _relays_lock:
            _relays.discard(self._wake)
        self._stop.set()
        self._wake.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)
