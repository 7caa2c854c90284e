"""Every inference replica reads the registry's model.* events and drops the affected tenant's
cached resolutions, so an activation, rollback, new candidate or deletion is seen at once (the
cache's TTL stays as a safety net for a missed event).

Each replica needs every event, so this reader joins no consumer group: it is assigned every
partition of the model.* topics and starts from their end (what happened before the replica
started is not in its cache). Topics that appear later are picked up on the next refresh.
A deleted model's adapter is also unloaded from the engines where it sits idle: the reader's
thread hands that coroutine to the event loop that started it.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Coroutine
from concurrent.futures import Future
from typing import Any

from kafka import KafkaConsumer
from kafka.errors import KafkaError
from kafka.structs import TopicPartition

from coachforge.common.v1.envelope_pb2 import Envelope
from coachforge.registry.v1 import registry_pb2
from coachforge_inference.metrics import CACHE_INVALIDATIONS
from coachforge_shared.events import kafka_options
from coachforge_shared.logging import get_logger

log = get_logger("coachforge.inference.invalidation")

MODEL_EVENTS = ("model.registered", "model.activated", "model.rolled_back", "model.deleted",
                "model.avatar_updated")
KNOWN_EVENTS = frozenset(MODEL_EVENTS)


class ModelEventListener:
    def __init__(self, bootstrap: str, invalidate: Callable[[str], int], *,
                 deleted: Callable[[str], Coroutine[Any, Any, None]] | None = None,
                 topics: tuple[str, ...] = MODEL_EVENTS, refresh_s: float = 30.0) -> None:
        """``invalidate(tenant_id)`` runs (in the reader's thread) for every model.* event;
        ``deleted(adapter_name)``, a coroutine function, also runs for model.deleted (engines may drop
        the adapter), on the event loop that called :meth:`start`."""
        self.bootstrap, self.invalidate, self.topics, self.refresh_s = bootstrap, invalidate, topics, refresh_s
        self.deleted = deleted
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start reading (call it from the event loop ``deleted`` runs on, when it is given)."""
        if self.deleted is not None:
            self._loop = asyncio.get_running_loop()
        self._thread = threading.Thread(target=self._run, name="model-events", daemon=True)
        self._thread.start()

    def wait_ready(self, timeout: float = 30) -> bool:
        """Whether the reader is positioned at the end of the topics (events from now on are seen)."""
        return self._ready.wait(timeout)

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def stop(self, timeout: float = 10) -> None:
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    def _assign(self, consumer: KafkaConsumer, assigned: set[TopicPartition]) -> set[TopicPartition]:
        """Assign every partition of the topics that exist: at their end on the first pass, at their
        beginning later (they were created after this replica started)."""
        found = {TopicPartition(topic, p) for topic in self.topics
                 for p in (consumer.partitions_for_topic(topic) or ())}
        new = found - assigned
        if not new:
            return assigned
        kept = {tp: consumer.position(tp) for tp in assigned}
        consumer.assign(sorted(found))
        for tp, offset in kept.items():
            consumer.seek(tp, offset)
        if self._ready.is_set():
            consumer.seek_to_beginning(*new)
        else:
            consumer.seek_to_end(*new)
        for tp in new:
            consumer.position(tp)  # resolve the offset now, so nothing after this point is missed
        return found

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                consumer = KafkaConsumer(bootstrap_servers=self.bootstrap, group_id=None,
                                         enable_auto_commit=False, client_id="coachforge-inference-models",
                                         **kafka_options())
            except (KafkaError, OSError) as err:
                log.warning("model events: broker unreachable", error=str(err))
                self._stop.wait(2)
                continue
            try:
                assigned: set[TopicPartition] = set()
                next_refresh = 0.0
                while not self._stop.is_set():
                    if time.monotonic() >= next_refresh:
                        consumer.topics()  # refresh metadata: topics created since
                        assigned = self._assign(consumer, assigned)
                        self._ready.set()
                        next_refresh = time.monotonic() + self.refresh_s
                    for records in consumer.poll(timeout_ms=500).values():
                        for record in records:
                            self._handle(record.value)
            except Exception:
                log.exception("model events reader failed; reconnecting")
                self._stop.wait(1)
            finally:
                consumer.close()

    def _handle(self, raw: bytes) -> None:
        try:
            env = Envelope.FromString(raw)
        except Exception:
            return
        dropped = self.invalidate(env.tenant_id)
        CACHE_INVALIDATIONS.labels(env.type if env.type in KNOWN_EVENTS else "other").inc()
        log.debug("resolutions dropped", type=env.type, tenant=env.tenant_id, entries=dropped)
        if env.type == "model.deleted" and self.deleted is not None:
            event = registry_pb2.ModelDeleted()
            if env.payload.Unpack(event) and event.adapter_name:
                self._on_deleted(event.adapter_name)

    def _on_deleted(self, adapter: str) -> None:
        """Hand ``deleted(adapter)`` to the event loop (not waited for: the reader goes on)."""
        if self.deleted is None or self._loop is None or self._loop.is_closed():
            return
        coro = self.deleted(adapter)
        try:
            future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        except RuntimeError:  # the loop closed meanwhile
            coro.close()
            return

        def done(f: Future[None]) -> None:
            if not f.cancelled() and f.exception() is not None:  # e.g. an engine that does not answer
                log.error("deleted adapter not unloaded", adapter=adapter, exc_info=f.exception())

        future.add_done_callback(done)
