"""Trainer metrics."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

JOBS_CREATED = Counter("coachforge_training_jobs_created_total", "Fine-tuning jobs created.", ["tenant"])
JOBS_FINISHED = Counter("coachforge_training_jobs_finished_total", "Fine-tuning jobs finished, by final status.",
                        ["status"])
TOKENS_PER_SECOND = Gauge("coachforge_training_tokens_per_second", "Training throughput of the running job.")
STEP_SECONDS = Histogram("coachforge_training_step_seconds", "Wall time per logged optimizer step.",
                         buckets=(0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60))
