"""Queries of the trainer tables. Reads only: every change of a job goes through
:mod:`coachforge_trainer.lifecycle`."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any, NamedTuple

from sqlalchemy import ScalarSelect, select
from sqlalchemy.orm import Session, aliased

from coachforge_shared.errors import InvalidArgument, NotFound
from coachforge_trainer.backends import REMOTE_BACKENDS
from coachforge_trainer.models import Job, JobCheckpoint, JobEvent


def job(s: Session, tenant_id: str, job_id: str) -> Job:
    """The tenant's job; ``NotFound`` when it has none of that id."""
    found = s.scalar(select(Job).where(Job.id == job_id, Job.tenant_id == tenant_id))
    if found is None:
        raise NotFound(f"Fine-tuning job {job_id} not found.", param="fine_tuning_job_id", code="job_not_found")
    return found


def job_by_id(s: Session, job_id: str, *, lock: bool = False) -> Job | None:
    """The job of any tenant (for the worker and the lifecycle); with ``lock``, locked for update and
    read afresh even if the session already holds it."""
    if not lock:
        return s.get(Job, job_id)
    return s.scalar(select(Job).where(Job.id == job_id).with_for_update()
                    .execution_options(populate_existing=True))


def job_status(s: Session, job_id: str) -> str | None:
    return s.scalar(select(Job.status).where(Job.id == job_id))


def jobs_page(s: Session, tenant_id: str, after: str | None, limit: int) -> tuple[list[Job], bool]:
    """The tenant's jobs, newest first, after the job ``after``; and whether there are more."""
    q = select(Job).where(Job.tenant_id == tenant_id)
    if after:
        anchor = s.scalar(select(Job).where(Job.id == after, Job.tenant_id == tenant_id))
        if anchor is None:
            raise InvalidArgument(f"Unknown cursor {after}.", param="after")
        q = q.where((Job.created_at < anchor.created_at)
                    | ((Job.created_at == anchor.created_at) & (Job.id < anchor.id)))
    rows = list(s.scalars(q.order_by(Job.created_at.desc(), Job.id.desc()).limit(limit + 1)))
    return rows[:limit], len(rows) > limit


def events_page(s: Session, job_id: str, after: str | None, limit: int) -> tuple[list[JobEvent], bool]:
    """The job's events, newest first, after the event ``after``; and whether there are more."""
    q = select(JobEvent).where(JobEvent.job_id == job_id)
    if after:
        anchor = s.scalar(select(JobEvent.seq).where(JobEvent.id == after, JobEvent.job_id == job_id))
        if anchor is None:
            raise InvalidArgument(f"Unknown cursor {after}.", param="after")
        q = q.where(JobEvent.seq < anchor)
    rows = list(s.scalars(q.order_by(JobEvent.seq.desc()).limit(limit + 1)))
    return rows[:limit], len(rows) > limit


def checkpoints_page(s: Session, job_id: str, after: str | None, limit: int) -> tuple[list[JobCheckpoint], bool]:
    """The job's checkpoints, latest step first, after the checkpoint ``after``; and whether there are more."""
    q = select(JobCheckpoint).where(JobCheckpoint.job_id == job_id)
    if after:
        anchor = s.scalar(select(JobCheckpoint.step).where(JobCheckpoint.id == after,
                                                           JobCheckpoint.job_id == job_id))
        if anchor is None:
            raise InvalidArgument(f"Unknown cursor {after}.", param="after")
        q = q.where(JobCheckpoint.step < anchor)
    rows = list(s.scalars(q.order_by(JobCheckpoint.step.desc()).limit(limit + 1)))
    return rows[:limit], len(rows) > limit


def has_checkpoint(s: Session, job_id: str, step: int) -> bool:
    return s.scalar(select(JobCheckpoint.id).where(JobCheckpoint.job_id == job_id,
                                                   JobCheckpoint.step == step)) is not None


def next_claimable(remote: bool | None = None) -> ScalarSelect[str]:
    """The id of the job to train next, as a subquery for the claiming UPDATE: a queued job with no
    cancel request, the longest waiting first (``queued_at``, set whenever a job is queued, then
    ``created_at`` and the id for ties: index ``ix_fine_tuning_jobs_claim_order``). On PostgreSQL
    the row is locked ``FOR UPDATE SKIP LOCKED``, so claimers at the same time each get a different
    job without waiting for one another; SQLite has no row locks and runs one write at a time.
    ``remote``: only jobs of a remote backend (True: a worker's remote slots), only the others
    (False: its training slots), or any (None)."""
    queued = aliased(Job)
    q = select(queued.id).where(queued.status == "queued", queued.cancel_requested.is_(False))
    if remote is not None:
        in_remote = queued.backend.in_(sorted(REMOTE_BACKENDS))
        q = q.where(in_remote if remote else ~in_remote)
    return (q.order_by(queued.queued_at, queued.created_at, queued.id).limit(1)
            .with_for_update(skip_locked=True).scalar_subquery())


def cancel_requested(s: Session, job_id: str) -> bool:
    return bool(s.scalar(select(Job.cancel_requested).where(Job.id == job_id)))


class ExpiredLease(NamedTuple):
    """A running job whose worker stopped renewing its lease, as the sweep found it."""

    job_id: str
    tenant_id: str
    worker_id: str | None
    attempts: int
    cancel_requested: bool


def expired_leases(s: Session, now: datetime) -> list[ExpiredLease]:
    rows = s.execute(select(Job.id, Job.tenant_id, Job.worker_id, Job.attempts, Job.cancel_requested)
                     .where(Job.status == "running", Job.lease_expires_at < now))
    return [ExpiredLease(*row) for row in rows]


def mirrored_remote_events(s: Session, job_id: str) -> frozenset[str]:
    """Ids of the remote job's events already mirrored into the job's events (backend openai_compatible)."""
    rows = s.scalars(select(JobEvent.data_json).where(JobEvent.job_id == job_id, JobEvent.type == "message",
                                                      JobEvent.data_json.contains('"remote_event_id"')))
    found = set()
    for row in rows:
        data = json.loads(row)
        if isinstance(data, dict) and isinstance(data.get("remote_event_id"), str):
            found.add(data["remote_event_id"])
    return frozenset(found)


def metrics_reports(s: Session, job_id: str) -> list[dict[str, Any]]:
    """The data of the job's ``metrics`` events, oldest first."""
    rows = s.scalars(select(JobEvent.data_json).where(JobEvent.job_id == job_id, JobEvent.type == "metrics")
                     .order_by(JobEvent.seq))
    return [json.loads(r) for r in rows if r]
