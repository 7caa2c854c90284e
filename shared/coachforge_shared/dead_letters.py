"""Dead letters: the records consumer groups gave up on (see :class:`~coachforge_shared.events.EventConsumer`),
read back from the ``dead-letter`` topic and sent again to where they came from.

The topic is a log: a dead letter stays on it after a replay. Replaying is safe all the same:
every consumer group keeps the ids of the events it handled, so a replayed event that a group
handled meanwhile (or that another group never failed on) is skipped as a duplicate.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from kafka import KafkaConsumer, KafkaProducer
from kafka.structs import TopicPartition

from coachforge.common.v1.dead_letter_pb2 import DeadLetter
from coachforge_shared.events import DEAD_LETTER_TOPIC, decode, kafka_options
from coachforge_shared.logging import get_logger

log = get_logger("coachforge.dead_letters")


@dataclass(frozen=True)
class Letter:
    """One dead letter: its own event id (one per record a group gave up on) and its content."""

    id: str
    letter: DeadLetter

    @property
    def failed_at(self) -> datetime:
        return self.letter.failed_at.ToDatetime(tzinfo=UTC)

    def as_dict(self) -> dict[str, Any]:
        """The dead letter as JSON-friendly values (the record itself left out: it is binary)."""
        dl = self.letter
        return {"id": self.id, "failed_at": self.failed_at.isoformat().replace("+00:00", "Z"),
                "consumer": dl.consumer, "event_type": dl.event_type, "event_id": dl.event_id, "topic": dl.topic,
                "partition": dl.partition, "offset": dl.offset, "attempts": dl.attempts,
                "error_type": dl.error_type, "error_message": dl.error_message}


def read(bootstrap: str, *, consumer: str | None = None, event_type: str | None = None,
         timeout_s: float = 60) -> list[Letter]:
    """Every dead letter on the topic (optionally only those of one consumer group or one original
    event type), oldest failure first. Read from the beginning up to the end offsets seen at the
    start, by a consumer without a group: nothing is committed, no group is joined."""
    reader = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False,
                           client_id="coachforge-dead-letters", **kafka_options())
    found: dict[str, Letter] = {}
    try:
        partitions = reader.partitions_for_topic(DEAD_LETTER_TOPIC)
        if not partitions:
            return []
        tps = [TopicPartition(DEAD_LETTER_TOPIC, p) for p in sorted(partitions)]
        reader.assign(tps)
        reader.seek_to_beginning(*tps)
        end = reader.end_offsets(tps)
        deadline = time.monotonic() + timeout_s
        while pending := [tp for tp in tps if reader.position(tp) < end[tp]]:
            if time.monotonic() > deadline:
                raise TimeoutError(f"read {len(found)} dead letters; {len(pending)} partition(s) not read to the "
                                   f"end within {timeout_s:.0f} s")
            for records in reader.poll(timeout_ms=500).values():
                for record in records:
                    try:
                        env, payload = decode(record.value)
                    except Exception as err:  # not written by a consumer of this platform
                        log.warning("unreadable dead letter skipped", partition=record.partition,
                                    offset=record.offset, error=str(err))
                        continue
                    assert isinstance(payload, DeadLetter)
                    # A record dead-lettered twice (a crash before the commit) has one id.
                    found.setdefault(env.event_id, Letter(env.event_id, payload))
    finally:
        reader.close()
    letters = [letter for letter in found.values()
               if (consumer is None or letter.letter.consumer == consumer)
               and (event_type is None or letter.letter.event_type == event_type)]
    letters.sort(key=lambda letter: (letter.letter.failed_at.seconds, letter.letter.failed_at.nanos))
    return letters


def replay(bootstrap: str, letters: Iterable[Letter]) -> list[Letter]:
    """Publish each dead letter's original record again, byte for byte, with its key, to its
    original topic, and wait for the broker's acknowledgements. An event dead-lettered by several
    groups (or several times) is sent once. Returns the letters whose record was sent."""
    sent: dict[tuple[str, str], Letter] = {}
    for letter in letters:
        dl = letter.letter
        # The same event (or, for a record that could not be read, the same record) is sent once.
        identity = dl.event_id or f"{dl.partition}/{dl.offset}"
        sent.setdefault((dl.topic, identity), letter)
    if not sent:
        return []
    producer = KafkaProducer(bootstrap_servers=bootstrap, client_id="coachforge-replay", acks="all", linger_ms=0,
                             **kafka_options())
    try:
        futures = [producer.send(letter.letter.topic, value=letter.letter.record, key=letter.letter.key or None)
                   for letter in sent.values()]
        for future in futures:
            future.get(timeout=30)
    finally:
        producer.close(timeout=5)
    return list(sent.values())
