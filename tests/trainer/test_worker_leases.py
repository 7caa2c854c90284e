"""Job ownership: exclusive claims, lease renewal, and the sweep that re-queues (or gives up on)
jobs whose worker disappeared. Real database, real broker; no training."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from kafka import KafkaConsumer, TopicPartition
from sqlalchemy import select

from coachforge.common.v1.envelope_pb2 import Envelope
from coachforge.trainer.v1 import trainer_pb2
from coachforge_shared.db import Database
from coachforge_shared.events import EventPublisher, ensure_topics
from coachforge_shared.grpc_server import InternalChannel
from coachforge_shared.ids import new_id, utcnow
from coachforge_shared.models import Tenant
from coachforge_shared.outbox import OutboxRelay
from coachforge_shared.settings import PlatformSettings
from coachforge_trainer.models import Job, JobEvent
from coachforge_trainer.service import TrainerDeps
from coachforge_trainer.settings import TrainerSettings
from coachforge_trainer.worker import Worker


@pytest.fixture
def deps(db: Database, broker: str) -> Iterator[TrainerDeps]:
    ensure_topics(broker)
    with db.session() as s:
        s.add(Tenant(id="acme", name="Acme"))
    publisher = EventPublisher(broker, "test-worker", db=db)
    relay = OutboxRelay(db, publisher)  # sends the events the moves write, as in a worker process
    relay.start()
    channel = InternalChannel("127.0.0.1:1", "unused")
    yield TrainerDeps(db=db, settings=TrainerSettings(lease_seconds=30, max_attempts=2), publisher=publisher,
                      dataset=channel, registry=channel)
    relay.stop()
    publisher.close()
    channel.close()


def _worker(deps: TrainerDeps, name: str, tmp_path: Path) -> Worker:
    return Worker(deps, PlatformSettings(data_dir=tmp_path), name)


def _job(deps: TrainerDeps, status: str = "queued", **fields: object) -> str:
    job_id = new_id("ftjob")
    with deps.db.session() as s:
        s.add(Job(id=job_id, tenant_id="acme", model="base", status=status, training_file="file-x", n_epochs=1,
                  batch_size=1, learning_rate_multiplier=1.0, seed=1, **fields))
    return job_id


def _claim(worker: Worker) -> tuple[str, str] | None:
    """What the worker's next free slot claims: the longest waiting queued job."""
    return worker.claim()


def _get(deps: TrainerDeps, job_id: str) -> Job:
    with deps.db.session() as s:
        job = s.get(Job, job_id)
        assert job is not None
        s.expunge(job)
        return job


def _messages(deps: TrainerDeps, job_id: str) -> list[str]:
    with deps.db.session() as s:
        return list(s.scalars(select(JobEvent.message).where(JobEvent.job_id == job_id).order_by(JobEvent.seq)))


def test_only_one_worker_claims_a_job(deps: TrainerDeps, tmp_path: Path) -> None:
    job_id = _job(deps)
    first, second = _worker(deps, "w1", tmp_path), _worker(deps, "w2", tmp_path)
    assert _claim(first) == (job_id, "acme")
    assert _claim(second) is None  # taken: nothing else is queued
    job = _get(deps, job_id)
    assert (job.status, job.worker_id, job.attempts) == ("running", "w1", 1)
    assert job.lease_expires_at is not None and job.lease_expires_at > utcnow()


def test_a_cancelled_job_is_not_claimed(deps: TrainerDeps, tmp_path: Path) -> None:
    job_id = _job(deps, cancel_requested=True)
    assert _claim(_worker(deps, "w1", tmp_path)) is None
    assert _get(deps, job_id).status == "queued"


def test_lease_renewal_fails_once_the_job_is_someone_elses(deps: TrainerDeps, tmp_path: Path) -> None:
    job_id = _job(deps)
    worker = _worker(deps, "w1", tmp_path)
    _claim(worker)
    assert worker.renew_lease(job_id)
    with deps.db.session() as s:
        row = s.get(Job, job_id)
        assert row is not None
        row.worker_id = "w2"
    assert not worker.renew_lease(job_id)


def test_expired_lease_requeues_the_job_and_publishes_a_new_request(deps: TrainerDeps, broker: str,
                                                                    tmp_path: Path) -> None:
    consumer = KafkaConsumer(bootstrap_servers=broker, consumer_timeout_ms=10000)
    partitions = [TopicPartition("train.requested", p) for p in consumer.partitions_for_topic("train.requested")]
    consumer.assign(partitions)
    consumer.seek_to_end()
    for tp in partitions:
        consumer.position(tp)  # resolve "end" now, before the event is sent
    job_id = _job(deps, status="running", worker_id="dead-worker", attempts=1,
                  lease_expires_at=utcnow() - timedelta(seconds=1))
    live = _job(deps, status="running", worker_id="alive", attempts=1,
                lease_expires_at=utcnow() + timedelta(seconds=60))

    assert _worker(deps, "sweeper", tmp_path).requeue_expired() == [job_id]

    job = _get(deps, job_id)
    assert (job.status, job.worker_id, job.lease_expires_at) == ("queued", None, None)
    assert any("dead-worker stopped renewing its lease" in m for m in _messages(deps, job_id))
    assert _get(deps, live).status == "running"
    requested = []
    for record in consumer:
        env = Envelope.FromString(record.value)
        payload = trainer_pb2.TrainRequested()
        env.payload.Unpack(payload)
        requested.append(payload.job_id)
        if job_id in requested:
            break
    consumer.close()
    assert job_id in requested
    assert live not in requested


def test_a_job_that_lost_its_worker_too_often_fails(deps: TrainerDeps, tmp_path: Path) -> None:
    job_id = _job(deps, status="running", worker_id="dead-worker", attempts=2,
                  lease_expires_at=utcnow() - timedelta(seconds=1))
    assert _worker(deps, "sweeper", tmp_path).requeue_expired() == [job_id]
    job = _get(deps, job_id)
    assert job.status == "failed" and job.error_code == "worker_lost"
    assert job.error_message is not None and "after 2 attempts" in job.error_message


def test_a_cancel_requested_while_the_worker_was_lost_cancels(deps: TrainerDeps, tmp_path: Path) -> None:
    job_id = _job(deps, status="running", worker_id="dead-worker", attempts=1, cancel_requested=True,
                  lease_expires_at=utcnow() - timedelta(seconds=1))
    _worker(deps, "sweeper", tmp_path).requeue_expired()
    assert _get(deps, job_id).status == "cancelled"


def test_stored_method_settings_become_training_parameters(deps: TrainerDeps) -> None:
    from coachforge_trainer.spec import method_settings

    job_id = _job(deps, method_json=json.dumps({"lora_r": 8, "target_modules": ["q_proj", "v_proj"],
                                                "checkpoint_steps": 5}))
    job = _get(deps, job_id)
    params = method_settings(deps.settings, job).train_params(job, base_learning_rate=1e-4)
    assert (params.lora_r, params.target_modules, params.checkpoint_steps) == (8, ["q_proj", "v_proj"], 5)
    assert params.lora_alpha == deps.settings.lora_alpha  # not stored: the default
    assert params.learning_rate == pytest.approx(1e-4)


def test_metrics_csv_has_one_row_per_step_keeping_the_latest_report() -> None:
    from coachforge_trainer.worker import metrics_csv

    reports = [{"step": 1, "epoch": 0.5, "train_loss": 2.0, "learning_rate": 1e-4, "tokens_per_second": 90.0},
               {"step": 2, "epoch": 1.0, "train_loss": 1.5, "valid_loss": 1.7},
               {"step": 2, "epoch": 1.0, "train_loss": 1.4, "valid_loss": 1.6},  # after a resume
               {"estimated_tokens": 10}]  # not a step report
    assert metrics_csv(reports).decode().splitlines() == [
        "step,epoch,train_loss,valid_loss,learning_rate,tokens_per_second",
        "1,0.5,2.0,,0.0001,90.0",
        "2,1.0,1.4,1.6,,",
    ]
