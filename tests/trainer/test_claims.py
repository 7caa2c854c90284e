"""Workers claim jobs from the database: concurrent claimers on PostgreSQL each get a different job,
claims go to the longest waiting job and skip cancel requests, an idle worker finds a job that never
had an event, an event only wakes the worker, a worker with two slots trains two jobs at once, and a
worker that shuts down hands its job back to the next one. Real PostgreSQL, real broker, real
dataset gRPC server and real training of the small model for a step or three."""

from __future__ import annotations

import json
import queue
import secrets
import socket
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from kafka import KafkaProducer
from prometheus_client import REGISTRY
from sqlalchemy import create_engine, inspect, select, text

from coachforge.common.v1.envelope_pb2 import Envelope
from coachforge.trainer.v1 import trainer_pb2
from coachforge_dataset import grpc as dataset_grpc
from coachforge_dataset import service as dataset_service
from coachforge_dataset.service import DatasetDeps
from coachforge_dataset.settings import DatasetSettings
from coachforge_launcher.models import BASE_MODEL_ID
from coachforge_shared import migrate
from coachforge_shared.auth import Authenticator, create_tenant
from coachforge_shared.db import Database
from coachforge_shared.events import EventConsumer, EventPublisher, encode, ensure_topics
from coachforge_shared.grpc_server import GrpcServerThread, InternalChannel
from coachforge_shared.ids import new_id, utcnow
from coachforge_shared.settings import PlatformSettings
from coachforge_trainer import lifecycle
from coachforge_trainer.models import Job, JobEvent
from coachforge_trainer.service import TrainerDeps
from coachforge_trainer.settings import TrainerSettings
from coachforge_trainer.sft import Checkpoint
from coachforge_trainer.worker import Worker

FINAL = ("succeeded", "failed", "cancelled")
T0 = utcnow() - timedelta(hours=1)
TOKEN = "internal-test-token"


# -- fixtures and helpers ------------------------------------------------------------------------

def _database(url: str) -> Database:
    migrate.upgrade(url)
    db = Database(url)
    create_tenant(db, "acme")
    return db


@pytest.fixture
def pg(scratch_postgres: str) -> Iterator[Database]:
    """A migrated PostgreSQL database of the test's own, with tenant ``acme``."""
    db = _database(scratch_postgres)
    yield db
    db.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def any_db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    """The same on SQLite (the all-in-one's database) and on PostgreSQL."""
    url = (f"sqlite:///{tmp_path / 'claims.db'}" if request.param == "sqlite"
           else request.getfixturevalue("scratch_postgres"))
    db = _database(url)
    yield db
    db.dispose()


@pytest.fixture
def publisher(broker: str) -> Iterator[EventPublisher]:
    ensure_topics(broker)
    events = EventPublisher(broker, "test-claims")
    yield events
    events.close()


@pytest.fixture
def nowhere() -> Iterator[InternalChannel]:
    """A channel to no server, for workers whose jobs never get as far as reading their data."""
    channel = InternalChannel("127.0.0.1:1", "unused")
    yield channel
    channel.close()


def _deps(db: Database, publisher: EventPublisher, channel: InternalChannel, **settings: Any) -> TrainerDeps:
    return TrainerDeps(db=db, settings=TrainerSettings(**settings), publisher=publisher, dataset=channel,
                       registry=channel)


def _job(db: Database, queued_at: Any = T0, **fields: Any) -> str:
    job_id = new_id("ftjob")
    row: dict[str, Any] = {"tenant_id": "acme", "model": "base", "status": "queued", "training_file": "file-x",
                           "n_epochs": 1, "batch_size": 1, "learning_rate_multiplier": 1.0, "seed": 1,
                           "queued_at": queued_at, **fields}
    with db.session() as s:
        s.add(Job(id=job_id, **row))
    return job_id


def _get(db: Database, job_id: str) -> Job:
    with db.session() as s:
        job = s.get(Job, job_id)
        assert job is not None
        s.expunge(job)
        return job


def _messages(db: Database, job_id: str) -> list[str]:
    with db.session() as s:
        return list(s.scalars(select(JobEvent.message).where(JobEvent.job_id == job_id).order_by(JobEvent.seq)))


def _wait_final(db: Database, job_ids: list[str], timeout: float = 600) -> list[Job]:
    """The jobs once every one has finished (the timeout only stops a hung test)."""
    deadline = time.monotonic() + timeout
    while True:
        jobs = [_get(db, job_id) for job_id in job_ids]
        if all(job.status in FINAL for job in jobs):
            return jobs
        assert time.monotonic() < deadline, [(job.id, job.status) for job in jobs]
        time.sleep(0.2)


class Observed(Worker):
    """A worker that tells the test about each claim of its slots: the thread and what it got."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.claims: queue.Queue[tuple[str, tuple[str, str] | None]] = queue.Queue()

    def claim(self) -> tuple[str, str] | None:
        claimed = super().claim()
        self.claims.put((threading.current_thread().name, claimed))
        return claimed

    def next_claim(self) -> tuple[str, tuple[str, str] | None]:
        return self.claims.get(timeout=120)


# -- claiming ------------------------------------------------------------------------------------

def test_concurrent_claimers_each_get_a_different_job(pg: Database) -> None:
    """Four claimers at once, each holding its transaction open until all four have claimed: with
    SKIP LOCKED none waits for another's row, and none gets a job another got."""
    claimers = 4
    jobs = [_job(pg, queued_at=T0 + timedelta(seconds=i)) for i in range(claimers)]
    start, hold = threading.Barrier(claimers, timeout=60), threading.Barrier(claimers, timeout=60)
    got: dict[str, str | None] = {}
    errors: list[BaseException] = []
    lease = utcnow() + timedelta(seconds=60)

    def claimer(name: str) -> None:
        try:
            start.wait()
            with pg.session() as s:
                job = lifecycle.claim_next(s, name, lease)
                got[name] = None if job is None else job.id
                hold.wait()  # every claimer's transaction is open at once, holding its row
        except BaseException as err:
            errors.append(err)

    threads = [threading.Thread(target=claimer, args=(f"w{i}",)) for i in range(claimers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert sorted(v for v in got.values() if v is not None) == sorted(jobs)
    for name, job_id in got.items():
        assert job_id is not None
        job = _get(pg, job_id)
        assert (job.status, job.worker_id, job.attempts) == ("running", name, 1)
        assert _messages(pg, job_id) == [f"Fine-tuning job started on worker {name}."]
    with pg.session() as s:
        assert lifecycle.claim_next(s, "late", lease) is None


def test_claims_take_the_longest_waiting_job_and_skip_cancel_requests(any_db: Database) -> None:
    db = any_db
    newest = _job(db, queued_at=T0 + timedelta(seconds=2))
    second = _job(db, queued_at=T0 + timedelta(seconds=1), created_at=T0)
    first = _job(db, queued_at=T0 + timedelta(seconds=1), created_at=T0 - timedelta(seconds=5))
    requeued = _job(db, queued_at=T0 + timedelta(seconds=3), attempts=1, started_at=T0)  # back from a lost worker
    cancelled = _job(db, queued_at=T0 - timedelta(seconds=10), cancel_requested=True)
    _job(db, status="running", queued_at=T0 - timedelta(seconds=20), worker_id="w0", attempts=1)
    waits = REGISTRY.get_sample_value("coachforge_training_queue_wait_seconds_count") or 0.0

    claimed = []
    lease = utcnow() + timedelta(seconds=60)
    while True:
        with db.session() as s:
            job = lifecycle.claim_next(s, "w1", lease)
            if job is None:
                break
            claimed.append(job.id)
    assert claimed == [first, second, newest, requeued]
    assert _get(db, cancelled).status == "queued"  # the API cancels it; no worker starts it
    assert REGISTRY.get_sample_value("coachforge_training_queue_wait_seconds_count") == waits + 4
    again = _get(db, requeued)
    assert (again.status, again.worker_id, again.attempts, again.started_at) == ("running", "w1", 2, T0)
    assert again.lease_expires_at == lease
    assert _messages(db, requeued) == ["Fine-tuning job started on worker w1 (attempt 2)."]


def test_the_event_handler_only_wakes_the_worker(db: Database, publisher: EventPublisher,
                                                 nowhere: InternalChannel, tmp_path: Path) -> None:
    create_tenant(db, "acme")
    job_id = _job(db)
    worker = Worker(_deps(db, publisher, nowhere), PlatformSettings(data_dir=tmp_path), "w1")
    env = Envelope(tenant_id="acme", type="train.requested", event_id=new_id("evt"))
    with db.session() as s:
        assert worker.handle(s, env, trainer_pb2.TrainRequested(job_id=job_id)) is None
    assert worker.wake.is_set()
    assert _get(db, job_id).status == "queued"  # claimed by a slot, not in the consumer's transaction


# -- workers ---------------------------------------------------------------------------------------

def test_an_idle_worker_finds_a_job_that_never_had_an_event(pg: Database, publisher: EventPublisher,
                                                            nowhere: InternalChannel, tmp_path: Path) -> None:
    """No consumer at all: the periodic scan alone finds the job."""
    worker = Observed(_deps(pg, publisher, nowhere, claim_scan_seconds=0.2),
                      PlatformSettings(data_dir=tmp_path, models_dir=tmp_path / "no-models"), "w-scan")
    worker.start()
    try:
        assert worker.next_claim()[1] is None  # nothing queued yet
        job_id = _job(pg)
        while (claimed := worker.next_claim()[1]) is None:
            pass
        assert claimed == (job_id, "acme")
    finally:
        worker.stop()
    job = _get(pg, job_id)
    # Claimed and run: this worker has no base model, so the job failed saying so.
    assert (job.status, job.worker_id, job.error_code) == ("failed", "w-scan", "model_unavailable")


def test_an_event_wakes_an_idle_worker_whose_slot_claims_the_job(pg: Database, publisher: EventPublisher,
                                                                 nowhere: InternalChannel, broker: str,
                                                                 tmp_path: Path) -> None:
    """The next scan is an hour away: the event wakes the slot, which claims on its own thread
    while the consumer keeps polling. (A topic of the test's own, so no older event wakes it.)"""
    topic = f"test-train-requested-{secrets.token_hex(4)}"
    ensure_topics(broker, [topic])
    worker = Observed(_deps(pg, publisher, nowhere, claim_scan_seconds=3600),
                      PlatformSettings(data_dir=tmp_path, models_dir=tmp_path / "no-models"), "w-wake")
    consumer = EventConsumer(broker, f"test-wake-{secrets.token_hex(4)}", [topic], worker.handle, pg)
    producer = KafkaProducer(bootstrap_servers=broker)
    worker.start()
    try:
        assert worker.next_claim()[1] is None  # idle, its next scan an hour away
        consumer.start()
        job_id = _job(pg)
        event = encode("train.requested", trainer_pb2.TrainRequested(job_id=job_id), "acme")
        producer.send(topic, value=event.SerializeToString(), key=job_id.encode()).get(timeout=30)
        thread, claimed = worker.next_claim()
        assert claimed == (job_id, "acme")
        assert thread.startswith("slot-")
        assert consumer.running
    finally:
        consumer.stop()
        producer.close()
        worker.stop()
    assert _get(pg, job_id).worker_id == "w-wake"


@pytest.fixture
def dataset_server(pg: Database, base_model_dir: Path, tmp_path: Path) -> Iterator[tuple[DatasetDeps, InternalChannel]]:
    """The real dataset service's gRPC server on the test's database (workers read training data from it)."""
    deps = DatasetDeps(db=pg, settings=DatasetSettings(trainer_grpc_target=""), files_dir=tmp_path / "files",
                       models_dir=base_model_dir.parent)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = GrpcServerThread([dataset_grpc.registration(deps)], Authenticator(pg, TOKEN), f"127.0.0.1:{port}").start()
    channel = InternalChannel(f"127.0.0.1:{port}", TOKEN)
    try:
        yield deps, channel
    finally:
        channel.close()
        server.stop()


def _training_file(deps: DatasetDeps) -> str:
    lines = [json.dumps({"messages": [{"role": "user", "content": f"I ran {i + 3} km today. Enough?"},
                                      {"role": "assistant", "content": f"{i + 3} km easy is plenty."}]})
             for i in range(2)]
    content = ("\n".join(lines) + "\n").encode()
    stored = dataset_service.store_upload(deps, "acme", "train.jsonl", "fine-tune", [content])
    return str(stored.id)


def _training_job(db: Database, file_id: str, n_epochs: int = 1) -> str:
    """A job of one optimizer step per epoch (two examples, batch 2) on the small model."""
    return _job(db, model=BASE_MODEL_ID, training_file=file_id, n_epochs=n_epochs, batch_size=2,
                method_json=json.dumps({"max_length": 64, "lora_r": 4}))


class Together(Observed):
    """Holds each job it claimed at the start of its run until two jobs have started here: with
    fewer than two slots the barrier breaks instead."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.together = threading.Barrier(2, timeout=300)

    def run(self, job_id: str, tenant_id: str) -> None:
        self.together.wait()
        super().run(job_id, tenant_id)


def test_a_worker_with_two_slots_trains_two_jobs_at_once(pg: Database, publisher: EventPublisher,
                                                         dataset_server: tuple[DatasetDeps, InternalChannel],
                                                         base_model_dir: Path, tmp_path: Path) -> None:
    deps, channel = dataset_server
    file_id = _training_file(deps)
    jobs = [_training_job(pg, file_id), _training_job(pg, file_id)]
    worker = Together(_deps(pg, publisher, channel, concurrency=2),
                      PlatformSettings(data_dir=tmp_path, models_dir=base_model_dir.parent), "w-two")
    worker.start()
    try:
        finished = _wait_final(pg, jobs)
    finally:
        worker.stop()
    assert not worker.together.broken
    claims = []
    while not worker.claims.empty():
        thread, claimed = worker.claims.get()
        if claimed is not None:
            claims.append((thread, claimed[0]))
    assert sorted(job_id for _, job_id in claims) == sorted(jobs)
    assert {thread for thread, _ in claims} == {"slot-0", "slot-1"}
    for job in finished:
        assert (job.status, job.worker_id, job.attempts) == ("succeeded", "w-two", 1), job.error_message
        assert job.adapter_uri and (Path(job.adapter_uri) / "adapter_model.safetensors").is_file()


class ShutsDownAtFirstCheckpoint(Worker):
    """Told to shut down (as SIGTERM tells a worker) once its job saved its first checkpoint."""

    def _record_checkpoint(self, job_id: str, checkpoint: Checkpoint) -> None:
        super()._record_checkpoint(job_id, checkpoint)
        self.shutting_down.set()


def test_a_worker_shutting_down_hands_its_job_to_the_next(pg: Database, publisher: EventPublisher,
                                                          dataset_server: tuple[DatasetDeps, InternalChannel],
                                                          base_model_dir: Path, tmp_path: Path) -> None:
    deps, channel = dataset_server
    job_id = _training_job(pg, _training_file(deps), n_epochs=3)
    platform = PlatformSettings(data_dir=tmp_path, models_dir=base_model_dir.parent)
    stopping = ShutsDownAtFirstCheckpoint(_deps(pg, publisher, channel), platform, "w-stopping")
    stopping.start()
    deadline = time.monotonic() + 600
    while not stopping.shutting_down.is_set():
        job = _get(pg, job_id)
        assert job.status not in FINAL and time.monotonic() < deadline, (job.status, job.error_message)
        time.sleep(0.2)
    stopping.stop()  # as main() does on SIGTERM: the slot pauses the job and queues it again
    paused = _get(pg, job_id)
    assert (paused.status, paused.worker_id, paused.lease_expires_at) == ("queued", None, None)
    assert any(m.startswith("Worker shut down at step 2") for m in _messages(pg, job_id))

    following = Worker(_deps(pg, publisher, channel), platform, "w-next")
    following.start()
    try:
        (job,) = _wait_final(pg, [job_id])
    finally:
        following.stop()
    assert (job.status, job.worker_id, job.attempts) == ("succeeded", "w-next", 2), job.error_message
    messages = _messages(pg, job_id)
    assert "Fine-tuning job started on worker w-next (attempt 2)." in messages
    assert any(m.startswith("Resuming from the checkpoint at step 2 ") for m in messages)


# -- the migration ---------------------------------------------------------------------------------

@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_the_claim_order_migration_indexes_and_dates_queued_jobs(backend: str, tmp_path: Path,
                                                                 request: pytest.FixtureRequest) -> None:
    """Queued jobs from before ``queued_at`` was recorded get their creation time (so they keep their
    place in the claim order on both databases); the index comes and goes with the revision."""
    url = f"sqlite:///{tmp_path / 'm.db'}" if backend == "sqlite" else request.getfixturevalue("scratch_postgres")
    migrate.upgrade(url, "e8a3b9c0d1f2")
    engine = create_engine(url)

    def indexes() -> set[str]:
        return {str(i["name"]) for i in inspect(engine).get_indexes("fine_tuning_jobs")}

    columns = ("id, tenant_id, model, status, training_file, n_epochs, batch_size, learning_rate_multiplier, seed, "
               "cancel_requested, method_json, attempts, created_at")
    try:
        with engine.begin() as c:
            c.execute(text("INSERT INTO tenants (id, name, created_at) VALUES ('t', 't', CURRENT_TIMESTAMP)"))
            for job_id, status in (("ftjob-old", "queued"), ("ftjob-done", "succeeded")):
                c.execute(text(f"INSERT INTO fine_tuning_jobs ({columns}) VALUES (:id, 't', 'm', :status, 'f', 1, 1, "
                               "1.0, 1, false, '{}', 0, '2026-01-01 00:00:00')"), {"id": job_id, "status": status})
        assert "ix_fine_tuning_jobs_claim_order" not in indexes()
        migrate.upgrade(url)
        assert "ix_fine_tuning_jobs_claim_order" in indexes()
        with engine.begin() as c:
            rows = dict(c.execute(text("SELECT id, queued_at FROM fine_tuning_jobs")).tuples().all())
        assert rows["ftjob-old"] is not None and str(rows["ftjob-old"]).startswith("2026-01-01 00:00:00")
        assert rows["ftjob-done"] is None  # only queued jobs wait in the claim order
        migrate.downgrade(url, "e8a3b9c0d1f2")
        assert "ix_fine_tuning_jobs_claim_order" not in indexes()
    finally:
        engine.dispose()
