"""Metrics every service shares (each service declares its own in its ``metrics.py``).

Names are snake_case with the ``coachforge_`` prefix; labels are bounded sets only."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

EVENTS_PUBLISHED = Counter("coachforge_events_published_total", "Events published to the bus.", ["type"])
EVENTS_CONSUMED = Counter(
    "coachforge_events_consumed_total",
    "Events received by a consumer group, by outcome (handled, duplicate, failed).",
    ["consumer", "type", "outcome"],
)
EVENTS_DEAD_LETTERED = Counter(
    "coachforge_events_dead_lettered_total",
    "Records a consumer group gave up on and published to the dead-letter topic (type: the event type, "
    "or unknown for a record that could not be decoded).",
    ["consumer", "type"],
)
OUTBOX_DEPTH = Gauge("coachforge_outbox_events", "Events waiting in the outbox table to be sent (as this "
                     "process's relay last counted them).")
OUTBOX_OLDEST_AGE = Gauge("coachforge_outbox_oldest_age_seconds",
                          "Age of the oldest event waiting in the outbox table (0 when none waits).")
OUTBOX_RELAYED = Counter("coachforge_outbox_relayed_total", "Events the outbox relay sent and the broker "
                         "acknowledged.", ["type"])
OUTBOX_RELAY_FAILURES = Counter("coachforge_outbox_relay_failures_total",
                                "Outbox relay passes that left events unsent (broker away); they are retried.")
OUTBOX_SPILLED = Counter("coachforge_outbox_spilled_total", "Events not waited for that the producer could not "
                         "deliver, kept in the outbox table to be sent again.", ["type"])
GRPC_REQUESTS = Counter(
    "coachforge_grpc_requests_total", "gRPC calls served, by method and status code.", ["method", "code"]
)
HTTP_REQUESTS = Histogram(
    "coachforge_http_request_duration_seconds",
    "REST request latency by route template and status code.",
    ["route", "method", "status"],
)
