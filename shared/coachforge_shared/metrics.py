"""Metrics every service shares (each service declares its own in its ``metrics.py``).

Names are snake_case with the ``coachforge_`` prefix; labels are bounded sets only."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

EVENTS_PUBLISHED = Counter("coachforge_events_published_total", "Events published to the bus.", ["type"])
EVENTS_CONSUMED = Counter(
    "coachforge_events_consumed_total",
    "Events received by a consumer group, by outcome (handled, duplicate, failed).",
    ["consumer", "type", "outcome"],
)
GRPC_REQUESTS = Counter(
    "coachforge_grpc_requests_total", "gRPC calls served, by method and status code.", ["method", "code"]
)
HTTP_REQUESTS = Histogram(
    "coachforge_http_request_duration_seconds",
    "REST request latency by route template and status code.",
    ["route", "method", "status"],
)
