"""The job lifecycle on a real (SQLite) database: every legal move writes the status, its job events
and its event (into the outbox, in the move's transaction); every illegal one raises and leaves the
job, its events and the outbox untouched. The outbox relay and the broker are tested elsewhere."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from coachforge.trainer.v1 import trainer_pb2
from coachforge_shared.db import Database
from coachforge_shared.errors import FailedPrecondition
from coachforge_shared.events import decode, publish_in
from coachforge_shared.ids import new_id, utcnow
from coachforge_shared.models import OutboxEvent, Tenant
from coachforge_trainer import lifecycle, repository
from coachforge_trainer.lifecycle import (
    CANCELLED,
    FAILED,
    QUEUED,
    RUNNING,
    STATUSES,
    SUCCEEDED,
    VALIDATING_FILES,
    IllegalTransition,
    Note,
)
from coachforge_trainer.models import Job, JobCheckpoint, JobEvent


class Recorder:
    """The publisher without a broker: writes events into the move's transaction as the real one
    does (``events`` reads back the committed ones); with ``refuse`` the write fails. Events sent
    without a transaction (``publish``) are kept in a list."""

    def __init__(self, db: Database | None = None, refuse: bool = False) -> None:
        self.db = db
        self.sent: list[tuple[str, Any, str, str | None]] = []
        self.refuse = refuse

    def publish_in(self, s: Session, event_type: str, payload: Any, tenant_id: str, key: str | None = None) -> str:
        if self.refuse:
            raise RuntimeError("outbox unavailable")
        return publish_in(s, event_type, payload, tenant_id, key)

    def publish(self, event_type: str, payload: Any, tenant_id: str, key: str | None = None, **_: Any) -> str:
        self.sent.append((event_type, payload, tenant_id, key))
        return "evt"

    @property
    def events(self) -> list[tuple[str, Any, str, str | None]]:
        if self.db is None:
            return list(self.sent)
        with self.db.session() as s:
            rows = list(s.scalars(select(OutboxEvent).order_by(OutboxEvent.id)))
        return [(env.type, payload, env.tenant_id, row.key)
                for row in rows for env, payload in [decode(row.envelope)]] + self.sent

    def types(self) -> list[str]:
        return [t for t, *_ in self.events]


@pytest.fixture
def db(db: Database) -> Database:
    with db.session() as s:
        s.add(Tenant(id="acme", name="Acme"))
    return db


@pytest.fixture
def publisher(db: Database) -> Recorder:
    return Recorder(db)


def _job(db: Database, status: str = QUEUED, **fields: Any) -> str:
    job_id = new_id("ftjob")
    row: dict[str, Any] = {"tenant_id": "acme", "model": "base", "training_file": "file-x", "n_epochs": 2,
                           "batch_size": 4, "learning_rate_multiplier": 1.0, "seed": 7, **fields}
    with db.session() as s:
        s.add(Job(id=job_id, status=status, **row))
    return job_id


def _running(db: Database, worker: str = "w1", **fields: Any) -> str:
    return _job(db, RUNNING, worker_id=worker, attempts=1, started_at=utcnow(),
                lease_expires_at=utcnow() + timedelta(seconds=60), **fields)


def _get(db: Database, job_id: str) -> Job:
    with db.session() as s:
        job = s.get(Job, job_id)
        assert job is not None
        s.expunge(job)
        return job


def _events(db: Database, job_id: str) -> list[JobEvent]:
    with db.session() as s:
        rows = list(s.scalars(select(JobEvent).where(JobEvent.job_id == job_id).order_by(JobEvent.seq)))
        s.expunge_all()
        return rows


def _row(job: Job) -> dict[str, Any]:
    return {c.name: getattr(job, c.key) for c in Job.__table__.columns}


def _result(tmp_path: Path) -> Any:
    return SimpleNamespace(adapter_dir=tmp_path / "adapter", steps=6, trained_tokens=1234, final_loss=0.5,
                           valid_loss=0.7, resumed_from_step=0, device="cpu", lora_r=8,
                           target_modules=["q_proj", "v_proj"])


# -- the table ---------------------------------------------------------------------------------

def test_the_table_has_every_status_and_the_final_ones_lead_nowhere() -> None:
    assert set(STATUSES) == {"validating_files", "queued", "running", "succeeded", "failed", "cancelled"}
    assert {SUCCEEDED, FAILED, CANCELLED} == lifecycle.FINAL
    assert all(target in STATUSES for targets in lifecycle.TRANSITIONS.values() for target in targets)
    assert issubclass(IllegalTransition, FailedPrecondition)


# -- creation ----------------------------------------------------------------------------------

def test_create_queues_the_job_writes_its_events_and_requests_training(db: Database, publisher: Recorder) -> None:
    job = Job(id=new_id("ftjob"), tenant_id="acme", model="base", training_file="file-x", n_epochs=1,
              batch_size=1, learning_rate_multiplier=1.0, seed=1)
    with db.session() as s:
        lifecycle.create(s, publisher, job, [Note("Validated it"), Note("Estimated it", data={"tokens": 3})])  # type: ignore[arg-type]
    assert _get(db, job.id).status == QUEUED
    events = _events(db, job.id)
    assert [e.message for e in events] == [f"Created fine-tuning job: {job.id}", "Validated it", "Estimated it"]
    assert json.loads(events[2].data_json or "null") == {"tokens": 3}
    [(event_type, payload, tenant, key)] = publisher.events
    assert (event_type, payload, tenant, key) == ("train.requested", trainer_pb2.TrainRequested(job_id=job.id),
                                                  "acme", job.id)


def test_a_refused_publish_leaves_no_job_behind(db: Database) -> None:
    job = Job(id=new_id("ftjob"), tenant_id="acme", model="base", training_file="file-x", n_epochs=1,
              batch_size=1, learning_rate_multiplier=1.0, seed=1)
    with pytest.raises(RuntimeError), db.session() as s:
        lifecycle.create(s, Recorder(refuse=True), job)  # type: ignore[arg-type]
    with db.session() as s:
        assert s.get(Job, job.id) is None
        assert not list(s.scalars(select(JobEvent)))


def test_a_create_rolled_back_leaves_no_event_behind(db: Database, publisher: Recorder) -> None:
    job = Job(id=new_id("ftjob"), tenant_id="acme", model="base", training_file="file-x", n_epochs=1,
              batch_size=1, learning_rate_multiplier=1.0, seed=1)
    with pytest.raises(RuntimeError), db.session() as s:
        lifecycle.create(s, publisher, job)  # type: ignore[arg-type]
        raise RuntimeError("the request failed after the job was written")
    with db.session() as s:
        assert s.get(Job, job.id) is None
    assert publisher.events == []


# -- claim -------------------------------------------------------------------------------------

def test_claim_runs_a_queued_job_on_the_worker(db: Database, publisher: Recorder) -> None:
    job_id = _job(db, queued_at=utcnow())
    lease = utcnow() + timedelta(seconds=30)
    with db.session() as s:
        lifecycle.claim(s, job_id, "acme", "w1", lease)
    job = _get(db, job_id)
    assert (job.status, job.worker_id, job.attempts, job.lease_expires_at) == (RUNNING, "w1", 1, lease)
    assert job.started_at is not None
    assert [e.message for e in _events(db, job_id)] == ["Fine-tuning job started on worker w1."]
    assert publisher.events == []


def test_a_second_claim_names_the_attempt_and_keeps_the_first_start(db: Database) -> None:
    started = utcnow() - timedelta(hours=1)
    job_id = _job(db, attempts=1, started_at=started)
    with db.session() as s:
        lifecycle.claim(s, job_id, "acme", "w2", utcnow() + timedelta(seconds=30))
    job = _get(db, job_id)
    assert (job.attempts, job.started_at) == (2, started)
    assert [e.message for e in _events(db, job_id)] == ["Fine-tuning job started on worker w2 (attempt 2)."]


@pytest.mark.parametrize("fields", [{"status": RUNNING, "worker_id": "w0"}, {"cancel_requested": True},
                                    {"tenant_id": "other"}], ids=["taken", "cancel-requested", "other-tenant"])
def test_claim_is_refused_and_changes_nothing(db: Database, fields: dict[str, Any]) -> None:
    with db.session() as s:
        s.add(Tenant(id="other", name="Other"))
    job_id = _job(db, **fields)
    before = _row(_get(db, job_id))
    with pytest.raises(IllegalTransition), db.session() as s:
        lifecycle.claim(s, job_id, "acme", "w1", utcnow() + timedelta(seconds=30))
    assert _row(_get(db, job_id)) == before
    assert _events(db, job_id) == []


# -- every move from every status ----------------------------------------------------------------

MOVES: dict[str, tuple[str, str, Callable[[Session, Recorder, str, Path], Any]]] = {
    # name: (the status it moves from, the status it moves to, the move made by worker w1)
    "claim": (QUEUED, RUNNING, lambda s, p, j, _: lifecycle.claim(s, j, "acme", "w1", utcnow())),
    "fail": (RUNNING, FAILED,
             lambda s, p, j, _: lifecycle.fail(s, p, j, "acme", "w1", "boom", "training_failed")),  # type: ignore[arg-type]
    "cancel": (RUNNING, CANCELLED, lambda s, p, j, _: lifecycle.cancel(s, p, j, "acme", "w1")),  # type: ignore[arg-type]
    "requeue": (RUNNING, QUEUED, lambda s, p, j, _: lifecycle.requeue(s, p, j, "acme", "w1", 3)),  # type: ignore[arg-type]
    "succeed": (RUNNING, SUCCEEDED, lambda s, p, j, tmp: lifecycle.succeed(
        s, p, repository.job_by_id(s, j), "w1", _result(tmp), fine_tuned_model="ft:x",  # type: ignore[arg-type]
        result_file=None, learning_rate=1e-4)),
}


@pytest.mark.parametrize("status", STATUSES)
@pytest.mark.parametrize("move", MOVES)
def test_each_move_works_from_its_status_only(db: Database, publisher: Recorder, tmp_path: Path, move: str,
                                              status: str) -> None:
    source, target, make = MOVES[move]
    assert target in lifecycle.TRANSITIONS[source]
    job_id = _job(db, status, worker_id="w1", attempts=1)
    before = _row(_get(db, job_id))
    if status != source:
        with pytest.raises(IllegalTransition) as err, db.session() as s:
            make(s, publisher, job_id, tmp_path)
        assert (err.value.status, err.value.target) == (status, target)
        assert _row(_get(db, job_id)) == before
        assert _events(db, job_id) == [] and publisher.events == []
        return
    with db.session() as s:
        make(s, publisher, job_id, tmp_path)
    assert _get(db, job_id).status == target
    assert _events(db, job_id)


# -- the worker's moves ------------------------------------------------------------------------

def test_fail_stores_the_error_and_publishes_job_failed(db: Database, publisher: Recorder) -> None:
    job_id = _running(db)
    with db.session() as s:
        lifecycle.fail(s, publisher, job_id, "acme", "w1", "Training failed: OOM", "training_failed")  # type: ignore[arg-type]
    job = _get(db, job_id)
    assert (job.status, job.error_code, job.error_message, job.lease_expires_at) == (
        FAILED, "training_failed", "Training failed: OOM", None)
    assert job.finished_at is not None
    [event] = _events(db, job_id)
    assert (event.level, event.message) == ("error", "Training failed: OOM")
    [(event_type, payload, tenant, key)] = publisher.events
    assert (event_type, tenant, key) == ("job.failed", "acme", job_id)
    assert payload == trainer_pb2.JobFinished(job_id=job_id, status=trainer_pb2.JOB_STATUS_FAILED,
                                              error_message="Training failed: OOM")


def test_cancel_publishes_job_cancelled_without_an_error(db: Database, publisher: Recorder) -> None:
    job_id = _running(db, cancel_requested=True)
    with db.session() as s:
        lifecycle.cancel(s, publisher, job_id, "acme", "w1")  # type: ignore[arg-type]
    job = _get(db, job_id)
    assert (job.status, job.error_code, job.error_message, job.lease_expires_at) == (CANCELLED, None, None, None)
    assert [(e.level, e.message) for e in _events(db, job_id)] == [("info", "Job cancelled.")]
    assert publisher.events[0][:2] == ("job.cancelled", trainer_pb2.JobFinished(
        job_id=job_id, status=trainer_pb2.JOB_STATUS_CANCELLED, error_message="Job cancelled."))


def test_requeue_frees_the_job_and_requests_training_again(db: Database, publisher: Recorder) -> None:
    job_id = _running(db)
    with db.session() as s:
        lifecycle.requeue(s, publisher, job_id, "acme", "w1", 12)  # type: ignore[arg-type]
    job = _get(db, job_id)
    assert (job.status, job.worker_id, job.lease_expires_at, job.attempts) == (QUEUED, None, None, 1)
    assert job.queued_at is not None
    [event] = _events(db, job_id)
    assert event.level == "warn" and "Worker shut down at step 12" in event.message
    assert publisher.events == [("train.requested", trainer_pb2.TrainRequested(job_id=job_id), "acme", job_id)]


def test_succeed_stores_the_outcome_and_publishes_job_succeeded(db: Database, publisher: Recorder,
                                                               tmp_path: Path) -> None:
    job_id = _running(db, training_file="dsv-1", validation_file="dsv-1",
                      method_json=json.dumps({"lora_r": 8}))
    job = _get(db, job_id)
    with db.session() as s:
        lifecycle.succeed(s, publisher, job, "w1", _result(tmp_path), fine_tuned_model="ft:base:acme::abc",  # type: ignore[arg-type]
                          result_file="file-metrics", learning_rate=2e-4)
    job = _get(db, job_id)
    assert (job.status, job.fine_tuned_model, job.trained_tokens, job.adapter_uri, job.device, job.valid_loss,
            job.result_file, job.lease_expires_at) == (SUCCEEDED, "ft:base:acme::abc", 1234,
                                                       str(tmp_path / "adapter"), "cpu", 0.7, "file-metrics", None)
    assert [e.message for e in _events(db, job_id)] == ["New fine-tuned model created: ft:base:acme::abc",
                                                         "The job has successfully completed."]
    [(event_type, payload, tenant, key)] = publisher.events
    assert (event_type, tenant, key) == ("job.succeeded", "acme", job_id)
    assert (payload.fine_tuned_model, payload.base_model, payload.dataset_version, payload.result_file,
            payload.lora_rank, payload.steps, payload.n_epochs) == ("ft:base:acme::abc", "base", "dsv-1",
                                                                    "file-metrics", 8, 6, 2)
    assert json.loads(payload.hyperparameters_json) == {"n_epochs": 2, "batch_size": 4,
                                                        "learning_rate_multiplier": 1.0, "lora_r": 8, "seed": 7,
                                                        "learning_rate": 2e-4}


def test_a_worker_cannot_move_a_job_it_no_longer_holds(db: Database, publisher: Recorder, tmp_path: Path) -> None:
    job_id = _running(db, worker="w2")
    before = _row(_get(db, job_id))
    for _, _, make in MOVES.values():
        with pytest.raises(IllegalTransition), db.session() as s:
            make(s, publisher, job_id, tmp_path)
    assert _row(_get(db, job_id)) == before
    assert _events(db, job_id) == [] and publisher.events == []


def test_a_refused_publish_leaves_the_job_running(db: Database) -> None:
    job_id = _running(db)
    with pytest.raises(RuntimeError), db.session() as s:
        lifecycle.fail(s, Recorder(refuse=True), job_id, "acme", "w1", "boom", "training_failed")  # type: ignore[arg-type]
    assert _get(db, job_id).status == RUNNING
    assert _events(db, job_id) == []


def test_lease_renewal_only_for_the_holder(db: Database) -> None:
    job_id = _running(db)
    later = utcnow() + timedelta(minutes=5)
    with db.session() as s:
        assert lifecycle.renew_lease(s, job_id, "w1", later)
        assert not lifecycle.renew_lease(s, job_id, "w2", later + timedelta(minutes=1))
    assert _get(db, job_id).lease_expires_at == later


# -- cancel requests (the API) -------------------------------------------------------------------

@pytest.mark.parametrize("status", [VALIDATING_FILES, QUEUED])
def test_a_job_not_yet_started_is_cancelled_at_once(db: Database, publisher: Recorder, status: str) -> None:
    job_id = _job(db, status)
    with db.session() as s:
        returned = lifecycle.request_cancel(s, publisher, job_id)
    assert (returned.status, returned.cancel_requested) == (CANCELLED, True)
    assert returned.finished_at is not None
    job = _get(db, job_id)
    assert (job.status, job.cancel_requested) == (CANCELLED, True) and job.finished_at is not None
    assert [e.message for e in _events(db, job_id)] == ["Job cancelled before it started."]
    assert [(e[0], e[1].job_id) for e in publisher.events] == [("job.cancelled", job_id)]


def test_a_running_job_is_asked_to_stop(db: Database, publisher: Recorder) -> None:
    job_id = _running(db)
    with db.session() as s:
        returned = lifecycle.request_cancel(s, publisher, job_id)
    assert (returned.status, returned.cancel_requested) == (RUNNING, True)
    job = _get(db, job_id)
    assert (job.status, job.cancel_requested, job.finished_at) == (RUNNING, True, None)
    assert [e.message for e in _events(db, job_id)] == ["Cancellation requested; stopping after the current step."]


@pytest.mark.parametrize("status", sorted(lifecycle.FINAL))
def test_a_finished_job_cannot_be_cancelled(db: Database, status: str) -> None:
    job_id = _job(db, status, finished_at=utcnow())
    before = _row(_get(db, job_id))
    with pytest.raises(IllegalTransition) as err, db.session() as s:
        lifecycle.request_cancel(s, Recorder(), job_id)
    assert err.value.to_body()["error"] == {"message": f"Job {job_id} has already {status}.",
                                            "type": "invalid_request_error", "param": "fine_tuning_job_id",
                                            "code": None}
    assert err.value.http_status == 409
    assert _row(_get(db, job_id)) == before and _events(db, job_id) == []


# -- the sweep for lost workers --------------------------------------------------------------------

def _lost(db: Database, *, attempts: int = 1, cancel_requested: bool = False) -> repository.ExpiredLease:
    job_id = _job(db, RUNNING, worker_id="dead", attempts=attempts, cancel_requested=cancel_requested,
                  lease_expires_at=utcnow() - timedelta(seconds=1))
    with db.session() as s:
        [lost] = [e for e in repository.expired_leases(s, utcnow()) if e.job_id == job_id]
    return lost


def test_a_lost_job_is_queued_again(db: Database, publisher: Recorder) -> None:
    lost = _lost(db)
    with db.session() as s:
        assert lifecycle.recover(s, publisher, lost, utcnow(), max_attempts=3) == QUEUED  # type: ignore[arg-type]
    job = _get(db, lost.job_id)
    assert (job.status, job.worker_id, job.lease_expires_at) == (QUEUED, None, None)
    [event] = _events(db, lost.job_id)
    assert event.level == "warn" and event.message.startswith("Worker dead stopped renewing its lease")
    assert publisher.types() == ["train.requested"]


def test_a_job_lost_too_often_fails(db: Database, publisher: Recorder) -> None:
    lost = _lost(db, attempts=3)
    with db.session() as s:
        assert lifecycle.recover(s, publisher, lost, utcnow(), max_attempts=3) == FAILED  # type: ignore[arg-type]
    job = _get(db, lost.job_id)
    assert (job.status, job.error_code) == (FAILED, "worker_lost")
    assert job.error_message == "Worker dead stopped renewing its lease; the job was given up after 3 attempts."
    [event] = _events(db, lost.job_id)
    assert (event.level, event.message) == ("error", "Worker dead stopped renewing its lease; the job failed "
                                                     "after 3 attempts.")
    [(event_type, payload, _, _)] = publisher.events
    assert (event_type, payload.status, payload.error_message) == ("job.failed", trainer_pb2.JOB_STATUS_FAILED,
                                                                   event.message)


def test_a_lost_job_with_a_cancel_request_is_cancelled(db: Database, publisher: Recorder) -> None:
    lost = _lost(db, cancel_requested=True)
    with db.session() as s:
        assert lifecycle.recover(s, publisher, lost, utcnow(), max_attempts=3) == CANCELLED  # type: ignore[arg-type]
    job = _get(db, lost.job_id)
    assert (job.status, job.error_code, job.error_message) == (CANCELLED, None, None)
    assert publisher.types() == ["job.cancelled"]


def test_a_renewed_lease_is_not_recovered(db: Database, publisher: Recorder) -> None:
    lost = _lost(db)
    with db.session() as s:
        assert lifecycle.renew_lease(s, lost.job_id, "dead", utcnow() + timedelta(seconds=60))
    before = _row(_get(db, lost.job_id))
    with pytest.raises(IllegalTransition), db.session() as s:
        lifecycle.recover(s, publisher, lost, utcnow(), max_attempts=3)  # type: ignore[arg-type]
    assert _row(_get(db, lost.job_id)) == before
    assert _events(db, lost.job_id) == [] and publisher.events == []


# -- what a running job reports ------------------------------------------------------------------

def _progress(step: int) -> Any:
    return SimpleNamespace(step=step, total_steps=10, epoch=0.5, train_loss=1.25, learning_rate=1e-4,
                           tokens_seen=500, tokens_per_second=99.0, eta_seconds=30.0, valid_loss=None)


def test_progress_and_checkpoints_are_recorded_for_the_holder_only(db: Database, tmp_path: Path) -> None:
    job_id = _running(db)
    checkpoint = SimpleNamespace(step=5, epoch=0.5, path=tmp_path / "checkpoint-5", train_loss=1.2, valid_loss=None)
    with db.session() as s:
        assert not lifecycle.record_progress(s, job_id, "w2", _progress(5))
        assert not lifecycle.record_checkpoint(s, job_id, "w2", checkpoint)
    assert _events(db, job_id) == []
    with db.session() as s:
        assert lifecycle.record_progress(s, job_id, "w1", _progress(5))
        assert lifecycle.record_checkpoint(s, job_id, "w1", checkpoint)
    with db.session() as s:
        assert not lifecycle.record_checkpoint(s, job_id, "w1", checkpoint)  # once per step
        assert list(s.scalars(select(JobCheckpoint.step).where(JobCheckpoint.job_id == job_id))) == [5]
    job = _get(db, job_id)
    assert job.status == RUNNING and job.trained_tokens == 500 and job.estimated_finish is not None
    metrics, saved = _events(db, job_id)
    assert (metrics.type, metrics.message) == ("metrics", "Step 5/10: training loss=1.2500")
    assert json.loads(metrics.data_json or "{}")["tokens_per_second"] == 99.0
    assert saved.message == "Checkpoint saved at step 5 (epoch 0.50)."
    publisher = Recorder()
    lifecycle.publish_progress(publisher, job_id, "acme", _progress(5))  # type: ignore[arg-type]
    [(event_type, payload, _, key)] = publisher.events
    assert (event_type, payload.step, payload.train_loss, key) == ("job.progress", 5, 1.25, job_id)
