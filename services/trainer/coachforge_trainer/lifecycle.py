"""The fine-tuning job lifecycle: the one module that changes a job's status.

The moves (statuses are OpenAI's), who makes them, and the Kafka event each publishes:

=============================  ==========================================  =====================
move                           function (caller)                           publishes
=============================  ==========================================  =====================
(new) → queued                 :func:`create` (API)                        ``train.requested``
queued → running               :func:`claim_next` (a worker takes the      (nothing)
                               longest waiting job), :func:`claim`
validating_files/queued →      :func:`request_cancel` (API), before the    ``job.cancelled``
cancelled                      job started
running → queued               :func:`requeue` (its worker shuts down),    ``train.requested``
                               :func:`recover` (its worker was lost)
running → succeeded            :func:`succeed` (its worker)                ``job.succeeded``
running → failed               :func:`fail` (its worker), :func:`recover`  ``job.failed``
                               (lost ``max_attempts`` times)
running → cancelled            :func:`cancel` (its worker, asked to stop   ``job.cancelled``
                               by :func:`request_cancel`), :func:`recover`
=============================  ==========================================  =====================

Every move is one conditional UPDATE, a compare-and-set on the status (and, for a running job,
on the worker that holds it and, for :func:`recover`, on its expired lease), so two writers
never both make the same move. A move that :data:`TRANSITIONS` forbids, or one whose job is no
longer in the state (or with the worker) the mover expected, raises :class:`IllegalTransition`
and writes nothing.

Each move writes its job events (the rows ``GET /v1/fine_tuning/jobs/{id}/events`` lists) and
its Kafka event into the caller's transaction (the outbox, :mod:`coachforge_shared.outbox`): the
event is sent once the move committed and never for a move rolled back, and a broker away delays
the event, not the move. A running job's reports (:func:`record_progress`,
:func:`record_checkpoint`) change no status; ``job.progress`` is published after the commit, without
waiting for the broker.

Functions take the caller's session (which commits) and, where they publish, the publisher.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import ColumnElement, func, update
from sqlalchemy.orm import Session

from coachforge.trainer.v1 import trainer_pb2
from coachforge_shared.errors import FailedPrecondition
from coachforge_shared.events import EventPublisher
from coachforge_shared.ids import new_id, utcnow
from coachforge_shared.logging import get_logger
from coachforge_trainer import repository
from coachforge_trainer.metrics import CHECKPOINTS, JOBS_CREATED, JOBS_FINISHED, JOBS_REQUEUED, QUEUE_WAIT
from coachforge_trainer.models import Job, JobCheckpoint, JobEvent
from coachforge_trainer.spec import is_dataset_version, job_hyperparameters

if TYPE_CHECKING:
    from coachforge_trainer.sft import Checkpoint, Progress, TrainResult

log = get_logger("coachforge.trainer.lifecycle")

VALIDATING_FILES = "validating_files"
QUEUED = "queued"
RUNNING = "running"
SUCCEEDED = "succeeded"
FAILED = "failed"
CANCELLED = "cancelled"

#: Where a job of each status may go next.
TRANSITIONS: dict[str, frozenset[str]] = {
    VALIDATING_FILES: frozenset({CANCELLED}),
    QUEUED: frozenset({RUNNING, CANCELLED}),
    RUNNING: frozenset({QUEUED, SUCCEEDED, FAILED, CANCELLED}),
    SUCCEEDED: frozenset(),
    FAILED: frozenset(),
    CANCELLED: frozenset(),
}
STATUSES = tuple(TRANSITIONS)
FINAL = frozenset(s for s, targets in TRANSITIONS.items() if not targets)
NOT_STARTED = (VALIDATING_FILES, QUEUED)

_STATUS_PROTO = {VALIDATING_FILES: trainer_pb2.JOB_STATUS_VALIDATING_FILES, QUEUED: trainer_pb2.JOB_STATUS_QUEUED,
                 RUNNING: trainer_pb2.JOB_STATUS_RUNNING, SUCCEEDED: trainer_pb2.JOB_STATUS_SUCCEEDED,
                 FAILED: trainer_pb2.JOB_STATUS_FAILED, CANCELLED: trainer_pb2.JOB_STATUS_CANCELLED}


def status_to_proto(status: str) -> trainer_pb2.JobStatus.ValueType:
    return _STATUS_PROTO[status]


class IllegalTransition(FailedPrecondition):
    """The job cannot make this move: the table forbids it, or the job is no longer where (or
    with whom) the mover expected it. Nothing was written."""

    def __init__(self, job_id: str, status: str | None, target: str, message: str | None = None) -> None:
        super().__init__(message or f"Job {job_id} is {status or 'gone'}; it cannot become {target}.",
                         param="fine_tuning_job_id")
        self.job_id = job_id
        self.status = status
        self.target = target


# -- job events -------------------------------------------------------------------------------

def add_event(s: Session, job_id: str, message: str, *, level: str = "info", type: str = "message",
              data: dict[str, Any] | None = None) -> None:
    """Write one job event (a row of the job's event list)."""
    s.add(JobEvent(id=new_id("ftevent"), job_id=job_id, level=level, type=type, message=message,
                   data_json=json.dumps(data) if data is not None else None))


@dataclass(frozen=True)
class Note:
    """A job event to write with a move."""

    message: str
    data: dict[str, Any] | None = None
    level: str = "info"


# -- the one place a status changes (create inserts new jobs queued) --------------------------

def _move(s: Session, job_id: str, sources: Collection[str], target: str, *guards: ColumnElement[bool],
          **values: Any) -> None:
    """Move the job from one of ``sources`` to ``target`` if ``guards`` hold, setting ``values`` too."""
    for source in sources:
        if target not in TRANSITIONS[source]:
            raise IllegalTransition(job_id, source, target)
    moved = s.execute(update(Job).where(Job.id == job_id, Job.status.in_(tuple(sources)), *guards)
                      .values(status=target, **values))
    if moved.rowcount != 1:
        raise IllegalTransition(job_id, repository.job_status(s, job_id), target)


def _held_by(worker_id: str | None) -> ColumnElement[bool]:
    return Job.worker_id == worker_id


def _lease_expired(worker_id: str | None, now: datetime) -> tuple[ColumnElement[bool], ...]:
    return Job.worker_id == worker_id, Job.lease_expires_at < now


# -- moves ------------------------------------------------------------------------------------

def create(s: Session, publisher: EventPublisher, job: Job, notes: Iterable[Note] = ()) -> Job:
    """Store a new job, queued, with its creation events, and request its training."""
    job.status = QUEUED
    s.add(job)
    s.flush()
    add_event(s, job.id, f"Created fine-tuning job: {job.id}")
    for note in notes:
        add_event(s, job.id, note.message, level=note.level, data=note.data)
    # In the job's transaction: a worker can only receive train.requested for a committed job.
    publisher.publish_in(s, "train.requested", trainer_pb2.TrainRequested(job_id=job.id), job.tenant_id,
                         key=job.id)
    JOBS_CREATED.labels(job.tenant_id).inc()
    return job


def _claimed_values(worker_id: str, lease_until: datetime) -> dict[str, Any]:
    """What a claim writes besides the status: the holder, its lease, one more attempt, the first start."""
    return {"worker_id": worker_id, "lease_expires_at": lease_until, "attempts": Job.attempts + 1,
            "started_at": func.coalesce(Job.started_at, utcnow())}


def claim(s: Session, job_id: str, tenant_id: str, worker_id: str, lease_until: datetime) -> Job:
    """queued → running on ``worker_id`` for this one job, unless a cancel was requested. Exactly one
    of several workers claiming the same job wins; the others get :class:`IllegalTransition`.
    Workers take whichever job waits longest with :func:`claim_next`."""
    _move(s, job_id, (QUEUED,), RUNNING, Job.tenant_id == tenant_id, Job.cancel_requested.is_(False),
          **_claimed_values(worker_id, lease_until))
    return _started(s, job_id, worker_id)


def claim_next(s: Session, worker_id: str, lease_until: datetime, remote: bool | None = None) -> Job | None:
    """The longest waiting queued job without a cancel request → running on ``worker_id``; ``None``
    when no job waits. Any free worker takes the next job, whichever worker its ``train.requested``
    event went to, so as many jobs train at once as workers have free slots.

    One UPDATE whose subquery picks the job (:func:`repository.next_claimable`): on PostgreSQL the
    row is locked ``FOR UPDATE SKIP LOCKED``, so workers claiming at the same time each get a
    different job and none waits for another; on SQLite (the all-in-one's database) writes run one
    at a time and the status guard makes the update a compare-and-set. ``remote`` limits the claim to
    jobs of remote backends (True) or to the others (False), see :func:`repository.next_claimable`."""
    claimed = s.execute(update(Job).where(Job.id == repository.next_claimable(remote), Job.status == QUEUED,
                                          Job.cancel_requested.is_(False))
                        .values(status=RUNNING, **_claimed_values(worker_id, lease_until))
                        .returning(Job.id).execution_options(synchronize_session=False)).scalar_one_or_none()
    return None if claimed is None else _started(s, claimed, worker_id)


def _started(s: Session, job_id: str, worker_id: str) -> Job:
    """After a claim: the job as it is now, the time it waited in the queue, its "started" event."""
    job = repository.job_by_id(s, job_id, lock=True)  # read afresh: the session may hold it from before
    assert job is not None
    QUEUE_WAIT.observe(max((utcnow() - (job.queued_at or job.created_at)).total_seconds(), 0.0))
    attempt = f" (attempt {job.attempts})" if job.attempts > 1 else ""
    add_event(s, job_id, f"Fine-tuning job started on worker {worker_id}{attempt}.")
    return job


def renew_lease(s: Session, job_id: str, worker_id: str, lease_until: datetime) -> bool:
    """Extend ``worker_id``'s lease on its running job; ``False`` if the job is no longer its."""
    renewed = s.execute(update(Job).where(Job.id == job_id, _held_by(worker_id), Job.status == RUNNING)
                        .values(lease_expires_at=lease_until))
    return bool(renewed.rowcount == 1)


def request_cancel(s: Session, publisher: EventPublisher, job_id: str) -> Job:
    """A job not yet started is cancelled at once (``job.cancelled``, as for a running one, so that
    webhooks and the retrain driver hear of it); a running one is asked to stop (its worker cancels
    it after the current step). A finished job raises :class:`IllegalTransition`."""
    job = repository.job_by_id(s, job_id, lock=True)
    assert job is not None
    if job.status in FINAL:
        raise IllegalTransition(job_id, job.status, CANCELLED, f"Job {job_id} has already {job.status}.")
    job.cancel_requested = True
    if job.status in NOT_STARTED:
        message = "Job cancelled before it started."
        _move(s, job_id, NOT_STARTED, CANCELLED, finished_at=utcnow())
        add_event(s, job_id, message)
        publisher.publish_in(s, "job.cancelled", trainer_pb2.JobFinished(
            job_id=job_id, status=status_to_proto(CANCELLED), error_message=message), job.tenant_id, key=job_id)
        JOBS_FINISHED.labels(CANCELLED).inc()
    else:
        add_event(s, job_id, "Cancellation requested; stopping after the current step.")
    return job


def requeue(s: Session, publisher: EventPublisher, job_id: str, tenant_id: str, worker_id: str, step: int) -> None:
    """running → queued by its own worker shutting down (after it saved a checkpoint)."""
    _move(s, job_id, (RUNNING,), QUEUED, _held_by(worker_id),
          worker_id=None, lease_expires_at=None, queued_at=utcnow())
    add_event(s, job_id, f"Worker shut down at step {step}; a checkpoint was saved and the job was queued "
                         "again.", level="warn")
    publisher.publish_in(s, "train.requested", trainer_pb2.TrainRequested(job_id=job_id), tenant_id, key=job_id)
    JOBS_REQUEUED.labels("shutdown").inc()


def fail(s: Session, publisher: EventPublisher, job_id: str, tenant_id: str, worker_id: str, message: str,
         error_code: str) -> None:
    """running → failed by its worker."""
    _stop(s, publisher, job_id, tenant_id, FAILED, message, (_held_by(worker_id),), finished_at=utcnow(),
          error_code=error_code, level="error")


def cancel(s: Session, publisher: EventPublisher, job_id: str, tenant_id: str, worker_id: str,
           message: str = "Job cancelled.") -> None:
    """running → cancelled by its worker, which stopped as requested."""
    _stop(s, publisher, job_id, tenant_id, CANCELLED, message, (_held_by(worker_id),), finished_at=utcnow())


def _stop(s: Session, publisher: EventPublisher, job_id: str, tenant_id: str, status: str, message: str,
          guards: tuple[ColumnElement[bool], ...], *, finished_at: datetime, error_code: str | None = None,
          error_message: str | None = None, level: str = "info") -> None:
    """running → failed / cancelled, with the event and ``job.failed`` / ``job.cancelled`` (both say
    ``message``; a failed job stores ``error_message``, by default the same)."""
    _move(s, job_id, (RUNNING,), status, *guards, finished_at=finished_at, lease_expires_at=None,
          error_code=error_code, error_message=(error_message or message) if status == FAILED else None)
    add_event(s, job_id, message, level=level)
    publisher.publish_in(s, f"job.{status}", trainer_pb2.JobFinished(
        job_id=job_id, status=status_to_proto(status), error_message=message), tenant_id, key=job_id)
    JOBS_FINISHED.labels(status).inc()


def recover(s: Session, publisher: EventPublisher, lost: repository.ExpiredLease, now: datetime,
            max_attempts: int) -> str:
    """A running job whose worker stopped renewing its lease (before ``now``): cancelled when a cancel
    was requested, failed after ``max_attempts``, else queued again (its next worker resumes from
    the last checkpoint). Returns the new status."""
    expired = _lease_expired(lost.worker_id, now)
    why = f"Worker {lost.worker_id} stopped renewing its lease"
    if lost.cancel_requested:
        _stop(s, publisher, lost.job_id, lost.tenant_id, CANCELLED,
              f"{why}; the job was cancelled as requested.", expired, finished_at=now)
        return CANCELLED
    if lost.attempts >= max_attempts:
        _stop(s, publisher, lost.job_id, lost.tenant_id, FAILED, f"{why}; the job failed after {lost.attempts} "
              "attempts.", expired, finished_at=now, error_code="worker_lost", level="error",
              error_message=f"{why}; the job was given up after {lost.attempts} attempts.")
        return FAILED
    _move(s, lost.job_id, (RUNNING,), QUEUED, *expired, worker_id=None, lease_expires_at=None, queued_at=now)
    add_event(s, lost.job_id, f"{why}; the job was queued again and resumes from its last checkpoint.",
              level="warn")
    publisher.publish_in(s, "train.requested", trainer_pb2.TrainRequested(job_id=lost.job_id), lost.tenant_id,
                         key=lost.job_id)
    JOBS_REQUEUED.labels("lease_expired").inc()
    return QUEUED


def succeed(s: Session, publisher: EventPublisher, job: Job, worker_id: str, result: TrainResult, *,
            fine_tuned_model: str, result_file: str | None, learning_rate: float) -> None:
    """running → succeeded by its worker: stores the outcome and publishes ``job.succeeded`` (which
    the registry turns into a model version). ``job`` is the job as its worker read it. A result without
    an adapter (a remote that offers no download) has an empty ``adapter_uri`` and its ``remote_model``:
    the registry registers it as an external model."""
    adapter_uri = str(result.adapter_dir) if result.adapter_dir is not None else ""
    _move(s, job.id, (RUNNING,), SUCCEEDED, _held_by(worker_id), finished_at=utcnow(), lease_expires_at=None,
          result_file=result_file, fine_tuned_model=fine_tuned_model, trained_tokens=result.trained_tokens,
          adapter_uri=adapter_uri or None, device=result.device, valid_loss=result.valid_loss)
    add_event(s, job.id, f"New fine-tuned model created: {fine_tuned_model}")
    add_event(s, job.id, "The job has successfully completed.")
    hyperparameters = {**job_hyperparameters(job), "seed": job.seed, "learning_rate": learning_rate}
    publisher.publish_in(s, "job.succeeded", trainer_pb2.JobSucceeded(
        job_id=job.id, base_model=job.model, fine_tuned_model=fine_tuned_model,
        adapter_uri=adapter_uri, trained_tokens=result.trained_tokens, lora_rank=result.lora_r,
        target_modules=result.target_modules, final_loss=result.final_loss or 0.0,
        training_file=job.training_file, validation_file=job.validation_file or "",
        hyperparameters_json=json.dumps(hyperparameters), valid_loss=result.valid_loss,
        n_epochs=job.n_epochs, steps=result.steps, result_file=result_file or "",
        dataset_version=job.training_file if is_dataset_version(job.training_file) else "",
        parent_model=job.parent_model or "", method=job.method_type or "supervised", backend=job.backend or "trl",
        remote_job_id=getattr(result, "remote_job_id", None) or "",
        remote_model=getattr(result, "remote_model", None) or "",
        remote_base_url=getattr(result, "remote_base_url", None) or ""),
        job.tenant_id, key=job.id)
    JOBS_FINISHED.labels(SUCCEEDED).inc()


# -- what a running job reports (no status change) -----------------------------------------------

def _held(s: Session, job_id: str, worker_id: str) -> Job | None:
    """The job, locked, if ``worker_id`` still holds it (running under its lease)."""
    job = repository.job_by_id(s, job_id, lock=True)
    if job is None or job.status != RUNNING or job.worker_id != worker_id:
        log.warning("job is no longer ours; leaving it", job_id=job_id)
        return None
    return job


def record_progress(s: Session, job_id: str, worker_id: str, p: Progress) -> bool:
    """Store a training report of ``worker_id``'s running job as a ``metrics`` event; ``False`` (and
    nothing written) if the job is no longer its. Publish it with :func:`publish_progress` after
    the commit."""
    job = _held(s, job_id, worker_id)
    if job is None:
        return False
    if p.eta_seconds is not None:
        job.estimated_finish = utcnow() + timedelta(seconds=p.eta_seconds)
    job.trained_tokens = p.tokens_seen
    loss = f"{p.train_loss:.4f}" if p.train_loss is not None else "n/a"
    valid = f", validation loss={p.valid_loss:.4f}" if p.valid_loss is not None else ""
    data = {"step": p.step, "total_steps": p.total_steps, "epoch": p.epoch, "train_loss": p.train_loss,
            "valid_loss": p.valid_loss, "learning_rate": p.learning_rate,
            "tokens_per_second": p.tokens_per_second, "eta_seconds": p.eta_seconds}
    add_event(s, job_id, f"Step {p.step}/{p.total_steps}: training loss={loss}{valid}", type="metrics", data=data)
    return True


def record_remote_job(s: Session, job_id: str, worker_id: str, remote_job_id: str) -> bool:
    """Store the remote job that trains ``worker_id``'s running job (backend openai_compatible), before
    the worker waits on it; ``False`` (and nothing written) if the job is no longer its."""
    job = _held(s, job_id, worker_id)
    if job is None:
        return False
    job.remote_job_id = remote_job_id
    return True


def record_event(s: Session, job_id: str, worker_id: str, message: str, *, level: str = "info",
                 data: dict[str, Any] | None = None) -> bool:
    """Add an event to ``worker_id``'s running job (e.g. one mirrored from its remote job); ``False``
    (and nothing written) if the job is no longer its."""
    if _held(s, job_id, worker_id) is None:
        return False
    add_event(s, job_id, message, level=level, data=data)
    return True


def publish_progress(publisher: EventPublisher, job_id: str, tenant_id: str, p: Progress) -> None:
    """``job.progress``, without waiting for the broker (progress is frequent and expendable; one the
    producer cannot deliver is kept in the outbox when the publisher has a database)."""
    publisher.publish("job.progress", trainer_pb2.JobProgress(
        job_id=job_id, step=p.step, total_steps=p.total_steps, epoch=p.epoch,
        train_loss=p.train_loss or 0.0, tokens_per_second=p.tokens_per_second,
        eta_seconds=p.eta_seconds or 0.0, valid_loss=p.valid_loss or 0.0), tenant_id, key=job_id, wait=False)


def record_checkpoint(s: Session, job_id: str, worker_id: str, checkpoint: Checkpoint) -> bool:
    """Store a checkpoint of ``worker_id``'s running job (once per step) with its event; ``False``
    if the job is no longer its or the step is already stored."""
    if _held(s, job_id, worker_id) is None or repository.has_checkpoint(s, job_id, checkpoint.step):
        return False
    s.add(JobCheckpoint(id=new_id("ftckpt"), job_id=job_id, step=checkpoint.step, epoch=checkpoint.epoch,
                        train_loss=checkpoint.train_loss, valid_loss=checkpoint.valid_loss,
                        path=str(checkpoint.path)))
    valid = f", validation loss={checkpoint.valid_loss:.4f}" if checkpoint.valid_loss is not None else ""
    add_event(s, job_id, f"Checkpoint saved at step {checkpoint.step} (epoch {checkpoint.epoch:.2f}){valid}.",
              data={"step": checkpoint.step, "epoch": checkpoint.epoch, "train_loss": checkpoint.train_loss,
                    "valid_loss": checkpoint.valid_loss})
    CHECKPOINTS.inc()
    return True
