"""Registry metrics. Labels are bounded (a retrain's final status)."""

from __future__ import annotations

from prometheus_client import Counter

RETRAINS = Counter("coachforge_registry_retrains_total",
                   "Avatar retrains that ended, by status (promoted, rejected, failed, canceled).", ["status"])
