"""Trainer worker: claims queued fine-tuning jobs from the database and runs LoRA SFT on them,
``COACHFORGE_TRAINER_CONCURRENCY`` jobs at a time (its slots, default one).

Run it as ``coachforge-trainer-worker`` (or ``python -m coachforge_trainer.worker``).

Claiming: each slot is a thread that takes the longest waiting queued job
(:func:`coachforge_trainer.lifecycle.claim_next`) whenever it is free, trains it, and looks again.
Jobs of a remote backend (``openai_compatible``: trained by a remote fine-tuning API, which the
worker only follows) are claimed by ``COACHFORGE_TRAINER_REMOTE_CONCURRENCY`` remote slots of their
own, never by a training slot: following a remote job for hours holds no accelerator, and a worker
whose training slot is busy still follows remote jobs (even one whose remote is this platform).
The worker is also a member of the ``trainer-workers`` consumer group of ``train.requested``, but an
event only wakes its idle slots; it does not decide who trains which job. So every idle slot of every
worker can take any job (the topic's partitions do not bound how many jobs train at once, and a
worker never trains two jobs one after the other while others idle), and the consumer's poll thread
never trains: it keeps polling, and stays in its group, while jobs run for hours. An idle slot also
looks every ``claim_scan_seconds``, so a job whose event was lost is trained all the same.

Failure model: a worker holds a lease on its running job and renews it every
``lease_seconds / 3``. Every worker also sweeps for running jobs whose lease expired (their
worker was killed, lost its node, ...) and queues them again; the next worker resumes from
the job's last complete checkpoint. All status changes are conditional updates (made by
:mod:`coachforge_trainer.lifecycle`), so two workers never both own a job, and a worker that
lost its lease stops without touching it.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import shutil
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterable
from datetime import datetime, timedelta
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

from prometheus_client import start_http_server
from sqlalchemy.orm import Session

from coachforge.common.v1.envelope_pb2 import Envelope
from coachforge.dataset.v1 import dataset_pb2
from coachforge.registry.v1 import registry_pb2
from coachforge.trainer.v1 import trainer_pb2
from coachforge_shared.bootstrap import internal_token
from coachforge_shared.db import Database, OutageBackoff
from coachforge_shared.events import EventConsumer, EventPublisher
from coachforge_shared.grpc_server import InternalChannel, typed_rpc_errors
from coachforge_shared.ids import utcnow
from coachforge_shared.logging import configure_logging, get_logger
from coachforge_shared.outbox import OutboxRelay
from coachforge_shared.redact import plain_name, redact_paths
from coachforge_shared.settings import PlatformSettings
from coachforge_trainer import lifecycle, repository
from coachforge_trainer.backends import REMOTE_BACKENDS, TrainRun, get_backend
from coachforge_trainer.lifecycle import IllegalTransition
from coachforge_trainer.metrics import STEP_SECONDS, TOKENS_PER_SECOND, job_ended, job_progress
from coachforge_trainer.models import Job
from coachforge_trainer.remote import RemoteTrainingFailed
from coachforge_trainer.service import TrainerDeps
from coachforge_trainer.settings import TrainerSettings
from coachforge_trainer.spec import is_dataset_version, method_settings

if TYPE_CHECKING:
    from coachforge_trainer.sft import Checkpoint

log = get_logger("coachforge.trainer.worker")


def fine_tuned_name(job: Job) -> str:
    """``ft:<base>:<tenant>:<suffix>:<job id tail>``, like OpenAI's fine-tuned model names."""
    return f"ft:{job.model}:{job.tenant_id}:{job.suffix or ''}:{job.id.removeprefix('ftjob-')[:8]}"


METRICS_COLUMNS = ("step", "epoch", "train_loss", "valid_loss", "learning_rate", "tokens_per_second")


def metrics_csv(reports: Iterable[dict[str, Any]]) -> bytes:
    """The job's metrics as CSV, one row per step (a step reported twice, as after a resume from an
    earlier checkpoint, keeps its latest report)."""
    by_step: dict[int, dict[str, Any]] = {}
    for report in reports:
        if isinstance(report.get("step"), int):
            by_step[report["step"]] = report
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(METRICS_COLUMNS)
    for step in sorted(by_step):
        writer.writerow(["" if by_step[step].get(c) is None else by_step[step][c] for c in METRICS_COLUMNS])
    return out.getvalue().encode()


class Worker:
    def __init__(self, deps: TrainerDeps, platform: PlatformSettings, worker_id: str) -> None:
        self.deps = deps
        self.platform = platform
        self.worker_id = worker_id
        self.shutting_down = threading.Event()
        self.wake = threading.Event()
        """Set by a ``train.requested`` event (and by :meth:`stop`): idle slots look for a job now
        rather than at their next scan."""
        self.remote_wake = threading.Event()
        """The same for the remote slots (a flag of their own: their claims never clear the training slots')."""
        self._slots: list[threading.Thread] = []

    def _public(self, err: BaseException) -> str:
        """An error's text as a job's owner may see it (job.error, events): no server paths (the
        models, artifacts and data folders are named by label, any other path is ``<path>``)."""
        return redact_paths(str(err), {"models": self.platform.models_dir,
                                       "artifacts": self.platform.resolved_artifacts_dir,
                                       "data": self.platform.data_dir})[:2000]

    # -- claiming -----------------------------------------------------------------------------
    def _lease_until(self) -> datetime:
        return utcnow() + timedelta(seconds=self.deps.settings.lease_seconds)

    def handle(self, s: Session, env: Envelope, payload: trainer_pb2.TrainRequested) -> None:
        """A ``train.requested`` event wakes the idle slots, which claim from the database (the job
        named may already be another worker's; a slot takes whichever job waits longest). Returns at
        once: training never runs in the consumer's poll thread."""
        log.debug("training requested", job_id=payload.job_id)
        self.wake.set()
        self.remote_wake.set()

    def claim(self) -> tuple[str, str] | None:
        """Claim the longest waiting queued job to train here (not a remote backend's) for this worker:
        its id and tenant, or ``None``."""
        with self.deps.db.session() as s:
            job = lifecycle.claim_next(s, self.worker_id, self._lease_until(), remote=False)
            return None if job is None else (job.id, job.tenant_id)

    def claim_remote(self) -> tuple[str, str] | None:
        """Claim the longest waiting queued job of a remote backend (to follow) for this worker: its id and
        tenant, or ``None``."""
        with self.deps.db.session() as s:
            job = lifecycle.claim_next(s, self.worker_id, self._lease_until(), remote=True)
            return None if job is None else (job.id, job.tenant_id)

    # -- slots --------------------------------------------------------------------------------
    def train_forever(self, remote: bool = False) -> None:
        """One slot, until shutdown: claim a job, train it, repeat; with none queued, wait for a
        wake-up or the next scan. The wake-up flag is cleared before the claim, so a request that
        comes while the claim runs still wakes the slot afterwards. A training slot takes the jobs
        of local backends, a remote slot (``remote``) those of remote backends."""
        backoff = OutageBackoff("trainer-claim")
        wake = self.remote_wake if remote else self.wake
        while not self.shutting_down.is_set():
            wake.clear()
            if self.shutting_down.is_set():
                break  # woken by stop(): claim nothing more
            try:
                claimed = self.claim_remote() if remote else self.claim()
            except Exception as err:  # the database may be away: logged once, claimed again later
                backoff.failed(err, "claiming a job failed")
                claimed = None
            else:
                backoff.succeeded()
            if claimed is None:
                wake.wait(backoff.wait(self.deps.settings.claim_scan_seconds))
                continue
            try:
                self.run(*claimed)
            except Exception:  # the lease expires and the sweep queues the job again
                log.exception("running the job failed", job_id=claimed[0])

    def start(self) -> None:
        """Start the worker's slots: ``concurrency`` threads, each training one job at a time, and
        ``remote_concurrency`` threads, each following one remote job at a time."""
        self._slots = [threading.Thread(target=self.train_forever, name=f"slot-{i}", daemon=True)
                       for i in range(self.deps.settings.concurrency)]
        self._slots += [threading.Thread(target=self.train_forever, args=(True,), name=f"remote-slot-{i}",
                                         daemon=True) for i in range(self.deps.settings.remote_concurrency)]
        for slot in self._slots:
            slot.start()

    def stop(self, timeout: float | None = None) -> None:
        """Stop claiming and wait for the slots: a running job pauses after its current step, saves
        a checkpoint and is queued again for the next worker."""
        self.shutting_down.set()
        self.wake.set()
        self.remote_wake.set()
        for slot in self._slots:
            slot.join(timeout)

    # -- leases -------------------------------------------------------------------------------
    def renew_lease(self, job_id: str) -> bool:
        """Extend this worker's lease on ``job_id``; ``False`` if the job is no longer ours."""
        with self.deps.db.session() as s:
            return lifecycle.renew_lease(s, job_id, self.worker_id, self._lease_until())

    def requeue_expired(self) -> list[str]:
        """Queue again (or fail, after ``max_attempts``) every running job whose lease expired."""
        now = utcnow()
        with self.deps.db.session() as s:
            expired = repository.expired_leases(s, now)
        handled = []
        for lost in expired:
            try:
                with self.deps.db.session() as s:
                    lifecycle.recover(s, self.deps.publisher, lost, now, self.deps.settings.max_attempts)
            except IllegalTransition:
                continue  # renewed, finished or recovered by someone else meanwhile
            log.warning("job lease expired", job_id=lost.job_id, worker=lost.worker_id, attempts=lost.attempts)
            handled.append(lost.job_id)
        return handled

    def sweep_forever(self) -> None:
        """Background thread: look for jobs whose worker disappeared, until shutdown."""
        backoff = OutageBackoff("lease-sweeper")
        while not self.shutting_down.wait(backoff.wait(self.deps.settings.heartbeat_seconds)):
            try:
                self.requeue_expired()
            except Exception as err:  # the database may be away: logged once, swept again later
                backoff.failed(err, "lease sweep failed")
            else:
                backoff.succeeded()

    # -- running ------------------------------------------------------------------------------
    def _load_examples(self, tenant_id: str, file_id: str, split: str = "train") -> list[dict[str, Any]]:
        """The examples of an uploaded file, or of one split of a dataset version (``dsv-…``), as
        OpenAI chat objects; a preference file's pairs as OpenAI preference objects (``input``,
        ``preferred_output``, ``non_preferred_output``: what a dpo job trains on), as the dataset
        service converts them."""
        stub = self.deps.dataset_stub()
        with typed_rpc_errors():
            if is_dataset_version(file_id):
                chunks = stub.ExportDatasetVersion(
                    dataset_pb2.ExportDatasetVersionRequest(dataset_version_id=file_id, format="openai", split=split),
                    metadata=self.deps.dataset.metadata(tenant_id), timeout=300)
            else:
                chunks = stub.GetFileContent(dataset_pb2.GetFileRequest(file_id=file_id, as_openai_chat=True),
                                             metadata=self.deps.dataset.metadata(tenant_id), timeout=300)
            content = b"".join(c.data for c in chunks)
        return [json.loads(line) for line in content.splitlines() if line.strip()]

    def _as_holder(self, job_id: str, move: Callable[[Session], None]) -> bool:
        """Make a lifecycle move on our running job in a transaction of its own; ``False`` (and nothing
        written) when the job is no longer ours."""
        try:
            with self.deps.db.session() as s:
                move(s)
        except IllegalTransition:
            log.warning("job is no longer ours; leaving it", job_id=job_id)
            return False
        return True

    def _fail(self, job_id: str, tenant_id: str, message: str, error_code: str) -> None:
        self._as_holder(job_id, lambda s: lifecycle.fail(s, self.deps.publisher, job_id, tenant_id, self.worker_id,
                                                         message, error_code))

    def _cancel(self, job_id: str, tenant_id: str) -> None:
        self._as_holder(job_id, lambda s: lifecycle.cancel(s, self.deps.publisher, job_id, tenant_id,
                                                           self.worker_id))

    def _requeue(self, job_id: str, tenant_id: str, step: int) -> None:
        self._as_holder(job_id, lambda s: lifecycle.requeue(s, self.deps.publisher, job_id, tenant_id,
                                                            self.worker_id, step))

    def _record_checkpoint(self, job_id: str, checkpoint: Checkpoint) -> None:
        with self.deps.db.session() as s:
            lifecycle.record_checkpoint(s, job_id, self.worker_id, checkpoint)

    def _parent_adapter(self, tenant_id: str, parent_model: str, out_dir: Path) -> Path:
        """The folder of the parent model's adapter (continued training), asked of the registry: its
        stored artifact, read in place when it is a local folder, else (an object-store URL) fetched
        once into ``out_dir / "parent"`` through fsspec, with the credentials of the environment."""
        with typed_rpc_errors():
            model: registry_pb2.Model = self.deps.registry_stub().GetModel(
                registry_pb2.GetModelRequest(model_id=parent_model), metadata=self.deps.registry.metadata(tenant_id),
                timeout=30)
        uri = model.adapter_uri
        if not uri:
            raise ValueError(f"{parent_model} has no adapter")
        if "://" not in uri or uri.startswith("file://"):
            folder = Path(uri.removeprefix("file://"))
            if not (folder / "adapter_config.json").is_file():
                raise FileNotFoundError(f"the adapter of {parent_model} is not readable at {folder}")
            return folder
        local = out_dir / "parent"
        if not (local / "adapter_config.json").is_file():
            import fsspec

            fs, root = fsspec.core.url_to_fs(uri)
            staging = out_dir / ".parent-tmp"
            staging.mkdir(parents=True, exist_ok=True)
            for name in ("adapter_config.json", "adapter_model.safetensors"):
                fs.get(f"{root.rstrip('/')}/{name}", str(staging / name))
            shutil.rmtree(local, ignore_errors=True)  # an incomplete copy of an earlier attempt
            os.replace(staging, local)
        return local

    def _store_results(self, job_id: str, tenant_id: str) -> str | None:
        """Store the job's metrics CSV as a ``fine-tune-results`` file; its id, or ``None`` if that failed
        (the adapter is what matters: a job does not fail for want of its CSV)."""
        with self.deps.db.session() as s:
            content = metrics_csv(repository.metrics_reports(s, job_id))
        try:
            with typed_rpc_errors():
                stored = self.deps.dataset_stub().UploadFile(dataset_pb2.UploadFileRequest(
                    filename=f"{job_id}-metrics.csv", purpose="fine-tune-results", content=content),
                    metadata=self.deps.dataset.metadata(tenant_id), timeout=60)
        except Exception as err:
            log.warning("could not store the results file", job_id=job_id, error=str(err))
            with self.deps.db.session() as s:
                lifecycle.add_event(s, job_id, f"The metrics file could not be stored: {self._public(err)}",
                                level="warn")
            return None
        return str(stored.id)

    def _remote_run(self, job: Job) -> dict[str, Any]:
        """What a remote backend's run needs besides a local one's (:class:`TrainRun`): the job's names,
        the remote job an earlier attempt created and what it already mirrored, and the callbacks that
        store the remote job's id and add its events to the job (while the job is this worker's)."""
        with self.deps.db.session() as s:
            mirrored = repository.mirrored_remote_events(s, job.id)
            steps = [r["step"] for r in repository.metrics_reports(s, job.id) if isinstance(r.get("step"), int)]

        def on_remote_job(remote_job_id: str) -> bool:
            with self.deps.db.session() as s:
                return lifecycle.record_remote_job(s, job.id, self.worker_id, remote_job_id)

        def on_event(message: str, level: str, data: dict[str, Any] | None) -> None:
            with self.deps.db.session() as s:
                lifecycle.record_event(s, job.id, self.worker_id, message, level=level, data=data)

        return {"settings": self.deps.settings, "tenant_id": job.tenant_id, "job_id": job.id, "base_model": job.model,
                "suffix": job.suffix, "learning_rate_multiplier": job.learning_rate_multiplier,
                "remote_job_id": job.remote_job_id, "on_remote_job": on_remote_job, "on_event": on_event,
                "mirrored_events": mirrored, "reported_step": max(steps, default=0)}

    def run(self, job_id: str, tenant_id: str) -> None:
        lost_lease = threading.Event()
        done = threading.Event()

        def heartbeat() -> None:
            # Renewals keep their pace during a database outage (a longer pause would let the lease
            # lapse); the outage is logged once, not every beat.
            backoff = OutageBackoff(f"lease-{job_id}")
            while not done.wait(self.deps.settings.heartbeat_seconds):
                try:
                    renewed = self.renew_lease(job_id)
                except Exception as err:
                    backoff.failed(err, "lease renewal failed")
                    continue
                backoff.succeeded()
                if not renewed:
                    lost_lease.set()
                    return

        beat = threading.Thread(target=heartbeat, name=f"lease-{job_id}", daemon=True)
        beat.start()
        try:
            self._train(job_id, tenant_id, lost_lease)
        finally:
            done.set()
            beat.join()

    def _train(self, job_id: str, tenant_id: str, lost_lease: threading.Event) -> None:
        from coachforge_trainer.sft import Progress, TrainingCancelled, TrainingPaused, list_checkpoints

        with self.deps.db.session() as s:
            job = repository.job_by_id(s, job_id)
            assert job is not None
            s.expunge(job)
        log.info("training", job_id=job_id, model=job.model, epochs=job.n_epochs, attempt=job.attempts)
        # job.model was checked against the registry's models when the job was created; it is joined
        # to the models folder only as one plain folder name.
        base_dir = self.platform.models_dir / job.model if plain_name(job.model) else None
        remote = (job.backend or "trl") in REMOTE_BACKENDS  # trained elsewhere: no base model files needed here
        if not remote and (base_dir is None or not (base_dir / "config.json").exists()):
            log.error("base model files missing", job_id=job_id, model=job.model, folder=str(base_dir or ""))
            self._fail(job_id, tenant_id, f"Base model files for {job.model} are missing on this worker.",
                       "model_unavailable")
            return
        try:
            examples = self._load_examples(tenant_id, job.training_file, "train")
            eval_examples = (self._load_examples(tenant_id, job.validation_file, "validation")
                             if job.validation_file else None)
        except Exception as err:
            self._fail(job_id, tenant_id, f"Could not read the training data: {self._public(err)}",
                       "invalid_training_file")
            return
        params = method_settings(self.deps.settings, job).train_params(job, self.deps.settings.base_learning_rate)
        out_dir = self.platform.resolved_artifacts_dir / tenant_id / job_id
        parent_dir = None
        if job.parent_model:
            try:
                parent_dir = self._parent_adapter(tenant_id, job.parent_model, out_dir)
            except Exception as err:
                self._fail(job_id, tenant_id, f"Could not read the adapter of the parent model {job.parent_model}: "
                                              f"{self._public(err)}", "parent_model_unavailable")
                return
        existing = list_checkpoints(out_dir)
        for checkpoint in existing:  # saved by an earlier attempt, perhaps not yet recorded
            self._record_checkpoint(job_id, checkpoint)
        if existing:
            with self.deps.db.session() as s:
                lifecycle.add_event(s, job_id, f"Resuming from the checkpoint at step {existing[-1].step} "
                                               f"(epoch {existing[-1].epoch:.2f}).")
        last = {"t": time.monotonic(), "step": existing[-1].step if existing else 0}

        def on_progress(p: Progress) -> None:
            now = time.monotonic()
            if p.step > last["step"]:
                STEP_SECONDS.observe((now - last["t"]) / (p.step - last["step"]))
            last.update(t=now, step=p.step)
            TOKENS_PER_SECOND.set(p.tokens_per_second)
            job_progress(tenant_id, job_id, p.step, p.total_steps, p.train_loss, p.tokens_per_second, p.eta_seconds)
            with self.deps.db.session() as s:
                recorded = lifecycle.record_progress(s, job_id, self.worker_id, p)
            if recorded:
                lifecycle.publish_progress(self.deps.publisher, job_id, tenant_id, p)

        def should_cancel() -> bool:
            if lost_lease.is_set():
                return True
            with self.deps.db.session() as s:
                return repository.cancel_requested(s, job_id)

        try:
            try:
                result = get_backend(job.backend or "trl").train(TrainRun(
                    base_dir or Path(job.model), examples, out_dir, params, method=job.method_type or "supervised",
                    parent_adapter_dir=parent_dir, eval_examples=eval_examples, on_progress=on_progress,
                    should_cancel=should_cancel, on_checkpoint=lambda c: self._record_checkpoint(job_id, c),
                    should_pause=self.shutting_down.is_set, **(self._remote_run(job) if remote else {}),
                    lease_lost=lost_lease.is_set))
            finally:
                job_ended(tenant_id, job_id)
        except TrainingPaused as paused:
            self._requeue(job_id, tenant_id, paused.step)
            return
        except RemoteTrainingFailed as err:  # the remote's own words and URLs: nothing of this server's to redact
            self._fail(job_id, tenant_id, str(err)[:2000], err.code)
            return
        except TrainingCancelled:
            if lost_lease.is_set():
                log.warning("lost the lease on the job; stopped without finishing it", job_id=job_id)
            else:
                self._cancel(job_id, tenant_id)
            return
        except Exception as err:
            log.exception("training failed", job_id=job_id)
            self._fail(job_id, tenant_id, f"Training failed: {type(err).__name__}: {self._public(err)}",
                       "training_failed")
            return
        name = fine_tuned_name(job)
        result_file = self._store_results(job_id, tenant_id)
        if not self._as_holder(job_id, lambda s: lifecycle.succeed(
                s, self.deps.publisher, job, self.worker_id, result, fine_tuned_model=name, result_file=result_file,
                learning_rate=params.learning_rate)):
            return
        log.info("job succeeded", job_id=job_id, model=name, tokens=result.trained_tokens, steps=result.steps,
                 resumed_from=result.resumed_from_step)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="coachforge-trainer-worker", description=(
        "Trainer worker: claims queued fine-tuning jobs and trains them, COACHFORGE_TRAINER_CONCURRENCY at a "
        "time (train.requested events wake it). Settings come from COACHFORGE_* / COACHFORGE_TRAINER_* "
        "environment variables."))
    parser.add_argument("--metrics-port", type=int, default=None,
                        help="serve Prometheus metrics on this port (default: COACHFORGE_TRAINER_METRICS_PORT)")
    parser.add_argument("--metrics-port-offset", type=int, default=0,
                        help="added to the metrics port (the worker's index when several run on one host)")
    args = parser.parse_args(argv)
    platform = PlatformSettings()
    settings = TrainerSettings()
    if args.metrics_port is not None:
        settings.metrics_port = args.metrics_port
    if settings.metrics_port:
        settings.metrics_port += args.metrics_port_offset
    configure_logging(platform.log_level, json=platform.log_json)
    token = internal_token(platform)
    db = Database(platform.resolved_database_url)
    publisher = EventPublisher(platform.kafka_bootstrap, "trainer-worker", db=db,
                               delivery_timeout_ms=platform.kafka_delivery_timeout_ms)
    relay = OutboxRelay(db, publisher, poll_seconds=platform.outbox_poll_seconds,
                        batch_size=platform.outbox_batch_size, name="outbox-trainer-worker")
    relay.start()  # sends the job events this worker's moves write to the outbox
    deps = TrainerDeps(db=db, settings=settings, publisher=publisher,
                       dataset=InternalChannel(settings.dataset_grpc_target or platform.grpc_target, token,
                                               default_timeout_s=platform.grpc_client_timeout_s),
                       registry=InternalChannel(settings.registry_grpc_target or platform.grpc_target, token,
                                                default_timeout_s=platform.grpc_client_timeout_s))
    worker_id = settings.worker_id or f"{socket.gethostname()}-{os.getpid()}"
    worker = Worker(deps, platform, worker_id)
    if settings.metrics_port:
        start_http_server(settings.metrics_port)
    worker.requeue_expired()
    sweeper = threading.Thread(target=worker.sweep_forever, name="lease-sweeper", daemon=True)
    sweeper.start()
    consumer = EventConsumer(platform.kafka_bootstrap, settings.consumer_group, ["train.requested"], worker.handle,
                             db)

    def stop(signum: int, _frame: FrameType | None) -> None:
        log.info("worker stopping", signal=signal.Signals(signum).name)
        worker.shutting_down.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    worker.start()
    consumer.start()
    log.info("trainer worker ready", worker_id=worker_id, slots=settings.concurrency,
             models_dir=str(platform.models_dir))
    try:
        worker.shutting_down.wait()
        worker.stop()  # running jobs pause at their next step and are queued again with their checkpoint
    finally:
        consumer.stop()
        relay.stop()
        publisher.close()
        db.dispose()


if __name__ == "__main__":
    main()
