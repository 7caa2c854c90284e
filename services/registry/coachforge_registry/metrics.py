"""Registry metrics. Labels are bounded (a retrain's final status, an export's format and final status)."""

from __future__ import annotations

from prometheus_client import Counter

RETRAINS = Counter("coachforge_registry_retrains_total",
                   "Avatar retrains that ended, by status (promoted, rejected, failed, canceled).", ["status"])
EXPORTS = Counter("coachforge_registry_exports_total",
                  "Model exports that ended, by format (adapter, merged, gguf, ollama) and status (succeeded, failed).",
                  ["format", "status"])
