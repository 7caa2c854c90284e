"""Trainer metrics."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from sqlalchemy import func, select
from sqlalchemy.exc import SQLAlchemyError

from coachforge_shared.db import Database

JOBS_CREATED = Counter("coachforge_training_jobs_created_total", "Fine-tuning jobs created.", ["tenant"])
JOBS_FINISHED = Counter("coachforge_training_jobs_finished_total", "Fine-tuning jobs finished, by final status.",
                        ["status"])
TOKENS_PER_SECOND = Gauge("coachforge_training_tokens_per_second", "Training throughput of the running job.")
STEP_SECONDS = Histogram("coachforge_training_step_seconds", "Wall time per logged optimizer step.",
                         buckets=(0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60))
QUEUE_WAIT = Histogram("coachforge_training_queue_wait_seconds", "Time a job waited in the queue before a worker "
                       "claimed it.", buckets=(1, 5, 15, 60, 300, 900, 3600, 4 * 3600, 24 * 3600))
JOBS_REQUEUED = Counter("coachforge_training_jobs_requeued_total",
                        "Running jobs queued again because their worker stopped (shutdown or lost lease).",
                        ["reason"])
CHECKPOINTS = Counter("coachforge_training_checkpoints_total", "Checkpoints saved by trainer workers.")

_JOB_LABELS = ["tenant", "job"]
JOB_STEP = Gauge("coachforge_training_job_step", "Optimizer steps done by a running job.", _JOB_LABELS)
JOB_TOTAL_STEPS = Gauge("coachforge_training_job_total_steps", "Optimizer steps a running job will take.", _JOB_LABELS)
JOB_LOSS = Gauge("coachforge_training_job_loss", "Latest training loss of a running job.", _JOB_LABELS)
JOB_TOKENS_PER_SECOND = Gauge("coachforge_training_job_tokens_per_second", "Training throughput of a running job.",
                              _JOB_LABELS)
JOB_ETA = Gauge("coachforge_training_job_eta_seconds", "Estimated seconds until a running job ends.", _JOB_LABELS)
_JOB_GAUGES = (JOB_STEP, JOB_TOTAL_STEPS, JOB_LOSS, JOB_TOKENS_PER_SECOND, JOB_ETA)


def job_progress(tenant: str, job: str, step: int, total_steps: int, loss: float | None,
                 tokens_per_second: float, eta_seconds: float | None) -> None:
    """Show a running job's progress (one series per gauge and job, while it trains on this worker;
    :func:`job_ended` removes them, so the label values stay bounded by the jobs running now)."""
    JOB_STEP.labels(tenant, job).set(step)
    JOB_TOTAL_STEPS.labels(tenant, job).set(total_steps)
    JOB_TOKENS_PER_SECOND.labels(tenant, job).set(tokens_per_second)
    if loss is not None:
        JOB_LOSS.labels(tenant, job).set(loss)
    if eta_seconds is not None:
        JOB_ETA.labels(tenant, job).set(eta_seconds)


def job_ended(tenant: str, job: str) -> None:
    """The job stopped training here (finished, failed, cancelled or handed back): its series go."""
    for gauge in _JOB_GAUGES:
        try:
            gauge.remove(tenant, job)
        except KeyError:
            pass


class JobStatusCollector:
    """``coachforge_training_jobs{status}``: jobs per status, counted in the database at scrape time
    (so every replica reports the same truth, unlike per-process counters)."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def collect(self) -> Iterator[GaugeMetricFamily]:
        from coachforge_trainer.models import Job

        family = GaugeMetricFamily("coachforge_training_jobs", "Fine-tuning jobs by status.", labels=["status"])
        counts = dict.fromkeys(("validating_files", "queued", "running", "succeeded", "failed", "cancelled"), 0)
        try:
            with self.db.session() as s:
                counts.update({status: n for status, n in s.execute(
                    select(Job.status, func.count()).group_by(Job.status)).tuples()})
        except SQLAlchemyError:
            return  # the database is down: report nothing rather than zeros
        for status, n in counts.items():
            family.add_metric([status], n)
        yield family


_registered: dict[int, JobStatusCollector] = {}


def register_job_status_collector(db: Database, registry: CollectorRegistry = REGISTRY) -> JobStatusCollector:
    """Export ``coachforge_training_jobs`` from ``db``, replacing an earlier registration in ``registry``."""
    previous = _registered.pop(id(registry), None)
    if previous is not None:
        registry.unregister(previous)
    collector = JobStatusCollector(db)
    registry.register(collector)
    _registered[id(registry)] = collector
    return collector
