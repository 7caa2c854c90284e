"""Webhooks metrics."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

DELIVERIES = Counter(
    "coachforge_webhook_deliveries_total",
    "Webhook delivery attempts by event type and outcome: succeeded (a 2xx answer), retried (it failed and "
    "another attempt is due later), failed (the last attempt failed: given up).",
    ["event_type", "outcome"])
ATTEMPT_SECONDS = Histogram(
    "coachforge_webhook_attempt_seconds",
    "Time of one delivery attempt (request sent to answer read, or the error), by result (success: 2xx, "
    "failure: any other answer, a timeout or a connection error).",
    ["result"], buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
